"""Fixtures of the distributed tests; the servers and process launchers are in
tests/support/local_cluster.py (through support/distributed.py). Everything started is killed at
teardown, even when a test fails."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.distributed import (
    PG_ADMIN,
    Cluster,
    PostgresServer,
    RedisServer,
    Unavailable,
    fresh_database,
)


@pytest.fixture
def dist_root(request: pytest.FixtureRequest) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="crucible-dist-", dir="/tmp"))
    yield path
    # Keep the processes' logs of the last run of each test for a post-mortem.
    logs = Path(tempfile.gettempdir()) / "crucible-dist-logs" / request.node.name
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    for log in path.glob("*.log"):
        shutil.copy(log, logs / log.name)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def redis_server(dist_root: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(dist_root / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh database on the machine's PostgreSQL (never restarted by tests)."""
    yield from fresh_database(PG_ADMIN)


@pytest.fixture
def own_postgres(dist_root: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this test alone: it may be restarted."""
    try:
        server = PostgresServer(dist_root / "pg")
    except Unavailable as exc:
        pytest.skip(str(exc))
    server.init()
    server.start()
    yield server
    server.stop("immediate")


@pytest.fixture
def make_cluster(dist_root: Path, redis_server: RedisServer) -> Iterator[Any]:
    made: list[Cluster] = []

    def factory(database_url: str, **env: str) -> Cluster:
        cluster = Cluster(dist_root, database_url, redis_server, **env)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        cluster.teardown()


@pytest.fixture
def cluster(database: str, make_cluster: Any) -> Cluster:
    c: Cluster = make_cluster(database)
    return c
