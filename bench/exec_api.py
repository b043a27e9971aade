"""POST /api/v1/sandboxes/{id}/exec of `true`, this tree against another, side by side.

Two (or more) `crucible serve` subprocesses, one per source tree (this one, and each
``--base SRC``: a ``src`` directory of another commit, e.g. from ``git archive``, put
first on the server's PYTHONPATH), each with a runc and a crun sandbox (the exec agent
on, the default). One loop interleaves, per iteration: the HTTP floor (GET /healthz) of
every server, a bare spawn of /bin/true, and one exec per (tree, runtime); so every row
sees the same machine. Printed per row: p50/p90, p50 over floor + spawn (the target:
<= +8 ms), and the server process's own CPU per exec (utime + stime read from /proc
around each request: load-robust where latency is not). ``--statements`` adds the
database statements and commits per exec of this tree, counted with SQLAlchemy's
cursor events on an in-process app.

    .venv/bin/python bench/exec_api.py [--n 200] [--base /tmp/base/src]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from _server import AUTH, percentile, serve, server_cpu_s

LIMITS = {"memory_mb": 256, "cpus": 1, "pids": 128, "disk_mb": 256}
RUNTIMES = ("runc", "crun")
EXEC = {"cmd": ["true"]}


async def spawn() -> None:
    proc = await asyncio.create_subprocess_exec("/bin/true")
    assert await proc.wait() == 0


async def ab(n: int, bases: list[str]) -> None:
    trees = {"this tree": None, **{f"base {i + 1}": b for i, b in enumerate(bases)}}
    with contextlib.ExitStack() as stack:
        urls: dict[str, str] = {}
        for name, src in trees.items():
            env = {"CRUCIBLE_DEFAULT_RUNTIME": "crun"}
            if src is not None:
                env["PYTHONPATH"] = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
            urls[name] = stack.enter_context(serve(**env))
        api = {
            name: httpx.AsyncClient(base_url=f"{url}/api/v1", headers=AUTH, timeout=60)
            for name, url in urls.items()
        }
        plain = {name: httpx.AsyncClient(base_url=url, timeout=60) for name, url in urls.items()}
        boxes: dict[tuple[str, str], str] = {}
        for name, c in api.items():
            for rt in RUNTIMES:
                r = await c.post("/sandboxes", json={"runtime": rt, "limits": LIMITS})
                r.raise_for_status()
                sid = boxes[(name, rt)] = r.json()["id"]
                for _ in range(5):  # warm: the first execs page things in
                    (await c.post(f"/sandboxes/{sid}/exec", json=EXEC)).raise_for_status()
        ms: dict[str, list[float]] = collections.defaultdict(list)
        cpu: dict[str, float] = collections.defaultdict(float)
        order = list(boxes.items())
        for i in range(n):
            # Each tree goes first in turn: a request right after another server's
            # answer shares the CPU with that server's bookkeeping (its audit entry).
            turn = order[i % len(order) :] + order[: i % len(order)]
            floors = list(plain.items())
            for name, c in floors[i % len(floors) :] + floors[: i % len(floors)]:
                t0 = time.perf_counter()
                (await c.get("/healthz")).raise_for_status()
                ms[f"floor ({name})"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            await spawn()
            ms["bare spawn"].append((time.perf_counter() - t0) * 1000)
            for (name, rt), sid in turn:
                c0 = server_cpu_s(urls[name])[0]
                t0 = time.perf_counter()
                r = await api[name].post(f"/sandboxes/{sid}/exec", json=EXEC)
                ms[f"API exec ({rt}, {name})"].append((time.perf_counter() - t0) * 1000)
                cpu[f"API exec ({rt}, {name})"] += server_cpu_s(urls[name])[0] - c0
                assert r.status_code == 200 and r.json()["returncode"] == 0, r.text
        for (name, _), sid in boxes.items():
            await api[name].delete(f"/sandboxes/{sid}")
        for c in [*api.values(), *plain.values()]:
            await c.aclose()
    spawn_p50 = statistics.median(ms["bare spawn"])
    print(f"{'':<28} {'p50':>7} {'p90':>7} {'- floor - spawn':>16} {'server CPU/exec':>16}")
    for row, values in ms.items():
        extra = ""
        if row.startswith("API exec"):
            tree = row.split(", ", 1)[1].rstrip(")")
            over = statistics.median(values) - statistics.median(ms[f"floor ({tree})"]) - spawn_p50
            extra = f" {over:+13.1f} ms {cpu[row] / n * 1000:13.2f} ms"
        print(f"{row:<28} {statistics.median(values):7.1f} {percentile(values, 90):7.1f}{extra}")


async def statements(n: int) -> None:
    """Statements and commits per exec of this tree, through an in-process app."""
    from sqlalchemy import event

    from crucible.api.app import create_app
    from crucible.core.config import Settings

    root = Path(tempfile.mkdtemp(prefix="crucible-bench-", dir="/tmp"))
    root.chmod(0o755)  # noqa: ASYNC240 (set-up)
    settings = Settings(
        state_dir=root / "state",
        data_dir=root / "data",
        bootstrap_admin_key=AUTH["Authorization"].split()[1],
        default_runtime="crun",
    )
    app = create_app(settings)
    counts: collections.Counter[str] = collections.Counter()

    def on_statement(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        counts[statement.lstrip().split(None, 1)[0].upper()] += 1

    def on_commit(_c: Any) -> None:
        counts["(commits)"] += 1

    try:
        async with app.router.lifespan_context(app):
            engine = app.state.service.store.engine
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://bench/api/v1", headers=AUTH
            ) as c:
                r = await c.post("/sandboxes", json={"runtime": "crun", "limits": LIMITS})
                sid = r.raise_for_status().json()["id"]
                await c.post(f"/sandboxes/{sid}/exec", json=EXEC)
                event.listen(engine, "before_cursor_execute", on_statement)
                event.listen(engine, "commit", on_commit)
                for _ in range(n):
                    (await c.post(f"/sandboxes/{sid}/exec", json=EXEC)).raise_for_status()
                event.remove(engine, "before_cursor_execute", on_statement)
                event.remove(engine, "commit", on_commit)
                await c.delete(f"/sandboxes/{sid}")
    finally:
        subprocess.run(["umount", "-R", "-l", str(root / "state")], capture_output=True)  # noqa: ASYNC221
        shutil.rmtree(root, ignore_errors=True)
    per = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(counts.items()))
    print(f"database work per exec (this tree, in process, n={n}): {per}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--base", action="append", default=[], help="another tree's src dir")
    parser.add_argument("--statements", action="store_true")
    args = parser.parse_args()
    if args.statements:
        asyncio.run(statements(min(args.n, 50)))
    asyncio.run(ab(args.n, args.base))


if __name__ == "__main__":
    main()
