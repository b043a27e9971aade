"""Agent sandboxes through an API instance that forwards to a sandbox host, beside the
same on an embedded server, in one run (issue 19; targets: forwarding adds <= 2 ms to
an exec, create <= 100 ms p50 with crun).

    create      POST /sandboxes → 201 (the record), then DELETE (not timed)
    exec        POST …/exec of `true`, one sandbox, sequential

Forwarded: a throwaway PostgreSQL and redis-server, one `crucible serve --dispatcher
celery` and one `crucible worker --sandboxes N` on 127.0.0.2 (tests/support/local_cluster.py).
Embedded: `crucible serve` on SQLite (bench/_server.py). The two alternate in rounds
so that the machine's load falls on both alike; ratios are the figure to read.

Run as root: ``PYTHONPATH=src:tests .venv/bin/python bench/sandbox_hosts.py [--n 40]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _server import AUTH as EMBEDDED_AUTH
from _server import percentile, serve
from support.local_cluster import AUTH, Cluster, PostgresServer, RedisServer, free_port, wait_for

BODY = {"ttl_s": 600, "idle_timeout_s": 600, "runtime": "crun"}


def timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return (time.perf_counter() - t) * 1000


def rounds(api: httpx.Client, n: int) -> tuple[list[float], list[float]]:
    creates: list[float] = []
    ids: list[str] = []
    for _ in range(n):
        holder: dict[str, str] = {}

        def create(holder: dict[str, str] = holder) -> None:
            r = api.post("/sandboxes", json=BODY)
            r.raise_for_status()
            holder["id"] = r.json()["id"]

        creates.append(timed(create))
        ids.append(holder["id"])
    sid = ids[0]
    execs = [
        timed(lambda: api.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]}).raise_for_status())
        for _ in range(n * 3)
    ]
    for i in ids:
        api.delete(f"/sandboxes/{i}")
    return creates, execs


def row(name: str, ms: list[float]) -> str:
    return f"| {name} | {statistics.median(ms):.1f} | {percentile(ms, 99):.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=40, help="creates per side (execs: 3x)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="crucible-bench-hosts-", dir="/tmp"))
    root.chmod(0o711)
    pg = PostgresServer(root / "pg")
    pg.init()
    pg.start()
    redis = RedisServer(root / "redis")
    redis.start()
    cluster = Cluster(root, pg.url, redis)
    results: dict[str, tuple[list[float], list[float]]] = {
        "embedded": ([], []),
        "forwarded": ([], []),
    }
    try:
        _api, url = cluster.api()
        cluster.worker(1, sandboxes=args.n + 4, listen=f"127.0.0.2:{free_port()}")
        forwarded = httpx.Client(base_url=f"{url}/api/v1", headers=AUTH, timeout=60)
        wait_for(lambda: forwarded.post("/sandboxes", json=BODY).status_code == 201, 30, "host")
        with serve() as eurl:
            embedded = httpx.Client(base_url=f"{eurl}/api/v1", headers=EMBEDDED_AUTH, timeout=60)
            per = max(1, args.n // 4)
            for _ in range(4):  # alternate: the machine's load falls on both alike
                for name, client in (("embedded", embedded), ("forwarded", forwarded)):
                    c, e = rounds(client, per)
                    results[name][0].extend(c)
                    results[name][1].extend(e)
    finally:
        cluster.teardown()
        redis.stop()
        pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
    print("| figure | p50 ms | p99 ms |\n|---|---|---|")
    for name in ("embedded", "forwarded"):
        print(row(f"create, {name}", results[name][0]))
    for name in ("embedded", "forwarded"):
        print(row(f"exec `true`, {name}", results[name][1]))
    ec, fc = (statistics.median(results[k][0]) for k in ("embedded", "forwarded"))
    ee, fe = (statistics.median(results[k][1]) for k in ("embedded", "forwarded"))
    print(
        f"\nforwarding adds {fe - ee:+.1f} ms to an exec p50 ({fe / ee:.2f}x), "
        f"{fc - ec:+.1f} ms to a create p50 ({fc / ec:.2f}x); cpus={os.cpu_count()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
