"""Cheap reads: ``GET /batches/{id}`` at 10,000 items and ``GET /evaluations?limit=50``.

Two parts, each measured side by side in this one run:

1. The store, on SQLite (and PostgreSQL with ``--pg URL``): the batch's counts by the
   old ``GROUP BY`` over its rows vs the counters on its row; a list page (default
   and each filter) with the indexes before migration 0011 vs after, on the same rows.
2. A real ``crucible serve`` at rest with those rows: client round trip p50/p99 and
   the server's own CPU per request of ``GET /batches/{id}``, ``GET /evaluations``
   and ``GET /healthz`` (the HTTP floor).

    .venv/bin/python bench/cheap_reads.py [--items 10000] [--rows 20000] [--pg URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from _server import AUTH, percentile, serve, server_cpu_s
from crucible.core.lifecycle import Priority, Status
from crucible.store import EvaluationFilter, NewEvaluation, Store

BATCH = "bt_bench"


def populate(store: Store, items: int, rows: int, request: dict[str, Any] | None = None) -> None:
    """A finished batch of ``items`` (completed passed/failed, timeouts, cancelled,
    errors) among ``rows`` evaluations, labelled and owned by four keys; counters
    backfilled as migration 0011 does."""

    def new(i: int) -> NewEvaluation:
        return NewEvaluation(
            id=f"ev_{i}", priority=Priority.normal, language="c" if i % 3 == 0 else "python",
            request=request or {"code": "print(1)"}, request_hash="h", labels={"k": str(i % 10)},
        )  # fmt: skip

    store.create_batch(BATCH, [new(i) for i in range(items)], {})
    store.create_batch("bt_rest", [new(i) for i in range(items, rows)], {})
    with store.transaction() as s:
        s.execute(
            text("""UPDATE evaluations SET
            status = CASE WHEN seq % 20 = 0 THEN 'cancelled' WHEN seq % 50 = 1 THEN 'error'
                          ELSE 'completed' END,
            termination = CASE WHEN seq % 20 = 0 THEN 'cancelled' WHEN seq % 50 = 1 THEN NULL
                               WHEN seq % 7 = 0 THEN 'timeout' ELSE 'exited' END,
            verdict = CASE WHEN seq % 20 = 0 OR seq % 50 = 1 THEN NULL
                           WHEN seq % 2 = 0 THEN 'passed' ELSE 'failed' END,
            owner_key_id = 'key' || CAST(seq % 4 AS VARCHAR(4))""")
        )
    backfill(store)


def backfill(store: Store) -> None:
    from importlib import import_module

    m = import_module("crucible.store.migrations.versions.0011_batch_counters")
    sets = ", ".join(
        f"{name} = (SELECT count(*) FROM evaluations"
        f" WHERE evaluations.batch_id = batches.id AND evaluations.{col} = '{value}')"
        for name, col, value in m.COUNTERS
    )
    with store.transaction() as s:
        s.execute(text(f"UPDATE batches SET {sets}"))
        s.execute(text("ANALYZE"))


def timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    fn()
    fn()  # warm: statement caches, pages
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    return percentile(ms, 50), percentile(ms, 99)


def swap_indexes(store: Store, *, to_old: bool) -> None:
    """Put the list's indexes back as they were before 0011 (or forward again)."""
    from importlib import import_module

    m = import_module("crucible.store.migrations.versions.0011_batch_counters")
    pairs = [*m.INDEXES, (("ix_labels_kv", ["key", "value"]), ("ix_labels_kv_seq", None))]
    with store.transaction() as s:
        for (old, old_cols), (new, new_cols) in pairs:
            table = "labels" if "labels" in old else "evaluations"
            drop, (name, cols) = (new, (old, old_cols)) if to_old else (old, (new, new_cols))
            cols = cols or ["key", "value", "evaluation_seq"]
            s.execute(text(f"DROP INDEX {drop}"))
            s.execute(text(f"CREATE INDEX {name} ON {table} ({', '.join(cols)})"))
        s.execute(text("ANALYZE"))


