#!/usr/bin/env bash
# Drive the real myrmex binary with official MCP clients:
#   - the MCP Inspector CLI (stdio and HTTP, legacy and modern protocol eras),
#   - the generic scenarios of the MCP conformance suite over HTTP (both spec versions),
#   - the official Python SDK client (scripts/py_client_smoke.py),
#   - a schema-driven fuzzer of every tool through that client (scripts/fuzz_tools.py),
#   - an agent framework (pydantic-ai) calling every tool with arguments its TestModel
#     generates from the schemas (scripts/framework_smoke.py).
# Installs what it needs (pinned) into the git-ignored .tools/ folder (scripts/install-tools.sh).
# Usage: scripts/smoke.sh [path/to/myrmex]   (default: target/debug/myrmex)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${1:-$ROOT/target/debug/myrmex}
TOOLS=$ROOT/.tools

passed=0
failed=0
failures=()
pass() { passed=$((passed + 1)); echo "  ok   $1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "  FAIL $1"; }

[ -x "$BIN" ] || { echo "smoke: $BIN not found; run cargo build first" >&2; exit 2; }

scripts/install-tools.sh
PY_MCP_VERSION=$("$TOOLS/venv/bin/python" -c "import importlib.metadata as m; print(m.version('mcp'))")
export PATH="$TOOLS/npm/node_modules/.bin:$PATH"
export MCP_INSPECTOR_SECRET_STORE=memory
echo "node $(node --version), python $("$TOOLS/venv/bin/python" --version)"

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# inspector ARGS... -> stdout JSON in $WORK/out.json, exit code returned
inspector() { mcp-inspector --cli "$@" --format json >"$WORK/out.json" 2>"$WORK/err.txt"; }
# expect_json LABEL PYTHON-EXPRESSION-over-`r`
expect_json() {
  if python3 -c "import json,sys; r=json.load(open('$WORK/out.json'))['result']; sys.exit(0 if ($2) else 1)" 2>/dev/null; then
    pass "$1"
  else
    fail "$1"; head -c 2000 "$WORK/out.json" "$WORK/err.txt" || true
  fi
}

echo "== MCP Inspector CLI over stdio"
for era in legacy modern; do
  SRV=("$BIN" --data-dir "$WORK/stdio-$era" serve)
  if inspector "${SRV[@]}" --protocol-era "$era" --method tools/list; then
    expect_json "inspector stdio $era tools/list" "len(r['tools']) >= 6 and all('inputSchema' in t and 'annotations' in t for t in r['tools'])"
  else fail "inspector stdio $era tools/list"; cat "$WORK/err.txt"; fi
  if inspector "${SRV[@]}" --protocol-era "$era" --method tools/call --tool-name create_session --tool-args-json '{"name":"inspector","mode":"parallel"}'; then
    expect_json "inspector stdio $era create_session" "r['structuredContent']['session_id'].startswith('ses_') and r['structuredContent']['mode']=='parallel'"
  else fail "inspector stdio $era create_session"; cat "$WORK/err.txt"; fi
  WF='{"name":"smoke","workflow_definition":{"steps":[{"name":"a","module":"core","action":"set","parameters":{"value":{"n":2}}},{"name":"b","module":"core","action":"echo","parameters":{"n":"{{steps.a.output.n}}"}}],"dependencies":{"b":["a"]}},"wait_seconds":20}'
  if inspector "${SRV[@]}" --protocol-era "$era" --method tools/call --tool-name create_complex_workflow --tool-args-json "$WF"; then
    expect_json "inspector stdio $era create_complex_workflow runs" "r['structuredContent']['run']['status']=='succeeded' and r['structuredContent']['run']['workflow_results']['b']=={'n':2}"
  else fail "inspector stdio $era create_complex_workflow"; cat "$WORK/err.txt"; fi
  if inspector "${SRV[@]}" --protocol-era "$era" --method tools/call --tool-name list_modules --tool-args-json '{"include_schemas":false}'; then
    expect_json "inspector stdio $era list_modules" "any(m['name']=='shell' and not m['enabled'] and 'enabled = true' in m['enable_hint'] for m in r['structuredContent']['modules'])"
  else fail "inspector stdio $era list_modules"; cat "$WORK/err.txt"; fi
  if inspector "${SRV[@]}" --protocol-era "$era" --method tools/call --tool-name create_project --tool-args-json '{"project_name":"smoke-'"$era"'","template_name":"data_pipeline"}'; then
    expect_json "inspector stdio $era create_project" "r['structuredContent']['status']=='created' and 'data/raw/README.md' in r['structuredContent']['files_created']"
  else fail "inspector stdio $era create_project"; cat "$WORK/err.txt"; fi
  # A tool error: exit code 5 (isError) and our structured error body.
  set +e
  inspector "${SRV[@]}" --protocol-era "$era" --method tools/call --tool-name close_session --tool-args-json '{"session_id":"ses_missing"}'
  rc=$?
  set -e
  if [ "$rc" = 5 ] && grep -q NOT_FOUND "$WORK/out.json" "$WORK/err.txt"; then pass "inspector stdio $era tool error is isError (exit 5)"; else fail "inspector stdio $era tool error exit $rc"; cat "$WORK/err.txt"; fi
done

echo "== starting myrmex serve --http"
"$BIN" --data-dir "$WORK/http" serve --http 127.0.0.1:0 2>"$WORK/http.log" &
SERVER_PID=$!
ADDR=
for _ in $(seq 1 100); do
  ADDR=$(grep -o 'addr=[0-9.:]*' "$WORK/http.log" | head -1 | cut -d= -f2 || true)
  [ -n "$ADDR" ] && break
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "server did not start:"; cat "$WORK/http.log"; exit 1; }
URL="http://$ADDR/mcp"
echo "listening at $URL"

