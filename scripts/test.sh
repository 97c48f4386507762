#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real binary, rmcp clients; some
# drive npm-installed MCP servers from .tools/, installed first), the integration tests
# again on PostgreSQL, then the smoke test with the official MCP Inspector, conformance
# suite and Python SDK.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-tools.sh
cargo build --locked --bins
cargo test --locked --all-targets
# The integration suite again on PostgreSQL (TEST_MYRMEX_POSTGRES, default
# postgres://postgres@127.0.0.1:5432/test; every test in a schema of its own).
TEST_MYRMEX_STORE=postgres cargo test --locked --tests
scripts/smoke.sh target/debug/myrmex
