"""An in-memory stand-in for the long-lived sandbox engine (``crucible.engine.session``),
for unit and API tests of everything above it while the real engine is built.

Nothing here runs on the host: commands are *interpreted* by a few lines of Python
over an in-memory file system. It understands ``echo [-n]``, ``cat [FILE…]``,
``printf TEXT``, ``pwd``, ``whoami``, ``true``, ``false``, ``sleep N``, ``exit N``, and
``sh``/``bash`` ``-c``/``-lc SCRIPT`` where SCRIPT is such commands joined by ``;`` or
``&&``; anything else exits 127 like a shell. It keeps the engine's contract: output
capped per stream keeping the tail, ``on_output`` called as output is produced, a
timeout kills the exec (``timed_out``, 137) but not the sandbox, an unknown user gives
a failed result, file errors are the ``crucible.core.errors`` ones, and a closed sandbox
raises ``SandboxStopped``. Integration tests against the real engine replace it.
"""

from __future__ import annotations

import asyncio
import posixpath
import shlex
import time

from crucible.core.errors import (
    SandboxFileNotFound,
    SandboxFileTooLarge,
    SandboxIsADirectory,
    SandboxPermissionDenied,
    SandboxStopped,
    SandboxUnavailable,
)
from crucible.engine.accounting import Usage
from crucible.engine.caps import MAX_EXEC_OUTPUT, MAX_FILE_BYTES
from crucible.engine.models import ExecResult, SessionSpec
from crucible.engine.output import OutputCallback

USERS = {"root", "agent", "nobody"}
READ_ONLY = ("/etc", "/usr", "/proc")  # writes there are refused, as for a non-root user
CHUNK = 4096


