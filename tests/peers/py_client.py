"""The official Python SDK client (`mcp` 2.x) through the gateway, for the protocol tests.

Usage: python py_client.py URL KEY MODE [LAST]
MODE is the client's own: "auto" (probes server/discover, falls back to initialize) or "legacy".
Lists the tools, calls `echo`, and then LAST: `confirm` (the default), which asks for input (a
multi round-trip request in 2026-07-28, an elicitation request in the handshake era): the client
answers yes; or `poll`, whose server closes the stream (the client resumes it in the handshake
era).
Prints one JSON report line; a failure is reported, not raised.
"""

import asyncio
import json
import sys

import httpx2
from mcp import types
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client


async def accept(context, params):
    return types.ElicitResult(action="accept", content={"confirm": True})


async def main(url: str, key: str, mode: str, last: str) -> dict:
    report: dict = {"mode": mode}
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, elicitation_callback=accept) as client:
            report["protocol_version"] = client.protocol_version
            listed = await client.list_tools()
            report["tools"] = [tool.name for tool in listed.tools]
            echoed = await client.call_tool("echo", {"text": "hello"})
            report["echo"] = echoed.content[0].text
            if last == "poll":
                polled = await client.call_tool("poll", {"ms": 300})
                report["poll"] = polled.content[0].text
            else:
                confirmed = await client.call_tool("confirm", {"what": "deploy"})
                report["confirm"] = confirmed.content[0].text
    return report


def describe(err: BaseException) -> str:
    """The failures inside an exception group (the SDK runs its transport in a task group)."""
    if isinstance(err, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in err.exceptions)
    return f"{type(err).__name__}: {err}"


if __name__ == "__main__":
    url, key, mode = sys.argv[1:4]
    last = sys.argv[4] if len(sys.argv) > 4 else "confirm"
    try:
        report = asyncio.run(main(url, key, mode, last))
    except BaseException as err:  # noqa: BLE001 - the test reads the report
        report = {"error": describe(err)}
    print(json.dumps(report))
