"""Many idle agent sandboxes held across two sandbox hosts (issue 19, item 7): what an
idle sandbox costs in memory, and what holding them costs in heartbeats and database
load.

    cluster     PostgreSQL (its own, with pg_stat_statements), Redis, one
                `crucible serve --dispatcher celery`, two `crucible worker --sandboxes N`
                on 127.0.0.2 and 127.0.0.3 (tests/support/local_cluster.py), crun, the
                production heartbeat (CRUCIBLE_HEARTBEAT_S 2, dead after 20 s)
    create      --sandboxes N through the API, --concurrency at a time (placement spreads
                them over the two hosts); their cgroups are found under a prefix of
                this run alone (CRUCIBLE_PREFIX), so other sessions' sandboxes are not
                counted
    hold        --hold seconds with nothing done; the database's and processes'
                counters are read at its start and end
    memory      per sandbox: RSS and PSS of its processes (smaps_rollup), its cgroup's
                usage (memory.usage_in_bytes / memory.current, kernel memory included
                where the kernel accounts it) and rss + cache of memory.stat; per host:
                the host process tree's PSS outside the containers, before the creates
                and after the hold, divided by its sandboxes
    after       one exec of `true` in every sandbox (they are alive), then deletes

Run as root: ``PYTHONPATH=src:tests .venv/bin/python bench/sandbox_hold.py`` (200
sandboxes, held 60 s); a quick check: ``… --sandboxes 20 --hold 10``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _server import percentile
from support.local_cluster import AUTH, Cluster, PostgresServer, RedisServer, free_port, wait_for

BODY = {"ttl_s": 3600, "idle_timeout_s": 3600, "runtime": "crun"}
MIB = 1024 * 1024
HEARTBEAT_S = 2.0  # the production default (core/config.py)


def pss_rss(pid: int) -> tuple[int, int]:
    """(PSS, RSS) bytes of one process; zeros when it is gone."""
    try:
        info = psutil.Process(pid).memory_full_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0, 0
    return int(info.pss), int(info.rss)


def cgroup_dirs(prefix: str) -> dict[str, Path]:
    """Sandbox cgroups of this run: container id → directory (cgroup v1's memory
    controller, else the unified hierarchy)."""
    for base in (Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup")):
        root = base / prefix
        if root.is_dir():
            # A session's container id ends in -s (engine/session.py); the others are
            # the workers' warm one-shot sandboxes.
            return {d.name: d for d in root.iterdir() if d.is_dir() and d.name.endswith("-s")}
    return {}


def read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def memory_stat(d: Path) -> dict[str, int]:
    try:
        lines = (d / "memory.stat").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v) for k, v in (line.split() for line in lines if line.count(" ") == 1)}


def cgroup_procs(d: Path) -> list[int]:
    pids: list[int] = []
    for f in [d / "cgroup.procs", *(x / "cgroup.procs" for x in d.rglob("*") if x.is_dir())]:
        with contextlib.suppress(OSError):
            pids += [int(p) for p in f.read_text().split()]
    return pids


def sandboxes_memory(prefix: str) -> list[dict[str, int]]:
    """One dict per sandbox cgroup: processes' pss/rss, cgroup usage, rss + cache."""
    out = []
    for d in cgroup_dirs(prefix).values():
        pids = cgroup_procs(d)
        pss = rss = 0
        for pid in pids:
            p, r = pss_rss(pid)
            pss, rss = pss + p, rss + r
        usage = read_int(d / "memory.usage_in_bytes") or read_int(d / "memory.current")
        stat = memory_stat(d)
        charged = stat.get("total_rss", stat.get("anon", 0)) + stat.get(
            "total_cache", stat.get("file", 0)
        )
        out.append({"pids": len(pids), "pss": pss, "rss": rss, "usage": usage, "stat": charged})
    return out


def host_side(pid: int, prefix: str) -> tuple[int, dict[str, list[int]]]:
    """A host's process tree outside its sandboxes' cgroups: (PSS in all, the RSS of
    each process by name)."""
    inside = {p for d in cgroup_dirs(prefix).values() for p in cgroup_procs(d)}
    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, {}
    pss, by_name = 0, {}
    for p in tree:
        if p.pid in inside:
            continue
        p_pss, p_rss = pss_rss(p.pid)
        pss += p_pss
        with contextlib.suppress(psutil.NoSuchProcess):
            label = p.name()
            if p.status() == psutil.STATUS_ZOMBIE:  # exited, not reaped: by whom?
                label += f" (zombie, child of {psutil.Process(p.ppid()).name()})"
            by_name.setdefault(label, []).append(p_rss)
    return pss, by_name


