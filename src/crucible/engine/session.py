"""Long-lived sandboxes an agent drives step by step: exec, write_file, read_file.

A :class:`Session` is one container that stays up until closed, built on the same
lifecycle as one-shot runs (``container.py``: create → exec … → kill → account →
delete):

- **root file system**: a writable overlay over a Debian-looking base, its upper layer
  a tmpfs of ``disk_mb`` on the host (``overlay.py``); what one exec writes is there
  for the next;
- **identity**: root inside; under runc and crun a user namespace maps it to a host
  uid range of its own (``overlay.IdRange``), never host root; under gVisor it is the
  root of gVisor's kernel;
- **no network** and cgroup limits (memory, CPU, pids) for the whole sandbox.

**Exec mechanism**: init.c's exec wrapper (``run_wrapper``): it switches to the
requested user (from the sandbox's own /etc/passwd), changes directory, installs the
seccomp filter and runs the command as a child subreaper, so that a timeout (SIGUSR1)
stops and kills the exec's whole process tree and nothing else. Under runc and crun
the sandbox's PID 1 is the exec agent (``--session --agent``, agent.py): it forks the
wrapper for each request sent on a socket only the engine holds, with the exec's pipes
passed in, so an exec costs a fork instead of a Go process (the runtime's ``exec``:
runc about 20 ms, runsc about 100 ms; ``bench/sandboxes.py``). Under gVisor, or with
the agent turned off (``exec_agent``), the runtime's ``exec`` runs ``crucible-init
--exec``, the same wrapper. Both are one code path here (``_Running``): pipes, pumps,
caps, timeouts, tree kill and drains do not depend on the mechanism.

**Files** are read and written by the init's ``--read``/``--write`` modes run the same
way, inside the sandbox as its root: paths are resolved by the sandbox's kernel in the
sandbox's own root and mount namespace, so no symlink, ``..`` or swapped directory the
program planted can reach the host. (Host-side I/O on the overlay would also be wrong
under gVisor, whose sentry caches the files it serves.)

Everything that comes back (exit codes, output) was produced inside the sandbox and is
treated as untrusted data: sizes are capped as it is read, codes mapped by table.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import posixpath
import secrets
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from crucible.core.errors import (
    InvalidSubmission,
    RuntimeFailure,
    SandboxFileError,
    SandboxFileNotFound,
    SandboxFileTooLarge,
    SandboxIsADirectory,
    SandboxPermissionDenied,
    SandboxStopped,
    SandboxUnavailable,
)
from crucible.engine import accounting, agent, overlay, runtime, spec, workspace
from crucible.engine.accounting import Usage
from crucible.engine.caps import MAX_EXEC_OUTPUT, MAX_FILE_BYTES
from crucible.engine.container import Container, WritePipeState
from crucible.engine.models import ExecResult, Limits, NetworkAttachment, SessionSpec
from crucible.engine.network import Network
from crucible.engine.output import OutputCallback, pump
from crucible.engine.sweep import owner_alive, owner_token

if TYPE_CHECKING:
    from crucible.engine.host import SessionHost

log = logging.getLogger(__name__)

MAX_ARGS_BYTES = 2 << 20  # argv + env of one exec (Linux's ARG_MAX with an 8 MiB stack)
WORKDIR = "/root"  # the sandbox's working directory: root's home, as on a Debian box
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
# Without an environment: the skeleton's python and pip last (see spec.COMPAT_BIN).
HOST_ENV = {**ENV, "PATH": f"{ENV['PATH']}:{spec.COMPAT_BIN}"}
_KILL_GRACE_S = 2.0  # after the tree-kill request, before the runtime's exec is killed
_RESEND_S = 0.1  # the request is repeated (a signal can land between two checks)
_DRAIN_S = 0.2  # after the exec's end: output left by background holders of the pipes
_FILE_TIMEOUT_S = 120.0
_CHUNK = 1 << 16

# init.c's FILE_* exit codes.
_FILE_ERRORS: dict[int, type[SandboxFileError]] = {
    2: SandboxFileNotFound,
    3: SandboxPermissionDenied,
    4: SandboxIsADirectory,
    5: SandboxFileTooLarge,
}


class _Stream:
    """One stream's bytes, capped: the tail (exec output) or the head (a file read)."""

    def __init__(self, cap: int, *, keep_head: bool = False) -> None:
        self.cap = cap
        self.keep_head = keep_head
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.truncated = False

    def add(self, data: bytes) -> None:
        if self.keep_head:
            room = self.cap - self.size
            if len(data) > room:
                self.truncated = True
                data = data[: max(room, 0)]
        if data:
            self.chunks.append(data)
            self.size += len(data)
        while not self.keep_head and self.size > self.cap:
            self.truncated = True
            over = self.size - self.cap
            first = self.chunks[0]
            if len(first) <= over:
                self.chunks.popleft()
                self.size -= len(first)
            else:
                self.chunks[0] = first[over:]
                self.size -= over

    def value(self) -> bytes:
        return b"".join(self.chunks)


