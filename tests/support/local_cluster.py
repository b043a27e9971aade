"""A distributed deployment on this machine, from real servers and real processes:
throwaway redis-server and PostgreSQL instances started from the installed binaries on
free ports, ``crucible serve --dispatcher celery`` and ``crucible worker`` subprocesses
with their own directories. Never fakeredis, never a mocked broker, and never the
machine's own services (5432/6379), which are never restarted.

Shared by the distributed tests (tests/distributed/, through support/distributed.py and its
fixtures) and the benchmarks (bench/soak.py puts tests/ on sys.path); so it knows
nothing of pytest: a missing binary raises :class:`Unavailable`, which the fixtures
turn into a skip."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from crucible.core.config import Settings
from support.mounts import unmount_below
from support.polling import eventually
from support.servers import free_port

CRUCIBLE = str(Path(sys.executable).with_name("crucible"))
ADMIN_KEY = "crk_distributedtests0000000000000000"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLUSTER_TOKEN = "cluster-token-of-the-distributed-tests"


def http(url: str, timeout: float = 60) -> httpx.Client:
    """A client of one API instance, with the tests' admin key."""
    return httpx.Client(base_url=f"{url}/api/v1", headers=AUTH, timeout=timeout)


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """:func:`~support.polling.eventually` with a cluster's tolerance: any exception of
    ``check`` (a server still starting, or briefly down) counts as "not yet"."""
    return eventually(check, within=timeout, reason=what, interval=interval, ignoring=(Exception,))


class Unavailable(RuntimeError):
    """A server's binaries are not installed here."""


class RedisServer:
    """redis-server on a free port, without persistence (a restart loses everything,
    as a cache-configured production Redis would)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.root)],
                stdout=log, stderr=log,
            )  # fmt: skip
        wait_for(self._ping, 20, "redis-server")

    def _ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


class PostgresServer:
    """A throwaway PostgreSQL cluster (initdb as user postgres; initdb refuses root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise Unavailable("no PostgreSQL binaries in /usr/lib/postgresql")
        self.bin = Path(bins[-1])

    def _as_postgres(self, *argv: str, timeout: float = 60) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root.parent, 0o711)  # mkdtemp's 0700 would keep postgres out
        shutil.chown(self.root, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust",
                          "-U", "postgres")  # fmt: skip

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts,
                          "-l", str(self.root / "pg.log"), "-w", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode,
                              "-w", "stop")  # fmt: skip

    def restart(self) -> None:
        self.stop("fast")
        self.start()


class Proc:
    """A ``crucible`` subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        """SIGKILL the process (not its group: orphaned containers are the point)."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-n:]
        return ""


class Cluster:
    """API instances and workers of one distributed deployment, started on demand."""

    def __init__(self, root: Path, database_url: str, redis: RedisServer, **env: str) -> None:
        self.root = root
        self.redis = redis
        self.state_dir = root / "state"  # shared: the sweep only takes dead owners' leftovers
        self.data_dir = root / "data"  # shared: blobs are on a shared file system
        self.env = {
            **os.environ,
            "CRUCIBLE_DATABASE_URL": database_url,
            "CRUCIBLE_BROKER_URL": redis.url,
            "CRUCIBLE_STATE_DIR": str(self.state_dir),
            "CRUCIBLE_DATA_DIR": str(self.data_dir),
            "CRUCIBLE_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
            "CRUCIBLE_CLUSTER_TOKEN": CLUSTER_TOKEN,
            "CRUCIBLE_HEARTBEAT_S": "0.5",
            "CRUCIBLE_WORKER_DEAD_AFTER_S": "6",
            "CRUCIBLE_RETRY_BACKOFF_S": "0.2",
            "CRUCIBLE_RETRY_BACKOFF_MAX_S": "2",
            **env,
        }
        self.apis: list[Proc] = []
        self.workers: list[Proc] = []

    def api(self, **env: str) -> tuple[Proc, str]:
        port = free_port()
        n = len(self.apis)
        proc = Proc(
            f"api{n}",
            [CRUCIBLE, "serve", "--dispatcher", "celery", "--port", str(port)],
            {**self.env, **env},
            self.root / f"api{n}.log",
        ).start()
        self.apis.append(proc)
        url = f"http://127.0.0.1:{port}"
        self._wait_ready(proc, url)
        return proc, url

    def restart_api(self, proc: Proc, url: str) -> None:
        """SIGKILL an API instance and start it again on the same port (its URL stays)."""
        proc.kill9()
        proc.start()
        self._wait_ready(proc, url)

    @staticmethod
    def _wait_ready(proc: Proc, url: str) -> None:
        def ready() -> bool:
            if not proc.alive():
                raise AssertionError(f"api exited: {proc.tail()}")
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200

        wait_for(ready, 60, "the API")

    def worker(
        self,
        concurrency: int = 1,
        *,
        wait: bool = True,
        sandboxes: int = 0,
        listen: str | None = None,
        **env: str,
    ) -> Proc:
        """A worker; with ``sandboxes`` a sandbox host listening on ``listen``
        (ADDR:PORT; default a free port on 127.0.0.1)."""
        n = len(self.workers)
        argv = [CRUCIBLE, "worker", "--concurrency", str(concurrency)]
        if sandboxes:
            argv += [
                "--sandboxes",
                str(sandboxes),
                "--listen",
                listen or f"127.0.0.1:{free_port()}",
            ]
        proc = Proc(
            f"worker{n}",
            argv,
            {**self.env, **env},
            self.root / f"worker{n}.log",
        ).start()
        self.workers.append(proc)
        if wait:
            wait_for(lambda: "ready." in proc.tail(20000) or not proc.alive(), 60, "worker")
            assert proc.alive(), proc.tail()
        return proc

    def teardown(self) -> None:
        for proc in [*self.workers, *self.apis]:
            with contextlib.suppress(Exception):
                proc.stop(timeout=10)
        # Containers of killed workers: remove them as the next worker's sweep would.
        with contextlib.suppress(Exception):
            from crucible.engine import Sandbox

            asyncio.run(Sandbox(Settings(state_dir=self.state_dir)).sweep())
        unmount_below(self.root)
