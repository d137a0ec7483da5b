"""The official Python SDK's server (`mcp` 2.x, `MCPServer`) over streamable HTTP, for the tests.

Usage: python py_server.py PORT
Serves `/mcp` in both eras (2026-07-28 and the handshake era), with an event store so that
handshake-era streams can be resumed with `Last-Event-ID`. Tools:
- `echo(text)`: answers `text`.
- `wait(ms)`: answers `waited <ms> ms` after `ms` milliseconds.
- `poll(ms)`: closes its own SSE stream at once (the 2025-11-25 polling pattern: the client comes
  back with a GET and `Last-Event-ID` after the `retry:` the priming event named), then answers
  `polled after <ms> ms` on the resumed stream.
"""

import asyncio
import itertools
import sys

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventMessage, EventStore


class MemoryEventStore(EventStore):
    """Every event of every stream, in order, in memory: enough for a test."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, object]] = []
        self.ids = itertools.count(1)

    async def store_event(self, stream_id, message):
        event_id = f"ev-{next(self.ids)}"
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id, send_callback):
        index = next((i for i, (eid, _, _) in enumerate(self.events) if eid == last_event_id), None)
        if index is None:
            return None
        stream_id = self.events[index][1]
        for event_id, stream, message in self.events[index + 1 :]:
            if stream == stream_id and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream_id


server = MCPServer("py-test-server")


@server.tool()
async def echo(text: str) -> str:
    """Answers what it was given."""
    return text


@server.tool()
async def wait(ms: int) -> str:
    """Answers after a while."""
    await asyncio.sleep(ms / 1000)
    return f"waited {ms} ms"


@server.tool()
async def poll(ms: int, ctx: Context) -> str:
    """Closes its stream, waits, then answers on the resumed stream."""
    await ctx.close_sse_stream()
    await asyncio.sleep(ms / 1000)
    return f"polled after {ms} ms"


if __name__ == "__main__":
    server.run(
        transport="streamable-http",
        host="127.0.0.1",
        port=int(sys.argv[1]),
        event_store=MemoryEventStore(),
        retry_interval=100,
    )
