"""The cluster endpoint of a sandbox host: the internal HTTP API through which API
instances create, exec in, read and write, and delete the agent sandboxes this
``crucible worker --sandboxes N`` hosts (the caller: ``services/host_client.py``).

It is not the public API. It accepts one credential, ``Authorization: Bearer
$CRUCIBLE_CLUSTER_TOKEN``, compared in constant time; an API key means nothing here.
The API instance has already checked the caller's key, its access to the sandbox and
its ceilings; this side trusts the token and runs the local
:class:`~crucible.services.sandboxes.SandboxService` with no principal. That service
writes the transcript rows and the bus events itself, so an API instance that dies in
the middle of an exec loses nothing of it. Platform errors cross as
``{"kind", "detail", ...}`` (``host_client.error_body``), turned back into the same
exception by the API instance, which maps them to HTTP in its one table.

Served by uvicorn on the worker runtime's own loop (:class:`HostServer`), beside the
claim loop and the heartbeat: one process, one identity, one heartbeat row.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse

from crucible.core.errors import CrucibleError, SandboxUnavailable
from crucible.domain.models import ExecCreate, ExecPublic, SandboxPublic
from crucible.services.host_client import PREFIX, error_body
from crucible.services.sandbox_records import HostedCreate
from crucible.services.sandboxes import SandboxService

log = logging.getLogger(__name__)


def parse_listen(listen: str) -> tuple[str, int]:
    """``ADDR:PORT`` → (addr, port); ValueError when it is not that."""
    addr, sep, port = listen.rpartition(":")
    if not sep or not addr or not port.isdigit():
        raise ValueError(f"--listen {listen!r}: expected ADDR:PORT, e.g. 10.0.0.5:8600")
    return addr.strip("[]"), int(port)


def host_app(service: SandboxService, token: str) -> FastAPI:
    """The endpoint's app over ``service``; every route needs ``token``."""
    expected = f"Bearer {token}".encode()

    # async: a plain def dependency would run in a worker thread, a thread hop (and a
    # wait for the GIL beside the worker's Celery thread) on every forwarded call.
    async def cluster_token(authorization: Annotated[str | None, Header()] = None) -> None:
        given = (authorization or "").encode()
        if not hmac.compare_digest(given, expected):
            raise _Refused()

    app = FastAPI(
        title="Crucible sandbox host (internal)",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(cluster_token)],
    )

    @app.exception_handler(_Refused)
    async def _refused(_request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"detail": "the cluster endpoint accepts only CRUCIBLE_CLUSTER_TOKEN"},
            status_code=401,
        )

    @app.exception_handler(CrucibleError)
    async def _crucible(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, CrucibleError)
        return JSONResponse(error_body(exc), status_code=422)

    @app.get(f"{PREFIX}/healthz")
    async def healthz() -> dict[str, Any]:
        return {"owner": service.owner.id, "capacity": service.capacity}

    @app.post(f"{PREFIX}/sandboxes", status_code=status.HTTP_201_CREATED)
    async def create(req: HostedCreate) -> SandboxPublic:
        return await service.host(req)

    @app.get(f"{PREFIX}/sandboxes/{{sandbox_id}}")
    async def get(sandbox_id: str) -> SandboxPublic:
        return await service.get(sandbox_id)

    @app.delete(f"{PREFIX}/sandboxes/{{sandbox_id}}", status_code=204, response_class=Response)
    async def delete(sandbox_id: str) -> None:
        await service.delete(sandbox_id)

    @app.post(f"{PREFIX}/sandboxes/{{sandbox_id}}/exec")
    async def exec_(
        sandbox_id: str,
        body: ExecCreate,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> ExecPublic:
        return await service.exec(sandbox_id, body, idempotency_key=idempotency_key)

    @app.put(f"{PREFIX}/sandboxes/{{sandbox_id}}/file", status_code=204, response_class=Response)
    async def write_file(sandbox_id: str, path: Annotated[str, Query()], request: Request) -> None:
        await service.write_file(sandbox_id, path, await request.body())

    @app.get(f"{PREFIX}/sandboxes/{{sandbox_id}}/file")
    async def read_file(sandbox_id: str, path: Annotated[str, Query()]) -> Response:
        data = await service.read_file(sandbox_id, path)
        return Response(data, media_type="application/octet-stream")

    return app


class _Refused(Exception):
    """No cluster token, or not the right one."""


class HostServer:
    """uvicorn serving :func:`host_app` as a task of the running loop."""

    def __init__(self, service: SandboxService, *, token: str, listen: str) -> None:
        self.addr, self.wanted_port = parse_listen(listen)
        config = uvicorn.Config(
            host_app(service, token),
            host=self.addr,
            port=self.wanted_port,
            loop="none",  # the worker runtime's loop, already running
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None
        self.port = self.wanted_port

    async def start(self) -> None:
        """Listen; SandboxUnavailable when the address cannot be bound. The socket is
        bound here, not by uvicorn, whose bind failure is a ``sys.exit`` that would
        end the worker's loop."""
        family = socket.AF_INET6 if ":" in self.addr else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto is
        # IPPROTO_TCP (base_events._set_nodelay), and an accepted socket takes the
        # listener's. Without it uvicorn's two writes of an answer (headers, body) meet
        # Nagle and the caller's delayed ACK: +40 ms to every forwarded call.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited too
            sock.bind((self.addr, self.wanted_port))
        except OSError as exc:
            sock.close()
            raise SandboxUnavailable(
                f"the cluster endpoint cannot listen on {self.addr}:{self.wanted_port}: {exc}"
            ) from None
        sock.set_inheritable(True)
        self.port = sock.getsockname()[1]  # --listen ADDR:0 asks the kernel for one
        self._task = asyncio.create_task(
            self.server.serve(sockets=[sock]), name="crucible-host-endpoint"
        )
        while not self.server.started:
            if self._task.done():
                raise SandboxUnavailable("the cluster endpoint stopped while starting")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._task
            self._task = None
