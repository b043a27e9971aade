"""Fixtures for the API: in process (support.api: httpx ASGITransport, lifespan run by
hand) and as a real ``crucible serve`` subprocess on a free port. Sandboxes are real (runc)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from crucible.core.config import Settings
from support.api import ApiFactory, api_factory
from support.servers import ServerProcess


@pytest.fixture
def make_api(settings: Settings) -> ApiFactory:
    """``async with make_api(dispatch=False, max_queue=3) as (client, service)``."""
    return api_factory(settings)


@pytest.fixture
async def api(make_api: ApiFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with make_api() as (client, _service):
        yield client


@pytest.fixture
def make_server(tmp_path: Path, state_dir: Path) -> Iterator[Callable[..., ServerProcess]]:
    servers: list[ServerProcess] = []

    def factory(**env: str) -> ServerProcess:
        server = ServerProcess(tmp_path / f"data{len(servers)}", state_dir, **env)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, state_dir: Path) -> Iterator[ServerProcess]:
    """One ``crucible serve`` for all of a module's tests: a start costs seconds, and
    each test looks only at what it submitted itself. Tests that restart, kill or
    configure a server start their own with ``make_server``."""
    data_dir = tmp_path_factory.mktemp("server") / "data"
    s = ServerProcess(data_dir, state_dir, CRUCIBLE_MAX_CONCURRENCY="2")
    s.start()
    yield s
    s.stop()
