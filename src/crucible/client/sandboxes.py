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

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx

from crucible.client.errors import check
from crucible.client.events import ServerEvent
from crucible.domain.models import ExecList, ExecPublic, SandboxList, SandboxPublic

# The HTTP wait of an exec beyond its own timeout (queueing in the server, the kill).
EXEC_MARGIN_S = 30.0
# An exec whose answer was lost is sent again (same Idempotency-Key) after these waits.
EXEC_RETRIES_S = (0.5, 1.0, 2.0)
RETRY_STATUS = frozenset({502, 503, 504})


def _retry_exec(attempt: int, response: httpx.Response | None) -> float | None:
    """How long to wait before sending an exec again, or None: give up (its answer
    stands). Only a lost answer is retried, never the command's own failure."""
    if attempt >= len(EXEC_RETRIES_S):
        return None
    if response is not None and response.status_code not in RETRY_STATUS:
        return None
    return EXEC_RETRIES_S[attempt]


def _create_body(
    runtime: str | None,
    limits: dict[str, Any] | None,
    ttl_s: float | None,
    idle_timeout_s: float | None,
    labels: dict[str, str] | None,
    environment: str | None = None,
    network: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body = {
        "runtime": runtime,
        "environment": environment,
        "network": network,
        "limits": limits,
        "ttl_s": ttl_s,
        "idle_timeout_s": idle_timeout_s,
        "labels": labels,
    }
    return {k: v for k, v in body.items() if v is not None}


def exec_request(
    cmd: list[str] | str,
    input: str | bytes | None,
    cwd: str | None,
    env: dict[str, str] | None,
    user: str | None,
    timeout_s: float | None,
    detach: bool = False,
) -> tuple[dict[str, Any], float | None]:
    """The body of POST …/exec, and how long to wait for its answer (None: no bound
    here; the server bounds every exec by its ceiling)."""
    argv = ["bash", "-lc", cmd] if isinstance(cmd, str) else list(cmd)
    body: dict[str, Any] = {"cmd": argv}
    if isinstance(input, bytes):
        body["input_base64"] = base64.b64encode(input).decode("ascii")
    elif input is not None:
        body["input"] = input
    for name, value in (("cwd", cwd), ("env", env), ("user", user), ("timeout_s", timeout_s)):
        if value is not None:
            body[name] = value
    if detach:
        body["detach"] = True
    return body, (timeout_s + EXEC_MARGIN_S) if timeout_s is not None else None


def _list_params(status: str | None, cursor: str | None, limit: int) -> dict[str, Any]:
    given = {"status": status, "cursor": cursor, "limit": limit}
    return {k: v for k, v in given.items() if v}


def _bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


class RemoteSandbox:
    """One sandbox on the server; a context manager that deletes it on exit."""

    def __init__(self, http: httpx.Client, record: SandboxPublic, sse: Any = None) -> None:
        self.http = http
        self.id = record.id
        self.record = record
        self._sse = sse

    def __enter__(self) -> RemoteSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> SandboxPublic:
        self.record = SandboxPublic.model_validate(
            check(self.http.get(f"/sandboxes/{self.id}")).json()
        )
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
        body, wait = exec_request(cmd, input, cwd, env, user, timeout_s, detach)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        attempt = 0
        while True:
            try:
                r = self.http.post(
                    f"/sandboxes/{self.id}/exec", json=body, timeout=wait, headers=headers
                )
            except httpx.TransportError:
                if (delay := _retry_exec(attempt, None)) is None:
                    raise
            else:
                if (delay := _retry_exec(attempt, r)) is None:
                    return ExecPublic.model_validate(check(r).json())
            time.sleep(delay)
            attempt += 1

    def write_file(self, path: str, data: bytes | str) -> None:
        r = self.http.put(f"/sandboxes/{self.id}/file", params={"path": path}, content=_bytes(data))
        check(r, path=path)

    def read_file(self, path: str) -> bytes:
        r = self.http.get(f"/sandboxes/{self.id}/file", params={"path": path})
        return check(r, path=path).content

    def execs(self, *, cursor: str | None = None, limit: int = 100) -> ExecList:
        """One page of the transcript, oldest first."""
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = self.http.get(f"/sandboxes/{self.id}/execs", params=params)
        return ExecList.model_validate(check(r).json())

    def events(self, last_event_id: int | None = None) -> Iterator[ServerEvent]:
        """``exec_started``, ``output``, ``exec_finished`` … then ``stopped``."""
        if self._sse is None:
            raise RuntimeError("this sandbox was not opened through a Client")
        events: Iterator[ServerEvent] = self._sse(
            f"/sandboxes/{self.id}/events", last_event_id, {"stopped"}
        )
        return events

    def close(self) -> None:
        """Delete the sandbox (idempotent: a stopped one stays as it is)."""
        check(self.http.delete(f"/sandboxes/{self.id}"))


class Sandboxes:
    """``Client.sandboxes``: create, open, list."""

    def __init__(self, http: httpx.Client, sse: Any = None) -> None:
        self.http = http
        self._sse = sse

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
        body = _create_body(runtime, limits, ttl_s, idle_timeout_s, labels, environment, network)
        record = SandboxPublic.model_validate(check(self.http.post("/sandboxes", json=body)).json())
        return RemoteSandbox(self.http, record, self._sse)

    def get(self, sandbox_id: str) -> RemoteSandbox:
        """An existing sandbox by id (NotFound: ApiError 404)."""
        record = SandboxPublic.model_validate(
            check(self.http.get(f"/sandboxes/{sandbox_id}")).json()
        )
        return RemoteSandbox(self.http, record, self._sse)

    def list(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> SandboxList:
        params = {
            k: v for k, v in {"status": status, "cursor": cursor, "limit": limit}.items() if v
        }
        return SandboxList.model_validate(check(self.http.get("/sandboxes", params=params)).json())


class AsyncRemoteSandbox:
    """:class:`RemoteSandbox` with async methods; ``async with`` deletes it on exit."""

    def __init__(self, http: httpx.AsyncClient, record: SandboxPublic) -> None:
        self.http = http
        self.id = record.id
        self.record = record

    async def __aenter__(self) -> AsyncRemoteSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def refresh(self) -> SandboxPublic:
        r = await self.http.get(f"/sandboxes/{self.id}")
        self.record = SandboxPublic.model_validate(check(r).json())
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
        body, wait = exec_request(cmd, input, cwd, env, user, timeout_s, detach)
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        attempt = 0
        while True:
            try:
                r = await self.http.post(
                    f"/sandboxes/{self.id}/exec", json=body, timeout=wait, headers=headers
                )
            except httpx.TransportError:
                if (delay := _retry_exec(attempt, None)) is None:
                    raise
            else:
                if (delay := _retry_exec(attempt, r)) is None:
                    return ExecPublic.model_validate(check(r).json())
            await asyncio.sleep(delay)
            attempt += 1

    async def write_file(self, path: str, data: bytes | str) -> None:
        r = await self.http.put(
            f"/sandboxes/{self.id}/file", params={"path": path}, content=_bytes(data)
        )
        check(r, path=path)

    async def read_file(self, path: str) -> bytes:
        r = await self.http.get(f"/sandboxes/{self.id}/file", params={"path": path})
        return check(r, path=path).content

    async def execs(self, *, cursor: str | None = None, limit: int = 100) -> ExecList:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await self.http.get(f"/sandboxes/{self.id}/execs", params=params)
        return ExecList.model_validate(check(r).json())

    async def close(self) -> None:
        check(await self.http.delete(f"/sandboxes/{self.id}"))


class AsyncSandboxes:
    """``AsyncClient.sandboxes``."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

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
        body = _create_body(runtime, limits, ttl_s, idle_timeout_s, labels, environment, network)
        r = await self.http.post("/sandboxes", json=body)
        return AsyncRemoteSandbox(self.http, SandboxPublic.model_validate(check(r).json()))

    async def get(self, sandbox_id: str) -> AsyncRemoteSandbox:
        r = await self.http.get(f"/sandboxes/{sandbox_id}")
        return AsyncRemoteSandbox(self.http, SandboxPublic.model_validate(check(r).json()))

    async def list(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> SandboxList:
        params = {
            k: v for k, v in {"status": status, "cursor": cursor, "limit": limit}.items() if v
        }
        r = await self.http.get("/sandboxes", params=params)
        return SandboxList.model_validate(check(r).json())
