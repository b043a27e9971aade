"""What a sandboxed hello world costs over running it bare.

Runs the same Python hello world N times in each mode, sequentially and at
concurrency = number of cores, all in one invocation so the ratios are measured
side by side on the same (noisy, shared) machine:

- bare:            the host's /usr/bin/python3 directly, no isolation
- runc run:        `runc run` of a bundle built like Crucible's (the runtime's own cost)
- crucible runc:   Sandbox.run(runtime="runc")   (the engine on top of runc)
- crun run:        `crun run` of the same bundle (on a cgroup hybrid host, under the
                   wrapper that hides the cgroup2 mount, as Crucible runs it)
- crucible crun:   Sandbox.run(runtime="crun")
- runsc run:       `runsc run` of the same bundle
- crucible gvisor: Sandbox.run(runtime="gvisor")

Wall time per run, and at concurrency 1 also CPU time per run (this process and
all its children: the runtime, the container, the engine itself), since on a small
machine CPU per run is what bounds a batch.

Usage (as root): .venv/bin/python bench/sandbox_overhead.py [-n 100]
"""

from __future__ import annotations

import argparse
import asyncio
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

from crucible.config import Settings
from crucible.limits import resolve_limits
from crucible.sandbox import RunRequest, Sandbox, spec, workspace

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


def cpu_ms() -> float:
    """CPU time used so far by this process and its reaped children, in ms."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return (me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime) * 1000


async def measure_cpu(fn: Callable[[], Awaitable[None]], n: int) -> list[float]:
    """CPU per run, one run at a time (so every delta belongs to one run)."""
    used: list[float] = []
    for _ in range(n):
        before = cpu_ms()
        await fn()
        used.append(cpu_ms() - before)
    return used


async def measure(fn: Callable[[], Awaitable[None]], n: int, concurrency: int) -> list[float]:
    times: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def timed() -> None:
        async with gate:
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
    sandbox = Sandbox(Settings(state_dir=state, max_concurrency=cores))
    await sandbox.prepare()
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
    modes: list[tuple[str, Callable[[], Awaitable[None]]]] = [
        ("bare python", bare),
        ("runc run", raw_runtime(runc_root, sandbox, state / "raw")),
        ("crucible runc", engine(sandbox, "runc")),
        ("crun run", raw_runtime(crun_root, sandbox, state / "raw")),
        ("crucible crun", engine(sandbox, "crun")),
        ("runsc run", raw_runtime(runsc_root, sandbox, state / "raw")),
        ("crucible gvisor", engine(sandbox, "gvisor")),
    ]
    for _, fn in modes:  # warm caches and the init binary once
        await fn()
    print(f"# sandbox overhead: python hello world, n={args.n} per cell, {cores} cores")
    print()
    print("| mode | concurrency | median ms | p99 ms | added over bare (median) | ratio to bare |")
    print("|---|---|---|---|---|---|")
    for concurrency in (1, cores):
        # Interleave the modes round by round so a noisy neighbour hits all alike.
        results: dict[str, list[float]] = {name: [] for name, _ in modes}
        rounds = 5
        for _ in range(rounds):
            for name, fn in modes:
                results[name] += await measure(fn, args.n // rounds, concurrency)
        base = statistics.median(results["bare python"])
        for name, _ in modes:
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
        f"runc {over('crucible runc', 'runc run'):+.1f} ms, "
        f"crun {over('crucible crun', 'crun run'):+.1f} ms, "
        f"gvisor {over('crucible gvisor', 'runsc run'):+.1f} ms"
    )
    cpu: dict[str, list[float]] = {name: [] for name, _ in modes}
    for _ in range(5):
        for name, fn in modes:
            cpu[name] += await measure_cpu(fn, max(1, args.n // 5))
    base_cpu = statistics.median(cpu["bare python"])
    print()
    print("| mode | CPU median ms per run | CPU p90 ms | added over bare (median) |")
    print("|---|---|---|---|")
    for name, _ in modes:
        med = statistics.median(cpu[name])
        print(f"| {name} | {med:.1f} | {pct(cpu[name], 0.9):.1f} | {med - base_cpu:+.1f} |")
    shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
