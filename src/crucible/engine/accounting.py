"""Reads a run's cgroup counters, on cgroup v1 and v2 hosts alike.

The runtime creates the cgroup at ``cgroupsPath``; it survives the container's exit
until ``delete``, so the final counters are read between the two. The files differ by
version:

=================  ==============================  ==========================
counter            v1                              v2
=================  ==============================  ==========================
CPU time           cpuacct/cpuacct.usage (ns)      cpu.stat usage_usec
peak memory        memory/memory.max_usage_in_bytes memory.peak (5.19+)
memory now         memory/memory.usage_in_bytes     memory.current
pids now           pids/pids.current                pids.current
OOM kills          memory/memory.oom_control        memory.events oom_kill
memory limit hits  memory/memory.failcnt            memory.events max
pids limit hits    pids/pids.events max             pids.events max
=================  ==============================  ==========================

*Memory limit hits* count how often a charge hit the limit (and had to reclaim). They
are not evidence to rely on: Linux 6.x no longer counts ``memory.failcnt`` on some
hosts (seen: 0 with the peak at the limit and an OOM kill counted), and ``memory.events``
exists only on v2.

Which evidence decides a memory verdict (:func:`at_memory_limit`), by runtime:

- **runc, crun**: the kernel's OOM killer fires in the run's cgroup and is counted
  (v1 ``memory.oom_control`` ``oom_kill``, v2 ``memory.events`` ``oom_kill``). When the
  program thrashes at the limit instead (page cache of its own binary reclaimed over and
  over, seen with Node under load) no kill comes before the time limit: the peak is the
  evidence then.
- **gVisor**: the sentry holds the program's memory, so the cgroup charges the sentry.
  At the ceiling it either is OOM-killed (counted) or pages and thrashes until the time
  limit (seen: ``oom_kill`` 0, ``failcnt`` 0, peak = limit + 4 KiB). ``runsc events
  --stats`` reports the sentry's own accounting of the same memory; the cgroup's peak is
  read without starting a Go binary, so that is what is used.
- On every host the peak counter exists (v1 ``memory.max_usage_in_bytes``, v2
  ``memory.peak``, or ``memory.current`` sampled on kernels before 5.19).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_v2_unified(root: Path = CGROUP_ROOT) -> bool:
    """True on a pure cgroup v2 host (what runc itself checks)."""
    return (root / "cgroup.controllers").exists()


def hybrid_cgroup2_mounts(mountinfo: str | None = None, root: Path = CGROUP_ROOT) -> list[str]:
    """The cgroup2 mounts of a *hybrid* host (v1 controllers at ``root`` plus a cgroup2
    mount beside them, usually ``/sys/fs/cgroup/unified``); empty on pure v1 and pure v2
    hosts. ``mountinfo``: the text of /proc/self/mountinfo (read when None)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return []
    points = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        fstype = line.split(" - ", 1)[1].split()[0]
        if fstype == "cgroup2":
            points.append(fields[4])
    if str(root) in points:  # pure v2: the unified hierarchy is the root itself
        return []
    return points


@dataclass(frozen=True)
class Usage:
    cpu_ns: int = 0
    peak_memory_bytes: int = 0
    oom_kill: int = 0
    pids_limit: int = 0
    memory_limit_hits: int = 0


def _read(path: str | Path) -> str:
    # os.open/os.read: a cgroup file is one small read, and Path.read_text's
    # TextIOWrapper costs more than the read (five files per reading, three
    # readings per exec).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 65536).decode()
    finally:
        os.close(fd)


