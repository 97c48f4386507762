#!/usr/bin/env bash
# Install the pinned external tools the tests use into the git-ignored .tools/ folder:
# npm packages (MCP Inspector, conformance suite, server-everything, Node 22) and a
# Python venv with the official MCP SDK. Does nothing when they are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=$PWD/.tools
PY_MCP_VERSION=2.3.0
# The schema-driven tool fuzzer (scripts/fuzz_tools.py); hypothesis-jsonschema 0.23.1
# works with hypothesis up to the 6.112 line (newer ones changed an internal API it uses).
PY_FUZZ=("hypothesis==6.112.0" "hypothesis-jsonschema==0.23.1")
mkdir -p "$TOOLS/npm"
if ! cmp -s scripts/ci-tools/package.json "$TOOLS/npm/package.json.installed" 2>/dev/null \
   || [ ! -x "$TOOLS/npm/node_modules/.bin/mcp-inspector" ]; then
  echo "== installing pinned npm packages into .tools/npm"
  cp scripts/ci-tools/package.json "$TOOLS/npm/package.json"
  (cd "$TOOLS/npm" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  cp scripts/ci-tools/package.json "$TOOLS/npm/package.json.installed"
fi
if [ ! -x "$TOOLS/venv/bin/python" ] || ! "$TOOLS/venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$PY_MCP_VERSION' or m.version('hypothesis') != '6.112.0' or m.version('hypothesis-jsonschema') != '0.23.1')" 2>/dev/null; then
  echo "== installing the Python MCP SDK and the fuzzer's packages into .tools/venv"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$PY_MCP_VERSION" "${PY_FUZZ[@]}"
fi
