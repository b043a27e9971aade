"""The engine's end of a sandbox's exec agent: the channel to its init (init.c's
``--session --agent``), requests framed out, replies parsed back.

The channel is one end of a ``socketpair``, the other end the container init's
stdin. It has no name anywhere and nothing inside the sandbox holds it but the
non-dumpable PID 1 (init.c says why the program cannot reach it). Per exec the engine
makes the three pipes as it does for the runtime's ``exec`` and sends the ends the
exec uses with the request (``SCM_RIGHTS``), so output is pumped exactly as before:
the agent only forks the same wrapper ``--exec`` runs, and reports its status.

Replies are fixed-size records, the only thing read from the sandbox here; they come
from our own init, which no program in the sandbox can impersonate on this socket.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crucible.core.errors import SandboxStopped

_REQUEST = struct.Struct("=IIQ")  # kind, payload length, exec id (init.c's struct request)
_REPLY = struct.Struct("=IiQqqqq")  # kind, code, id, wall, user, sys (µs), maxrss (KiB)
_EXEC, _SIGNAL = 1, 2
_EXITED, _STARTED = 1, 2


@dataclass(frozen=True)
class AgentExit:
    """How one exec's wrapper ended: ``code`` as a shell gives it (128+N: signal N)."""

    code: int
    wall_us: int
    cpu_us: int
    max_rss_kb: int


def exec_payload(user: str, cwd: str, flags: str, argv: list[str], env: dict[str, str]) -> bytes:
    """An AGENT_EXEC payload: NUL-terminated fields as init.c's start_exec reads them."""
    fields = [user, cwd, flags, str(len(argv)), *argv, str(len(env))]
    fields += [f"{k}={v}" for k, v in env.items()]
    return b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields)


def job_payload(
    *, nonce: str, tmpfs: str, jobdir: str, masked: list[str], readonly: list[str]
) -> bytes:
    """The payload of a reused one-shot sandbox's job (init.c's flag 'j', job_main): an
    exec's fields (its program comes later, on the job's stdin), then the job's own."""
    fields = [nonce, tmpfs, jobdir, str(len(masked)), *masked, str(len(readonly)), *readonly]
    rest = b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields)
    return exec_payload("", "/", "j", ["job"], {}) + rest


class Agent:
    """The channel of one sandbox. Use from the event loop it was made on; ``close``
    when the sandbox goes. Requests raise ``SandboxStopped`` once the init's end is
    closed (the init died); pending execs then fail the same way."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[AgentExit]] = {}
        self._starting: dict[int, asyncio.Future[None]] = {}  # jobs: until cloned
        self._send_lock = asyncio.Lock()  # one frame at a time on the stream
        self._buffer = bytearray()
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self._buffer += data
        while len(self._buffer) >= _REPLY.size:
            kind, code, exec_id, wall, user, sys_, rss = _REPLY.unpack_from(self._buffer)
            del self._buffer[: _REPLY.size]
            if kind == _STARTED:
                started = self._starting.pop(exec_id, None)
                if started is not None and not started.done():
                    started.set_result(None)
                continue
            future = self._pending.pop(exec_id, None)
            if kind == _EXITED and future is not None and not future.done():
                future.set_result(AgentExit(code, wall, user + sys_, rss))
            started = self._starting.pop(exec_id, None)
            if started is not None and not started.done():  # ended before it started
                started.set_exception(SandboxStopped("the job ended before it started"))
                started.exception()

    async def _send(self, frame: bytes, fds: list[int]) -> None:
        if self.closed:
            raise SandboxStopped("the sandbox's init is gone")
        async with self._send_lock:
            head, rest = frame[: _REQUEST.size], frame[_REQUEST.size :]
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            while True:  # the header carries the fds: all of it, in one sendmsg
                try:
                    sent = self._sock.sendmsg([head], rights)
                    break
                except (BlockingIOError, InterruptedError):
                    await self._writable()
                except OSError as exc:
                    self.close()
                    raise SandboxStopped("the sandbox's init is gone") from exc
            try:
                await self._loop.sock_sendall(self._sock, head[sent:] + rest)
            except OSError as exc:
                self.close()
                raise SandboxStopped("the sandbox's init is gone") from exc

    async def _writable(self) -> None:
        ready: asyncio.Future[None] = self._loop.create_future()
        fd = self._sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        self._loop.add_writer(fd, wake)
        try:
            await ready
        finally:
            self._loop.remove_writer(fd)

    async def start(self, payload: bytes, stdio: tuple[int, int, int]) -> AgentExec:
        """Send one exec (``exec_payload`` or ``job_payload``) with its stdin, stdout
        and stderr. The caller closes its copies of ``stdio`` afterwards: the agent
        has its own. A job's ``started`` resolves once its init is cloned."""
        exec_id = next(self._ids)
        future: asyncio.Future[AgentExit] = self._loop.create_future()
        started: asyncio.Future[None] = self._loop.create_future()
        self._pending[exec_id] = future
        self._starting[exec_id] = started
        try:
            await self._send(_REQUEST.pack(_EXEC, len(payload), exec_id) + payload, list(stdio))
        except BaseException:
            self._pending.pop(exec_id, None)
            self._starting.pop(exec_id, None)
            raise
        return AgentExec(self, exec_id, future, started)

    async def signal(self, exec_id: int, signum: signal.Signals) -> None:
        """SIGUSR1: the wrapper kills the exec's process tree; SIGKILL: the wrapper."""
        if exec_id in self._pending:
            payload = struct.pack("=i", signum)
            with contextlib.suppress(SandboxStopped):
                await self._send(_REQUEST.pack(_SIGNAL, len(payload), exec_id) + payload, [])

    def close(self) -> None:
        """Close the channel (idempotent); pending execs raise ``SandboxStopped``."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        futures: list[asyncio.Future[Any]] = [*self._pending.values(), *self._starting.values()]
        for future in futures:
            if not future.done():
                future.set_exception(SandboxStopped("the sandbox's init ended during the exec"))
                future.exception()  # retrieved: a caller may be gone
        self._pending.clear()
        self._starting.clear()


class AgentExec:
    """One exec started through the agent."""

    def __init__(
        self,
        agent: Agent,
        exec_id: int,
        future: asyncio.Future[AgentExit],
        started: asyncio.Future[None],
    ) -> None:
        self._agent = agent
        self.id = exec_id
        self._future = future
        self._started = started

    @property
    def exit(self) -> AgentExit | None:
        """How it ended, once it has (None before, or if the init ended first)."""
        f = self._future
        return f.result() if f.done() and not f.cancelled() and f.exception() is None else None

    @property
    def done(self) -> bool:
        return self._future.done()

    async def wait(self) -> AgentExit:
        """Until it ends. Raises ``SandboxStopped`` if the sandbox's init ended first."""
        return await asyncio.shield(self._future)

    async def started(self) -> None:
        """Until a job's init is cloned (only jobs are told: see ``start``).
        Raises ``SandboxStopped`` if it ended, or the sandbox's init did, first."""
        await asyncio.shield(self._started)

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once it has ended (or the sandbox's init has)."""
        self._future.add_done_callback(lambda _: callback())

    async def signal(self, signum: signal.Signals) -> None:
        await self._agent.signal(self.id, signum)


def socketpair() -> tuple[socket.socket, int]:
    """The engine's end and the init's (a raw fd, for the container's stdin)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours, theirs.detach()