FILTERS = {
    "default": EvaluationFilter(),
    "status=error": EvaluationFilter(status=Status.error),
    "language=c": EvaluationFilter(language="c"),
    "verdict=passed": EvaluationFilter(verdict="passed"),
    "termination=timeout": EvaluationFilter(termination="timeout"),
    "batch_id": EvaluationFilter(batch_id=BATCH),
    "owner (a key's view)": EvaluationFilter(owner_key_id="key1"),
    "label=k:3": EvaluationFilter(label=("k", "3")),
}


def store_part(url: str, name: str, items: int, rows: int, n: int) -> None:
    store = Store(url)
    store.migrate()
    populate(store, items, rows)
    assert store.batch_counts(BATCH) == store.count_batch_rows(BATCH)
    old = timed(lambda: store.count_batch_rows(BATCH), n)
    new = timed(lambda: store.batch_counts(BATCH), n)
    print(f"\n{name}: batch counts at {items} items, p50/p99 ms (store call)")
    print(f"  GROUP BY over the rows (before)   {old[0]:7.2f} / {old[1]:7.2f}")
    print(f"  counters on the batch row (after) {new[0]:7.2f} / {new[1]:7.2f}   "
          f"{old[0] / new[0]:.0f}x at p50")  # fmt: skip

    def page(f: EvaluationFilter) -> Callable[[], Any]:
        return lambda: store.list_evaluations(f, cursor=None, limit=50)

    after = {k: timed(page(f), n) for k, f in FILTERS.items()}
    swap_indexes(store, to_old=True)
    before = {k: timed(page(f), n) for k, f in FILTERS.items()}
    swap_indexes(store, to_old=False)
    print(f"{name}: a page of 50 among {rows} rows, p50/p99 ms, indexes before / after 0011")
    for k in FILTERS:
        b, a = before[k], after[k]
        print(f"  {k:22} {b[0]:7.2f} / {b[1]:7.2f}   ->  {a[0]:7.2f} / {a[1]:7.2f}")
    store.dispose()


def server_part(items: int, rows: int, n: int) -> None:
    with serve(CRUCIBLE_MAX_CONCURRENCY="1") as url:
        data_dir = Path(Path(f"/proc/{_pid(url)}/cmdline").read_text().split("\0")[-2])
        store = Store(f"sqlite:///{data_dir / 'crucible.db'}")
        # Rows the API can render: the normalised request of a real submission.
        one = httpx.post(f"{url}/api/v1/evaluations", params={"wait": 30}, headers=AUTH,
                         json={"code": "print(1)"}, timeout=60).json()  # fmt: skip
        populate(store, items, rows, store.get(one["id"]).request)
        store.dispose()
        print(f"\nserver at rest ({rows} rows): round trip p50/p99 ms, server CPU ms/request")
        with httpx.Client(base_url=f"{url}/api/v1", headers=AUTH, timeout=30) as http:
            paths = {
                "GET /healthz (floor)": f"{url}/healthz",
                f"GET /batches/{{id}} ({items} items)": f"/batches/{BATCH}",
                "GET /evaluations?limit=50": "/evaluations?limit=50",
                "GET /evaluations?limit=50&status=error": "/evaluations?limit=50&status=error",
                "GET /evaluations?limit=50&label=k:3": "/evaluations?limit=50&label=k%3A3",
            }
            for label, path in paths.items():
                for _ in range(5):
                    r = http.get(path)
                    assert r.status_code == 200, (path, r.status_code, r.text[:300])
                cpu0, _ = server_cpu_s(url)
                ms = []
                for _ in range(n):
                    t = time.perf_counter()
                    r = http.get(path)
                    ms.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.text
                cpu = (server_cpu_s(url)[0] - cpu0) / n * 1000
                p50, p99 = percentile(ms, 50), percentile(ms, 99)
                print(f"  {label:42} {p50:6.2f} / {p99:6.2f}   cpu {cpu:5.2f}")


def _pid(url: str) -> int:
    from _server import _PIDS

    return _PIDS[url]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--pg", help="an empty PostgreSQL database (postgresql+psycopg://…)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        store_part(f"sqlite:///{d}/bench.db", "SQLite", args.items, args.rows, args.n)
    if args.pg:
        store_part(args.pg, "PostgreSQL", args.items, args.rows, args.n)
    server_part(args.items, args.rows, args.n)


if __name__ == "__main__":
    main()
