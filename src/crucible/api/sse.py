"""Server-Sent Events through sse-starlette's ``EventSourceResponse``.

Each event carries ``id`` (increasing per stream), so a client reconnecting with
``Last-Event-ID`` resumes where it stopped. sse-starlette frames the events, sends
the headers, watches for the client's disconnect (cancelling the stream's source)
and ends open streams when uvicorn shuts down, so a client reconnects to another
instance at once instead of after the graceful-shutdown timeout.

The keep-alive stays ours: a comment only after ``keepalive_s`` of silence, not
sse-starlette's ping on a fixed clock. httpx-sse reads a comment block after the
first event as an empty event (it keeps the last id, so the blank line dispatches
one), and a ping in the middle of a busy stream would hand clients that event too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent

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

# sse-starlette's default is \r\n; readers take either, and \n is what the stream always sent.
SEP = "\n"
KEEPALIVE = ServerSentEvent(comment="keep-alive", sep=SEP)


def parse_last_event_id(value: str | None) -> int:
    if not value:
        return 0
    try:
        n = int(value)
    except ValueError:
        raise InvalidSubmission("Last-Event-ID must be an integer", field="Last-Event-ID") from None
    return max(n, 0)


def server_sent_event(event_id: int, type_: str, data: Any) -> ServerSentEvent:
    """One event; ``data`` as compact JSON (ASCII-escaped, as the stream always was)."""
    return ServerSentEvent(
        data=json.dumps(data, separators=(",", ":")), event=type_, id=str(event_id), sep=SEP
    )


async def with_keepalive(
    events: AsyncIterator[tuple[int, str, Any]], keepalive_s: float
) -> AsyncIterator[ServerSentEvent]:
    """``events`` as SSE events, with a keep-alive comment after each ``keepalive_s``
    of silence. The next event is awaited in a task of its own, so a keep-alive does
    not cancel (and so end) the source generator."""
    it = aiter(events)
    nxt: asyncio.Future[tuple[int, str, Any]] = asyncio.ensure_future(anext(it))
    try:
        while True:
            done, _ = await asyncio.wait({nxt}, timeout=keepalive_s)
            if not done:
                yield KEEPALIVE
                continue
            try:
                event_id, type_, data = nxt.result()
            except StopAsyncIteration:
                return
            yield server_sent_event(event_id, type_, data)
            nxt = asyncio.ensure_future(anext(it))
    finally:
        # Reached on the end, an error, or the client's disconnect (sse-starlette
        # cancels us): stop the pending read, then close the source.
        nxt.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await nxt
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


def sse_response(
    events: AsyncIterator[tuple[int, str, Any]], *, keepalive_s: float = 15.0
) -> EventSourceResponse:
    return EventSourceResponse(
        with_keepalive(events, keepalive_s),
        headers={"Cache-Control": "no-cache"},  # (it sets X-Accel-Buffering: no itself)
        ping=0,  # the keep-alive above instead
        sep=SEP,
    )
