"""A ``crucible serve`` subprocess for benchmarks (temporary data and state dirs)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# The benchmarks' admin key: the server is told to create it, and Client (which reads
# CRUCIBLE_API_KEY) and AUTH carry it.
API_KEY = os.environ.setdefault("CRUCIBLE_API_KEY", f"crk_bench{secrets.token_urlsafe(24)}")
AUTH = {"Authorization": f"Bearer {API_KEY}"}


_PIDS: dict[str, int] = {}


def server_cpu_s(url: str) -> tuple[float, float]:
    """CPU seconds so far of the server at ``url``: its own (the service: HTTP, database,
    events, the engine's supervision) and its reaped children's (runtimes and sandboxed
    programs: the server is their subreaper)."""
    with open(f"/proc/{_PIDS[url]}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    utime, stime, cutime, cstime = (int(x) / tick for x in fields[11:15])
    return utime + stime, cutime + cstime


def machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def serve(**env: str) -> Iterator[str]:
    """Start a server; yields its URL; stops it and removes its directories."""
    root = Path(tempfile.mkdtemp(prefix="crucible-bench-", dir="/tmp"))
    root.chmod(0o755)  # user-namespaced sandboxes traverse it (their state dir is under it)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    crucible = str(Path(sys.executable).with_name("crucible"))
    environment = {
        **os.environ,
        "CRUCIBLE_STATE_DIR": str(root / "state"),
        "CRUCIBLE_BOOTSTRAP_ADMIN_KEY": API_KEY,
        **env,
    }
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [crucible, "serve", "--port", str(port), "--data-dir", str(root / "data")],
        env=environment,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    _PIDS[url] = proc.pid
    try:
        for _ in range(600):
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError((root / "server.log").read_text()[-2000:])
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        subprocess.run(
            ["umount", "-R", "-l", str(root / "state")], capture_output=True, check=False
        )
        shutil.rmtree(root, ignore_errors=True)
