#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real binary, rmcp clients),
# (some drive npm-installed MCP servers from .tools/, installed first), then the smoke test with the official MCP Inspector, conformance suite and Python SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-tools.sh
cargo build --locked --bins
cargo test --locked --all-targets
scripts/smoke.sh target/debug/myrmex
