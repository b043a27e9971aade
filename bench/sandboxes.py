"""Long-lived agent sandboxes: figures and ratios measured side by side in one run.

    create / close      p50 and p99 per runtime (target: create <= 150 ms under runc)
    exec of `true`      Session.exec round trip vs a bare `runc exec` into the same
                        running container (the mechanism's own overhead, as a ratio),
                        and through the API (POST …/exec to a `crucible serve`
                        subprocess, runc; target p50 <= 25 ms), interleaved with both
    20 alive at once    memory per idle sandbox (its cgroup's usage)

Run as root: ``.venv/bin/python bench/sandboxes.py [--n 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from _server import AUTH, serve
from crucible.core.config import Settings
from crucible.engine import Sandbox
from crucible.engine.models import SessionLimits, SessionSpec

LIMITS = SessionLimits(memory_mb=256, cpus=1, pids=128, disk_mb=256)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(name: str, ms: list[float]) -> str:
    return f"{name:<34} p50 {statistics.median(ms):7.1f} ms   p99 {pct(ms, 99):7.1f} ms"


async def main(n: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="crucible-bench-", dir="/run"))
    engine = Sandbox(Settings(state_dir=state, data_dir=state / "data", pool_size=0))
    await engine.prepare()
    spec = {rt: SessionSpec(runtime=rt, limits=LIMITS) for rt in ("runc", "gvisor")}
    warm = await engine.sessions.create(spec["runc"], session_id="warm")  # skeleton built
    await warm.close()
    for rt in ("runc", "gvisor"):
        creates, closes = [], []
        for i in range(n if rt == "runc" else max(5, n // 3)):
            t0 = time.perf_counter()
            s = await engine.sessions.create(spec[rt], session_id=f"b{i}")
            t1 = time.perf_counter()
            await s.close()
            creates.append((t1 - t0) * 1000)
            closes.append((time.perf_counter() - t1) * 1000)
        print(line(f"create ({rt})", creates))
        print(line(f"close ({rt})", closes))
    s = await engine.sessions.create(spec["runc"], session_id="exec")
    rt = engine.get_runtime("runc")
    ours, bare, api = [], [], []
    with serve(CRUCIBLE_DEFAULT_RUNTIME="runc") as url:
        async with httpx.AsyncClient(base_url=f"{url}/api/v1", headers=AUTH, timeout=60) as c:
            r = await c.post("/sandboxes", json={"runtime": "runc", "limits": LIMITS.model_dump()})
            r.raise_for_status()
            sid = r.json()["id"]
            await c.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]})  # warm
            for _ in range(n):  # interleaved, so all three see the same machine
                t0 = time.perf_counter()
                await s.exec(["true"])
                ours.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                await asyncio.to_thread(
                    subprocess.run, [*rt.argv, "exec", s.container_id, "true"], check=True
                )
                bare.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                r = await c.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]})
                api.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200 and r.json()["returncode"] == 0, r.text
            await c.delete(f"/sandboxes/{sid}")
    print(line("exec true (Session.exec, runc)", ours))
    print(line("exec true (bare runc exec)", bare))
    print(line("exec true (through the API, runc)", api))
    ratio = statistics.median(ours) / statistics.median(bare)
    print(f"{'ratio Session.exec / runc exec':<34} {ratio:.2f}")
    ratio = statistics.median(api) / statistics.median(ours)
    print(f"{'ratio API / Session.exec':<34} {ratio:.2f}")
    await s.close()
    many = [await engine.sessions.create(spec["runc"], session_id=f"m{i}") for i in range(20)]
    await asyncio.sleep(1)
    per = [x._container.counters.memory_bytes() for x in many]
    print(
        f"{'20 idle sandboxes (runc)':<34} {statistics.median(per) / 2**20:.2f} MiB each (median)"
    )
    await engine.close()
    shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=30)
    asyncio.run(main(parser.parse_args().n))
