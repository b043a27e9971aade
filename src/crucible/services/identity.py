"""Who is this process? A name recorded on every claim, and a liveness test.

The database's heartbeat rows say whether a process on another machine is alive. A
process on *this* node (same kernel boot, same pid namespace) can be checked at once:
its pid must exist and have the start time recorded at registration (pids are
reused). That makes start-up recovery after ``kill -9`` immediate, without waiting for
a heartbeat to go stale, while never touching another live process's evaluations.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from functools import lru_cache

from crucible.store import WorkerInfo


def _read(path: str) -> str:
    with contextlib.suppress(OSError), open(path) as f:
        return f.read().strip()
    return ""


@lru_cache
def node() -> str:
    """This pid namespace on this boot of this kernel."""
    boot = _read("/proc/sys/kernel/random/boot_id") or socket.gethostname()
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = "pid:[?]"
    return f"{boot}/{pidns.removeprefix('pid:').strip('[]')}"


def proc_start(pid: int) -> str:
    """The start time of ``pid`` (clock ticks since boot), or "" when it is gone."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return ""
    # Field 22; the command name (field 2) may hold spaces, so split after its ")".
    return stat.rsplit(")", 1)[-1].split()[19]


def alive_here(pid: int, start: str) -> bool:
    """Is the process registered as (pid, start) still running on this node?"""
    return bool(start) and proc_start(pid) == start


def this_process(kind: str, capacity: int, queues: str = "") -> WorkerInfo:
    host = socket.gethostname()
    pid = os.getpid()
    return WorkerInfo(
        id=f"{kind}@{host}:{pid}:{secrets.token_hex(3)}"[:96],
        kind=kind,
        host=host,
        node=node(),
        pid=pid,
        proc_start=proc_start(pid),
        capacity=capacity,
        queues=queues,
    )
