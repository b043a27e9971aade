"""A stream silent for longer than its keep-alive interval: the server sends comments,
and the client yields only the events (httpx-sse turns a comment after an event into
an event with the last id and no data, which the client once tried to parse as JSON)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from crucible.api.sse import sse_response
from crucible.client import Client
from support.api import serve_in_thread

KEEPALIVE_S = 0.05


def silent_stream_app() -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/evaluations/{evaluation_id}/events")
    async def events(evaluation_id: str) -> Any:
        async def gen() -> AsyncIterator[tuple[int, str, Any]]:
            yield 1, "status", {"status": "running"}
            await asyncio.sleep(KEEPALIVE_S * 6)  # several keep-alives go out meanwhile
            yield 2, "stdout", {"data": "late\n"}
            await asyncio.sleep(KEEPALIVE_S * 6)
            yield 3, "result", {"id": evaluation_id}

        return sse_response(gen(), keepalive_s=KEEPALIVE_S)

    return app


def test_keepalives_between_events_are_not_events() -> None:
    with serve_in_thread(silent_stream_app()) as url, Client(url) as client:
        got = [(e.id, e.type, e.data) for e in client.events("ev_1")]
    assert got == [
        (1, "status", {"status": "running"}),
        (2, "stdout", {"data": "late\n"}),
        (3, "result", {"id": "ev_1"}),
    ]
