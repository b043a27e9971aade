"""Makes the supervisor reap its runtimes' orphans at once.

``runc create`` / ``runsc create`` exit after starting the container, so the
container's init (runc) or the sandbox and gofer processes (runsc) are orphaned. The
host's PID 1 reaps orphans eventually, but not necessarily promptly (on the project's
machines it takes about a second); ``runsc delete`` waits until the sandbox pid is
gone, so each gVisor run paid that second. Declaring the supervisor a child
subreaper (prctl PR_SET_CHILD_SUBREAPER) makes the orphans our children, and we
reap exactly those pids — never ``waitpid(-1)``, which would steal the exit
statuses of asyncio's own subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable, Iterator

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def become_subreaper() -> None:
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap(pid: int) -> int | None:
    """Collect ``pid`` if it is our exited child and return its wait status."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return None
    return status if done == pid else None


def _children() -> list[int]:
    pids: list[int] = []
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as f:
            pids.extend(int(p) for p in f.read().split())
    return pids


def runtime_children(container_id: str) -> list[int]:
    """Our live children that runsc started for ``container_id`` (sandbox, gofer).

    Called right after ``runsc create``, while their command lines are readable: the
    gofer names the container only inside its --bundle path.
    """
    found = []
    for pid in _children():
        with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read()
            if (
                argv.startswith((b"runsc-gofer", b"runsc-sandbox"))
                and container_id.encode() in argv
            ):
                found.append(pid)
    return found


async def reap_all(pids: list[int], *, timeout: float = 5.0) -> None:
    """Wait (polling, never blocking the loop) until every pid in ``pids`` is reaped."""
    deadline = time.monotonic() + timeout
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        still = []
        for pid in pending:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 (never blocks)
            except ChildProcessError:
                continue  # already reaped (or never ours)
            if done != pid:
                still.append(pid)
        pending = still
        if pending:
            await asyncio.sleep(0.005)


# Pids that live runs wait for themselves (their containers' init processes):
# reap_orphans leaves them to their owner, whose pidfd and wait status they are.
_owned: set[int] = set()
# The runtimes' verbs that asyncio started and waits for, by pid, while they run: a
# ``crun`` zombie in here is asyncio's to collect, not an orphan.
_spawned: dict[int, asyncio.subprocess.Process] = {}
# Spawns under way: create_subprocess_exec yields to the loop after the fork, so a
# verb can exit (a ``crun`` zombie) before its pid is known here. While any spawn is
# under way no ``crun`` zombie is reaped (asyncio would then report the verb's exit
# status as 255); the scans asked for meanwhile run when the last spawn is known.
_spawning = 0
_reap_deferred = False


@contextlib.contextmanager
def spawning() -> Iterator[Callable[[asyncio.subprocess.Process], None]]:
    """Around ``create_subprocess_exec`` of a runtime verb; call what it yields with
    the process as soon as it is made."""
    global _spawning, _reap_deferred
    _spawning += 1
    try:
        yield _spawned_now
    finally:
        _spawning -= 1
        if _spawning == 0 and _reap_deferred:
            _reap_deferred = False
            reap_orphans()


def _spawned_now(proc: asyncio.subprocess.Process) -> None:
    for pid in [pid for pid, p in _spawned.items() if p.returncode is not None]:
        del _spawned[pid]
    _spawned[proc.pid] = proc


def own(pid: int) -> None:
    _owned.add(pid)


def disown(pid: int) -> None:
    _owned.discard(pid)


def _asyncio_waits_for(pid: int) -> bool:
    proc = _spawned.get(pid)
    return proc is not None and proc.returncode is None


def _orphans() -> list[tuple[int, bytes, bool]]:
    """Our children that are neither containers' inits nor waited for by asyncio:
    (pid, name, exited)."""
    found = []
    for pid in _children():
        if pid in _owned or _asyncio_waits_for(pid):
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        end = stat.rindex(b")")
        found.append((pid, stat[stat.index(b"(") + 1 : end], stat[end + 2 : end + 3] == b"Z"))
    return found


def reap_orphans() -> None:
    """Reap exited orphans of the runtimes: the ptrace stubs of a finished gVisor
    sandbox, and the process crun forks to start a container (``run --detach``), which
    exits orphaned to us, one zombie per container until reaped. Called right after
    crun's ``run --detach`` returned, its fork may still be alive and exit a moment
    later: on an event loop such a fork is watched by pidfd and reaped when it exits.

    Orphans are recognised by name: runc and runsc re-execute themselves through
    /proc/self/exe, so their exited helpers are zombies called ``exe``; crun's is called
    ``crun``, as are the crun verbs asyncio waits for, which ``spawning`` lists and
    this leaves alone (as it leaves ``runc``/``runsc``). Deferred while a spawn is
    under way (see ``spawning``).
    """
    global _reap_deferred
    if _spawning:
        _reap_deferred = True
        return
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    for pid, comm, exited in _orphans():
        if pid in _watched or comm not in (b"exe", b"crun"):
            continue
        if exited:
            reap(pid)
        elif comm == b"crun" and loop is not None:
            _watch(loop, pid)


# crun forks of which a pidfd is watched until they exit (reap_orphans).
_watched: set[int] = set()


def _watch(loop: asyncio.AbstractEventLoop, pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return  # gone (and reaped) already
    _watched.add(pid)

    def done() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        reap(pid)
        _watched.discard(pid)

    loop.add_reader(fd, done)
