"""An independent MCP client against capgate: the official Python SDK (`mcp`) lists and calls the
seed's tools, once with the legacy handshake and once in the 2026-07-28 era, and prints what it
saw as JSON for the Rust test that runs it (tests/integration/clients.rs)."""

import asyncio
import json
import sys

from mcp import Client


def dump(result):
    return result.model_dump(by_alias=True, exclude_none=True, mode="json")


async def session(url: str, mode: str) -> dict:
    async with Client(url, mode=mode) as client:
        tools = (await client.list_tools()).tools
        created = dump(
            await client.call_tool(
                "stripe-post-identity-verification-sessions",
                {"body": {"type": "document", "metadata": {"client": "python", "mode": mode}}},
            )
        )
        # The body's fields as arguments of their own, as the enriched schema announces them.
        flat = dump(
            await client.call_tool(
                "stripe-post-identity-verification-sessions",
                {"type": "document", "metadata": {"client": "python-flat"}},
            )
        )
        create = next(t for t in tools if t.name == "stripe-post-identity-verification-sessions")
        session_id = created["structuredContent"]["id"]
        retrieved = dump(await client.call_tool("stripe-get-identity-verification-sessions-2", {"session": session_id}))
        listed = dump(await client.call_tool("stripe-get-identity-verification-sessions", {"limit": 1}))
        missing = dump(await client.call_tool("stripe-get-identity-verification-sessions-2", {"session": "vs_missing"}))
        bad = dump(await client.call_tool("stripe-get-identity-verification-sessions", {"limit": "ten"}))
        return {
            "protocol_version": client.protocol_version,
            "tools": [tool.name for tool in tools],
            "annotations": {tool.name: dump(tool.annotations) for tool in tools},
            "created": created,
            "flat": flat,
            "create_properties": sorted(create.input_schema["properties"].keys()),
            "retrieved": retrieved,
            "listed": listed,
            "missing": missing,
            "bad_argument": bad,
        }


async def main(url: str) -> None:
    out = {}
    for mode in ("legacy", "auto"):
        out[mode] = await session(url, mode)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
