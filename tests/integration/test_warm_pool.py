"""Warm one-shot sandboxes (engine/pool.py) under every runtime.

A warm sandbox is created before its request and used exactly once: two programs
served from the pool one after the other must see nothing of each other, and a warm
sandbox that died while idle is never handed out.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from crucible.core.config import Settings
from crucible.engine import Sandbox
from support.polling import aeventually
from support.sandbox_fixtures import limits, run_code, settled_leftovers

pytestmark = pytest.mark.timeout(180)

# Leaves a trace of itself everywhere a later program could look: a file in the
# workspace, in /tmp and /dev/shm, a process that would outlive the run, and an
# exported variable; then reports what of an earlier program's traces it can see.
TRACE = """
import os, subprocess, sys
mark = sys.argv[1] if len(sys.argv) > 1 else os.environ.get('MARK', 'x')
seen = []
for d in ('/workspace', '/tmp', '/dev/shm'):
    seen += [f'{d}/{f}' for f in os.listdir(d) if f.startswith('trace-')]
for p in os.listdir('/proc'):
    if p.isdigit():
        try:
            cmd = open(f'/proc/{p}/cmdline', 'rb').read()
        except OSError:
            continue
        if b'trace-sleeper' in cmd:
            seen.append('process ' + cmd.decode(errors='replace'))
seen += [k for k in os.environ if k.startswith('TRACE_')]
for d in ('/workspace', '/tmp', '/dev/shm'):
    open(f'{d}/trace-{mark}', 'w').write(mark)
subprocess.Popen(['sh', '-c', 'exec -a trace-sleeper sleep 30'], start_new_session=True)
print(sorted(seen))
"""


async def _wait_warm(sandbox: Sandbox, runtime: str, count: int = 1) -> None:
    """Until the pool holds ``count`` idle sandboxes of ``runtime``. Bound: creating
    one takes well under a second (gVisor ~0.4 s here); 30 s is a stuck pool."""
    await aeventually(
        lambda: any(s.runtime == runtime and s.idle >= count for s in sandbox.warm_stats()),
        within=30,
        reason=f"{count} warm {runtime} sandbox(es)",
    )


async def test_consecutive_pooled_programs_see_nothing_of_each_other(
    runtime: str, sandbox: Sandbox
) -> None:
    await sandbox.warm(runtime, limits(sandbox.settings), 2)  # type: ignore[arg-type]
    await _wait_warm(sandbox, runtime, 2)
    hits = sandbox.pool.hits
    first = await run_code(sandbox, runtime, TRACE)
    await _wait_warm(sandbox, runtime)
    second = await run_code(sandbox, runtime, TRACE)
    assert sandbox.pool.hits == hits + 2, "both programs should have run warm"
    assert (first.termination, first.stdout) == ("exited", "[]\n"), first
    assert (second.termination, second.stdout) == ("exited", "[]\n"), second
    assert await settled_leftovers(sandbox) == []


async def test_pool_follows_demand_and_stays_bounded(runtime: str, sandbox: Sandbox) -> None:
    """Each request asks for one replacement, so a burst leaves about as many warm
    sandboxes as it had runs at once, never more than the pool's size."""
    size = sandbox.pool.size
    results = await asyncio.gather(*(run_code(sandbox, runtime, "print(7)") for _ in range(12)))
    assert all(r.stdout == "7\n" for r in results)
    await _wait_warm(sandbox, runtime, min(size, 2))
    idle = sum(s.idle for s in sandbox.warm_stats())
    assert 1 <= idle <= size, sandbox.warm_stats()
    stats = next(s for s in sandbox.warm_stats() if s.runtime == runtime)
    assert stats.pids >= stats.idle and stats.memory_bytes > 0, stats


async def test_a_warm_sandbox_that_died_is_never_handed_out(runtime: str, sandbox: Sandbox) -> None:
    await sandbox.warm(runtime, limits(sandbox.settings), 1)  # type: ignore[arg-type]
    await _wait_warm(sandbox, runtime)
    (box,) = next(v for k, v in sandbox.pool.idle().items() if k.runtime == runtime)  # type: ignore[attr-defined]
    os.kill(box.container.pid, signal.SIGKILL)
    await asyncio.wait_for(box.container.exited.wait(), 10)
    result = await run_code(sandbox, runtime, "print('fresh')")
    assert (result.termination, result.stdout) == ("exited", "fresh\n"), result
    assert await settled_leftovers(sandbox) == []


async def test_limits_of_another_shape_are_not_served_from_the_pool(
    sandbox: Sandbox,
) -> None:
    """A warm sandbox's cgroup was made for its shape: a request with another memory
    limit gets a sandbox made for it, and its limit holds."""
    await sandbox.warm("crun", limits(sandbox.settings), 1)
    await _wait_warm(sandbox, "crun")
    hits = sandbox.pool.hits
    result = await run_code(sandbox, "crun", "x = bytearray(100 << 20)", memory_mb=48)
    assert result.termination == "memory_limit", result
    assert sandbox.pool.hits == hits


async def test_pool_off_runs_cold(sandbox_settings: Settings) -> None:
    engine = Sandbox(sandbox_settings.model_copy(update={"pool_size": 0}))
    try:
        result = await run_code(engine, "crun", "print('cold')")
        assert result.stdout == "cold\n" and engine.warm_stats() == []
        assert engine.pool.hits == 0
    finally:
        assert await settled_leftovers(engine) == []
