"""The memory verdict, repeated while another process keeps every core busy.

A verdict must not depend on how busy the host is: a memory bomb that thrashes at its
limit on a loaded machine (instead of being OOM-killed at once) is still
``memory_limit``. Each memory case of the adversarial table runs ``REPEATS`` times per
runtime, one-shot and as an exec in an agent sandbox, with a busy loop on every core.

``make test`` runs each once (its busy loops take both cores from the rest of the suite
while they run); ``make test-memory-load`` runs 20
(``CRUCIBLE_MEMORY_REPEATS``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_adversarial import MEMORY_CASES, Case

from crucible.engine import Sandbox, accounting
from crucible.engine.models import SessionLimits, SessionSpec
from crucible.engine.session import SandboxStopped
from support.sandbox_fixtures import run_code

REPEATS = int(os.environ.get("CRUCIBLE_MEMORY_REPEATS", "1"))

pytestmark = pytest.mark.timeout(120)

# Agent sandboxes run each bomb as an exec: the same programs, as command lines.
_EXEC_ARGV = {
    "memory-bomb": ["python3", "-c", MEMORY_CASES[0].code],
    "memory-bomb-node": ["node", "-e", MEMORY_CASES[1].code],
    "memory-bomb-strings": ["python3", "-c", MEMORY_CASES[3].code],
}


@pytest.fixture(scope="module")
def every_core_busy() -> Iterator[None]:
    """One busy loop per core, for as long as the module runs."""
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 2)
    ]
    try:
        yield
    finally:
        for p in burners:
            p.kill()
            p.wait()


@pytest.mark.parametrize("attempt", range(REPEATS))
@pytest.mark.parametrize("case", MEMORY_CASES, ids=[c.id for c in MEMORY_CASES])
async def test_memory_bomb_under_load(
    case: Case, attempt: int, runtime: str, sandbox: Sandbox, every_core_busy: None
) -> None:
    result = await run_code(sandbox, runtime, case.code, language=case.language, **case.limits)
    case.check(result)


SESSION_MEMORY_MB = 256


@pytest.mark.parametrize("attempt", range(REPEATS))
@pytest.mark.parametrize("case_id", sorted(_EXEC_ARGV))
async def test_memory_bomb_in_an_agent_sandbox_under_load(
    case_id: str, attempt: int, runtime: str, sandbox: Sandbox, every_core_busy: None
) -> None:
    """An exec that takes all the sandbox's memory ends with ``memory_limit`` (killed,
    exit 137, or thrashing at the limit until its timeout), and the sandbox goes on
    (the next exec is not at the limit); under gVisor the sentry holding that memory is what the
    kernel kills, so the sandbox stops, and says so (a known limit, in the README)."""
    limits = SessionLimits(memory_mb=SESSION_MEMORY_MB, cpus=1, pids=64, disk_mb=64)
    session = await sandbox.sessions.create(
        SessionSpec(runtime=runtime, limits=limits),  # type: ignore[arg-type]
        session_id=f"sb_mem{attempt}{case_id[-4:]}",
    )
    try:
        try:
            r = await session.exec(_EXEC_ARGV[case_id], timeout_s=15)
        except SandboxStopped:
            assert runtime == "gvisor", "only gVisor's sandbox dies with its sentry"
            assert accounting.at_memory_limit(session.usage(), SESSION_MEMORY_MB << 20)
            return
        assert r.returncode != 0, (r.returncode, r.stderr[-500:])
        # The exec's own verdict: killed by the OOM killer (137), or (Node on a loaded
        # host, seen under runc) thrashing at the limit until the exec's timeout.
        assert r.memory_limit, (r, session.usage())
        assert accounting.at_memory_limit(session.usage(), SESSION_MEMORY_MB << 20)
        if runtime != "gvisor":
            if not r.timed_out:
                assert r.returncode == 137, (r.returncode, r.stderr[-500:])
            ok = await session.exec(["echo", "still"], timeout_s=30)
            assert ok.stdout == b"still\n" and not ok.memory_limit, ok
    finally:
        await session.close()
