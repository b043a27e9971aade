"""Server-Sent Events over a plain StreamingResponse.

Each event carries ``id`` (increasing per stream), so a client reconnecting with
``Last-Event-ID`` resumes where it stopped. A comment line every ``keepalive_s`` keeps
proxies from closing an idle connection. Starlette cancels the generator when the
client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

from crucible.core.errors import InvalidSubmission

SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "An event stream (text/event-stream): `id`, `event`, JSON `data`",
        # One event of the stream (OpenAPI 3.2's reading of an event-stream schema,
        # which Schemathesis checks every event against): `data` is JSON text.
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "event": {"type": "string"},
                        "data": {"type": "string", "description": "JSON"},
                        "retry": {"type": "integer"},
                    },
                }
            }
        },
    }
}


def parse_last_event_id(value: str | None) -> int:
    if not value:
        return 0
    try:
        n = int(value)
    except ValueError:
        raise InvalidSubmission("Last-Event-ID must be an integer", field="Last-Event-ID") from None
    return max(n, 0)


def format_event(event_id: int, type_: str, data: Any) -> str:
    return f"id: {event_id}\nevent: {type_}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def sse_response(
    events: AsyncIterator[tuple[int, str, Any]], *, keepalive_s: float = 15.0
) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        it = aiter(events)
        nxt: asyncio.Future[tuple[int, str, Any]] = asyncio.ensure_future(anext(it))
        try:
            while True:
                done, _ = await asyncio.wait({nxt}, timeout=keepalive_s)
                if not done:
                    yield ": keep-alive\n\n"
                    continue
                try:
                    event_id, type_, data = nxt.result()
                except StopAsyncIteration:
                    return
                yield format_event(event_id, type_, data)
                nxt = asyncio.ensure_future(anext(it))
        finally:
            nxt.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await nxt
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
