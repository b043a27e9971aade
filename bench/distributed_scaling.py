"""Distributed scaling: the same 1,000 hello-world evaluations through the embedded
server, and through `crucible serve --dispatcher celery` with 1, 2 and 4 `crucible
worker` processes (concurrency 1 each), all on this machine, in this one run.

Prints throughput, queue wait p50/p99 (submission to start, from the stored records)
and each setup's throughput relative to the embedded server. Needs redis-server on
PATH and the PostgreSQL at CRUCIBLE_TEST_PG (default postgres@127.0.0.1:5432); makes
and drops its own database and Redis.

    .venv/bin/python bench/distributed_scaling.py [--n 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg

from _server import percentile

CRUCIBLE = str(Path(sys.executable).with_name("crucible"))
PG_ADMIN = os.environ.get("CRUCIBLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
KEY = "crk_benchmarkbenchmarkbenchmark00"
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def database() -> Iterator[str]:
    name = f"crucible_bench_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def deployment(workers: int) -> Iterator[str]:
    """An API (embedded when workers == 0, else celery + that many workers)."""
    root = Path(tempfile.mkdtemp(prefix="crucible-bench-dist-", dir="/tmp"))
    procs: list[subprocess.Popen[bytes]] = []
    redis_port = free_port()
    port = free_port()
    with database() as db:
        env = {
            **os.environ,
            "CRUCIBLE_DATABASE_URL": db,
            "CRUCIBLE_BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
            "CRUCIBLE_STATE_DIR": str(root / "state"),
            "CRUCIBLE_DATA_DIR": str(root / "data"),
            "CRUCIBLE_BOOTSTRAP_ADMIN_KEY": KEY,
            "CRUCIBLE_MAX_CONCURRENCY": "1",
        }
        log = open(root / "log", "wb")  # noqa: SIM115 - closed below

        def spawn(*argv: str) -> None:
            procs.append(
                subprocess.Popen(argv, env=env, stdout=log, stderr=log, start_new_session=True)
            )

        try:
            mode = "celery" if workers else "embedded"
            if workers:
                spawn("redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no")
            spawn(CRUCIBLE, "serve", "--dispatcher", mode, "--port", str(port))
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        break
                time.sleep(0.1)
            for _ in range(workers):
                spawn(CRUCIBLE, "worker", "--concurrency", "1")
            with httpx.Client(base_url=f"{url}/api/v1", headers=AUTH, timeout=30) as api:
                for _ in range(600):
                    alive = [
                        w for w in api.get("/workers").json()["items"] if w["state"] == "alive"
                    ]
                    if len([w for w in alive if w["kind"] == "celery"]) >= workers:
                        break
                    time.sleep(0.1)
                time.sleep(1.0 if workers else 0)  # let the Celery consumers come up
            yield url
        finally:
            for p in reversed(procs):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(5)
            log.close()
            subprocess.run(["umount", "-R", "-l", str(root / "state")], capture_output=True)
            shutil.rmtree(root, ignore_errors=True)


def measure(url: str, n: int) -> dict[str, float]:
    with httpx.Client(base_url=f"{url}/api/v1", headers=AUTH, timeout=120) as api:
        warm = api.post("/evaluations", json={"code": "print('warm')"}, params={"wait": 30})
        assert warm.json()["status"] == "completed", warm.text
        items = [{"code": "print('hello')"} for _ in range(n)]
        start = time.perf_counter()
        batch = api.post("/batches", json={"items": items}).json()["id"]
        while not api.get(f"/batches/{batch}").json()["finished"]:
            time.sleep(0.2)
        wall = time.perf_counter() - start
        waits: list[float] = []
        cursor = None
        while True:
            params = {"batch_id": batch, "limit": 500, **({"cursor": cursor} if cursor else {})}
            page = api.get("/evaluations", params=params).json()
            for ev in page["items"]:
                assert ev["status"] == "completed", ev
                waits.append(ev["queue_wait_ms"])
            cursor = page["next_cursor"]
            if not cursor:
                break
    assert len(waits) == n
    return {"rate": n / wall, "p50": percentile(waits, 50), "p99": percentile(waits, 99)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    setups = [("embedded (1 sandbox)", 0), ("celery, 1 worker", 1), ("celery, 2 workers", 2),
              ("celery, 4 workers", 4)]  # fmt: skip
    rows = []
    for name, workers in setups:
        with deployment(workers) as url:
            rows.append((name, measure(url, args.n)))
        print(f"  done: {name}", file=sys.stderr)
    base = rows[0][1]["rate"]
    one = rows[1][1]["rate"]
    print(f"\n{args.n} hello-world evaluations, {os.cpu_count()} cores, one run\n")
    print(f"{'setup':<22}{'eval/s':>9}{'wait p50 ms':>13}{'wait p99 ms':>13}"
          f"{'vs embedded':>13}{'vs 1 worker':>13}")  # fmt: skip
    for name, r in rows:
        print(f"{name:<22}{r['rate']:>9.1f}{r['p50']:>13.0f}{r['p99']:>13.0f}"
              f"{r['rate'] / base:>13.2f}{r['rate'] / one:>13.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
