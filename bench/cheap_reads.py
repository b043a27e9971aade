"""Cheap reads: ``GET /batches/{id}`` at 10,000 items and ``GET /evaluations?limit=50``.

Two parts, each measured side by side in this one run:

1. The store, on SQLite (and PostgreSQL with ``--pg URL``): the batch's counts by the
   old ``GROUP BY`` over its rows vs the counters on its row; a list page (default
   and each filter) with the indexes before migration 0011 vs after, on the same rows.
2. A real ``crucible serve`` (or two: ``--before``) at rest with those rows: client
   round trip p50/p99 and the server's own CPU per request of ``GET /batches/{id}``,
   ``GET /evaluations`` and ``GET /healthz`` (the HTTP floor).

    .venv/bin/python bench/cheap_reads.py [--items 10000] [--rows 20000] [--pg URL]
        [--server-only] [--before OLD/src --rounds 5]

``--before`` serves an older tree too (``git archive REV src | tar -x -C DIR``, the
server started with ``PYTHONPATH=DIR/src``); the two are measured in turn, path by path.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text, update

from _server import AUTH, percentile, serve, server_cpu_s
from crucible.core.lifecycle import Priority, Status
from crucible.store import EvaluationFilter, NewEvaluation, Store
from crucible.store.tables import Evaluation

BATCH = "bt_bench"


def populate(
    store: Store,
    items: int,
    rows: int,
    request: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """A finished batch of ``items`` (completed passed/failed, timeouts, cancelled,
    errors) among ``rows`` evaluations, labelled and owned by four keys; counters
    backfilled as migration 0011 does. ``result``: every completed one's."""

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
        if result is not None:
            s.execute(
                update(Evaluation).where(Evaluation.status == "completed").values(result=result)
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
        return lambda: store.list_records(f, cursor=None, limit=50)

    after = {k: timed(page(f), n) for k, f in FILTERS.items()}
    swap_indexes(store, to_old=True)
    before = {k: timed(page(f), n) for k, f in FILTERS.items()}
    swap_indexes(store, to_old=False)
    print(f"{name}: a page of 50 among {rows} rows, p50/p99 ms, indexes before / after 0011")
    for k in FILTERS:
        b, a = before[k], after[k]
        print(f"  {k:22} {b[0]:7.2f} / {b[1]:7.2f}   ->  {a[0]:7.2f} / {a[1]:7.2f}")
    store.dispose()


PATHS = {
    "GET /healthz (floor)": "/healthz",
    "GET /batches/{id}": f"/api/v1/batches/{BATCH}",
    "GET /evaluations?limit=50": "/api/v1/evaluations?limit=50",
    "GET /evaluations?limit=50&status=error": "/api/v1/evaluations?limit=50&status=error",
    "GET /evaluations?limit=50&label=k:3": "/api/v1/evaluations?limit=50&label=k%3A3",
}


def start_server(stack: contextlib.ExitStack, items: int, rows: int, src: str | None) -> str:
    """A populated ``crucible serve`` (``src``: import crucible from that tree instead)."""
    env = {"CRUCIBLE_MAX_CONCURRENCY": "1", **({"PYTHONPATH": src} if src else {})}
    url = stack.enter_context(serve(**env))
    data_dir = Path(Path(f"/proc/{_pid(url)}/cmdline").read_text().split("\0")[-2])
    store = Store(f"sqlite:///{data_dir / 'crucible.db'}")
    # Rows the API can render: the normalised request and the result of a real run.
    one = httpx.post(f"{url}/api/v1/evaluations", params={"wait": 30}, headers=AUTH,
                     json={"code": "print(1)"}, timeout=60).json()  # fmt: skip
    real = store.get(one["id"])
    populate(store, items, rows, real.request, real.result)
    store.dispose()
    return url


def measure(http: httpx.Client, url: str, path: str, n: int) -> tuple[float, float, float]:
    """(round trip p50, p99, server CPU per request), all in ms, of ``n`` GETs."""
    for _ in range(5):
        r = http.get(url + path)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
    cpu0, _ = server_cpu_s(url)
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        r = http.get(url + path)
        ms.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    cpu = (server_cpu_s(url)[0] - cpu0) / n * 1000
    return percentile(ms, 50), percentile(ms, 99), cpu


def walk(http: httpx.Client, url: str, n: int) -> tuple[float, float, float]:
    """Like :func:`measure`, for ``n`` pages of the list each read once, following
    ``next_cursor`` from the newest: first reads, which no server has rendered yet."""
    cpu0, _ = server_cpu_s(url)
    ms, cursor = [], None
    for _ in range(n):
        t = time.perf_counter()
        page = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        r = http.get(url + "/api/v1/evaluations", params=page)
        ms.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
        cursor = r.json()["next_cursor"]
        assert cursor is not None, "fewer rows than pages to read"
    cpu = (server_cpu_s(url)[0] - cpu0) / n * 1000
    return percentile(ms, 50), percentile(ms, 99), cpu


WALK = "GET /evaluations?limit=50, first reads"


def server_part(items: int, rows: int, n: int, before: str | None, rounds: int) -> None:
    """Each server at rest, measured in turn ``rounds`` times (before, after, before, …
    with ``before``), so both see the same machine; medians over the rounds."""
    servers = {"before": before, "after": None} if before else {"server": None}
    with contextlib.ExitStack() as stack, httpx.Client(headers=AUTH, timeout=30) as http:
        urls = {name: start_server(stack, items, rows, src) for name, src in servers.items()}
        runs: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for name, url in urls.items():  # once: a page is a first read only once
            runs[(name, WALK)] = [walk(http, url, min(n, rows // 50 - 1))]
        for _ in range(rounds):
            for label, path in PATHS.items():
                for name, url in urls.items():
                    runs.setdefault((name, label), []).append(measure(http, url, path, n))
    print(f"\nserver at rest ({rows} rows, {items}-item batch), {rounds} round(s) of {n}:"
          " round trip p50 / p99 ms, server CPU ms/request"
          " (median of rounds; each round's)")  # fmt: skip
    for label in [*PATHS, WALK]:
        for name in servers:
            got = runs[(name, label)]
            p50, p99, cpu = (statistics.median(x[i] for x in got) for i in range(3))
            each = " ".join(f"{x[2]:.2f}" for x in got)
            print(f"  {label:40} {name:6} {p50:6.2f} / {p99:6.2f}   cpu {cpu:5.2f}  ({each})")


def _pid(url: str) -> int:
    from _server import _PIDS

    return _PIDS[url]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--pg", help="an empty PostgreSQL database (postgresql+psycopg://…)")
    parser.add_argument("--server-only", action="store_true", help="skip the store part")
    parser.add_argument(
        "--before",
        metavar="SRC",
        help="also serve an older tree's src/ (e.g. from git archive), measured alternately",
    )
    parser.add_argument("--rounds", type=int, default=1, help="server measurements per path")
    args = parser.parse_args()
    if not args.server_only:
        with tempfile.TemporaryDirectory() as d:
            store_part(f"sqlite:///{d}/bench.db", "SQLite", args.items, args.rows, args.n)
        if args.pg:
            store_part(args.pg, "PostgreSQL", args.items, args.rows, args.n)
    server_part(args.items, args.rows, args.n, args.before, args.rounds)


if __name__ == "__main__":
    main()
