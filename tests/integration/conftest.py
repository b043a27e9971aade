"""Fixtures for the API: in process (httpx ASGITransport, lifespan run by hand) and as a
real ``crucible serve`` subprocess on a free port. Sandboxes are real (runc)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_helpers import ApiFactory, ServerProcess

from auth_keys import AUTH
from crucible.api.app import create_app
from crucible.core.config import Settings
from crucible.services.evaluations import Service


def _print_tasks() -> None:
    print("\n--- the app's shutdown has lasted 60 s; its tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


@pytest.fixture
def make_api(settings: Settings) -> ApiFactory:
    """``async with make_api(dispatch=False, max_queue=3) as (client, service)``."""

    @asynccontextmanager
    async def factory(
        dispatch: bool = True, **overrides: Any
    ) -> AsyncIterator[tuple[httpx.AsyncClient, Service]]:
        cfg = settings.model_copy(update=overrides)
        app = create_app(cfg, dispatch=dispatch)
        watchdog: asyncio.TimerHandle | None = None
        try:
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://test/api/v1", timeout=60, headers=AUTH
                ) as client:
                    yield client, app.state.service
                # A shutdown takes a few seconds at most (the claimer's grace is 10 s).
                # One once outlived pytest-timeout unexplained: if it lasts a minute,
                # print what every task is waiting on.
                watchdog = asyncio.get_running_loop().call_later(60, _print_tasks)
        finally:
            if watchdog is not None:
                watchdog.cancel()

    return factory


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
