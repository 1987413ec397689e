"""The official Python SDK (`mcp`) as a consumer: it connects with a bearer key, in both eras,
and prints the tools it sees as JSON for the Rust test that runs it
(tests/integration/consumers.rs)."""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


async def tools(url: str, key: str, mode: str) -> list:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            return sorted(tool.name for tool in (await client.list_tools()).tools)


async def main(url: str, key: str) -> None:
    print(json.dumps({mode: await tools(url, key, mode) for mode in ("legacy", "auto")}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
