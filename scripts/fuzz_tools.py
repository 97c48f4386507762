"""Schema-driven fuzzing of every tool through the official Python MCP SDK.

Usage: fuzz_tools.py BINARY DATA_DIR [EXAMPLES_PER_TOOL]

Starts `myrmex serve` over stdio, lists its tools and, for each one, calls it
with arguments that hypothesis-jsonschema generates from the tool's published
inputSchema, then with arbitrary JSON objects (unknown fields, wrong types,
deep nesting, huge numbers). Every call must come back as a tool result (a
value or a tool error) within 60 s; a protocol error, a timeout or a dead
server counts as a failure. Afterwards the server must still be healthy.
Prints the inputs tried per tool and in all, and exits non-zero on a failure.
"""

import asyncio
import json
import sys
import warnings

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from mcp import Client, StdioServerParameters

CALL_TIMEOUT = 60

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=64)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=40,
)
arbitrary_args = st.dictionaries(
    st.sampled_from(["session_id", "name", "steps", "limit", "cursor", "task_id", "run_id", "wait_seconds", "x"])
    | st.text(max_size=12),
    json_value,
    max_size=6,
)


def inline_refs(schema):
    """The schema with its local `$ref`s replaced by the definitions (one level of recursion kept)."""
    defs = schema.get("$defs", {}) or schema.get("definitions", {})

    def walk(node, depth):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/"):
                name = ref.split("/")[-1]
                if depth > 3 or name not in defs:
                    return {}
                merged = dict(defs[name])
                merged.update({k: v for k, v in node.items() if k != "$ref"})
                return walk(merged, depth + 1)
            return {k: walk(v, depth) for k, v in node.items() if k not in ("$defs", "definitions")}
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        return node

    return walk(schema, 0)


def examples(schema, per_tool):
    """Arguments generated from `schema` (and arbitrary objects), drawn up front."""
    drawn = []
    fuzz_settings = settings(
        max_examples=per_tool,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            strategy = from_schema(schema)
        except Exception as e:  # a construct the generator does not support
            print(f"fuzz: no schema strategy ({type(e).__name__}); arbitrary objects only")
            strategy = arbitrary_args

        @fuzz_settings
        @given(strategy)
        def from_its_schema(args):
            drawn.append(args if isinstance(args, dict) else {"value": args})

        @settings(fuzz_settings, max_examples=max(per_tool // 2, 1))
        @given(arbitrary_args)
        def arbitrary(args):
            drawn.append(args)

        from_its_schema()
        arbitrary()
    return drawn


async def fuzz(server, per_tool):
    failures = []
    tried = {}
    health = None
    async with Client(server, mode="legacy") as client:
        tools = (await client.list_tools()).tools
        for tool in tools:
            for args in examples(inline_refs(tool.input_schema), per_tool):
                tried[tool.name] = tried.get(tool.name, 0) + 1
                shown = json.dumps(args)[:300]
                try:
                    res = await asyncio.wait_for(client.call_tool(tool.name, args), CALL_TIMEOUT)
                except asyncio.TimeoutError:
                    failures.append(f"{tool.name}: no answer within {CALL_TIMEOUT} s for {shown}")
                    return tried, failures, health
                except Exception as e:  # a protocol error or a dead server
                    failures.append(f"{tool.name}: {type(e).__name__}: {e} for {shown}")
                    return tried, failures, health
                if res.is_error:
                    body = json.loads(res.content[0].text)
                    if not (body["error"]["code"] and body["error"]["message"] and body["error"]["hint"]):
                        failures.append(f"{tool.name}: an error without code, message and hint: {body}")
        res = await client.call_tool("get_health_status", {})
        health = res.structured_content.get("overall_status") if not res.is_error else str(res)
        if health not in ("healthy", "degraded"):
            failures.append(f"server not healthy after fuzzing: {health}")
    return tried, failures, health


def main() -> int:
    binary, data_dir = sys.argv[1], sys.argv[2]
    per_tool = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    # Short waits keep a generated wait_seconds from idling the run for long.
    config = f"{data_dir}/fuzz.toml"
    with open(config, "w") as f:
        f.write("[workflows]\ndefault_wait_seconds = 1\nmax_wait_seconds = 2\n\n[http]\nidle_timeout_seconds = 60\n")
    server = StdioServerParameters(command=binary, args=["--data-dir", data_dir, "--config", config, "serve"])
    tried, failures, health = asyncio.run(fuzz(server, per_tool))
    total = sum(tried.values())
    print(f"fuzz tools: {total} inputs over {len(tried)} tools ({min(tried.values(), default=0)}-{max(tried.values(), default=0)} per tool), "
          f"failures {len(failures)}, server {health}")
    for f in failures:
        print(f"fuzz FAIL {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
