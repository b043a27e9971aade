"""Agent sandboxes through an API instance that forwards to a sandbox host, beside the
same on embedded servers, in one run (issue 19; targets: forwarding adds <= 2 ms to an
exec, create <= 100 ms p50 with crun).

    create      POST /sandboxes → 201 (the record), then DELETE (not timed)
    exec        POST …/exec of `true` with an Idempotency-Key (as the Python client and
                the Inspect provider send one), one sandbox, sequential

Three sides, alternating in rounds so that the machine's load falls on all alike:

    forwarded       `crucible serve --dispatcher celery` → `crucible worker --sandboxes N`
                    on 127.0.0.2 (tests/support/local_cluster.py): PostgreSQL, the Redis bus
    embedded, pg    `crucible serve` on a database of its own in the same PostgreSQL
                    server, the in-process bus: like with like, so forwarded minus this
                    is what forwarding adds (the second HTTP hop, the API instance's
                    reads, the Redis publishes of the events)
    embedded, sqlite  `crucible serve` as it starts by default (bench/_server.py)

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
import uuid
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

    def exec_true() -> None:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        api.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]}, headers=key).raise_for_status()

    execs = [timed(exec_true) for _ in range(n * 3)]
    for i in ids:
        api.delete(f"/sandboxes/{i}")
    return creates, execs


def row(name: str, ms: list[float], base: list[float] | None = None) -> str:
    p50, p99 = statistics.median(ms), percentile(ms, 99)
    added = "" if base is None else f"{p50 - statistics.median(base):+.1f}"
    return f"| {name} | {p50:.1f} | {p99:.1f} | {added} |"


SIDES = ("embedded, sqlite", "embedded, pg", "forwarded")


def create_database(url: str, name: str) -> str:
    """A database ``name`` in the server of ``url``; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return url.rsplit("/", 1)[0] + "/" + name


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
    results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in SIDES}
    try:
        _api, url = cluster.api()
        cluster.worker(1, sandboxes=args.n + 4, listen=f"127.0.0.2:{free_port()}")
        forwarded = httpx.Client(base_url=f"{url}/api/v1", headers=AUTH, timeout=60)
        wait_for(lambda: forwarded.post("/sandboxes", json=BODY).status_code == 201, 30, "host")
        embedded_pg = {"CRUCIBLE_DATABASE_URL": create_database(pg.url, "embedded")}
        with serve() as sqlite_url, serve(**embedded_pg) as pg_url:
            clients = {
                SIDES[0]: httpx.Client(
                    base_url=f"{sqlite_url}/api/v1", headers=EMBEDDED_AUTH, timeout=60
                ),
                SIDES[1]: httpx.Client(
                    base_url=f"{pg_url}/api/v1", headers=EMBEDDED_AUTH, timeout=60
                ),
                SIDES[2]: forwarded,
            }
            for client in clients.values():  # warm: the first create pays for imports
                rounds(client, 1)
            per = max(1, args.n // 4)
            for _ in range(4):  # alternate: the machine's load falls on all alike
                for name, client in clients.items():
                    c, e = rounds(client, per)
                    results[name][0].extend(c)
                    results[name][1].extend(e)
    finally:
        cluster.teardown()
        redis.stop()
        pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
    base = results["embedded, pg"]
    print("| figure | p50 ms | p99 ms | p50 added to embedded, pg |\n|---|---|---|---|")
    for name in SIDES:
        print(row(f"create, {name}", results[name][0], base[0] if name != SIDES[1] else None))
    for name in SIDES:
        print(row(f"exec `true`, {name}", results[name][1], base[1] if name != SIDES[1] else None))
    fc, fe = (statistics.median(x) for x in results["forwarded"])
    bc, be = (statistics.median(x) for x in base)
    print(
        f"\nforwarding adds {fe - be:+.1f} ms to an exec p50 ({fe / be:.2f}x) and "
        f"{fc - bc:+.1f} ms to a create p50 ({fc / bc:.2f}x), both against an embedded "
        f"server on the same PostgreSQL; create p50 forwarded {fc:.1f} ms (target <= 100); "
        f"n={args.n} creates and {3 * args.n} execs per side; cpus={os.cpu_count()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