def _feeder(sinks: dict[str, _Stream], on_output: OutputCallback | None) -> OutputCallback:
    """What ``pump`` hands each read to: the stream's capped sink, and ``on_output``."""

    def feed(name: str, data: bytes) -> None:
        sinks[name].add(data)
        if on_output is not None:
            on_output(name, data)

    return feed


class _Running:
    """One exec in flight, whichever mechanism started it."""

    @property
    def cpu_us(self) -> int | None:
        """CPU time of its processes, when the mechanism reports it."""
        return None

    @property
    def max_rss_kb(self) -> int | None:
        return None

    @property
    def returncode(self) -> int | None:
        """Its status once ended: the code, or (runtime exec) minus the signal."""
        raise NotImplementedError

    async def wait(self) -> None:
        """Until it ends (cancelling the wait leaves the exec running)."""
        raise NotImplementedError

    async def signal(self, signum: signal.Signals) -> None:
        """Signal the wrapper (SIGUSR1: kill the exec's tree)."""
        raise NotImplementedError

    async def kill(self) -> None:
        """The last resort when the wrapper does not answer: kill it, and wait."""
        raise NotImplementedError

    def forget(self) -> None:
        """Once it has ended: remove what it left (files)."""


class _RuntimeRun(_Running):
    """The runtime's ``exec`` running ``init --exec``, in the foreground for its life."""

    def __init__(self, container: Container, proc: asyncio.subprocess.Process, name: str) -> None:
        self._container = container
        self._proc = proc
        self._name = name

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> None:
        await asyncio.shield(self._proc.wait())

    async def signal(self, signum: signal.Signals) -> None:
        await self._container.signal_exec(self._proc, self._name, signum)

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()
        await self._proc.wait()

    def forget(self) -> None:
        # Read by the runtime when the exec starts; not before it has ended.
        self._container.forget_exec(self._name)


class _AgentRun(_Running):
    """A wrapper the sandbox's init forked (agent.py); its end comes as a reply."""

    def __init__(self, run: agent.AgentExec) -> None:
        self._run = run

    @property
    def returncode(self) -> int | None:
        done = self._run.exit
        return None if done is None else done.code

    @property
    def cpu_us(self) -> int | None:
        done = self._run.exit
        return None if done is None else done.cpu_us

    @property
    def max_rss_kb(self) -> int | None:
        done = self._run.exit
        return None if done is None else done.max_rss_kb

    async def wait(self) -> None:
        await self._run.wait()

    async def signal(self, signum: signal.Signals) -> None:
        await self._run.signal(signum)

    async def kill(self) -> None:
        await self._run.signal(signal.SIGKILL)
        # SIGKILL cannot be caught: the init reaps the wrapper and answers at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._run.wait(), _KILL_GRACE_S)


