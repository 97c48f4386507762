"""A schema-converting agent framework that is not rmcp, against the real binary.

pydantic-ai's MCP toolset (on the FastMCP client) loads every tool of
`myrmex serve --tools all` over stdio, turns each inputSchema into its tool
definition, and its TestModel calls every tool once with arguments it
generates from that schema. Nothing may crash the client, and no generated
call may be refused with INVALID_PARAMETERS (referential answers such as
NOT_FOUND are fine: the generated ids name nothing).

Usage: framework_smoke.py path/to/myrmex DATA_DIR
"""

import asyncio
import json
import sys

from fastmcp.client import Client
from fastmcp.client.transports import StdioTransport
from pydantic_ai import Agent
from pydantic_ai.mcp import MCPToolset
from pydantic_ai.messages import RetryPromptPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.test import TestModel


async def main(binary: str, data_dir: str) -> int:
    transport = StdioTransport(command=binary, args=["--data-dir", data_dir, "serve", "--tools", "all"])
    toolset = MCPToolset(Client(transport), tool_error_behavior="failed")
    agent = Agent(TestModel(call_tools="all"), toolsets=[toolset])
    async with agent:
        tools = await toolset.client.list_tools()
        result = await agent.run("Call every tool once.")
    called: dict[str, tuple[str, object]] = {}
    answers: dict[str, str] = {}
    for message in result.all_messages():
        for part in message.parts:
            if isinstance(part, ToolCallPart):
                called[part.tool_call_id] = (part.tool_name, part.args)
            elif isinstance(part, (ToolReturnPart, RetryPromptPart)):
                content = part.content if isinstance(part.content, str) else json.dumps(part.content, default=str)
                answers[part.tool_call_id] = content
    names = sorted({t.name for t in tools})
    called_names = sorted({n for n, _ in called.values()})
    refused = [
        f"{name} {json.dumps(args, default=str)}: {answers.get(cid, '')[:400]}"
        for cid, (name, args) in called.items()
        if "INVALID_PARAMETERS" in answers.get(cid, "")
    ]
    missing = sorted(set(names) - set(called_names))
    errors = sum(1 for a in answers.values() if '"code"' in a)
    print(
        f"pydantic-ai TestModel: {len(names)} tools loaded, {len(called)} calls with generated "
        f"arguments over {len(called_names)} tools, {errors} referential errors, "
        f"{len(refused)} INVALID_PARAMETERS"
    )
    for r in refused:
        print("  refused:", r)
    if missing:
        print("  never called:", ", ".join(missing))
    return 1 if refused or missing or len(names) < 44 else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
