"""The app for tests, built one way: in this process through httpx's ASGI transport
(``in_process``, ``api_factory``), or served over real HTTP by uvicorn in a thread
(``serve_in_thread``), for the sync client and the CLI."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from crucible.api.app import create_app
from crucible.core.config import Settings
from crucible.services.evaluations import Service
from crucible.services.sandboxes import SessionEngine
from support.auth_keys import AUTH
from support.polling import eventually
from support.servers import free_port

ApiFactory = Callable[..., AbstractAsyncContextManager[tuple[httpx.AsyncClient, Service]]]


def _print_tasks() -> None:
    print("\n--- the app's shutdown has lasted 60 s; its tasks:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


@asynccontextmanager
async def in_process(app: FastAPI, *, timeout: float = 60) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` with its lifespan run, and a client of its ``/api/v1`` with the tests'
    admin key (the in-process transport hands a response over once its body ends)."""
    watchdog: asyncio.TimerHandle | None = None
    try:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://test/api/v1",
                timeout=timeout,
                headers=AUTH,
            ) as client:
                yield client
            # A shutdown takes a few seconds at most (the claimer's grace is 10 s).
            # One once outlived pytest-timeout unexplained: if it lasts a minute,
            # print what every task is waiting on.
            watchdog = asyncio.get_running_loop().call_later(60, _print_tasks)
    finally:
        if watchdog is not None:
            watchdog.cancel()


def api_factory(
    settings: Settings,
    *,
    dispatch: bool = True,
    sessions: SessionEngine | None = None,
    timeout: float = 60,
) -> ApiFactory:
    """``async with factory(**settings_overrides) as (client, service)``; ``dispatch``
    may be overridden per call too (``factory(dispatch=False, max_queue=3)``)."""

    @asynccontextmanager
    async def factory(
        dispatch: bool = dispatch, **overrides: Any
    ) -> AsyncIterator[tuple[httpx.AsyncClient, Service]]:
        app = create_app(
            settings.model_copy(update=overrides), dispatch=dispatch, sessions=sessions
        )
        async with in_process(app, timeout=timeout) as client:
            yield client, app.state.service

    return factory


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """``app`` served by uvicorn on a free port in a thread of this process; yields its
    URL once it accepts connections, and stops it on exit."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", log_config=None)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "the server's thread ended"
        return bool(server.started)

    # A start takes well under a second.
    eventually(started, within=30, reason="uvicorn to start", interval=0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