def cpu_s(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def postgres_pids(pg: PostgresServer) -> list[int]:
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    return [postmaster, *(p.pid for p in psutil.Process(postmaster).children())]


def db_counters(conn: psycopg.Connection[Any]) -> dict[str, float]:
    row = conn.execute(
        "SELECT xact_commit + xact_rollback, tup_inserted, tup_updated, tup_deleted,"
        " tup_returned FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    workers = conn.execute(
        "SELECT n_tup_upd + n_tup_ins FROM pg_stat_user_tables WHERE relname = 'workers'"
    ).fetchone()
    keys = ("xacts", "inserted", "updated", "deleted", "returned")
    return {**dict(zip(keys, map(float, row), strict=True)), "workers_writes": workers[0]}


def statements(conn: psycopg.Connection[Any]) -> list[tuple[str, int, float]]:
    """(query, calls, mean ms) since the last reset, this database, most called first."""
    rows = conn.execute(
        "SELECT query, calls, mean_exec_time FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT ILIKE '%pg_stat%' ORDER BY calls DESC"
    ).fetchall()
    return [(" ".join(q.split()), int(c), float(m)) for q, c, m in rows]


def parallel(fn: Callable[[int], Any], n: int, concurrency: int) -> list[Any]:
    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(fn, range(n)))