class Session:
    """One long-lived sandbox. Obtain with :meth:`Sessions.create`; ``close`` when done."""

    def __init__(
        self,
        session_id: str,
        session_spec: SessionSpec,
        *,
        container: Container,
        bundle: Path,
        ids: overlay.IdRange | None,
        owner: Sessions,
        exec_agent: agent.Agent | None = None,
    ) -> None:
        self.id = session_id
        self.spec = session_spec
        self.bundle = bundle
        self._container = container
        self._ids = ids
        self._owner = owner
        self._agent = exec_agent
        self._names = itertools.count()
        self._closing = False
        self._final: Usage | None = None
        self._close_lock = asyncio.Lock()
        # What an environment's image config says (Env, WorkingDir, User); else Debian's.
        image = session_spec.environment
        self.workdir = (image.workdir if image and image.workdir.startswith("/") else "") or WORKDIR
        self.env = {**ENV, **image.env} if image else dict(HOST_ENV)
        self.user = image.user.split(":", 1)[0] if image else ""

    @property
    def alive(self) -> bool:
        """False once the sandbox's init has ended (killed, crashed), its exec agent's
        channel broke, or it was closed."""
        broken = self._agent is not None and self._agent.closed
        return not self._closing and not broken and not self._container.exited.is_set()

    @property
    def runtime(self) -> str:
        return self._container.rt.name

    @property
    def container_id(self) -> str:
        return self._container.cid

    @property
    def exec_mechanism(self) -> str:
        """How execs run: ``agent`` (the init forks them) or ``exec`` (the runtime's)."""
        return "agent" if self._agent is not None else "exec"

    def _check_alive(self) -> None:
        if not self.alive:
            raise SandboxStopped(f"sandbox {self.id} is no longer running")

    # -- exec -----------------------------------------------------------------

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
        """Run ``cmd`` in the sandbox and report what it did.

        ``detach``: start ``cmd`` as a service (a compose service's command) in a
        session of its own with its output discarded, and return once it has been
        executed (127 or 126 when it could not be); the sandbox's init adopts it.

        ``on_output(stream, chunk)`` receives output as it is produced. A timeout
        kills the exec's whole process tree (not the sandbox): ``timed_out`` is set.
        An unknown ``user`` gives a failed result (returncode != 0) naming the user.
        A command that cannot be executed gives 126 (not executable) or 127 (not
        found), as a shell does. Raises :class:`~crucible.core.errors.SandboxStopped` when
        the sandbox is gone, ``InvalidSubmission`` for an empty command, a NUL in an
        argument or arguments over ``MAX_ARGS_BYTES``.
        """
        if not cmd:
            raise InvalidSubmission("the command is empty", field="cmd")
        env = {**self.env, **(env or {})}  # HOME: the user's, unless given here
        fields = [*cmd, user or "", cwd or "", *env, *env.values()]
        if any("\0" in f for f in fields):
            raise InvalidSubmission("arguments may not contain NUL", field="cmd")
        if sum(len(f.encode("utf-8", "surrogateescape")) + 1 for f in fields) > MAX_ARGS_BYTES:
            raise InvalidSubmission(
                f"arguments and environment exceed {MAX_ARGS_BYTES} bytes", field="cmd"
            )
        directory = posixpath.join(self.workdir, cwd) if cwd else self.workdir
        flags = ("" if cwd else "c") + ("h" if "HOME" in env else "") + ("d" if detach else "")
        flags = flags or "-"
        return await self._exec(
            (user or self.user, directory, flags, cmd),
            env,
            input=input,
            timeout_s=timeout_s,
            on_output=on_output,
            stdout=_Stream(output_cap),
            stderr=_Stream(output_cap),
        )

    async def _exec(
        self,
        wrapper: tuple[str, str, str, list[str]],
        env: dict[str, str],
        *,
        input: bytes | None,
        timeout_s: float | None,
        on_output: OutputCallback | None,
        stdout: _Stream,
        stderr: _Stream,
    ) -> ExecResult:
        """Run init.c's exec wrapper with ``wrapper`` (USER, CWD, FLAGS, ARGV): forked
        by the agent when the sandbox has one, else as the runtime's ``exec``."""
        self._check_alive()
        loop = asyncio.get_running_loop()
        in_r, in_w = os.pipe() if input is not None else (os.open(os.devnull, os.O_RDONLY), -1)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        before = self._container.account()
        started = time.monotonic()
        try:
            proc = await self._start(wrapper, env, (in_r, out_w, err_w))
        except BaseException:
            for fd in (in_w, out_r, err_r):
                if fd != -1:
                    os.close(fd)
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        feeder: asyncio.WriteTransport | None = None
        fed = WritePipeState()
        if input is not None:
            pipe = os.fdopen(in_w, "wb", buffering=0)
            feeder, fed = await loop.connect_write_pipe(WritePipeState, pipe)
            feeder.write(input)
            feeder.close()  # EOF once flushed
        feed = _feeder({"stdout": stdout, "stderr": stderr}, on_output)
        readers = [
            asyncio.ensure_future(pump(out_r, "stdout", feed, _CHUNK)),
            asyncio.ensure_future(pump(err_r, "stderr", feed, _CHUNK)),
        ]
        timed_out = pinned = False
        try:
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                timed_out = True
                pinned = self._pinned()  # before the kill frees its memory
                await self._kill_tree(proc)
            # What the command wrote is in the pipes; a background process it left
            # holding them must not keep this exec open.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*readers)), _DRAIN_S)
        except asyncio.CancelledError:
            await asyncio.shield(self._kill_tree(proc))
            raise
        except SandboxStopped:
            if self._closing:
                raise
            # The agent's end closed: the init died. Wait for the runtime to see it too.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._container.exited.wait(), _KILL_GRACE_S)
            raise SandboxStopped(f"sandbox {self.id} stopped during the exec") from None
        finally:
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            if feeder is not None and not fed.lost:
                feeder.abort()  # the command left some of its input unread
            proc.forget()
        duration_ms = int((time.monotonic() - started) * 1000)
        if not self.alive:
            raise SandboxStopped(f"sandbox {self.id} stopped during the exec")
        code = proc.returncode if proc.returncode is not None else -signal.SIGKILL
        return ExecResult(
            returncode=128 - code if code < 0 else code,  # runtime exec killed by a signal
            stdout=stdout.value(),
            stderr=stderr.value(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            timed_out=timed_out,
            memory_limit=pinned or self._reached_limit(before),
            duration_ms=duration_ms,
            cpu_us=proc.cpu_us,
            max_rss_kb=proc.max_rss_kb,
        )

    async def _start(
        self,
        wrapper: tuple[str, str, str, list[str]],
        env: dict[str, str],
        stdio: tuple[int, int, int],
    ) -> _Running:
        if self._agent is not None:
            user, cwd, flags, argv = wrapper
            payload = agent.exec_payload(user, cwd, flags, argv, env)
            return _AgentRun(await self._agent.start(payload, stdio))
        user, cwd, flags, argv = wrapper
        limits = self.spec.limits
        process = spec.session_process(
            [spec.INIT_PATH, "--exec", user, cwd, flags, "--", *argv], env,
            disk_mb=limits.disk_mb, pids=limits.pids, gvisor=self.runtime == "gvisor",
        )  # fmt: skip
        name = f"{next(self._names)}-{secrets.token_hex(4)}"
        proc = await self._container.exec(process, stdio, name=name)
        return _RuntimeRun(self._container, proc, name)

    @property
    def _memory_limit(self) -> int:
        return self.spec.limits.memory_mb << 20

    def _pinned(self) -> bool:
        """The sandbox's memory is at its limit now."""
        now = self._container.counters.memory_bytes()
        limit = self._memory_limit
        return limit > 0 and now >= limit - accounting.PINNED_SLACK_BYTES

    def _reached_limit(self, before: Usage) -> bool:
        """The sandbox reached its memory limit since ``before`` was read: an OOM kill
        was counted, or the peak first came to the limit (a peak reached by an earlier
        exec says nothing about this one)."""
        after = self._container.account()
        if after.oom_kill > before.oom_kill:
            return True
        limit = self._memory_limit
        return accounting.at_memory_limit(after, limit) and not accounting.at_memory_limit(
            before, limit
        )

    async def _kill_tree(self, proc: _Running) -> None:
        """Ask the exec's wrapper to kill its process tree (SIGUSR1); kill the
        wrapper (the runtime's exec) if that fails."""
        deadline = time.monotonic() + _KILL_GRACE_S
        while proc.returncode is None and time.monotonic() < deadline:
            await proc.signal(signal.SIGUSR1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _RESEND_S)
        if proc.returncode is None:
            await proc.kill()

    # -- files ----------------------------------------------------------------

    def _path(self, path: str) -> str:
        if not path or "\0" in path:
            raise InvalidSubmission(f"invalid path {path!r}", field="path")
        try:
            path.encode()
        except UnicodeEncodeError:
            # The runtime's process.json is JSON: a name in other bytes cannot reach
            # the helper intact (an exec can still reach it, e.g. by a glob).
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise InvalidSubmission(
                f"path {shown!r} is not valid UTF-8; reach it with an exec", field="path"
            ) from None
        return posixpath.join(self.workdir, path)

    async def _file_op(
        self, path: str, op: list[str], *, input: bytes | None, max_out: int
    ) -> bytes:
        out = _Stream(max_out, keep_head=True)
        err = _Stream(4096, keep_head=True)
        wrapper = ("", "/", "-", [spec.INIT_PATH, *op])
        result = await self._exec(
            wrapper, dict(self.env), input=input, timeout_s=_FILE_TIMEOUT_S, on_output=None,
            stdout=out, stderr=err,
        )  # fmt: skip
        if result.returncode == 0 and not result.timed_out:
            return result.stdout
        message = result.stderr.decode("utf-8", "replace").strip()
        error = _FILE_ERRORS.get(result.returncode, SandboxFileError)
        text = message.removeprefix("crucible: ") if message.startswith("crucible: ") else ""
        if error is SandboxIsADirectory:
            text = f"{path}: is a directory"
        elif error is SandboxFileTooLarge:
            text = f"{path}: file too large"
        elif not text:
            text = f"{path}: file operation failed (exit {result.returncode})"
        raise error(path, text[:500])

    async def write_file(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` (absolute, or relative to the working directory),
        creating parents. Never reaches outside the sandbox's own root, whatever
        symlinks the program planted. Raises ``SandboxPermissionDenied``,
        ``SandboxIsADirectory``, ``SandboxFileTooLarge`` (over ``MAX_FILE_BYTES``, or
        the disk is full), ``SandboxFileNotFound`` (a parent is not a directory),
        ``SandboxStopped``."""
        if len(data) > MAX_FILE_BYTES:
            raise SandboxFileTooLarge(path, f"{path}: {len(data)} bytes > {MAX_FILE_BYTES}")
        await self._file_op(path, ["--write", self._path(path)], input=data, max_out=0)

    async def read_file(self, path: str, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The bytes at ``path``. Raises ``SandboxFileNotFound``,
        ``SandboxPermissionDenied``, ``SandboxIsADirectory``, ``SandboxFileTooLarge``
        (over ``max_bytes``), ``SandboxStopped``."""
        max_bytes = min(max_bytes, MAX_FILE_BYTES)
        op = ["--read", self._path(path), str(max_bytes)]
        data = await self._file_op(path, op, input=None, max_out=max_bytes + 1)
        if len(data) > max_bytes:  # the helper checks too; the pipe is not trusted
            raise SandboxFileTooLarge(path, f"{path}: file too large")
        return data

    # -- counters, close ------------------------------------------------------

    def usage(self) -> Usage:
        """The sandbox's cgroup counters so far (CPU, peak memory, OOM kills)."""
        if self._final is not None:
            return self._final
        return self._container.account()

    async def close(self) -> Usage:
        """Stop and remove the sandbox (idempotent); returns its final counters."""
        async with self._close_lock:
            if self._final is not None:
                return self._final
            self._closing = True
            usage = Usage()
            try:
                await self._container.kill()
                usage = self._container.account()
                await self._container.delete()
            finally:
                if self._agent is not None:
                    self._agent.close()
                self._final = usage
                _remove_bundle(self.bundle)
                if self._ids is not None:
                    self._ids.release()
                self._owner._forget(self.id)
                await self._owner._leave_network(self.spec)
            return usage


def _remove_bundle(bundle: Path) -> None:
    workspace.unmount_below(bundle)  # overlays over host directories: before rmtree
    shutil.rmtree(bundle, ignore_errors=True)


async def _until_init_runs(pid: int, timeout: float) -> None:
    """Wait until the sandbox's PID 1 has become our init (``--session``). ``run
    --detach`` returns before it has execve'd, and crun 1.8 fails an exec that joins it
    then (``setns(pid=…, CLONE_*): Operation not permitted``; crun#1264, fixed in 1.9):
    seen twice in 420 loaded runs. Usually it already has; a process gone is left for
    the exec to report."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # noqa: ASYNC240 (procfs)
        except OSError:
            return
        if b"--session" in cmdline.split(b"\0"):
            return
        if time.monotonic() > deadline:
            raise SandboxUnavailable(f"the sandbox's init did not start within {timeout:g} s")
        await asyncio.sleep(0.002)


class Sessions:
    """Creates and tracks this process's long-lived sandboxes (one per engine:
    ``Sandbox.sessions``), sharing the engine's prepare(), init, runtimes and sweep."""

    def __init__(self, engine: SessionHost) -> None:
        self._engine = engine
        self._sessions: dict[str, Session] = {}
        self._skeleton: Path | None = None
        self._networks: dict[str, Network] = {}
        self._network_lock = asyncio.Lock()

    def _prepare(self) -> Path:
        engine = self._engine
        if self._skeleton is None:
            self._skeleton = overlay.ensure_skeleton(
                engine.state_dir / "session-root", engine.host_mounts
            )
        return self._skeleton

    def _searchable(self) -> None:
        """runc's init resolves the bundle as the sandbox's mapped root, which is not
        host root: every directory on the way must be searchable by others."""
        state = self._engine.state_dir
        for d in (self._engine.bundles_dir, state):
            d.chmod(d.stat().st_mode | 0o111)
        for parent in state.parents:
            if not parent.stat().st_mode & 0o001:
                raise SandboxUnavailable(
                    f"{parent} must be searchable by others (chmod o+x) for sandboxes "
                    "with a user namespace (the state directory is under it)"
                )

    async def _join_network(self, attachment: NetworkAttachment) -> Network:
        """The network of ``attachment.group``, made with its first member."""
        async with self._network_lock:
            net = self._networks.get(attachment.group)
            members = list(attachment.members)
            if net is not None and net.members != members:
                raise InvalidSubmission(
                    f"network {attachment.group!r} has members {net.members}, not {members}",
                    field="network",
                )
            if attachment.hostname not in members:
                raise InvalidSubmission(
                    f"{attachment.hostname!r} is not one of the members {members}",
                    field="network",
                )
            if attachment.hostname in (net.joined if net else set()):
                raise InvalidSubmission(
                    f"{attachment.hostname!r} is already on network {attachment.group!r}",
                    field="network",
                )
            if net is None:
                engine = self._engine
                net = await Network.create(engine.settings.prefix, engine.state_dir, members)
                self._networks[attachment.group] = net
            net.joined.add(attachment.hostname)
            return net

    async def _leave_network(self, spec_: SessionSpec) -> None:
        """A member left; the network goes with its last member."""
        attachment = spec_.network
        if attachment is None:
            return
        async with self._network_lock:
            net = self._networks.get(attachment.group)
            if net is None:
                return
            net.joined.discard(attachment.hostname)
            if not net.joined:
                del self._networks[attachment.group]
                await net.remove()

    async def create(
        self, spec_: SessionSpec, *, session_id: str, exec_agent: bool | None = None
    ) -> Session:
        """Create and start a sandbox named ``session_id`` (the API's sandbox id).
        ``exec_agent``: run execs through the init's agent (default: the setting);
        never under gVisor, which keeps the runtime's ``exec``.
        Raises ``SandboxUnavailable`` / ``RuntimeFailure`` on platform failures,
        ``Conflict``-free: the id is the caller's to keep unique."""
        engine = self._engine
        await engine.prepare()
        rt = engine.get_runtime(spec_.runtime)
        if spec_.network is not None and rt.name == "gvisor":
            raise SandboxUnavailable(
                "sandbox networks need runc or crun: Debian's runsc 20221219 cannot start "
                "its network stack on Linux 6 (see crucible.engine.network)"
            )
        skeleton = self._prepare()
        namespaced = rt.name != "gvisor"
        if namespaced:
            self._searchable()
        run_id = f"{engine.settings.prefix}-{secrets.token_hex(8)}"
        bundle = engine.bundles_dir / run_id
        bundle.mkdir(parents=True)
        bundle.chmod(0o711)
        (bundle / "owner").write_text(owner_token() + "\n")
        (bundle / "session").write_text(session_id)
        ids: overlay.IdRange | None = None
        container: Container | None = None
        net: Network | None = None
        # Never under gVisor (20221219), though the agent runs there (32 ms an exec
        # against runsc exec's 96): its procfs serves PID 1's environ and fd links
        # whatever PR_SET_DUMPABLE says, so the channel's safety would rest on gVisor's
        # own checks, and 5 of the 11 hostile agent tests fail there (README).
        use_agent = namespaced and (
            engine.settings.exec_agent if exec_agent is None else exec_agent
        )
        channel: agent.Agent | None = None
        try:
            if spec_.network is not None:
                net = await self._join_network(spec_.network)
            userns_fd = -1
            if namespaced:
                ids = overlay.IdRange(engine.state_dir / "id-ranges")
                userns_fd = await overlay.user_namespace(ids.base)
            try:
                image = spec_.environment
                rootfs = await overlay.mount_root(
                    bundle, image.path if image else skeleton, spec_.limits.disk_mb,
                    id_base=ids.base if ids else None, userns_fd=userns_fd,
                    host_toolchain=image is None,
                )  # fmt: skip
            finally:
                if userns_fd != -1:
                    os.close(userns_fd)  # the idmapped mounts hold their own reference
            limits = spec_.limits
            cid = f"{run_id}-s"
            cgroups_path = f"/{engine.settings.prefix}/{cid}"
            config = spec.build_session_config(
                limits=Limits(
                    timeout_s=1, cpu_s=1, output_bytes=1, memory_mb=limits.memory_mb,
                    pids=limits.pids, cpus=limits.cpus, disk_mb=limits.disk_mb,
                ),
                rootfs=rootfs,
                init_binary=engine.init_binary,
                seccomp_bpf=engine.seccomp_bpf,
                gvisor_preload=engine.gvisor_preload,
                cgroups_path=cgroups_path,
                id_base=ids.base if ids else None,
                gvisor=not namespaced,
                agent=use_agent,
            )  # fmt: skip
            if spec_.network is not None:
                config["hostname"] = spec_.network.hostname
            container = Container(rt, cid, bundle / cid, cgroups_path)
            if use_agent:
                channel = await container.create_with_agent(config)
            else:
                await container.create(config)
            if namespaced:
                await _until_init_runs(container.pid, engine.settings.runtime_timeout_s)
            if net is not None and spec_.network is not None:
                await net.attach(spec_.network.hostname, container.pid)
        except BaseException:
            if channel is not None:
                channel.close()
            if container is not None:
                with contextlib.suppress(Exception):
                    await container.delete()
            _remove_bundle(bundle)
            if ids is not None:
                ids.release()
            if net is not None:
                await self._leave_network(spec_)
            raise
        session = Session(
            session_id, spec_, container=container, bundle=bundle, ids=ids, owner=self,
            exec_agent=channel,
        )  # fmt: skip
        self._sessions[session_id] = session
        if net is not None and spec_.network is not None:
            try:  # written from inside: the image's /etc may be a link to anywhere
                await session.write_file("/etc/hosts", net.hosts(spec_.network.hostname).encode())
                await session.write_file("/etc/hostname", f"{spec_.network.hostname}\n".encode())
            except BaseException:
                await session.close()
                raise
        return session

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    def all(self) -> list[Session]:
        return list(self._sessions.values())

    def _forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    async def sweep(self) -> list[str]:
        """Remove sandboxes left by a dead owner process; returns their ids (those of
        this engine's state directory; the engine's sweep removes the rest of what
        crashed supervisors left)."""
        bundles = self._engine.bundles_dir
        dead: dict[Path, str] = {}
        if bundles.exists():
            for bundle in bundles.iterdir():
                marker = bundle / "session"
                if marker.exists() and not owner_alive(bundle):
                    with contextlib.suppress(OSError):
                        dead[bundle] = marker.read_text()[:200]
        await self._engine.sweep()
        return sorted(sid for bundle, sid in dead.items() if not bundle.exists())

    async def remove(self, session_id: str) -> bool:
        """Remove the sandbox named ``session_id`` wherever its owner is (an operator's
        cleanup: ``inspect sandbox cleanup crucible <id>``); False when there is none."""
        if (session := self._sessions.get(session_id)) is not None:
            await session.close()
            return True
        bundles = self._engine.bundles_dir
        for bundle in bundles.iterdir() if bundles.exists() else []:
            with contextlib.suppress(OSError):
                if (bundle / "session").read_text() != session_id:
                    continue
                for name in ("runc", "crun", "gvisor"):
                    with contextlib.suppress(SandboxUnavailable, RuntimeFailure):
                        rt = self._engine.get_runtime(name)
                        await runtime.runtime_delete(rt, f"{bundle.name}-s")
                _remove_bundle(bundle)
                accounting.remove_cgroup(f"/{self._engine.settings.prefix}/{bundle.name}-s")
                return True
        return False

    async def close_all(self) -> None:
        results = await asyncio.gather(
            *(s.close() for s in list(self._sessions.values())), return_exceptions=True
        )
        for r in results:
            if isinstance(r, BaseException):
                log.warning("closing a sandbox failed: %s", r)
