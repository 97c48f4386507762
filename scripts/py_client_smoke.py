"""Drive myrmex with the official Python MCP SDK (PyPI `mcp`, pinned in scripts/smoke.sh).

Usage: py_client_smoke.py BINARY DATA_DIR [HTTP_URL [SSE_URL]]

Over stdio in every connect mode the SDK has (auto, legacy, 2026-07-28) and,
when a URL is given, over Streamable HTTP: list the tools, create a session,
read it back, and check that bad arguments come back as a structured tool
error; and, given the legacy SSE URL, through `sse_client`: create a session
and run a workflow with progress notifications. Exits non-zero on the first failure.
"""

import asyncio
import json
import sys

from mcp import Client, StdioServerParameters

EXPECTED_TOOLS = {
    "close_session",
    "create_session",
    "get_health_status",
    "get_session",
    "get_system_status",
    "list_sessions",
    "create_workflow",
    "execute_workflow",
    "get_workflow_run",
    "create_tasks",
    "next_task",
    "complete_task",
}


async def exercise(server, mode: str, label: str) -> None:
    async with Client(server, mode=mode) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert EXPECTED_TOOLS <= tools, f"{label}: tools {sorted(tools)}"

        res = await client.call_tool("create_session", {"name": f"py-{label}", "mode": "parallel"})
        assert not res.is_error, f"{label}: create_session failed: {res}"
        session = res.structured_content
        assert session["session_id"].startswith("ses_"), session
        assert session["mode"] == "parallel", session

        res = await client.call_tool("get_session", {"session_id": session["session_id"]})
        assert not res.is_error and res.structured_content["name"] == f"py-{label}", res

        res = await client.call_tool("create_session", {"name": "x", "colour": "red"})
        assert res.is_error, f"{label}: unknown field accepted"
        error = json.loads(res.content[0].text)["error"]
        assert error["code"] == "INVALID_PARAMETERS" and "colour" in error["message"], error

        res = await client.call_tool("create_workflow", {
            "name": "py-flow",
            "parameters": {"who": {"type": "string", "required": True}},
            "steps": [
                {"name": "greet", "module": "core", "action": "echo", "parameters": {"text": "hi {{params.who}}"}},
                {"name": "wait", "module": "core", "action": "sleep", "parameters": {"ms": 50}, "dependencies": ["greet"]},
            ],
        })
        assert not res.is_error, f"{label}: create_workflow failed: {res}"
        res = await client.call_tool("execute_workflow", {"workflow_name": "py-flow", "parameters": {"who": "python"}, "wait_seconds": 20})
        assert not res.is_error and res.structured_content["status"] == "succeeded", res
        assert res.structured_content["workflow_results"]["greet"] == {"text": "hi python"}, res

        sid = session["session_id"]
        res = await client.call_tool("create_tasks", {"session_id": sid, "tasks": [
            {"name": "write", "priority": "high"},
            {"name": "check", "module": "core", "action": "echo", "parameters": {"got": "{{tasks.write.result}}"}},
        ]})
        assert not res.is_error, f"{label}: create_tasks failed: {res}"
        check_id = res.structured_content["tasks"][1]["task_id"]
        res = await client.call_tool("next_task", {"session_id": sid, "agent": "py"})
        claim = res.structured_content
        assert not res.is_error and claim["task"]["name"] == "write", res
        res = await client.call_tool("complete_task", {"task_id": claim["task"]["task_id"], "lease_id": claim["lease_id"], "result": {"n": 1}})
        assert not res.is_error and res.structured_content["status"] == "succeeded", res
        res = await client.call_tool("get_task", {"task_id": check_id, "wait_seconds": 20})
        assert not res.is_error and res.structured_content["result"] == {"got": {"n": 1}}, res

        res = await client.call_tool("get_health_status", {})
        assert not res.is_error and res.structured_content["overall_status"] == "healthy", res
        print(f"py-client {label} (protocol {client.protocol_version}): ok")


async def exercise_sse(url: str) -> None:
    from mcp.client.session import ClientSession
    from mcp.client.sse import sse_client

    async with sse_client(url) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            assert init.server_info.name == "myrmex", init
            res = await session.call_tool("create_session", {"name": "py-sse", "mode": "parallel"})
            assert not res.is_error, res
            sid = res.structured_content["session_id"]
            res = await session.call_tool("create_workflow", {
                "session_id": sid,
                "name": "py-sse-flow",
                "steps": [
                    {"name": "a", "module": "core", "action": "sleep", "parameters": {"ms": 50}},
                    {"name": "b", "module": "core", "action": "echo", "parameters": {"got": "{{steps.a.output}}"}, "dependencies": ["a"]},
                ],
            })
            assert not res.is_error, res
            progress = []

            async def on_progress(done, total, message):
                progress.append((done, total, message))

            res = await session.call_tool(
                "execute_workflow",
                {"session_id": sid, "workflow_name": "py-sse-flow", "wait_seconds": 20},
                progress_callback=on_progress,
            )
            assert not res.is_error and res.structured_content["status"] == "succeeded", res
            assert progress and progress[-1][0] == 2 and progress[-1][1] == 2, progress
            print(f"py-client sse (protocol {init.protocol_version}): ok, {len(progress)} progress notifications")


async def main() -> int:
    binary, data_dir = sys.argv[1], sys.argv[2]
    url = sys.argv[3] if len(sys.argv) > 3 else None
    stdio = StdioServerParameters(command=binary, args=["--data-dir", data_dir, "serve"])
    for mode in ("auto", "legacy", "2026-07-28"):
        await exercise(stdio, mode, f"stdio-{mode}")
    if url:
        for mode in ("auto", "legacy", "2026-07-28"):
            await exercise(url, mode, f"http-{mode}")
    if len(sys.argv) > 4:
        await exercise_sse(sys.argv[4])
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
