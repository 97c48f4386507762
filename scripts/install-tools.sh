#!/usr/bin/env bash
# Install the pinned external tools the tests use into the git-ignored .tools/ folder:
# npm packages (MCP Inspector, conformance suite, server-everything, Node 22), a
# Python venv with the official MCP SDK, and one with an agent framework's MCP client
# (pydantic-ai). Does nothing when they are already there.
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
# An agent framework that builds its tool definitions from our schemas
# (scripts/framework_smoke.py), in a venv of its own: its MCP client pins its own SDK.
PY_FRAMEWORK=("pydantic-ai-slim[mcp]==2.68.0")
if [ ! -x "$TOOLS/venv-frameworks/bin/python" ] || ! "$TOOLS/venv-frameworks/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('pydantic-ai-slim') != '2.68.0')" 2>/dev/null; then
  echo "== installing an agent framework's MCP client (pydantic-ai) into .tools/venv-frameworks"
  python3 -m venv "$TOOLS/venv-frameworks"
  "$TOOLS/venv-frameworks/bin/pip" install --quiet --disable-pip-version-check "${PY_FRAMEWORK[@]}"
fi
