"""What environments cost: importing an image of about 100 MB, and running in one.

1. Import: an image of the host's python3 with its standard library, bash and a few
   coreutils, plus Debian's python3 packages as a second layer (about 110 MB
   unpacked), written as a ``docker save`` archive (layers uncompressed) and as an
   OCI layout (layers gzip-compressed), each imported ``-n`` times into a fresh store:
   wall time median and p90, the archive's size, and the disk the environment takes.
2. Per run: the same python hello world under ``host`` (today's skeleton over the
   host's /usr) and in that imported environment, interleaved round by round, cold
   (the warm pool off: a container per run, the environment's overlay mounted per
   run) and with the pool on, per runtime: medians, p90 and the ratio to ``host``.

Usage (as root): .venv/bin/python bench/environments.py [-n 40] [--imports 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from crucible.core.config import Settings
from crucible.domain.limits import resolve_limits
from crucible.engine import RunRequest, Sandbox
from crucible.environments.store import Environment, EnvironmentStore
from support import oci_images

CODE = 'print("hello")'


def packages_layer() -> bytes:
    """Debian's python3 packages (/usr/lib/python3/dist-packages) as one layer."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add("/usr/lib/python3/dist-packages", arcname="usr/lib/python3/dist-packages")
    return out.getvalue()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def imports(root: Path, n: int) -> Environment:
    image = oci_images.Image([oci_images.host_userland_layer(), packages_layer()])
    unpacked = sum(len(t) for t in image.layers)
    docker = oci_images.write_docker_archive(image, root / "image.tar")
    layout = oci_images.write_oci_layout(image, root / "layout")
    layout_bytes = sum(f.stat().st_size for f in layout.rglob("*") if f.is_file())
    print(f"# environment import: an image of {mb(unpacked)} unpacked (2 layers), n={n}")
    print()
    print("| form | archive | import median s | p90 s | environment on disk |")
    print("|---|---|---|---|---|")
    kept = None
    for form, source, size in (
        ("docker save (uncompressed)", docker, docker.stat().st_size),
        ("OCI layout (gzip)", layout, layout_bytes),
    ):
        times = []
        env = None
        for i in range(n):
            store = EnvironmentStore(root / f"store-{form[:3]}-{i}", max_bytes=1 << 30)
            t = time.perf_counter()
            env = store.import_image(source, "bench/python")
            times.append(time.perf_counter() - t)
        assert env is not None
        kept = env
        print(
            f"| {form} | {mb(size)} | {statistics.median(times):.2f} | {pct(times, 0.9):.2f} "
            f"| {mb(env.size_bytes)} |"
        )
    assert kept is not None
    return kept


def runner(sandbox: Sandbox, runtime: str, env: Environment | None) -> Callable[[], Awaitable]:
    request = RunRequest(
        code=CODE,
        limits=resolve_limits({}, sandbox.settings),
        runtime=runtime,  # type: ignore[arg-type]
        environment=env.root_spec() if env else None,
    )

    async def one() -> None:
        result = await sandbox.run(request)
        assert result.stdout == "hello\n", result

    return one


async def per_run(state: Path, env: Environment, n: int) -> None:
    settings = Settings(state_dir=state, max_concurrency=1)
    pooled = Sandbox(settings)
    cold = Sandbox(settings.model_copy(update={"pool_size": 0}))
    modes: list[tuple[str, Callable[[], Awaitable]]] = []
    for rt in ("crun", "runc", "gvisor"):
        for label, engine in (("cold", cold), ("pool", pooled)):
            modes += [
                (f"{rt} {label} host", runner(engine, rt, None)),
                (f"{rt} {label} environment", runner(engine, rt, env)),
            ]
    for _, fn in modes:
        await fn()
    results: dict[str, list[float]] = {name: [] for name, _ in modes}
    rounds = 5
    for _ in range(rounds):  # interleaved: a noisy neighbour hits every mode alike
        for name, fn in modes:
            for _ in range(max(1, n // rounds)):
                t = time.perf_counter()
                await fn()
                results[name].append((time.perf_counter() - t) * 1000)
    print()
    print(f"# per run: python hello world, host vs the imported environment, n={n}, one at a time")
    print()
    print("| runtime | pool | host median ms | environment median ms | env p90 ms | ratio |")
    print("|---|---|---|---|---|---|")
    for rt in ("crun", "runc", "gvisor"):
        for label in ("cold", "pool"):
            host = results[f"{rt} {label} host"]
            inside = results[f"{rt} {label} environment"]
            h, e = statistics.median(host), statistics.median(inside)
            print(f"| {rt} | {label} | {h:.1f} | {e:.1f} | {pct(inside, 0.9):.1f} | {e / h:.2f}x |")
    await pooled.close()
    await cold.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=40, help="runs per mode")
    parser.add_argument("--imports", type=int, default=5, help="imports per form")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="crucible-bench-env-", dir="/tmp") as tmp:
        root = Path(tmp)
        env = imports(root, args.imports)
        state = root / "state"
        state.mkdir()
        state.chmod(0o711)
        await per_run(state, env, args.n)


if __name__ == "__main__":
    asyncio.run(main())
