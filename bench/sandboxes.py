"""Long-lived agent sandboxes: figures and ratios measured side by side in one run.

    create / close      p50 and p99 per runtime (target: create <= 150 ms under runc)
    exec of `true`      per runtime, interleaved in one loop: Session.exec through the
                        init's exec agent, Session.exec through the runtime's `exec`
                        verb (the agent off), a bare `<runtime> exec` into the same
                        running container, and a bare spawn of the host's `true`
    through the API     POST …/exec of `true` to two `crucible serve` subprocesses,
                        one with the agent (the default) and one with
                        CRUCIBLE_EXEC_AGENT=false, for runc and crun; beside them the
                        HTTP floor (GET /healthz). Target: API exec with the agent
                        <= floor + bare spawn + 8 ms (p50)
    20 alive at once    memory per idle sandbox (its cgroup's usage)

gVisor keeps the runtime's `exec` (its sentry cannot take host fds over a socket):
its rows show that mechanism only. Run as root:
``.venv/bin/python bench/sandboxes.py [--n 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from _server import AUTH, percentile, serve
from crucible.core.config import Settings
from crucible.engine import Sandbox
from crucible.engine.models import SessionLimits, SessionSpec

LIMITS = SessionLimits(memory_mb=256, cpus=1, pids=128, disk_mb=256)
RUNTIMES = ("runc", "crun", "gvisor")


def line(name: str, ms: list[float]) -> str:
    return (
        f"{name:<44} p50 {statistics.median(ms):7.1f}   p90 {percentile(ms, 90):7.1f}"
        f"   p99 {percentile(ms, 99):7.1f} ms"
    )


async def timed(into: list[float], step: Callable[[], Awaitable[object]]) -> None:
    t0 = time.perf_counter()
    await step()
    into.append((time.perf_counter() - t0) * 1000)


def run(argv: list[str]) -> Callable[[], Awaitable[object]]:
    async def step() -> None:
        proc = await asyncio.create_subprocess_exec(*argv)
        assert await proc.wait() == 0

    return step


async def lifecycle(engine: Sandbox, n: int) -> None:
    for rt in ("runc", "crun", "gvisor"):
        spec = SessionSpec(runtime=rt, limits=LIMITS)
        creates, closes = [], []
        for i in range(n if rt != "gvisor" else max(5, n // 3)):
            t0 = time.perf_counter()
            s = await engine.sessions.create(spec, session_id=f"b{i}")
            t1 = time.perf_counter()
            await s.close()
            creates.append((t1 - t0) * 1000)
            closes.append((time.perf_counter() - t1) * 1000)
        print(line(f"create ({rt})", creates))
        print(line(f"close ({rt})", closes))


async def engine_execs(engine: Sandbox, n: int) -> None:
    rows: dict[str, list[float]] = {}
    boxes = {}
    for rt in RUNTIMES:
        spec = SessionSpec(runtime=rt, limits=LIMITS)
        if rt != "gvisor":
            boxes[(rt, "agent")] = await engine.sessions.create(
                spec, session_id=f"a-{rt}", exec_agent=True
            )
        boxes[(rt, "exec")] = await engine.sessions.create(
            spec, session_id=f"e-{rt}", exec_agent=False
        )
    for s in boxes.values():
        await s.exec(["true"])  # warm: the first exec pages things in
    bare_spawn: list[float] = []
    for i in range(n):  # interleaved: every row sees the same machine
        await timed(bare_spawn, run(["/bin/true"]))
        for (rt, how), s in boxes.items():
            if rt == "gvisor" and i >= max(5, n // 3):
                continue
            row = rows.setdefault(f"Session.exec ({rt}, {how})", [])
            await timed(row, functools.partial(s.exec, ["true"]))
            if how == "exec":
                argv = [*engine.get_runtime(rt).argv, "exec", s.container_id, "true"]
                await timed(rows.setdefault(f"bare {rt} exec", []), run(argv))
    print(line("bare spawn of /bin/true", bare_spawn))
    for name, ms in rows.items():
        print(line(name, ms))
    for rt in ("runc", "crun"):
        agent = statistics.median(rows[f"Session.exec ({rt}, agent)"])
        verb = statistics.median(rows[f"Session.exec ({rt}, exec)"])
        print(f"{f'ratio agent / runtime exec ({rt}, p50)':<44} {agent / verb:.2f}")
    for s in boxes.values():
        await s.close()


async def api_execs(n: int) -> None:
    with contextlib.ExitStack() as stack:
        urls = {
            "agent": stack.enter_context(serve(CRUCIBLE_DEFAULT_RUNTIME="crun")),
            "exec": stack.enter_context(
                serve(CRUCIBLE_DEFAULT_RUNTIME="crun", CRUCIBLE_EXEC_AGENT="false")
            ),
        }
        clients = {
            how: httpx.AsyncClient(base_url=f"{url}/api/v1", headers=AUTH, timeout=60)
            for how, url in urls.items()
        }
        floor = httpx.AsyncClient(base_url=urls["agent"], timeout=60)
        boxes: dict[tuple[str, str], str] = {}
        for how, c in clients.items():
            for rt in ("runc", "crun"):
                r = await c.post("/sandboxes", json={"runtime": rt, "limits": LIMITS.model_dump()})
                r.raise_for_status()
                boxes[(rt, how)] = r.json()["id"]
                await c.post(f"/sandboxes/{boxes[(rt, how)]}/exec", json={"cmd": ["true"]})
        rows: dict[str, list[float]] = {"HTTP floor (GET /healthz)": [], "bare spawn": []}
        for _ in range(n):
            await timed(rows["HTTP floor (GET /healthz)"], lambda: floor.get("/healthz"))
            await timed(rows["bare spawn"], run(["/bin/true"]))
            for (rt, how), sid in boxes.items():
                c = clients[how]
                answer: list[httpx.Response] = []

                async def post(
                    c: httpx.AsyncClient = c, sid: str = sid, into: list[httpx.Response] = answer
                ) -> None:
                    into.append(await c.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]}))

                await timed(rows.setdefault(f"API exec ({rt}, {how})", []), post)
                assert answer[0].status_code == 200 and answer[0].json()["returncode"] == 0
        for name, ms in rows.items():
            print(line(name, ms))
        base = statistics.median(rows["HTTP floor (GET /healthz)"]) + statistics.median(
            rows["bare spawn"]
        )
        for rt in ("runc", "crun"):
            for how in ("agent", "exec"):
                over = statistics.median(rows[f"API exec ({rt}, {how})"]) - base
                print(f"{f'API exec ({rt}, {how}) - floor - spawn, p50':<44} {over:+7.1f} ms")
        for (_, how), sid in boxes.items():
            await clients[how].delete(f"/sandboxes/{sid}")
        for c in [*clients.values(), floor]:
            await c.aclose()


async def main(n: int, only_exec: bool) -> None:
    state = Path(tempfile.mkdtemp(prefix="crucible-bench-", dir="/run"))
    state.chmod(0o711)  # noqa: ASYNC240 (set-up)
    engine = Sandbox(Settings(state_dir=state, data_dir=state / "data", pool_size=0))
    await engine.prepare()
    warm = await engine.sessions.create(SessionSpec(runtime="runc", limits=LIMITS), session_id="w")
    await warm.close()  # the skeleton is built
    if not only_exec:
        await lifecycle(engine, n)
    await engine_execs(engine, n)
    await api_execs(n)
    if not only_exec:
        spec = SessionSpec(runtime="runc", limits=LIMITS)
        many = [await engine.sessions.create(spec, session_id=f"m{i}") for i in range(20)]
        await asyncio.sleep(1)  # not a bound: let the inits settle before reading usage
        per = [x._container.counters.memory_bytes() for x in many]
        print(f"{'20 idle sandboxes (runc)':<44} {statistics.median(per) / 2**20:.2f} MiB each")
    await engine.close()
    subprocess.run(["umount", "-R", "-l", str(state)], capture_output=True, check=False)  # noqa: ASYNC221
    shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--exec-only", action="store_true", help="skip create/close and memory")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.exec_only))
