"""Long-lived sandboxes from Python: ``Client.sandboxes`` and ``AsyncClient.sandboxes``.

    with Client(server) as c, c.sandboxes.create(limits={"memory_mb": 512}) as sb:
        sb.write_file("task.py", "print(6 * 7)")
        r = sb.exec(["python3", "task.py"])          # or a string: bash -lc STRING
        print(r.returncode, r.stdout)                  # r.stdout_bytes: the exact bytes
        data = sb.read_file("out.bin")                 # bytes
    # leaving the block deletes the sandbox (its transcript stays on the server)

    async with AsyncClient(server) as c:
        sb = await c.sandboxes.create(ttl_s=600)
        async with sb:
            r = await sb.exec(["echo", "hi"])

File operations raise ``crucible.core.errors.SandboxFileNotFound``, ``…PermissionDenied``,
``…IsADirectory``, ``…FileTooLarge``; a stopped sandbox ``SandboxStopped``, one lost with
its host ``SandboxLost`` (a SandboxStopped); other refusals
:class:`crucible.client.errors.ApiError`.

Every exec carries an ``Idempotency-Key`` (a new one per call, or the caller's), and is
retried with the same key when the answer is lost (the connection broke, or the API
instance answered 502/503/504): the server runs the command at most once and answers
the retry with the first run's result.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from crucible.client.events import ServerEvent
from crucible.client.transport import (
    AsyncTransport,
    Call,
    SyncTransport,
    content,
    model,
    nothing,
)
from crucible.domain.execs import ExecRequest
from crucible.domain.models import ExecList, ExecPublic, SandboxList, SandboxPublic

# The HTTP wait of an exec beyond its own timeout (queueing in the server, the kill).
EXEC_MARGIN_S = 30.0


# -- the calls: each route once ---------------------------------------------------


def create_call(
    runtime: str | None = None,
    limits: dict[str, Any] | None = None,
    ttl_s: float | None = None,
    idle_timeout_s: float | None = None,
    labels: dict[str, str] | None = None,
    environment: str | None = None,
    network: dict[str, Any] | None = None,
) -> Call[SandboxPublic]:
    body = {
        "runtime": runtime,
        "environment": environment,
        "network": network,
        "limits": limits,
        "ttl_s": ttl_s,
        "idle_timeout_s": idle_timeout_s,
        "labels": labels,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return Call("POST", "/sandboxes", model(SandboxPublic), json=body)


def get_call(sandbox_id: str) -> Call[SandboxPublic]:
    return Call("GET", f"/sandboxes/{sandbox_id}", model(SandboxPublic))


def list_call(status: str | None, cursor: str | None, limit: int) -> Call[SandboxList]:
    given = {"status": status, "cursor": cursor, "limit": limit}
    params = {k: v for k, v in given.items() if v}
    return Call("GET", "/sandboxes", model(SandboxList), params=params)


def _argv(cmd: list[str] | str) -> list[str]:
    """A string runs as ``bash -lc STRING``; a list as it is."""
    return ["bash", "-lc", cmd] if isinstance(cmd, str) else list(cmd)


def exec_call(
    sandbox_id: str, request: ExecRequest, idempotency_key: str | None = None
) -> Call[ExecPublic]:
    """POST …/exec: waits ``request.timeout_s`` and a margin for its answer (no bound
    here without one; the server bounds every exec by its ceiling), retried when that
    is lost under the same Idempotency-Key (default: a new one), so it runs at most
    once."""
    timeout_s = request.timeout_s
    return Call(
        "POST",
        f"/sandboxes/{sandbox_id}/exec",
        model(ExecPublic),
        json=request.body(),
        headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex},
        timeout=(timeout_s + EXEC_MARGIN_S) if timeout_s is not None else None,
        retried=True,
    )


def write_file_call(sandbox_id: str, path: str, data: bytes | str) -> Call[None]:
    body = data.encode("utf-8") if isinstance(data, str) else data
    return Call(
        "PUT", f"/sandboxes/{sandbox_id}/file", nothing, params={"path": path}, content=body,
        file=path,
    )  # fmt: skip


def read_file_call(sandbox_id: str, path: str) -> Call[bytes]:
    return Call("GET", f"/sandboxes/{sandbox_id}/file", content, params={"path": path}, file=path)


def execs_call(sandbox_id: str, cursor: str | None, limit: int) -> Call[ExecList]:
    params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
    return Call("GET", f"/sandboxes/{sandbox_id}/execs", model(ExecList), params=params)


def delete_call(sandbox_id: str) -> Call[None]:
    return Call("DELETE", f"/sandboxes/{sandbox_id}", nothing)


# -- the sync and async faces -----------------------------------------------------


class RemoteSandbox:
    """One sandbox on the server; a context manager that deletes it on exit."""

    def __init__(self, send: SyncTransport, record: SandboxPublic) -> None:
        self.send = send
        self.http: httpx.Client = send.http
        self.id = record.id
        self.record = record

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> SandboxPublic:
        self.record = self.send(get_call(self.id))
        return self.record

    def exec(
        self,
        cmd: list[str] | str,
        *,
        input: str | bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout_s: float | None = None,
        detach: bool = False,
        idempotency_key: str | None = None,
    ) -> ExecPublic:
        """Run ``cmd`` (an argv; a string runs as ``bash -lc STRING``) and wait for it.
        The command's own failure is in the result (``returncode``, ``timed_out``).
        ``detach``: start it as a service and return once it runs. A lost answer is
        retried under the same ``idempotency_key`` (default: a new one): the command
        runs at most once. SandboxLost when its host died."""
        request = ExecRequest(_argv(cmd), input, cwd, env, user, timeout_s, detach)
        return self.run(request, idempotency_key=idempotency_key)

    def run(self, request: ExecRequest, *, idempotency_key: str | None = None) -> ExecPublic:
        """:meth:`exec` of a request built already."""
        return self.send(exec_call(self.id, request, idempotency_key))

    def write_file(self, path: str, data: bytes | str) -> None:
        self.send(write_file_call(self.id, path, data))

    def read_file(self, path: str) -> bytes:
        return self.send(read_file_call(self.id, path))

    def execs(self, *, cursor: str | None = None, limit: int = 100) -> ExecList:
        """One page of the transcript, oldest first."""
        return self.send(execs_call(self.id, cursor, limit))

    def events(self, last_event_id: int | None = None) -> Iterator[ServerEvent]:
        """``exec_started``, ``output``, ``exec_finished`` … then ``stopped``."""
        return self.send.events(f"/sandboxes/{self.id}/events", last_event_id, {"stopped"})

    def close(self) -> None:
        """Delete the sandbox (idempotent: a stopped one stays as it is)."""
        self.send(delete_call(self.id))


class Sandboxes:
    """``Client.sandboxes``: create, open, list."""

    def __init__(self, send: SyncTransport) -> None:
        self.send = send

    def create(
        self,
        *,
        runtime: str | None = None,
        limits: dict[str, Any] | None = None,
        ttl_s: float | None = None,
        idle_timeout_s: float | None = None,
        labels: dict[str, str] | None = None,
        environment: str | None = None,
        network: dict[str, Any] | None = None,
    ) -> RemoteSandbox:
        """A new running sandbox (unset fields: the server's defaults; ``environment``
        the root under its writable layer, default the server's
        CRUCIBLE_DEFAULT_ENVIRONMENT, else host; ``network`` a place on a
        private network, ``{"group", "hostname", "members"}``)."""
        call = create_call(runtime, limits, ttl_s, idle_timeout_s, labels, environment, network)
        return RemoteSandbox(self.send, self.send(call))

    def get(self, sandbox_id: str) -> RemoteSandbox:
        """An existing sandbox by id (NotFound: ApiError 404)."""
        return RemoteSandbox(self.send, self.send(get_call(sandbox_id)))

    def list(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> SandboxList:
        return self.send(list_call(status, cursor, limit))


class AsyncRemoteSandbox:
    """:class:`RemoteSandbox` with async methods; ``async with`` deletes it on exit."""

    def __init__(self, send: AsyncTransport, record: SandboxPublic) -> None:
        self.send = send
        self.http: httpx.AsyncClient = send.http
        self.id = record.id
        self.record = record

    async def __aenter__(self) -> AsyncRemoteSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def refresh(self) -> SandboxPublic:
        self.record = await self.send(get_call(self.id))
        return self.record

    async def exec(
        self,
        cmd: list[str] | str,
        *,
        input: str | bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout_s: float | None = None,
        detach: bool = False,
        idempotency_key: str | None = None,
    ) -> ExecPublic:
        """:meth:`RemoteSandbox.exec`, awaited (the same key and retries)."""
        request = ExecRequest(_argv(cmd), input, cwd, env, user, timeout_s, detach)
        return await self.run(request, idempotency_key=idempotency_key)

    async def run(self, request: ExecRequest, *, idempotency_key: str | None = None) -> ExecPublic:
        """:meth:`exec` of a request built already."""
        return await self.send(exec_call(self.id, request, idempotency_key))

    async def write_file(self, path: str, data: bytes | str) -> None:
        await self.send(write_file_call(self.id, path, data))

    async def read_file(self, path: str) -> bytes:
        return await self.send(read_file_call(self.id, path))

    async def execs(self, *, cursor: str | None = None, limit: int = 100) -> ExecList:
        return await self.send(execs_call(self.id, cursor, limit))

    async def close(self) -> None:
        await self.send(delete_call(self.id))


class AsyncSandboxes:
    """``AsyncClient.sandboxes``."""

    def __init__(self, send: AsyncTransport) -> None:
        self.send = send

    async def create(
        self,
        *,
        runtime: str | None = None,
        limits: dict[str, Any] | None = None,
        ttl_s: float | None = None,
        idle_timeout_s: float | None = None,
        labels: dict[str, str] | None = None,
        environment: str | None = None,
        network: dict[str, Any] | None = None,
    ) -> AsyncRemoteSandbox:
        call = create_call(runtime, limits, ttl_s, idle_timeout_s, labels, environment, network)
        return AsyncRemoteSandbox(self.send, await self.send(call))

    async def get(self, sandbox_id: str) -> AsyncRemoteSandbox:
        return AsyncRemoteSandbox(self.send, await self.send(get_call(sandbox_id)))

    async def list(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> SandboxList:
        return await self.send(list_call(status, cursor, limit))
