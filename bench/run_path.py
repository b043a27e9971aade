"""One evaluation's path end to end, counted: database statements and transactions per
phase, and where the wall time goes, for hello worlds submitted one at a time to an
embedded service (SQLite, the default runtime, warm pool on).

    submit   POST /evaluations' work: quotas, admission, insert, the record returned
    execute  claim → sandbox → store result → publish (the claim loop and executor)
    read     GET /evaluations/{id}

    .venv/bin/python bench/run_path.py [-n 50]

Statements come from SQLAlchemy's cursor events on the service's own engine, so
they include the claim loop's idle polls and heartbeats that fall inside a phase
(a few per second): the figures are means per evaluation.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event

from crucible.api.schemas import EvaluationCreate
from crucible.core.config import Settings
from crucible.wiring import build_service


class Counter:
    def __init__(self) -> None:
        self.statements: collections.Counter[str] = collections.Counter()
        self.commits = 0

    def on_statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.statements[statement.lstrip().split(None, 1)[0].upper()] += 1

    def on_commit(self, _conn: Any) -> None:
        self.commits += 1

    def snapshot(self) -> tuple[int, int]:
        return sum(self.statements.values()), self.commits


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="crucible-bench-path-", dir="/tmp"))
    settings = Settings(state_dir=root / "state", data_dir=root / "data", max_concurrency=2)
    service = build_service(settings)
    await service.start()
    counter = Counter()
    event.listen(service.store.engine, "before_cursor_execute", counter.on_statement)
    event.listen(service.store.engine, "commit", counter.on_commit)
    phases: dict[str, list[tuple[int, int]]] = {"submit": [], "execute": [], "read": []}
    walls: dict[str, list[float]] = collections.defaultdict(list)
    body = EvaluationCreate(code="print('hello')")
    try:
        for i in range(args.n + 1):
            await asyncio.sleep(0.05)  # idle between requests: the pool refills
            s0, t0 = counter.snapshot(), time.perf_counter()
            record, _ = await service.submit(body)
            s1, t1 = counter.snapshot(), time.perf_counter()
            done = await service.wait(record.id, 30)
            s2, t2 = counter.snapshot(), time.perf_counter()
            final = await service.get(record.id)
            s3, t3 = counter.snapshot(), time.perf_counter()
            assert done.status == "completed" and final.result is not None, done
            if i == 0:
                continue  # warm-up
            for name, a, b in (("submit", s0, s1), ("execute", s1, s2), ("read", s2, s3)):
                phases[name].append((b[0] - a[0], b[1] - a[1]))
            walls["submit"].append((t1 - t0) * 1000)
            walls["execute (submit → final event)"].append((t2 - t1) * 1000)
            walls["read"].append((t3 - t2) * 1000)
            walls["program's own wall (init)"].append(float(final.result.wall_ms))
            assert final.started_at and final.finished_at
            walls["claim → finished (stored)"].append(
                (final.finished_at - final.started_at).total_seconds() * 1000
            )
    finally:
        await service.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"# one evaluation's path: {args.n} hello worlds, one at a time, SQLite")
    print()
    print("| phase | statements per evaluation | transactions (commits) |")
    print("|---|---|---|")
    for name, rows in phases.items():
        print(
            f"| {name} | {statistics.mean(r[0] for r in rows):.1f} "
            f"| {statistics.mean(r[1] for r in rows):.1f} |"
        )
    print(f"\nstatement kinds over the whole run: {dict(counter.statements)}")
    print()
    print("| span | median ms | p90 ms |")
    print("|---|---|---|")
    for name, values in walls.items():
        p90 = sorted(values)[int(0.9 * (len(values) - 1))]
        print(f"| {name} | {statistics.median(values):.1f} | {p90:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
