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


@contextlib.contextmanager
def serve(**env: str) -> Iterator[str]:
    """Start a server; yields its URL; stops it and removes its directories."""
    root = Path(tempfile.mkdtemp(prefix="crucible-bench-", dir="/tmp"))
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
