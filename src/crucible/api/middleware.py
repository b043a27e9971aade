"""HTTP hardening and bookkeeping around every request, as one pure ASGI middleware.

* ``X-Request-ID``: accepted when it looks like an id (≤ 64 of ``[A-Za-z0-9._-]``),
  else generated; echoed on the response and set for the request's log lines.
* Security headers on every response: a strict Content-Security-Policy (scripts only
  from this origin; styles also inline, because the code editor injects ``<style>``),
  ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: no-referrer``. The API docs page gets a CSP that lets it load
  Swagger UI from its CDN.
* A request body limit: 413 when Content-Length or the bytes actually sent pass
  ``max_body_bytes`` (or, for the few routes in ``uploads``, their own limit: a file
  written into a long-lived sandbox may be 100 MiB).
* The audit trail: every state-changing request (POST, PUT, PATCH, DELETE) under
  /api/v1 is appended to the hash-chained audit log once answered, whatever the
  outcome — refused ones included.
* Metrics: request latency by route template.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crucible.core import logs
from crucible.services import metrics
from crucible.store.audit import AuditEvent, AuditLog

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def _route_label(path: str, template: str | None) -> str:
    """The route template (bounded label values), with the API prefix the nested
    router's template may leave out; ``other`` for unmatched paths."""
    if not template:
        return "other"
    if path.startswith(API_PREFIX) and not template.startswith(API_PREFIX):
        return API_PREFIX + template
    return template


def _headers(docs: bool) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", (DOCS_CSP if docs else CSP).encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
    ]


class Guard:
    """See the module docstring. Audit entries go to the running service's log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        docs_path: str,
        uploads: tuple[tuple[str, str, int], ...] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.docs_path = docs_path
        # (method, path regex, limit): routes whose bodies may be larger.
        self.uploads = [(m, re.compile(p), n) for m, p, n in uploads]

    def _limit(self, method: str, path: str) -> int:
        for m, pattern, n in self.uploads:
            if m == method and pattern.fullmatch(path):
                return max(n, self.max_body_bytes)
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _ID.match(given) else uuid.uuid4().hex
        token = logs.request_id.set(rid)
        extra = [(b"x-request-id", rid.encode()), *_headers(scope["path"] == self.docs_path)]
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [
                    *[(k, v) for k, v in message.get("headers", []) if k not in dict(extra)],
                    *extra,
                ]
            await send(message)

        received = 0
        refused = False
        limit = self._limit(scope["method"], scope["path"])

        async def receive_wrapper() -> Message:
            # A body larger than declared (or chunked): answer 413 ourselves and tell
            # the app the client left, so it stops reading; its own answer is dropped.
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not response_started:
                    await self._too_large(send_wrapper, limit)
                    refused = True
                    return {"type": "http.disconnect"}
            return message

        async def app_send(message: Message) -> None:
            if not refused:
                await send_wrapper(message)

        try:
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                await self._too_large(send_wrapper, limit)
            else:
                try:
                    await self.app(scope, receive_wrapper, app_send)
                except Exception:
                    if not refused:
                        raise
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None)
            metrics.observe_request(
                scope["method"],
                _route_label(scope["path"], template),
                status,
                time.perf_counter() - started,
            )
            service = getattr(getattr(scope.get("app"), "state", None), "service", None)
            if service is not None and self._audited(scope):
                await self._record(service.access.audit, scope, status, rid)
            logs.request_id.reset(token)

    async def _too_large(self, send: Send, limit: int) -> None:
        detail = f"request body larger than {limit} bytes"
        body = json.dumps({"detail": detail, "error": "too_large"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _audited(scope: Scope) -> bool:
        return scope["method"] in STATE_CHANGING and scope["path"].startswith(API_PREFIX)

    @staticmethod
    async def _record(audit: AuditLog, scope: Scope, status: int, rid: str) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        who = state.get("principal")
        route = scope.get("route")
        params: dict[str, Any] = scope.get("path_params") or {}
        target = state.get("audit_target") or next(iter(params.values()), None)
        client = scope.get("client")
        event = AuditEvent(
            action=getattr(route, "name", None) or f"{scope['method']} {scope['path']}"[:64],
            outcome=status,
            actor_key_id=getattr(who, "id", None),
            actor_name=getattr(who, "name", None),
            target=str(target) if target is not None else None,
            source=client[0] if client else None,
            request_id=rid,
            detail={"method": scope["method"], "path": scope["path"][:300]},
        )
        try:
            await asyncio.to_thread(audit.append, event)
        except Exception:  # the response is sent; a lost entry must be loud, not fatal
            log.exception("could not append to the audit log: %s", event)
