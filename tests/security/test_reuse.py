"""One-shot sandboxes that run one program after another (Sandbox._job, init.c's
job_main): each program gets namespaces and a cgroup of its own, so the next one in
the same container sees nothing of it, and its figures are its own.

Every test checks that the program really ran in a reused sandbox (the same box,
one more job), so none of them passes by falling back to fresh containers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest

from crucible.engine import Result, Sandbox
from crucible.engine import sandbox as sandbox_module
from support.polling import aeventually
from support.sandbox_fixtures import run_code, settled_leftovers

pytestmark = pytest.mark.timeout(120)

REUSED = ["runc", "crun"]

# Leaves what it can outside its workspace (which it leaves as it found it, so the
# sandbox is reused): files in /tmp and /dev/shm, a daemon in a session of its own
# listening on an abstract unix socket and on the loopback, a SysV shared memory
# segment, a message queue and a semaphore set, and it changes its own limits.
LEAVE = textwrap.dedent(
    """
    import ctypes, os, resource, socket, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    open("/tmp/left-by-a", "w").write("a")
    open("/dev/shm/left-by-a", "w").write("a")
    ids = [libc.shmget(0x5eed, 4096, 0o1666), libc.msgget(0x5eed, 0o1666), libc.semget(0x5eed, 1, 0o1666)]
    assert min(ids) >= 0, ids
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            u = socket.socket(socket.AF_UNIX); u.bind("\\0left-by-a"); u.listen()
            t = socket.socket(); t.bind(("127.0.0.1", 4711)); t.listen()
            time.sleep(60)
        os._exit(0)
    time.sleep(0.2)
    print(os.getpid())
    """
)

# Reports what it can see of an earlier program.
LOOK = textwrap.dedent(
    """
    import os, socket
    seen = []
    for d in ("/tmp", "/dev/shm", "/workspace"):
        seen += [f"{d}/{f}" for f in os.listdir(d) if f != "main.py"]
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    if pids != [1, os.getpid()]:
        seen.append(f"processes {pids}")
    for kind in ("shm", "msg", "sem"):
        rows = open(f"/proc/sysvipc/{kind}").read().splitlines()[1:]
        seen += [f"sysv {kind} {r.split()[0]}" for r in rows]
    for family, address in ((socket.AF_UNIX, "\\0left-by-a"), (socket.AF_INET, ("127.0.0.1", 4711))):
        s = socket.socket(family)
        try:
            s.connect(address)
            seen.append(f"listener {address!r}")
        except OSError:
            pass
    print(os.getpid(), sorted(seen))
    """
)


async def _idle_box(sandbox: Sandbox, runtime: str) -> Any:
    """The one idle warm sandbox of ``runtime`` once the last run has given it back.
    Bound: a recycled sandbox is back when its run returns; 10 s is a lost one."""

    def found() -> Any:
        boxes = [b for k, v in sandbox.pool.idle().items() if k.runtime == runtime for b in v]  # type: ignore[attr-defined]
        return boxes[0] if len(boxes) == 1 else None

    return await aeventually(found, within=10, reason=f"one idle {runtime} sandbox")


async def _run_in(sandbox: Sandbox, runtime: str, code: str, **overrides: Any) -> Result:
    return await run_code(sandbox, runtime, code, **overrides)


@pytest.mark.parametrize("runtime", REUSED)
async def test_the_next_program_in_a_reused_sandbox_sees_nothing_of_the_last(
    runtime: str, sandbox: Sandbox
) -> None:
    engine = Sandbox(sandbox.settings.model_copy(update={"pool_size": 1}))
    try:
        first = await _run_in(engine, runtime, "print('warm-up')")
        assert first.stdout == "warm-up\n", first
        box = await _idle_box(engine, runtime)
        assert box.channel is not None, "the sandbox should run jobs"
        uses = box.uses
        a = await _run_in(engine, runtime, LEAVE)
        assert (a.termination, a.exit_code) == ("exited", 0), a.stderr
        assert await _idle_box(engine, runtime) is box and box.uses == uses + 1
        # Nothing of the first program is left in the container (the daemon died with
        # the job's pid namespace): its cgroup holds its init and the next job's, made
        # while the first ran and waiting for its program.
        await aeventually(lambda: box.next is not None and box.next.done(), within=10,
                          reason="the next job made")  # fmt: skip
        assert box.container.counters.pids() == 2
        b = await _run_in(engine, runtime, LOOK)
        assert await _idle_box(engine, runtime) is box and box.uses == uses + 2
        assert (b.termination, b.exit_code) == ("exited", 0), b.stderr
        pid, seen = b.stdout.split(" ", 1)
        assert seen.strip() == "[]", b.stdout
        # Each program is PID 2 of its own namespace: the pid counter tells nothing.
        assert pid == a.stdout.strip() == "2", (a.stdout, b.stdout)
    finally:
        assert await settled_leftovers(engine) == []


@pytest.mark.parametrize("runtime", REUSED)
async def test_each_job_has_its_own_figures_and_limits(runtime: str, sandbox: Sandbox) -> None:
    """A job's CPU time, peak memory and limits are its own cgroup's: a big job, then a
    small one in the same sandbox, then a job over the memory limit (a memory
    verdict, and the sandbox is not given another job)."""
    engine = Sandbox(sandbox.settings.model_copy(update={"pool_size": 1}))
    try:
        await _run_in(engine, runtime, "pass", memory_mb=128)
        box = await _idle_box(engine, runtime)
        big = await _run_in(
            engine, runtime, "x = bytearray(80 << 20)\nsum(range(3_000_000))", memory_mb=128
        )
        assert big.termination == "exited" and big.peak_memory_bytes > 80 << 20, big
        small = await _run_in(engine, runtime, "pass", memory_mb=128)
        assert await _idle_box(engine, runtime) is box
        assert small.termination == "exited", small
        assert small.peak_memory_bytes < 40 << 20, small.peak_memory_bytes
        assert small.cpu_ms < big.cpu_ms, (small.cpu_ms, big.cpu_ms)
        assert small.events.oom_kill == 0 and small.events.pids_limit == 0
        over = await _run_in(engine, runtime, "x = bytearray(200 << 20)", memory_mb=128)
        assert over.termination == "memory_limit", over
        bomb = await _run_in(
            engine, runtime, "import os\nwhile True:\n    os.fork()", memory_mb=128, pids=16,
            timeout_s=3,
        )  # fmt: skip
        assert bomb.events.pids_limit > 0, bomb
        after = await _run_in(engine, runtime, "print('fine')", memory_mb=128)
        assert (after.termination, after.stdout, after.events.oom_kill) == ("exited", "fine\n", 0)
    finally:
        assert await settled_leftovers(engine) == []


@pytest.mark.parametrize("runtime", REUSED)
async def test_a_stopped_job_costs_its_sandbox(runtime: str, sandbox: Sandbox) -> None:
    """A job the supervisor had to stop (here: its time limit) is not trusted to have
    left its sandbox clean: the sandbox is discarded, and the next run gets another."""
    engine = Sandbox(sandbox.settings.model_copy(update={"pool_size": 1}))
    try:
        await _run_in(engine, runtime, "pass")
        box = await _idle_box(engine, runtime)
        slow = await _run_in(engine, runtime, "import time\ntime.sleep(60)", timeout_s=1)
        assert slow.termination == "timeout", slow
        after = await _run_in(engine, runtime, "print('next')")
        assert after.stdout == "next\n"
        assert await _idle_box(engine, runtime) is not box
    finally:
        assert await settled_leftovers(engine) == []


async def test_a_next_job_that_died_waiting_is_never_given_a_program(sandbox: Sandbox) -> None:
    """The next job's init, made ahead and killed from the host while it waits: the
    next run notices, discards that sandbox and runs in another."""
    engine = Sandbox(sandbox.settings.model_copy(update={"pool_size": 1}))
    try:
        await _run_in(engine, "crun", "pass")
        box = await _idle_box(engine, "crun")
        await aeventually(lambda: box.next is not None and box.next.done(), within=10,
                          reason="the next job made")  # fmt: skip
        job = box.next.result()
        for hierarchy in ("memory/", ""):  # cgroup v1, v2
            procs = Path(f"/sys/fs/cgroup/{hierarchy}{box.jobs.path}/{job.name}/cgroup.procs")
            if procs.exists():
                break
        (pid,) = map(int, procs.read_text().split())
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(job.ended.wait(), 10)
        r = await _run_in(engine, "crun", "print('elsewhere')")
        assert (r.termination, r.stdout) == ("exited", "elsewhere\n"), r
        assert await _idle_box(engine, "crun") is not box
    finally:
        assert await settled_leftovers(engine) == []


async def test_exit_statuses_stay_exact_in_a_reused_sandbox(sandbox: Sandbox) -> None:
    """exit(137) is an exit code, SIGKILL a signal, in the second job as in the first."""
    runtime = "crun"
    engine = Sandbox(sandbox.settings.model_copy(update={"pool_size": 1}))
    try:
        await _run_in(engine, runtime, "pass")
        box = await _idle_box(engine, runtime)
        coded = await _run_in(engine, runtime, "import sys\nsys.exit(137)")
        assert (coded.exit_code, coded.signal) == (137, None), coded
        killed = await _run_in(engine, runtime, "import os, signal\nos.kill(os.getpid(), 9)")
        assert (killed.exit_code, killed.signal) == (None, "SIGKILL"), killed
        assert box.uses >= 2
    finally:
        assert await settled_leftovers(engine) == []


async def test_reuse_off_gives_every_program_a_fresh_container(sandbox: Sandbox) -> None:
    engine = Sandbox(sandbox.settings.model_copy(update={"sandbox_reuse": 1, "pool_size": 1}))
    try:
        for _ in range(2):
            r = await _run_in(engine, "crun", "print('cold')")
            assert r.stdout == "cold\n"
        box = await _idle_box(engine, "crun")
        assert box.channel is None and box.uses == 0
    finally:
        assert await settled_leftovers(engine) == []


async def test_a_full_pool_is_not_refilled_behind_its_back(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs at a time, sandboxes of three jobs each, a pool of two: containers are
    made for sandboxes that reached their last job, and no more. A clean sandbox the
    full pool refused used to be replaced anyway, one sandbox too many, refused in
    turn: a container made and one destroyed for runs that needed none."""
    engine = Sandbox(sandbox.settings.model_copy(update={"sandbox_reuse": 3, "pool_size": 2}))
    made = 0
    make = engine._make

    async def counted(shape: Any) -> Any:
        nonlocal made
        made += 1
        return await make(shape)

    monkeypatch.setattr(engine, "_make", counted)
    monkeypatch.setattr(engine._pool, "_make", counted)  # its refills
    try:

        async def one_after_another() -> None:  # runs longer than the refill's delay
            for _ in range(12):
                r = await _run_in(engine, "crun", "import time; time.sleep(0.05); print(1)")
                assert r.stdout == "1\n", r

        await asyncio.gather(one_after_another(), one_after_another())  # 24 runs
        await aeventually(lambda: engine.quiet, within=10, reason="the refills made")
        # Each sandbox runs 2 programs: 12 for the 24, 13 with the jobs' probe, and the
        # pool's spare (11 here; 18 when refused sandboxes were replaced).
        assert made <= 15, made
    finally:
        assert await settled_leftovers(engine) == []


