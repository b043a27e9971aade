"""What a sandboxed hello world costs over running it bare.

Runs the same Python hello world N times in each mode, sequentially and at
concurrency = number of cores, all in one invocation so the ratios are measured
side by side on the same (noisy, shared) machine:

- bare:              the host's /usr/bin/python3 directly, no isolation
- <rt> run:          `runc run` / `crun run` / `runsc run` of a bundle built like
                     Crucible's (the runtime's own cost; crun on a cgroup hybrid host
                     under the wrapper that hides the cgroup2 mount, as Crucible runs it)
- crucible <rt> cold: Sandbox.run with the warm pool off: a container made per run
- crucible <rt> pool: the pool on, runs back to back (a replacement is being made
                     while the next run starts, as in a batch)
- crucible <rt> warm: the pool on, a warm sandbox ready and the engine quiet (no
                     tear-down or refill running) when the run starts: a request that
                     finds an idle server (the wait for it is not timed)

Wall time per run, and at concurrency 1 also CPU time per run (this process and
all its children: the runtime, the container, the engine itself), since on a small
machine CPU per run is what bounds a batch.

Usage (as root): .venv/bin/python bench/sandbox_overhead.py [-n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import secrets
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from crucible.core.config import Settings
from crucible.domain.limits import resolve_limits
from crucible.engine import RunRequest, Sandbox, spec, workspace

CODE = 'print("hello")'


async def bare() -> None:
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/python3", "-c", CODE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert out == b"hello\n"


def raw_runtime(binary: list[str], sandbox: Sandbox, root: Path) -> Callable[[], Awaitable[None]]:
    """`<runtime> run` of a bundle built by Crucible's own spec, without the engine."""
    assert sandbox._rootfs is not None and sandbox._init is not None
    limits = resolve_limits({}, sandbox.settings)

    async def one() -> None:
        cid = f"bench-{secrets.token_hex(6)}"
        bundle = root / cid
        ws = bundle / "workspace"
        bundle.mkdir(parents=True)
        workspace.mount_tmpfs(ws, 16)
        try:
            (ws / "main.py").write_text(CODE)
            config = spec.build_config(
                args=["/usr/bin/python3", "main.py"],
                env={"PATH": spec.PATH, "HOME": "/workspace", "CRUCIBLE_STATUS_NONCE": "x"},
                limits=limits,
                rootfs=sandbox._rootfs,  # type: ignore[arg-type]
                workspace=ws,
                init_binary=sandbox._init,  # type: ignore[arg-type]
                seccomp_bpf=sandbox._seccomp,  # type: ignore[arg-type]
                cgroups_path=f"/bench/{cid}",
                gvisor="runsc" in binary[0],
            )
            (bundle / "config.json").write_text(json.dumps(config))
            proc = await asyncio.create_subprocess_exec(
                *binary,
                "run",
                "--bundle",
                str(bundle),
                cid,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, _ = await proc.communicate()
            assert out == b"hello\n", out
        finally:
            workspace.unmount(ws)
            shutil.rmtree(bundle, ignore_errors=True)

    return one


def engine(sandbox: Sandbox, runtime: str) -> Callable[[], Awaitable[None]]:
    request = RunRequest(code=CODE, limits=resolve_limits({}, sandbox.settings), runtime=runtime)  # type: ignore[arg-type]

    async def one() -> None:
        result = await sandbox.run(request)
        assert result.stdout == "hello\n", result

    return one


async def warm_ready(sandbox: Sandbox, runtime: str) -> None:
    """Until a warm sandbox of ``runtime`` is idle and the engine quiet (untimed)."""

    def ready() -> bool:
        return sandbox.quiet and any(s.runtime == runtime and s.idle for s in sandbox.warm_stats())

    while not ready():  # noqa: ASYNC110 - the pool has no event to await
        await asyncio.sleep(0.002)


def cpu_ms() -> float:
    """CPU time used so far by this process and its reaped children, in ms."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime) * 1000


async def measure_cpu(fn: Callable[[], Awaitable[None]], n: int, ready: Ready) -> list[float]:
    """CPU per run, one run at a time (so every delta belongs to one run; with the
    pool, the run's replacement is made during it and counted with it)."""
    used: list[float] = []
    for _ in range(n):
        if ready is not None:
            await ready()
        before = cpu_ms()
        await fn()
        used.append(cpu_ms() - before)
    return used


Ready = Callable[[], Awaitable[None]] | None


async def measure(
    fn: Callable[[], Awaitable[None]], n: int, concurrency: int, ready: Ready = None
) -> list[float]:
    times: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def timed() -> None:
        async with gate:
            if ready is not None:
                await ready()
            t = time.perf_counter()
            await fn()
            times.append((time.perf_counter() - t) * 1000)

    await asyncio.gather(*(timed() for _ in range(n)))
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="runs per mode and concurrency")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    state = Path(tempfile.mkdtemp(prefix="crucible-bench-"))
    settings = Settings(state_dir=state, max_concurrency=cores)
    sandbox = Sandbox(settings)  # the pool on (the default)
    cold = Sandbox(settings.model_copy(update={"pool_size": 0}))
    await sandbox.prepare()
    await cold.prepare()
    runc_root = ["runc", "--root", str(state / "bench-runc")]
    crun = sandbox.get_runtime("crun")
    crun_root = [*crun.wrapper, crun.binary, "--root", str(state / "bench-crun")]
    runsc_root = [
        "runsc",
        "--root",
        str(state / "bench-runsc"),
        "--platform=ptrace",
        "--network=none",
    ]
    raw = state / "raw"
    modes: list[tuple[str, Callable[[], Awaitable[None]], Ready]] = [("bare python", bare, None)]
    raw_runtimes = (("crun", crun_root), ("runc", runc_root), ("gvisor", runsc_root))
    for rt, root in raw_runtimes:
        ready = functools.partial(warm_ready, sandbox, rt)
        modes += [
            (f"{root[0] if rt != 'crun' else 'crun'} run", raw_runtime(root, sandbox, raw), None),
            (f"crucible {rt} cold", engine(cold, rt), None),
            (f"crucible {rt} pool", engine(sandbox, rt), None),
            (f"crucible {rt} warm", engine(sandbox, rt), ready),
        ]  # fmt: skip
    for _, fn, _ in modes:  # warm caches and the init binary once
        await fn()
    print(f"# sandbox overhead: python hello world, n={args.n} per cell, {cores} cores")
    print()
    print("| mode | concurrency | median ms | p99 ms | added over bare (median) | ratio to bare |")
    print("|---|---|---|---|---|---|")
    for concurrency in (1, cores):
        # Interleave the modes round by round so a noisy neighbour hits all alike.
        results: dict[str, list[float]] = {name: [] for name, _, _ in modes}
        rounds = 5
        for _ in range(rounds):
            for name, fn, ready in modes:
                results[name] += await measure(fn, args.n // rounds, concurrency, ready)
        base = statistics.median(results["bare python"])
        for name, _, _ in modes:
            med = statistics.median(results[name])
            print(
                f"| {name} | {concurrency} | {med:.1f} | {pct(results[name], 0.99):.1f} "
                f"| {med - base:+.1f} | {med / base:.2f}x |"
            )

    def over(a: str, b: str) -> float:
        return statistics.median(results[a]) - statistics.median(results[b])

    print()
    print(
        f"engine's own wall cost at concurrency {cores} (median over the plain runtime): "
        f"runc {over('crucible runc cold', 'runc run'):+.1f} ms, "
        f"crun {over('crucible crun cold', 'crun run'):+.1f} ms, "
        f"gvisor {over('crucible gvisor cold', 'runsc run'):+.1f} ms; "
        f"a warm sandbox over bare: crun {over('crucible crun warm', 'bare python'):+.1f} ms, "
        f"runc {over('crucible runc warm', 'bare python'):+.1f} ms, "
        f"gvisor {over('crucible gvisor warm', 'bare python'):+.1f} ms"
    )
    print(f"pool: {sandbox.pool.hits} runs warm, {sandbox.pool.misses} not")
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    for _ in range(5):
        for name, fn, ready in modes:
            cpu[name] += await measure_cpu(fn, max(1, args.n // 5), ready)
    base_cpu = statistics.median(cpu["bare python"])
    print()
    print("| mode | CPU median ms per run | CPU p90 ms | added over bare (median) |")
    print("|---|---|---|---|")
    for name, _, _ in modes:
        med = statistics.median(cpu[name])
        print(f"| {name} | {med:.1f} | {pct(cpu[name], 0.9):.1f} | {med - base_cpu:+.1f} |")
    await sandbox.close()
    await cold.close()
    shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