class _Exit(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


class FakeSession:
    def __init__(self, session_id: str, spec: SessionSpec) -> None:
        self.id = session_id
        self.spec = spec
        self.files: dict[str, bytes] = {"/etc/hostname": b"sandbox\n"}
        self.dirs = {"/", "/etc", "/tmp", "/usr", "/workspace", "/proc"}
        self.closed = asyncio.Event()
        self.crashed = False
        self.execs: list[list[str]] = []
        self.detached: list[list[str]] = []  # what was started as a service
        self.cpu_ns = 0

    @property
    def alive(self) -> bool:
        return not self.closed.is_set() and not self.crashed

    close_delay_s = 0.0

    def crash(self) -> None:
        """Make the sandbox's init die (for tests of crash handling)."""
        self.crashed = True

    def _check(self) -> None:
        if not self.alive:
            raise SandboxStopped(f"sandbox {self.id} is not running")

    def _abs(self, path: str, cwd: str = "/workspace") -> str:
        return posixpath.normpath(posixpath.join(cwd, path))

    async def exec(
        self,
        cmd: list[str],
        *,
        input: bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        output_cap: int = MAX_EXEC_OUTPUT,
        detach: bool = False,
    ) -> ExecResult:
        self._check()
        if detach:
            self.detached.append(list(cmd))
        self.execs.append(list(cmd))
        started = time.monotonic()
        out, err = bytearray(), bytearray()
        cwd = self._abs(cwd or "/workspace")
        code, timed_out = 0, False
        if user is not None and user not in USERS:
            err += f"unknown user {user!r}\n".encode()
            code = 1
        else:
            try:
                async with asyncio.timeout(timeout_s):
                    code = await self._run(cmd, input or b"", cwd, user or "root", out, err)
            except TimeoutError:
                code, timed_out = 137, True
        self._check()  # closed while it ran: no result
        self.cpu_ns += 1_000_000
        results = {}
        for name, data in (("stdout", bytes(out)), ("stderr", bytes(err))):
            for i in range(0, len(data), CHUNK):
                if on_output is not None:
                    on_output(name, data[i : i + CHUNK])
            results[name] = (data[-output_cap:], len(data) > output_cap)
        return ExecResult(
            returncode=code,
            stdout=results["stdout"][0],
            stderr=results["stderr"][0],
            stdout_truncated=results["stdout"][1],
            stderr_truncated=results["stderr"][1],
            timed_out=timed_out,
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    async def _run(
        self, argv: list[str], stdin: bytes, cwd: str, user: str, out: bytearray, err: bytearray
    ) -> int:
        if argv[:1] in (["sh"], ["bash"]) and len(argv) >= 3 and argv[1] in ("-c", "-lc"):
            code = 0
            try:
                for part in argv[2].replace("&&", ";").split(";"):
                    words = shlex.split(part)
                    if words:
                        code = await self._command(words, stdin, cwd, user, out, err)
            except _Exit as exc:
                return exc.code
            return code
        try:
            return await self._command(argv, stdin, cwd, user, out, err)
        except _Exit as exc:
            return exc.code

    async def _command(
        self, argv: list[str], stdin: bytes, cwd: str, user: str, out: bytearray, err: bytearray
    ) -> int:
        name, args = argv[0], argv[1:]
        if name == "echo":
            newline = args[:1] != ["-n"]
            out += (" ".join(args[0 if newline else 1 :]) + ("\n" if newline else "")).encode()
        elif name == "printf":
            out += " ".join(args).encode().decode("unicode_escape").encode("latin-1")
        elif name == "cat":
            if not args:
                out += stdin
            for path in args:
                data = self.files.get(self._abs(path, cwd))
                if data is None:
                    err += f"cat: {path}: No such file or directory\n".encode()
                    return 1
                out += data
        elif name == "pwd":
            out += f"{cwd}\n".encode()
        elif name == "whoami":
            out += f"{user}\n".encode()
        elif name in ("true", "false"):
            return 0 if name == "true" else 1
        elif name == "exit":
            raise _Exit(int(args[0]) if args else 0)
        elif name == "sleep":  # until the time passes, or the sandbox is closed
            waiter = asyncio.ensure_future(self.closed.wait())
            try:
                await asyncio.wait({waiter}, timeout=float(args[0]) if args else 0)
            finally:
                waiter.cancel()
        else:
            err += f"sh: 1: {name}: not found\n".encode()
            return 127
        return 0

    async def write_file(self, path: str, data: bytes) -> None:
        self._check()
        full = self._abs(path)
        if full in self.dirs:
            raise SandboxIsADirectory(path)
        if full.startswith(READ_ONLY):
            raise SandboxPermissionDenied(path)
        if len(data) > MAX_FILE_BYTES:
            raise SandboxFileTooLarge(path)
        parent = posixpath.dirname(full)
        while parent not in self.dirs:
            self.dirs.add(parent)
            parent = posixpath.dirname(parent)
        self.files[full] = bytes(data)

    async def read_file(self, path: str, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        self._check()
        full = self._abs(path)
        if full in self.dirs:
            raise SandboxIsADirectory(path)
        if full.startswith("/proc"):
            raise SandboxPermissionDenied(path)
        if full not in self.files:
            raise SandboxFileNotFound(path)
        data = self.files[full]
        if len(data) > max_bytes:
            raise SandboxFileTooLarge(path)
        return data

    def usage(self) -> Usage:
        return Usage(cpu_ns=self.cpu_ns, peak_memory_bytes=8 << 20)

    async def close(self) -> Usage:
        self.closed.set()  # dead at once, as a real sandbox's init is when killed
        await asyncio.sleep(self.close_delay_s)  # while its tear-down takes a moment
        return self.usage()


class FakeSessions:
    """The engine's manager: creates and tracks :class:`FakeSession` objects."""

    def __init__(
        self,
        *,
        fail_create: bool = False,
        leftovers: list[str] | None = None,
        create_delay_s: float = 0.0,
    ) -> None:
        self.sessions: dict[str, FakeSession] = {}
        self.fail_create = fail_create
        self.close_delay_s = 0.0  # given to every session it makes
        self.create_delay_s = create_delay_s  # a real engine takes tens of ms
        self.leftovers = leftovers or []  # ids "left by a dead process", for sweep()
        self.created: list[SessionSpec] = []

    async def create(self, spec: SessionSpec, *, session_id: str) -> FakeSession:
        if self.fail_create:
            raise SandboxUnavailable("the fake engine was told to fail")
        await asyncio.sleep(self.create_delay_s)
        self.created.append(spec)
        session = self.sessions[session_id] = FakeSession(session_id, spec)
        session.close_delay_s = self.close_delay_s
        return session

    def get(self, session_id: str) -> FakeSession | None:
        session = self.sessions.get(session_id)
        return session if session is not None and not session.closed.is_set() else None

    def all(self) -> list[FakeSession]:
        return [s for s in self.sessions.values() if not s.closed.is_set()]

    async def sweep(self) -> list[str]:
        found, self.leftovers = self.leftovers, []
        return found

    async def close_all(self) -> None:
        for session in self.sessions.values():
            await session.close()