def _read_int(path: str | Path) -> int | None:
    try:
        return int(_read(path).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_keyed(path: str | Path) -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        text = _read(path)
    except OSError:
        return values
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            values[key] = int(value)
    return values


# A charge that does not fit reclaims until it does, so a cgroup held at its limit
# reads within one charge batch (64 pages, 256 KiB) of it; 1 MiB leaves room for a
# huge page falling back to small ones, and is far below any limit we accept (16 MB).
PINNED_SLACK_BYTES = 1 << 20


def at_memory_limit(usage: Usage, limit_bytes: int) -> bool:
    """The run's memory reached its limit: an OOM kill was counted, or the peak came
    within :data:`PINNED_SLACK_BYTES` of the limit. Both exist on every host and
    cgroup layout; neither depends on how busy the machine was."""
    if limit_bytes <= 0:
        return False
    return usage.oom_kill > 0 or usage.peak_memory_bytes >= limit_bytes - PINNED_SLACK_BYTES


class CgroupCounters:
    """Counters of the cgroup at ``cgroups_path`` (the bundle's ``linux.cgroupsPath``).
    The files' paths are strings made once: pathlib's joins cost more than the reads
    (several readings per run)."""

    def __init__(self, cgroups_path: str, *, root: Path = CGROUP_ROOT) -> None:
        self.path = cgroups_path
        rel = cgroups_path.lstrip("/")
        self.v2 = cgroup_v2_unified(root)
        if self.v2:
            top = f"{root}/{rel}"
            cpu = mem = pids = top
            self._cpu = f"{top}/cpu.stat"
            self._current = f"{top}/memory.current"
            self._peak = f"{top}/memory.peak"
            self._oom = self._events = f"{top}/memory.events"
        else:
            cpu, mem, pids = (f"{root}/{c}/{rel}" for c in ("cpuacct", "memory", "pids"))
            self._cpu = f"{cpu}/cpuacct.usage"
            self._current = f"{mem}/memory.usage_in_bytes"
            self._peak = f"{mem}/memory.max_usage_in_bytes"
            self._oom = f"{mem}/memory.oom_control"
            self._events = f"{mem}/memory.failcnt"
        self._pids = f"{pids}/pids.current"
        self._pid_events = f"{pids}/pids.events"

    def cpu_ns(self) -> int:
        """CPU time used by every process of the run so far (0 if unreadable)."""
        if self.v2:
            return _read_keyed(self._cpu).get("usage_usec", 0) * 1000
        return _read_int(self._cpu) or 0

    def memory_bytes(self) -> int:
        """Memory charged to the cgroup now (0 if unreadable)."""
        return _read_int(self._current) or 0

    def pids(self) -> int:
        """Processes and threads in the cgroup now (0 if unreadable)."""
        return _read_int(self._pids) or 0

    def read(self) -> Usage:
        peak = _read_int(self._peak)
        if peak is None:  # v2 kernels before 5.19 have no memory.peak
            peak = self.memory_bytes()
        oom = _read_keyed(self._oom).get("oom_kill", 0)
        pids_max = _read_keyed(self._pid_events).get("max", 0)
        events = self._events
        hits = _read_keyed(events).get("max", 0) if self.v2 else (_read_int(events) or 0)
        return Usage(self.cpu_ns(), peak, oom, pids_max, hits)


def remove_cgroup(cgroups_path: str, *, root: Path = CGROUP_ROOT) -> None:
    """Remove a leftover (empty) cgroup in every hierarchy; used by the start-up sweep."""
    rel = cgroups_path.lstrip("/")
    dirs = [root / rel] if cgroup_v2_unified(root) else [p / rel for p in root.iterdir()]
    for d in dirs:
        with contextlib.suppress(OSError):
            os.rmdir(d)


# What a reused sandbox's own cgroup holds beyond its job's limits: its init and exec
# agent, and the page cache earlier jobs left charged to it (which it reclaims
# first). The job's cgroup has the run's exact limits, so it meets them before its
# parent does.
JOB_MEMORY_HEADROOM = 16 << 20
JOB_PIDS_HEADROOM = 8


class JobCgroups:
    """The cgroups of a reused one-shot sandbox's jobs (sandbox.py): one child of the
    sandbox's cgroup per job, made with the run's limits before it starts and removed
    after it, so each job's counters (CPU, peak memory, OOM kills, limit hits) are its
    own, read by :class:`CgroupCounters` as a fresh container's would be.

    On cgroup v2 a cgroup with processes cannot give controllers to children: the
    sandbox's init moves to a leaf of its own (``init``) first.
    """

    def __init__(self, cgroups_path: str, *, root: Path = CGROUP_ROOT) -> None:
        self.path = cgroups_path.rstrip("/")
        self.root = root
        rel = self.path.lstrip("/")
        self.v2 = cgroup_v2_unified(root)
        # (hierarchy, sets memory limits, sets pids limits); strings, as CgroupCounters
        if self.v2:
            self._tops = [(f"{root}/{rel}", True, True)]
            self._procs = f"{root}/{rel}/init/cgroup.procs"  # where the init moves
        else:
            self._tops = [
                (f"{root}/memory/{rel}", True, False),
                (f"{root}/cpuacct/{rel}", False, False),
                (f"{root}/pids/{rel}", False, True),
            ]
            self._procs = f"{root}/memory/{rel}/cgroup.procs"

    def adopt(self, init_pid: int) -> None:
        """Once, before the first job: on v2, the init into its leaf and the memory
        and pids controllers given to the children."""
        if not self.v2:
            return
        top = self._tops[0][0]
        os.mkdir(f"{top}/init")
        write_text(self._procs, str(init_pid))
        write_text(f"{top}/cgroup.subtree_control", "+memory +pids")

    def start(self, name: str, memory_bytes: int, pids: int) -> CgroupCounters:
        """Make job ``name``'s cgroup with these limits; its counters."""
        for top, memory, tasks in self._tops:
            job = f"{top}/{name}"
            os.mkdir(job)
            if memory and self.v2:
                write_text(f"{job}/memory.max", str(memory_bytes))
                with contextlib.suppress(OSError):  # no swap accounting: no swap to cap
                    write_text(f"{job}/memory.swap.max", "0")
            elif memory:
                write_text(f"{job}/memory.limit_in_bytes", str(memory_bytes))
                with contextlib.suppress(FileNotFoundError):
                    write_text(f"{job}/memory.memsw.limit_in_bytes", str(memory_bytes))
            if tasks:
                write_text(f"{job}/pids.max", str(pids))
        return self.counters(name)

    def counters(self, name: str) -> CgroupCounters:
        """Job ``name``'s counters (its cgroup made or not yet)."""
        return CgroupCounters(f"{self.path}/{name}", root=self.root)

    def enter(self, name: str, init_pid: int) -> int:
        """Move the job's init (the one process beside the sandbox's init, cloned and
        waiting for its release) into job ``name``'s cgroup in every hierarchy; its
        host pid."""
        others = [p for p in map(int, _read(self._procs).split()) if p != init_pid]
        if len(others) != 1:
            raise OSError(f"expected the job's init beside the sandbox's, found {others}")
        for top, _, _ in self._tops:
            write_text(f"{top}/{name}/cgroup.procs", str(others[0]))
        return others[0]

    def remove(self, name: str) -> bool:
        """Remove job ``name``'s cgroup (once its processes are gone); False if some
        hierarchy would not let go of it."""
        removed = True
        for top, _, _ in self._tops:
            try:
                os.rmdir(f"{top}/{name}")
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed


def write_text(path: str | Path, text: str) -> None:
    """One write of ``text`` to a kernel file (a cgroup's, a process's id map)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
