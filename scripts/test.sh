#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real binary, rmcp clients),
# then the smoke test with the official MCP Inspector, conformance suite and Python SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --bins
cargo test --locked --all-targets
scripts/smoke.sh target/debug/myrmex
