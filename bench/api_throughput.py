"""API throughput: 1,000 hello-world evaluations through `crucible serve` (default runtime,
warm pool on), as one batch and as individual requests at concurrency 16, beside bare
`python3 -c` processes and the raw engine (`Sandbox.run`) at the server's concurrency
(one per core); then one `?wait` request at a time against one bare process at a time.
All in this one invocation.

    .venv/bin/python bench/api_throughput.py [--n 1000] [--concurrency 16] [--batch-only]

For the batch it also prints CPU per evaluation: the server's own (utime+stime from
/proc/PID/stat), its reaped children's (cutime+cstime: runtimes and sandboxed programs, but
a reused sandbox's jobs only once the sandbox ends: its init reaps them) and the whole
machine's (/proc/stat), which vary far less with other load than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from _server import AUTH, machine_cpu_s, percentile, serve, server_cpu_s
from crucible.client import Client
from crucible.core.config import Settings
from crucible.domain.limits import resolve_limits
from crucible.engine import RunRequest, Sandbox

HELLO = "print('hello')"


async def bare(n: int, concurrency: int) -> dict[str, float]:
    """``python3 -c`` processes, no sandbox, ``concurrency`` at a time."""
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one() -> None:
        async with gate:
            t = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                "/usr/bin/python3", "-c", HELLO, stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            latencies.append((time.perf_counter() - t) * 1000)
            assert out == b"hello\n"

    start = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    wall = time.perf_counter() - start
    return {
        "rate": n / wall,
        "e2e_p50": percentile(latencies, 50),
        "e2e_p99": percentile(latencies, 99),
    }


def one_at_a_time(url: str, n: int) -> tuple[list[float], list[float]]:
    """Client round trips of ``POST /evaluations?wait`` and of bare processes,
    alternating, one at a time (an interactive user, an idle server)."""
    api: list[float] = []
    naked: list[float] = []
    with httpx.Client(base_url=f"{url}/api/v1", timeout=60, headers=AUTH) as http:
        for _ in range(n):
            time.sleep(0.05)  # idle between requests, as a person would be: the pool refills
            t = time.perf_counter()
            r = http.post("/evaluations", params={"wait": 30}, json={"code": HELLO})
            api.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and r.json()["result"]["stdout"] == "hello\n", r.text
            t = time.perf_counter()
            done = subprocess.run(["/usr/bin/python3", "-c", HELLO], capture_output=True)
            naked.append((time.perf_counter() - t) * 1000)
            assert done.stdout == b"hello\n"
    return api, naked


async def raw_engine(n: int, concurrency: int, slots: int) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="crucible-bench-raw-", dir="/tmp"))
    try:
        settings = Settings(state_dir=state, max_concurrency=slots)
        sandbox = Sandbox(settings)
        request = RunRequest(code=HELLO, limits=resolve_limits({}, settings))
        await sandbox.run(request)  # warm-up: root fs, init binary
        gate = asyncio.Semaphore(concurrency)
        latencies: list[float] = []

        async def one() -> None:
            async with gate:
                t = time.perf_counter()
                result = await sandbox.run(request)
                latencies.append((time.perf_counter() - t) * 1000)
                assert result.stdout == "hello\n", result

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - start
        await sandbox.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return {
        "rate": n / wall,
        "e2e_p50": percentile(latencies, 50),
        "e2e_p99": percentile(latencies, 99),
    }


def stored_timings(client: Client, batch_id: str | None, ids: list[str]) -> tuple[list, list]:
    records = list(client.iter(batch_id=batch_id)) if batch_id else [client.get(i) for i in ids]
    assert all(
        r.status == "completed" and r.result and r.result.stdout == "hello\n" for r in records
    )
    waits = [float(r.queue_wait_ms or 0) for r in records]
    e2e = [
        (r.finished_at - r.created_at).total_seconds() * 1000
        for r in records
        if r.finished_at is not None
    ]
    return waits, e2e


def warm_up(url: str) -> None:
    """A small batch followed to its end, first, so what a server does once (its first
    runs and event stream: about 20 ms of CPU for the stream) is not counted."""
    with Client(url, timeout=300) as client:
        created = client.batch([{"code": HELLO}] * 20)
        for state in client.batch_events(created.id):
            if state.finished:
                break


def via_batch(url: str, n: int) -> dict[str, float]:
    with Client(url, timeout=300) as client:
        own0, children0 = server_cpu_s(url)
        machine0 = machine_cpu_s()
        start = time.perf_counter()
        created = client.batch([{"code": HELLO}] * n)
        for state in client.batch_events(created.id):
            if state.finished:
                break
        wall = time.perf_counter() - start
        own1, children1 = server_cpu_s(url)
        machine1 = machine_cpu_s()
        waits, e2e = stored_timings(client, created.id, [])
    return {
        "server_ms": (own1 - own0) / n * 1000,
        "children_ms": (children1 - children0) / n * 1000,
        "machine_ms": (machine1 - machine0) / n * 1000,
        "rate": n / wall,
        "wait_p50": percentile(waits, 50),
        "wait_p99": percentile(waits, 99),
        "e2e_p50": percentile(e2e, 50),
        "e2e_p99": percentile(e2e, 99),
    }


async def via_requests(url: str, n: int, concurrency: int) -> dict[str, float]:
    gate = asyncio.Semaphore(concurrency)
    ids: list[str] = []
    client_latency: list[float] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"{url}/api/v1", timeout=120, limits=limits, headers=AUTH
    ) as http:

        async def one() -> None:
            async with gate:
                t = time.perf_counter()
                r = await http.post("/evaluations", params={"wait": 60}, json={"code": HELLO})
                client_latency.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200, r.text
                ids.append(r.json()["id"])

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - start
    with Client(url) as client:
        waits, _ = stored_timings(client, None, ids)
    return {
        "rate": n / wall,
        "wait_p50": percentile(waits, 50),
        "wait_p99": percentile(waits, 99),
        "e2e_p50": percentile(client_latency, 50),
        "e2e_p99": percentile(client_latency, 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--batch-only",
        action="store_true",
        help="bare processes and the API batch only (the CPU split), no raw engine or requests",
    )
    args = parser.parse_args()
    slots = os.cpu_count() or 1
    runtime = Settings().default_runtime
    print(
        f"{args.n} python hello-world runs · {runtime} · {slots} sandbox slots · "
        f"client concurrency {args.concurrency}"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    naked_cpu0 = machine_cpu_s()
    naked = asyncio.run(bare(args.n, slots))
    naked["machine_ms"] = (machine_cpu_s() - naked_cpu0) / args.n * 1000
    rows = [(f"bare python3 -c ({slots} at a time)", naked)]
    if not args.batch_only:
        rows.append(
            ("raw engine (Sandbox.run)", asyncio.run(raw_engine(args.n, args.concurrency, slots)))
        )
    with serve(CRUCIBLE_MAX_CONCURRENCY=str(slots)) as url:
        warm_up(url)
        batch = via_batch(url, args.n)
        rows.append(("API, one batch", batch))
        if not args.batch_only:
            single = asyncio.run(via_requests(url, args.n, args.concurrency))
            rows.append((f"API, {args.concurrency} concurrent requests", single))
            api_one, bare_one = one_at_a_time(url, 100)
    nan = float("nan")
    print()
    print(
        f"{'path':<32} {'eval/s':>7} {'ratio':>6} {'wait p50':>9} {'wait p99':>9} "
        f"{'e2e p50':>8} {'e2e p99':>8}"
    )
    for name, m in rows:
        print(
            f"{name:<32} {m['rate']:7.1f} {m['rate'] / naked['rate']:6.2f} "
            f"{m.get('wait_p50', nan):9.0f} {m.get('wait_p99', nan):9.0f} "
            f"{m['e2e_p50']:8.0f} {m['e2e_p99']:8.0f}"
        )
    print(
        "\nms; ratio = eval/s over bare python3 -c processes', measured in this run; e2e = "
        "submission to finish (batch: stored timestamps; requests: client round trip with ?wait)"
    )
    print(
        f"\nCPU per evaluation, one batch: server {batch['server_ms']:.1f} ms, "
        f"its reaped children {batch['children_ms']:.1f} ms, "
        f"whole machine {batch['machine_ms']:.1f} ms "
        f"(bare python3 -c: whole machine {naked['machine_ms']:.1f} ms)"
    )
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.batch_only:
        return
    a50, b50 = statistics.median(api_one), statistics.median(bare_one)
    print(
        f"\none ?wait request at a time (100): p50 {a50:.1f} ms, "
        f"p99 {percentile(api_one, 99):.1f} ms; "
        f"bare python3 -c p50 {b50:.1f} ms; added {a50 - b50:+.1f} ms"
    )


if __name__ == "__main__":
    main()
