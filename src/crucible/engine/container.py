"""One OCI container's lifecycle, as steps the engine's users compose.

    create   bundle + config.json, ``run --detach`` with pipes as stdio; the container's
             init is then up and *waiting* (job mode, see init.c), its pidfd watched
    start    write the job (argv, env, rlimits) and stdin to the init: the program runs
    wait     until the init exits (``exited``), supervised by the caller
    exec     run another process in the running container (the runtime's ``exec``)
    kill     the runtime's ``kill``, then SIGKILL on the host pid if it is slow
    account  the cgroup's counters, before ``delete`` removes the cgroup
    delete   ``delete --force``, reap, remove the bundle directory

One-shot runs create and start at once; the warm pool (``pool.py``) creates ahead of
requests and starts on demand; long-lived sandboxes (``session.py``) create, then
exec many times. None of them touches a runtime verb except through this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal as signals
from pathlib import Path
from typing import Any

from crucible.core.errors import RuntimeFailure
from crucible.engine import accounting, agent, reaper, runtime
from crucible.engine.runtime import Runtime

_KILL_GRACE_S = 2.0  # after `kill`, how long before the host pid is killed directly
_MAX_JOB = 4 << 20  # init.c's MAX_JOB


def job_header(argv: list[str], env: dict[str, str], *, fsize: int = 0, nproc: int = 0) -> bytes:
    """The job init.c reads on stdin in job mode."""
    fields = [str(len(argv)), *argv, str(len(env)), *(f"{k}={v}" for k, v in env.items())]
    fields += [str(fsize), str(nproc)]
    payload = b"".join(f.encode("utf-8", "surrogateescape") + b"\0" for f in fields)
    if len(payload) > _MAX_JOB or any("\0" in f for f in fields):
        raise ValueError("job arguments too large or containing NUL")
    return b"CRUCIBLE-JOB %d\n" % len(payload) + payload


class WritePipeState(asyncio.Protocol):
    """A write pipe's protocol that only remembers whether the pipe is closed."""

    lost = False  # the transport is closed: flushed, or the reader went away

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class Container:
    """A container of the runtime ``rt`` named ``cid``, its bundle in ``directory``.

    Not reusable: one create, one delete. ``delete`` is safe to call in any state and
    more than once; callers put it in a ``finally``.
    """

    def __init__(self, rt: Runtime, cid: str, directory: Path, cgroups_path: str) -> None:
        self.rt = rt
        self.cid = cid
        self.directory = directory
        self.counters = accounting.CgroupCounters(cgroups_path)
        self.exited = asyncio.Event()
        self.pid = -1
        self.stdout = -1  # read ends of the container's stdout and stderr pipes
        self.stderr = -1
        self._stdin = -1  # write end of its stdin pipe
        self._stdin_pipe: asyncio.WriteTransport | None = None
        self._stdin_state = WritePipeState()
        self._pidfd = -1
        self._created = False
        self._helpers: list[int] = []  # runsc's sandbox and gofer processes
        self._deleted = False
        self.channel: agent.Agent | None = None  # the exec agent's (create_with_agent)

    # -- create ---------------------------------------------------------------

    async def create(self, config: dict[str, Any], *, stdin: int | None = None) -> None:
        """Write the bundle and bring the container up with its init waiting.

        ``stdin``: the init's stdin instead of a pipe (an exec agent's socket, see
        agent.py); the caller keeps and closes it.
        Raises RuntimeFailure with the runtime's own message when it refuses.
        """
        self.directory.mkdir()
        (self.directory / "config.json").write_text(json.dumps(config))
        if stdin is None:
            in_r, self._stdin = os.pipe()
        else:
            in_r = os.dup(stdin)
        self.stdout, out_w = os.pipe()
        self.stderr, err_w = os.pipe()
        pid_file = self.directory / "pid"
        try:
            self._created = True  # a half-created container still needs deleting
            await runtime.runtime_run_detached(
                self.rt, self.cid, self.directory, pid_file, (in_r, out_w, err_w)
            )
        except RuntimeFailure as exc:
            raise RuntimeFailure("run", exc.returncode, self._runtime_error(err_w)) from exc
        finally:
            os.close(in_r)
            os.close(out_w)
            if err_w != -1:
                with contextlib.suppress(OSError):
                    os.close(err_w)
        if self.rt.name == "gvisor":
            self._helpers = reaper.runtime_children(self.cid)
        self.pid = int(pid_file.read_text().strip())
        reaper.own(self.pid)
        if self.rt.name == "crun":
            # crun's fork that started the container is orphaned to us: unreaped, one
            # zombie per container (a host holding sandboxes for days would run out
            # of pids).
            reaper.reap_orphans()
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            # Already exited and reaped: a concurrent gVisor run's reap_orphans() may
            # collect our zombie before own() above (gVisor's sandbox is also "exe").
            self.exited.set()
        else:
            # A pidfd works on a zombie too (it is our child: subreaper).
            asyncio.get_running_loop().add_reader(self._pidfd, self._on_exit)

    async def create_with_agent(self, config: dict[str, Any]) -> agent.Agent:
        """``create`` with the init's stdin one end of a socketpair, for an init that
        is the exec agent (init.c's ``--session --agent``); the engine's end as
        ``channel``, closed by ``delete``."""
        ours, theirs = agent.socketpair()
        try:
            await self.create(config, stdin=theirs)
        except BaseException:
            ours.close()
            raise
        finally:
            os.close(theirs)  # the init's end is the init's alone
        self.channel = agent.Agent(ours)
        return self.channel

    def _runtime_error(self, err_w: int) -> str:
        """What the runtime wrote on the container's stderr before failing."""
        os.close(err_w)
        os.set_blocking(self.stderr, False)
        try:
            return os.read(self.stderr, 4096).decode("utf-8", "replace")
        except BlockingIOError:
            return ""

    def _on_exit(self) -> None:
        self.exited.set()
        asyncio.get_running_loop().remove_reader(self._pidfd)

    # -- start ----------------------------------------------------------------

    async def start(self, job: bytes, stdin: bytes = b"") -> None:
        """Release the waiting init: the job, then the program's stdin, then EOF.

        Written by a transport, so a program that never reads a large stdin cannot
        block the supervisor; what it does not read is dropped at ``delete``.
        """
        loop = asyncio.get_running_loop()
        pipe = os.fdopen(self._stdin, "wb", buffering=0)
        self._stdin = -1
        transport, self._stdin_state = await loop.connect_write_pipe(WritePipeState, pipe)
        self._stdin_pipe = transport
        transport.write(job + stdin)
        transport.close()  # after the buffer is flushed

    # -- exec -----------------------------------------------------------------

    async def exec(
        self, process: dict[str, Any], stdio: tuple[int, int, int], *, name: str
    ) -> asyncio.subprocess.Process:
        """Start ``process`` (an OCI process object) in the running container.

        The runtime's ``exec`` stays in the foreground for the life of the process;
        the returned handle's ``wait()`` gives its exit status. ``name`` is unique per
        exec (its process.json file).
        """
        path = self.directory / f"exec-{name}.json"
        path.write_text(json.dumps(process))
        pid_file = self.directory / f"exec-{name}.pid" if self.rt.name == "gvisor" else None
        return await runtime.runtime_exec(
            self.rt, self.cid, path, stdio, internal_pid_file=pid_file
        )

    async def signal_exec(
        self, proc: asyncio.subprocess.Process, name: str, signum: signals.Signals
    ) -> None:
        """Send ``signum`` to the process of exec ``name`` (not to the runtime's own):
        runc and crun forward what their ``exec`` receives; runsc is asked by pid."""
        if proc.returncode is not None:
            return
        if self.rt.name != "gvisor":
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)
            return
        try:
            pid = int((self.directory / f"exec-{name}.pid").read_text().strip())
        except (OSError, ValueError):
            return  # not started yet (or already gone)
        with contextlib.suppress(RuntimeFailure, TimeoutError):
            await runtime.runtime_kill(self.rt, self.cid, signum.name.removeprefix("SIG"), pid=pid)

    def forget_exec(self, name: str) -> None:
        """Remove exec ``name``'s files (once it has ended)."""
        for suffix in ("json", "pid"):
            (self.directory / f"exec-{name}.{suffix}").unlink(missing_ok=True)

    # -- kill, account, delete --------------------------------------------------

    async def kill(self) -> None:
        """Kill the container; fall back to SIGKILL on the host pid if the runtime is slow."""
        if self.exited.is_set() or self.pid == -1:
            return
        # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancel.
        with contextlib.suppress(RuntimeFailure, TimeoutError):
            async with asyncio.timeout(_KILL_GRACE_S):
                await runtime.runtime_kill(self.rt, self.cid)
        try:
            async with asyncio.timeout(_KILL_GRACE_S):
                await self.exited.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, OSError):
                signals.pidfd_send_signal(self._pidfd, signals.SIGKILL)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_KILL_GRACE_S):
                    await self.exited.wait()

    def account(self) -> accounting.Usage:
        """The cgroup's counters (valid until ``delete``)."""
        return self.counters.read()

    def discard_stdin(self) -> None:
        if self._stdin_pipe is not None and not self._stdin_state.lost:
            self._stdin_pipe.abort()  # the program did not read all of it
        self._stdin_pipe = None
        if self._stdin != -1:
            os.close(self._stdin)
            self._stdin = -1

    async def delete(self) -> None:
        """Remove the container and its bundle directory (idempotent)."""
        if self._deleted:
            return
        self._deleted = True
        if self.channel is not None:
            self.channel.close()
        self.discard_stdin()
        loop = asyncio.get_running_loop()
        if self._pidfd != -1:
            loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        for fd in (self.stdout, self.stderr):
            if fd != -1:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.stdout = self.stderr = -1
        try:
            if self._created:
                # runsc delete waits until its sandbox and gofer are gone: reap them.
                if self.rt.name == "gvisor":
                    await reaper.reap_all(self._helpers)
                    reaper.reap_orphans()
                await runtime.runtime_delete(self.rt, self.cid)
        finally:
            if self.pid != -1:
                reaper.reap(self.pid)
                reaper.disown(self.pid)
            if self.rt.name == "crun":  # the process crun forked to start it (runc: none)
                reaper.reap_orphans()
            shutil.rmtree(self.directory, ignore_errors=True)

    def take_output(self) -> tuple[int, int]:
        """Hand the stdout and stderr read ends to the caller (who closes them)."""
        fds = (self.stdout, self.stderr)
        self.stdout = self.stderr = -1
        return fds