async def test_a_host_that_refuses_the_jobs_gets_a_container_per_program(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the jobs cannot be made (here: their id maps refused, as a host that forbids
    unprivileged user namespaces would), the engine learns it from its first job, a
    `true`, and runs every program in a container of its own; none fails."""

    def refuse(pid: int) -> None:
        raise PermissionError(1, "Operation not permitted", f"/proc/{pid}/uid_map")

    monkeypatch.setattr(sandbox_module, "_map_ids", refuse)
    engine = Sandbox(sandbox.settings.model_copy(update={"pool_size": 1}))
    try:
        for _ in range(3):
            r = await _run_in(engine, "crun", "print('fresh')")
            assert (r.termination, r.stdout) == ("exited", "fresh\n"), r
        await aeventually(lambda: engine.quiet, within=10, reason="the refills made")
        idle = [b for k, v in engine.pool.idle().items() if k.runtime == "crun" for b in v]  # type: ignore[attr-defined]
        assert idle and all(b.channel is None for b in idle), idle
        kept = {k: v for k, v in engine.pool.idle().items() if v}
        assert all(not k.reuse for k in kept), kept  # type: ignore[attr-defined]
    finally:
        assert await settled_leftovers(engine) == []


async def test_gvisor_sandboxes_are_used_once(sandbox: Sandbox) -> None:
    """gVisor keeps the one-shot path (its kernel's user namespaces are not ours to
    vouch for): a sandbox per program."""
    engine = Sandbox(sandbox.settings.model_copy(update={"pool_size": 1}))
    try:
        r = await _run_in(engine, "gvisor", "print('once')")
        assert r.stdout == "once\n"
        box = await _idle_box(engine, "gvisor")
        assert box.channel is None
    finally:
        assert await settled_leftovers(engine) == []