def dist(values: list[float], unit: float = MIB) -> str:
    v = [x / unit for x in values]
    return (
        f"{statistics.median(v):.2f} | {percentile(v, 90):.2f} | {percentile(v, 99):.2f}"
        f" | {max(v):.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sandboxes", type=int, default=200, help="held, over two hosts")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds held idle")
    parser.add_argument("--concurrency", type=int, default=4, help="creates at a time")
    args = parser.parse_args()
    n = args.sandboxes
    prefix = f"crucible-hold-{secrets.token_hex(3)}"
    root = Path(tempfile.mkdtemp(prefix="crucible-bench-hold-", dir="/tmp"))
    root.chmod(0o711)
    pg = PostgresServer(root / "pg")
    pg.init()
    with (pg.data / "postgresql.conf").open("a") as conf:
        conf.write("shared_preload_libraries = 'pg_stat_statements'\nmax_connections = 300\n")
    pg.start()
    redis = RedisServer(root / "redis")
    redis.start()
    cluster = Cluster(
        root,
        pg.url,
        redis,
        CRUCIBLE_PREFIX=prefix,
        CRUCIBLE_HEARTBEAT_S=str(HEARTBEAT_S),
        CRUCIBLE_WORKER_DEAD_AFTER_S=str(10 * HEARTBEAT_S),
    )
    ids: list[str] = []
    out: list[str] = []
    try:
        db = psycopg.connect(pg.url, autocommit=True)
        db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        api_proc, url = cluster.api()
        hosts = [
            cluster.worker(1, sandboxes=n, listen=f"127.0.0.{i + 2}:{free_port()}")
            for i in range(2)
        ]
        api = httpx.Client(base_url=f"{url}/api/v1", headers=AUTH, timeout=120)

        def host_rows() -> dict[int, str]:
            rows = api.get("/workers").json()["items"]
            return {w["pid"]: w["id"] for w in rows if w["sandbox_capacity"] > 0}

        wait_for(lambda: len(host_rows()) == 2, 60, "two sandbox hosts")
        worker_id = {host_rows()[h.pid]: h for h in hosts}
        base_side = {h.pid: host_side(h.pid, prefix) for h in hosts}

        def create(_i: int) -> tuple[float, dict[str, Any]]:
            t = time.perf_counter()
            r = api.post("/sandboxes", json=BODY)
            r.raise_for_status()
            return (time.perf_counter() - t) * 1000, r.json()

        made = parallel(create, n, args.concurrency)
        ids = [box["id"] for _ms, box in made]
        per_host = {w: sum(1 for _ms, b in made if b["worker_id"] == w) for w in worker_id}

        # The hold: nothing is asked of the cluster; counters at both ends.
        db.execute("SELECT pg_stat_statements_reset()")
        db.execute("SELECT pg_stat_reset()")
        time.sleep(1)  # pg_stat_database's counters are flushed at most once a second
        pgs = postgres_pids(pg)
        cpu_pids = {"hosts": [h.pid for h in hosts], "api": [api_proc.pid], "postgres": pgs}
        before = db_counters(db)
        cpu0 = {k: cpu_s(v) for k, v in cpu_pids.items()}
        t0 = time.monotonic()
        time.sleep(args.hold)
        held = time.monotonic() - t0
        cpu1 = {k: cpu_s(v) for k, v in cpu_pids.items()}
        time.sleep(1)  # let the last second's statistics reach pg_stat_database
        after = db_counters(db)
        stmts = statements(db)
        mem = sandboxes_memory(prefix)
        beating = len(api.get("/workers").json()["items"])
        side = {h.pid: host_side(h.pid, prefix) for h in hosts}

        # They are alive: one exec each.
        def exec_true(i: int) -> float:
            t = time.perf_counter()
            key = {"Idempotency-Key": uuid.uuid4().hex}
            r = api.post(f"/sandboxes/{ids[i]}/exec", json={"cmd": ["true"]}, headers=key)
            r.raise_for_status()
            assert r.json()["returncode"] == 0, r.text
            return (time.perf_counter() - t) * 1000

        execs = parallel(exec_true, n, args.concurrency)
        parallel(lambda i: api.delete(f"/sandboxes/{ids[i]}"), n, args.concurrency)
        ids = []
        left = {h.pid: host_side(h.pid, prefix)[1] for h in hosts}

        creates = [ms for ms, _b in made]
        out.append(
            f"{n} sandboxes (crun) over two hosts: "
            + ", ".join(f"{c} on {w}" for w, c in per_host.items())
            + f" ({len(mem)} cgroups found); held {held:.0f} s; cpus={os.cpu_count()},"
            f" load average at the end {os.getloadavg()[0]:.1f}\n"
        )
        out.append("| per idle sandbox | median | p90 | p99 | max |\n|---|---|---|---|---|")
        out.append(f"| PSS of its processes, MiB | {dist([m['pss'] for m in mem])} |")
        out.append(f"| RSS of its processes, MiB | {dist([m['rss'] for m in mem])} |")
        out.append(f"| cgroup memory usage, MiB | {dist([m['usage'] for m in mem])} |")
        out.append(f"| cgroup rss + cache, MiB | {dist([m['stat'] for m in mem])} |")
        out.append(f"| processes | {dist([m['pids'] for m in mem], 1)} |")
        out.append(
            "\n| per host | sandboxes | host PSS before, MiB | after | added per sandbox, KiB |"
            "\n|---|---|---|---|---|"
        )
        for w, h in worker_id.items():
            (b, _), (a, procs) = base_side[h.pid], side[h.pid]
            k = per_host[w]
            add = (a - b) / k / 1024 if k else float("nan")
            names = ", ".join(
                f"{len(r)} {name} ({sum(r) / len(r) / MIB:.1f} MiB RSS each)"
                for name, r in sorted(procs.items(), key=lambda x: -len(x[1]))
            )
            out.append(f"| {w}: {names} | {k} | {b / MIB:.1f} | {a / MIB:.1f} | {add:.0f} |")
        d = {k: (after[k] - before[k]) / held for k in after}
        calls = sum(c for _q, c, _m in stmts)
        out.append(
            f"\n| during the hold | per second |\n|---|---|\n"
            f"| statements (pg_stat_statements) | {calls / held:.1f} |\n"
            f"| transactions (pg_stat_database) | {d['xacts']:.1f} |\n"
            f"| rows returned / inserted / updated | {d['returned']:.0f} / {d['inserted']:.1f}"
            f" / {d['updated']:.1f} |\n"
            f"| heartbeats (workers rows written; {beating} processes beat every"
            f" {HEARTBEAT_S:g} s) | {d['workers_writes']:.2f} |\n"
            + "".join(
                f"| CPU of {k}, % of one core | {100 * (cpu1[k] - cpu0[k]) / held:.1f} |\n"
                for k in cpu_pids
            )
        )
        out.append("| statement (most called in the hold) | calls/s | mean ms |\n|---|---|---|")
        for q, c, m in stmts[:8]:
            out.append(f"| `{q[:110]}` | {c / held:.2f} | {m:.2f} |")
        zombies = {
            p: sum(len(r) for k, r in names.items() if "zombie" in k) for p, names in left.items()
        }
        out.append(
            "\nafter the deletes, exited children left unreaped per host:"
            f" {sorted(zombies.values())}"
        )
        out.append(
            f"\ncreate p50 {statistics.median(creates):.1f} ms, p99"
            f" {percentile(creates, 99):.1f} ms (concurrency {args.concurrency});"
            f" exec `true` after the hold p50 {statistics.median(execs):.1f} ms,"
            f" p99 {percentile(execs, 99):.1f} ms"
        )
    finally:
        if ids:
            parallel(lambda i: api.delete(f"/sandboxes/{ids[i]}"), len(ids), args.concurrency)
        cluster.teardown()
        redis.stop()
        pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
