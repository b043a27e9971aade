"""Reading a Server-Sent Events stream in steps, for tests that kill or restart
servers while a client reads (the integration and the distributed tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import httpx
from httpx_sse import connect_sse

SSEvent = tuple[int, str, dict[str, Any]]  # (id, event type, JSON data)


class EventStream:
    """One SSE connection, read in steps; survives the server dying under it.

    ``read`` stops when its condition holds (the connection stays open for the next
    ``read``) or when the stream ends: the server closed it (after its final event)
    or the connection broke. The read timeout bounds a stream that goes silent (the
    server sends a keep-alive comment every 15 s).
    """

    def __init__(self, url: str, headers: dict[str, str], last_event_id: int | None = None):
        if last_event_id is not None:
            headers = {**headers, "Last-Event-ID": str(last_event_id)}
        self._stack = contextlib.ExitStack()
        http = self._stack.enter_context(httpx.Client(timeout=httpx.Timeout(10, read=60)))
        source = self._stack.enter_context(connect_sse(http, "GET", url, headers=headers))
        source.response.raise_for_status()
        self._it = source.iter_sse()
        self.events: list[SSEvent] = []
        self.ended = False

    def read(self, until: Callable[[list[SSEvent]], bool] = lambda events: False) -> None:
        try:
            for sse in self._it:
                self.events.append((int(sse.id), sse.event, sse.json()))
                if until(self.events):
                    return
        except httpx.TransportError:
            pass  # the server died under the stream
        self.ended = True

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stdout_events(n: int) -> Callable[[list[SSEvent]], bool]:
    """A ``read`` condition: at least ``n`` stdout events so far."""
    return lambda events: sum(e[1] == "stdout" for e in events) >= n
