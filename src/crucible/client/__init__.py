"""A synchronous Python client for the Crucible API (used by the CLI, usable by anyone).

    from crucible.client import Client
    with Client("http://127.0.0.1:8000", api_key="crk_…") as c:  # or CRUCIBLE_API_KEY
        ev = c.submit("print(6 * 7)", expected_output="42", wait=30)
        print(ev.status, ev.result.verdict if ev.result else None)

Errors from the server raise :class:`ApiError` carrying the status code, the message
and the offending field (see ``crucible.client.errors`` for the few mapped back to
``crucible.core.errors`` exceptions). Long-lived sandboxes: ``Client.sandboxes`` and the
async ``AsyncClient.sandboxes`` (``crucible.client.sandboxes``); environments:
``.environments`` on both (``crucible.client.environments``).
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx

from crucible.client import evaluations as calls
from crucible.client.environments import AsyncEnvironments, Environments
from crucible.client.errors import ApiError
from crucible.client.events import ServerEvent
from crucible.client.sandboxes import AsyncSandboxes, Sandboxes
from crucible.client.transport import AsyncTransport, SyncTransport
from crucible.domain.evaluations import (
    BatchCreated,
    BatchPublic,
    CancelPublic,
    EvaluationList,
    EvaluationPublic,
    QueuePublic,
)

DEFAULT_SERVER = "http://127.0.0.1:8000"

__all__ = ["DEFAULT_SERVER", "ApiError", "AsyncClient", "Client", "ServerEvent"]


def _http_options(server: str, timeout: float, api_key: str | None) -> dict[str, Any]:
    api_key = api_key or os.environ.get("CRUCIBLE_API_KEY")
    return {
        "base_url": server.rstrip("/") + "/api/v1",
        "timeout": timeout,
        "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
    }


class Client:
    """Thin, typed wrapper over /api/v1. ``transport`` lets tests pass an in-process app."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        self.http = httpx.Client(transport=transport, **_http_options(server, timeout, api_key))
        self.send = SyncTransport(self.http)
        self.sandboxes = Sandboxes(self.send)
        self.environments = Environments(self.send)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- evaluations ------------------------------------------------------------

    def submit(
        self,
        code: str | None = None,
        *,
        language: str = "python",
        environment: str | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> EvaluationPublic:
        """Queue ``code`` (or ``files=``/``entrypoint=``); other fields as in the API.

        ``environment``: the root to run in (``environments.list()``; default host).
        With ``wait`` (≤ 60 s) the server answers once the evaluation ends, if it does.
        """
        body = {"code": code, "language": language, "environment": environment, **fields}
        read_timeout = self.http.timeout.read
        return self.send(calls.submit_call(body, wait, idempotency_key, read_timeout))

    def get(self, evaluation_id: str) -> EvaluationPublic:
        return self.send(calls.get_call(evaluation_id))

    def wait(self, evaluation_id: str, timeout: float | None = None) -> EvaluationPublic:
        """Block until the evaluation is final (following its event stream)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in self.events(evaluation_id):
            if event.type == "result":
                return EvaluationPublic.model_validate(event.data)
            if deadline is not None and time.monotonic() > deadline:
                break
        return self.get(evaluation_id)

    def list(self, *, cursor: str | None = None, limit: int = 50, **filters: Any) -> EvaluationList:
        """One page; filters: status, language, verdict, termination, label="k:v", batch_id."""
        return self.send(calls.list_call(cursor, limit, filters))

    def iter(self, **filters: Any) -> Iterator[EvaluationPublic]:
        """Every matching evaluation, newest first, following the cursor."""
        cursor: str | None = None
        while True:
            page = self.list(cursor=cursor, limit=500, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, evaluation_id: str) -> CancelPublic:
        return self.send(calls.cancel_call(evaluation_id))

    def events(self, evaluation_id: str, last_event_id: int | None = None) -> Iterator[ServerEvent]:
        """``status``, ``stdout``, ``stderr`` events, then ``result`` (the final record)."""
        return self.send.events(f"/evaluations/{evaluation_id}/events", last_event_id, {"result"})

    def logs(self, evaluation_id: str, stream: str = "stdout") -> str:
        return self.send(calls.output_call(evaluation_id, stream))

    def file(self, evaluation_id: str, path: str) -> bytes:
        return self.send(calls.file_call(evaluation_id, path))

    # -- batches ----------------------------------------------------------------

    def batch(
        self,
        items: builtins.list[dict[str, Any]],
        defaults: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        environment: str | None = None,
        idempotency_key: str | None = None,
    ) -> BatchCreated:
        """Queue ``items``; ``environment`` goes into ``defaults`` (an item's own wins).
        With ``idempotency_key``, a retry after a lost answer gets the same batch."""
        return self.send(calls.batch_call(items, defaults, labels, environment, idempotency_key))

    def get_batch(self, batch_id: str) -> BatchPublic:
        return self.send(calls.get_batch_call(batch_id))

    def batch_events(self, batch_id: str) -> Iterator[BatchPublic]:
        """The batch record each time more of it has finished; ends when all have."""
        for event in self.send.events(f"/batches/{batch_id}/events", None, {"done"}):
            yield BatchPublic.model_validate(event.data)

    def cancel_batch(self, batch_id: str) -> BatchPublic:
        return self.send(calls.cancel_batch_call(batch_id))

    def queue(self) -> QueuePublic:
        return self.send(calls.queue_call())


class AsyncClient:
    """The async client; for now it covers long-lived sandboxes (``.sandboxes``), what
    an agent harness drives from its event loop (the Inspect AI provider), and
    ``.environments``."""

    def __init__(
        self,
        server: str = DEFAULT_SERVER,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        api_key: str | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            transport=transport, **_http_options(server, timeout, api_key)
        )
        self.send = AsyncTransport(self.http)
        self.sandboxes = AsyncSandboxes(self.send)
        self.environments = AsyncEnvironments(self.send)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()
