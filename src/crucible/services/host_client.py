"""The cluster endpoint of sandbox hosts, from the API side: how an API instance calls
the ``crucible worker --sandboxes N`` hosting a sandbox (:mod:`crucible.dispatch.host`
serves it), and the wire form of the errors that cross it.

Every call carries ``Authorization: Bearer $CRUCIBLE_CLUSTER_TOKEN``; public API keys
mean nothing there. A host answers a platform failure as ``{"kind", "detail", ...}``
with ``kind`` the name of a ``crucible.core.errors`` class, which :func:`error_of`
raises again here, so the API instance maps it to HTTP exactly as if it had been
raised in its own process (``api/errors.py``, one table). A host that cannot be
reached (refused, reset, timed out) is :class:`HostUnreachable`: the caller decides
whether the sandbox is lost (the database says so once the host is declared dead) or
the request may be retried.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import httpx

from crucible.core import errors
from crucible.core.errors import CrucibleError, SandboxUnavailable
from crucible.domain.models import ExecCreate, ExecPublic, SandboxPublic
from crucible.services.sandbox_records import HostedCreate

PREFIX = "/cluster/v1"

# httpx logs every request at INFO ("HTTP Request: POST …"): on the forwarding path that
# is a formatted log line per exec, a measured share of the hop's CPU; failures are
# raised, and logged by whoever handles them.
logging.getLogger("httpx").setLevel(logging.WARNING)

KINDS: dict[str, type[CrucibleError]] = {
    name: kind
    for name, kind in vars(errors).items()
    if inspect.isclass(kind) and issubclass(kind, CrucibleError)
}


class HostUnreachable(SandboxUnavailable):
    """The sandbox's host did not answer (connection refused or reset, timed out)."""


def error_body(exc: CrucibleError) -> dict[str, Any]:
    """``exc`` as the host sends it."""
    return {
        "kind": type(exc).__name__,
        "detail": str(exc),
        "path": getattr(exc, "path", None),
        "field": getattr(exc, "field", None),
        "retry_after": getattr(exc, "retry_after", None),
    }


def error_of(body: dict[str, Any]) -> CrucibleError:
    """The exception a host's error body names (SandboxUnavailable when unknown)."""
    kind = KINDS.get(str(body.get("kind")), SandboxUnavailable)
    detail = str(body.get("detail", ""))
    if issubclass(kind, errors.SandboxFileError):
        return kind(str(body.get("path") or ""), detail)
    if issubclass(kind, errors.InvalidSubmission):
        return kind(detail, body.get("field"))
    if issubclass(kind, errors.Overloaded):
        return kind(detail, int(body.get("retry_after") or 0))
    if issubclass(kind, errors.RuntimeFailure):
        return SandboxUnavailable(detail)  # its parts are in the message
    return kind(detail)


class HostClient:
    """One pooled HTTP client per host endpoint, shared by an API instance's requests.

    ``timeout_s`` bounds every call but an exec, which waits for the command (its own
    timeout plus a margin for the kill)."""

    def __init__(self, token: str, *, timeout_s: float = 30.0) -> None:
        self._headers = {"Authorization": f"Bearer {token}"}
        self.timeout_s = timeout_s
        self._clients: dict[str, httpx.AsyncClient] = {}

    def _http(self, endpoint: str) -> httpx.AsyncClient:
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = httpx.AsyncClient(
                base_url=endpoint.rstrip("/") + PREFIX,
                headers=self._headers,
                timeout=httpx.Timeout(self.timeout_s, connect=min(5.0, self.timeout_s)),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
        return client

    async def _call(
        self, endpoint: str, method: str, url: str, *, timeout: float | None = None, **kw: Any
    ) -> httpx.Response:
        try:
            extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
            r = await self._http(endpoint).request(method, url, **kw, **extra)
        except httpx.TransportError as exc:
            raise HostUnreachable(
                f"the sandbox host at {endpoint} is unreachable: {exc!r}"
            ) from exc
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {}
            if isinstance(body, dict) and "kind" in body:
                raise error_of(body)
            raise SandboxUnavailable(f"the sandbox host at {endpoint} answered {r.status_code}")
        return r

    async def create(self, endpoint: str, req: HostedCreate) -> SandboxPublic:
        r = await self._call(endpoint, "POST", "/sandboxes", json=req.model_dump(mode="json"))
        return SandboxPublic.model_validate(r.json())

    async def exec(
        self,
        endpoint: str,
        sandbox_id: str,
        body: ExecCreate,
        *,
        idempotency_key: str | None,
        wait_s: float,
    ) -> ExecPublic:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        r = await self._call(
            endpoint,
            "POST",
            f"/sandboxes/{sandbox_id}/exec",
            json=body.model_dump(mode="json", exclude_none=True),
            headers=headers,
            timeout=wait_s,
        )
        return ExecPublic.model_validate(r.json())

    async def write_file(self, endpoint: str, sandbox_id: str, path: str, data: bytes) -> None:
        await self._call(
            endpoint, "PUT", f"/sandboxes/{sandbox_id}/file", params={"path": path}, content=data
        )

    async def read_file(self, endpoint: str, sandbox_id: str, path: str) -> bytes:
        r = await self._call(
            endpoint, "GET", f"/sandboxes/{sandbox_id}/file", params={"path": path}
        )
        return r.content

    async def delete(self, endpoint: str, sandbox_id: str) -> None:
        await self._call(endpoint, "DELETE", f"/sandboxes/{sandbox_id}")

    async def get(self, endpoint: str, sandbox_id: str, *, timeout: float) -> SandboxPublic:
        r = await self._call(endpoint, "GET", f"/sandboxes/{sandbox_id}", timeout=timeout)
        return SandboxPublic.model_validate(r.json())

    async def close(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
