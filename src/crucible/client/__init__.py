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
from httpx_sse import connect_sse

from crucible.client.environments import AsyncEnvironments, Environments
from crucible.client.errors import ApiError, check
from crucible.client.events import ServerEvent
from crucible.client.sandboxes import AsyncSandboxes, Sandboxes
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


def _headers(api_key: str | None) -> dict[str, str]:
    api_key = api_key or os.environ.get("CRUCIBLE_API_KEY")
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


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
        self.http = httpx.Client(
            base_url=server.rstrip("/") + "/api/v1",
            timeout=timeout,
            transport=transport,
            headers=_headers(api_key),
        )
        self.sandboxes = Sandboxes(self.http, self._sse)
        self.environments = Environments(self.http)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def _json(self, response: httpx.Response) -> Any:
        return check(response).json()

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
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        params = {"wait": wait} if wait else {}
        timeout = (wait or 0) + self.http.timeout.read if self.http.timeout.read else None
        r = self.http.post(
            "/evaluations", json=body, headers=headers, params=params, timeout=timeout
        )
        return EvaluationPublic.model_validate(self._json(r))

    def get(self, evaluation_id: str) -> EvaluationPublic:
        return EvaluationPublic.model_validate(
            self._json(self.http.get(f"/evaluations/{evaluation_id}"))
        )

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
        params = {k: v for k, v in {**filters, "cursor": cursor, "limit": limit}.items() if v}
        return EvaluationList.model_validate(
            self._json(self.http.get("/evaluations", params=params))
        )

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
        return CancelPublic.model_validate(
            self._json(self.http.post(f"/evaluations/{evaluation_id}/cancel"))
        )

    def _sse(self, path: str, last_event_id: int | None, final: set[str]) -> Iterator[ServerEvent]:
        """Follow an event stream, reconnecting with Last-Event-ID after a drop."""
        failures = 0
        while True:
            headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
            try:
                with connect_sse(self.http, "GET", path, headers=headers, timeout=None) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        self._json(source.response)
                    for sse in source.iter_sse():
                        if not sse.data:
                            # A keep-alive comment after an event: httpx-sse hands it
                            # over as an event with the last id and no data.
                            continue
                        event = ServerEvent(int(sse.id or 0), sse.event, sse.json())
                        last_event_id = event.id
                        failures = 0
                        yield event
                        if event.type in final:
                            return
                raise httpx.RemoteProtocolError("event stream ended early")
            except httpx.TransportError:
                failures += 1
                if failures > 5:
                    raise
                time.sleep(min(0.2 * 2**failures, 5.0))

    def events(self, evaluation_id: str, last_event_id: int | None = None) -> Iterator[ServerEvent]:
        """``status``, ``stdout``, ``stderr`` events, then ``result`` (the final record)."""
        return self._sse(f"/evaluations/{evaluation_id}/events", last_event_id, {"result"})

    def logs(self, evaluation_id: str, stream: str = "stdout") -> str:
        r = self.http.get(f"/evaluations/{evaluation_id}/output/{stream}")
        if r.status_code >= 400:
            self._json(r)
        return r.text

    def file(self, evaluation_id: str, path: str) -> bytes:
        r = self.http.get(f"/evaluations/{evaluation_id}/files/{path}")
        if r.status_code >= 400:
            self._json(r)
        return r.content

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
        body: dict[str, Any] = {"items": items}
        if environment is not None:
            defaults = {**(defaults or {}), "environment": environment}
        if defaults:
            body["defaults"] = defaults
        if labels:
            body["labels"] = labels
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        r = self.http.post(
            "/batches", json=body, headers=headers, timeout=max(60.0, len(items) / 50)
        )
        return BatchCreated.model_validate(self._json(r))

    def get_batch(self, batch_id: str) -> BatchPublic:
        return BatchPublic.model_validate(self._json(self.http.get(f"/batches/{batch_id}")))

    def batch_events(self, batch_id: str) -> Iterator[BatchPublic]:
        """The batch record each time more of it has finished; ends when all have."""
        for event in self._sse(f"/batches/{batch_id}/events", None, {"done"}):
            yield BatchPublic.model_validate(event.data)

    def cancel_batch(self, batch_id: str) -> BatchPublic:
        return BatchPublic.model_validate(self._json(self.http.post(f"/batches/{batch_id}/cancel")))

    def queue(self) -> QueuePublic:
        return QueuePublic.model_validate(self._json(self.http.get("/queue")))


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
            base_url=server.rstrip("/") + "/api/v1",
            timeout=timeout,
            transport=transport,
            headers=_headers(api_key),
        )
        self.sandboxes = AsyncSandboxes(self.http)
        self.environments = AsyncEnvironments(self.http)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.http.aclose()