echo "== MCP Inspector CLI over HTTP"
for era in legacy modern; do
  if inspector "$URL" --transport http --protocol-era "$era" --method tools/list; then
    expect_json "inspector http $era tools/list" "len(r['tools']) >= 6"
  else fail "inspector http $era tools/list"; cat "$WORK/err.txt"; fi
  if inspector "$URL" --transport http --protocol-era "$era" --method tools/call --tool-name get_system_status --tool-args-json '{"include_detailed_metrics":true}'; then
    expect_json "inspector http $era get_system_status" "r['structuredContent']['overall_status']=='healthy' and r['structuredContent']['store']['kind']=='sqlite'"
  else fail "inspector http $era get_system_status"; cat "$WORK/err.txt"; fi
done

echo "== MCP Inspector CLI over the legacy HTTP+SSE transport"
SSE_URL="http://$ADDR/sse"
if inspector "$SSE_URL" --transport sse --method tools/list; then
  expect_json "inspector sse tools/list" "len(r['tools']) >= 6 and any(t['name']=='allocate_resources' for t in r['tools'])"
else fail "inspector sse tools/list"; cat "$WORK/err.txt"; fi
if inspector "$SSE_URL" --transport sse --method tools/call --tool-name create_complex_workflow --tool-args-json "$WF"; then
  expect_json "inspector sse tools/call create_complex_workflow" "r['structuredContent']['run']['status']=='succeeded'"
else fail "inspector sse tools/call"; cat "$WORK/err.txt"; fi

echo "== MCP conformance suite (generic server scenarios)"
conf() {
  if conformance server --url "$URL" --scenario "$1" --spec-version "$2" -o "$WORK/conformance" >"$WORK/conf.log" 2>&1; then
    pass "conformance $2 $1"
  else
    fail "conformance $2 $1"; tail -40 "$WORK/conf.log"
  fi
}
for s in server-initialize server-session-lifecycle tools-list dns-rebinding-protection prompts-list completion-complete resources-list; do conf "$s" 2025-11-25; done
for s in tools-list dns-rebinding-protection http-header-validation caching prompts-list completion-complete resources-list sep-2164-resource-not-found; do conf "$s" 2026-07-28; done

echo "== official Python SDK client (mcp $PY_MCP_VERSION)"
if "$TOOLS/venv/bin/python" scripts/py_client_smoke.py "$BIN" "$WORK/py" "$URL" "$SSE_URL" >"$WORK/py.log" 2>&1; then
  grep '^py-client' "$WORK/py.log" || true
  pass "python mcp client (stdio, http in all connect modes, sse_client)"
else
  fail "python mcp client"; cat "$WORK/py.log"
fi

echo "== schema-driven fuzzing of every tool (hypothesis-jsonschema over each inputSchema)"
if "$TOOLS/venv/bin/python" scripts/fuzz_tools.py "$BIN" "$(mktemp -d -p "$WORK")" "${FUZZ_EXAMPLES:-100}" >"$WORK/fuzz.log" 2>"$WORK/fuzz.err"; then
  grep '^fuzz tools' "$WORK/fuzz.log" || true
  pass "tool fuzzing: every generated call answered, the server healthy after"
else
  fail "tool fuzzing"; cat "$WORK/fuzz.log"; grep -v ' INFO \| DEBUG ' "$WORK/fuzz.err" | tail -40
fi

echo "== an agent framework's MCP client builds its tools from the schemas (pydantic-ai TestModel)"
if "$TOOLS/venv-frameworks/bin/python" scripts/framework_smoke.py "$BIN" "$(mktemp -d -p "$WORK")" >"$WORK/fw.log" 2>"$WORK/fw.err"; then
  grep '^pydantic-ai' "$WORK/fw.log" || true
  pass "pydantic-ai: every tool loaded and called with generated arguments, none refused as invalid"
else
  fail "pydantic-ai schema-generated calls"; cat "$WORK/fw.log"; grep -v ' INFO \| DEBUG ' "$WORK/fw.err" | tail -40
fi

echo "== graceful shutdown"
kill -TERM "$SERVER_PID"
if wait "$SERVER_PID"; then pass "SIGTERM ends the HTTP server with status 0"; else fail "SIGTERM exit status"; fi
SERVER_PID=
if grep -q '^{' "$WORK/http.log"; then :; fi

echo
for f in "${failures[@]}"; do echo "failed: $f"; done
echo "smoke: $passed passed, $failed failed"
[ "$failed" = 0 ]
