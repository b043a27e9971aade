"""A distributed worker process: claims from the database, runs in its own loop.

Event-loop model. The worker process owns one asyncio loop, run forever in a daemon
thread, with one Sandbox (``concurrency`` slots), one database pool, one Redis bus,
one executor and one :class:`~crucible.dispatch.claimer.Claimer`, the same claim loop
an embedded server runs: whenever a slot is free it claims the fair next runnable
evaluation straight from the database, else it polls every ``claim_poll_s``. Celery
only delivers wake-ups (:mod:`crucible.dispatch.celery_app`): its task thread sets
the claimer's event and returns. The process stays a single normal process: the
Sandbox marks it PR_SET_CHILD_SUBREAPER and reaps its runtimes' orphans, and one
process per host keeps one heartbeat, one identity and one cancel subscription per
worker. ``kill -9`` of the worker kills all of it at once; its heartbeat stops and
other processes re-queue its evaluations.

Its parts are composed by :func:`crucible.wiring.compose_worker` (handed to the
runtime by :func:`crucible.wiring.build_worker`); the runtime starts, serves and
stops them. The loop also runs the process's maintenance (heartbeat, orphan recovery) and
listens on the cancel channel, killing a local run within milliseconds of a cancel
on any API instance.

With ``--sandboxes N`` (``sandbox_host_capacity``) the worker is also a sandbox
host: a :class:`~crucible.services.sandboxes.SandboxService` of its own (owner: this
worker's identity, so its heartbeat row is the sandboxes' liveness) over the same
engine, served to API instances by the cluster endpoint (:mod:`crucible.dispatch.host`)
on this loop. Its heartbeat carries the sandboxes it runs; when the row's epoch moved
(it was declared dead while cut off), it closes every sandbox the database no longer
gives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import shutil
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

from prometheus_client import start_http_server
from redis.exceptions import RedisError

from crucible.core.config import Settings
from crucible.core.errors import SandboxUnavailable
from crucible.dispatch import CANCEL_CHANNEL
from crucible.dispatch.celery_app import QUEUE, make_celery
from crucible.dispatch.claimer import Claimer
from crucible.dispatch.host import HostServer
from crucible.dispatch.maintenance import Maintenance
from crucible.domain.limits import resolve_limits
from crucible.engine import Sandbox
from crucible.services import identity, metrics
from crucible.services.events import RedisBus
from crucible.services.executor import Executor
from crucible.services.metrics import REGISTRY
from crucible.services.sandboxes import SandboxService
from crucible.store import Store, WorkerInfo

log = logging.getLogger(__name__)

T = TypeVar("T")

_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class WorkerParts:
    """What a worker process is made of, composed by ``crucible.wiring``;
    ``sandboxes``: the agent sandboxes it hosts (``--sandboxes N``), else None."""

    store: Store
    bus: RedisBus
    sandbox: Sandbox
    executor: Executor
    claimer: Claimer
    maintenance: Maintenance
    sandboxes: SandboxService | None


class Compose(Protocol):
    """Builds a worker's parts (``crucible.wiring.compose_worker``), on its loop."""

    def __call__(
        self,
        settings: Settings,
        *,
        info: WorkerInfo,
        concurrency: int,
        on_epoch: Callable[[int], None],
    ) -> WorkerParts: ...


class WorkerRuntime:
    """The asyncio side of one worker process (see the module docstring): it starts,
    serves and stops the parts ``compose`` builds."""

    def __init__(self, settings: Settings, *, concurrency: int, compose: Compose) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.compose = compose
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="crucible-loop", daemon=True
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.info = identity.this_process("celery", concurrency, QUEUE)
        self.parts: WorkerParts | None = None
        self.endpoint: HostServer | None = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop from another thread; wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def start(self) -> None:
        self._thread.start()
        self.call(self._start())

    def wake(self) -> None:
        """The Celery task's body: look for runnable work now (from a task thread)."""
        if self.parts is not None:
            self.loop.call_soon_threadsafe(self.parts.claimer.look)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        s = self.settings
        # First: a refused start leaves nothing running.
        hosting = self._hosting_address() if s.sandbox_host_capacity > 0 else None
        parts = self.compose(
            s, info=self.info, concurrency=self.concurrency, on_epoch=self._declared_dead
        )
        await asyncio.to_thread(parts.store.migrate)
        await parts.sandbox.sweep()  # leftovers of dead supervisors on this state dir
        metrics.watch_warm_pool(parts.sandbox)
        await parts.sandbox.start_pool(resolve_limits({}, s))
        shutil.rmtree(s.data_dir / "tmp" / self.info.id, ignore_errors=True)
        self.parts = parts
        if parts.sandboxes is not None and hosting is not None:
            await self._start_hosting(parts.sandboxes, *hosting)
            parts.maintenance.info = self.info  # now with the endpoint it advertises
        await parts.maintenance.heartbeat()  # registered before the first claim
        parts.maintenance.start()
        parts.claimer.start()
        self._tasks.append(asyncio.create_task(self._listen_cancels(parts)))
        gc.freeze()  # start-up's objects out of the collector's sight, as the server's

    def _hosting_address(self) -> tuple[str, str]:
        """The cluster token and listening address of this host's endpoint. Refuses
        (SandboxUnavailable) without either: an endpoint open to anyone would run
        anyone's code."""
        token, listen = self.settings.cluster_token, self.settings.sandbox_host_listen
        if not token:
            raise SandboxUnavailable(
                "hosting sandboxes (--sandboxes) needs CRUCIBLE_CLUSTER_TOKEN, the secret"
                " API instances present to this host's cluster endpoint"
            )
        if not listen:
            raise SandboxUnavailable("hosting sandboxes (--sandboxes) needs --listen ADDR:PORT")
        return token, listen

    async def _start_hosting(self, sandboxes: SandboxService, token: str, listen: str) -> None:
        """The sandbox service of this host and its cluster endpoint, before the first
        heartbeat (which advertises them)."""
        s = self.settings
        await sandboxes.check_settings()
        await sandboxes.start()  # sweeps the leftovers of dead owners, then reaps
        self.endpoint = HostServer(sandboxes, token=token, listen=listen)
        await self.endpoint.start()
        advertise = s.sandbox_host_advertise or f"http://{self.endpoint.addr}:{self.endpoint.port}"
        self.info = dataclasses.replace(
            self.info, sandbox_capacity=s.sandbox_host_capacity, endpoint=advertise
        )
        log.info("hosting up to %d sandboxes at %s", s.sandbox_host_capacity, advertise)

    def _declared_dead(self, _epoch: int) -> None:
        """Declared dead while cut off: its sandboxes are ``lost`` in the database, so
        close them here now (the reaper would at its next tick)."""
        if self.parts is not None and self.parts.sandboxes is not None:
            self._tasks.append(asyncio.create_task(self.parts.sandboxes.drop_orphans()))

    async def _listen_cancels(self, parts: WorkerParts) -> None:
        while True:
            try:
                async for evaluation_id in parts.bus.listen(CANCEL_CHANNEL):
                    parts.executor.cancel(evaluation_id)
            except (RedisError, OSError) as exc:
                log.warning("cancel channel lost (%r); resubscribing", exc)
                await asyncio.sleep(1.0)

    async def _stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.endpoint is not None:
            await self.endpoint.stop()
        if (parts := self.parts) is None:
            return
        gc.unfreeze()
        await parts.claimer.stop(grace_s=self.settings.shutdown_grace_s)
        if parts.sandboxes is not None:
            await parts.sandboxes.stop()  # reason shutdown, before the row says stopped
        await parts.maintenance.stop()
        await parts.sandbox.close()
        await parts.bus.close()
        await asyncio.to_thread(parts.store.dispose)


def wake(task: Any, *hint: Any, **_: Any) -> None:
    """The ``crucible.wake`` task: make this worker look for runnable evaluations now
    (``hint``, an evaluation id or a count, is only for the worker's log)."""
    current_runtime().wake()


def install_runtime(runtime: WorkerRuntime) -> None:
    global _runtime
    with _runtime_lock:
        _runtime = runtime


def current_runtime(build: Callable[[], WorkerRuntime] | None = None) -> WorkerRuntime:
    """The process's runtime; started from ``build`` at the first task when none was
    installed (``celery -A crucible.wiring worker --pool threads``, where ``crucible
    worker`` did not build it). Raises RuntimeError with neither."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            if build is None:
                raise RuntimeError("no worker runtime: start workers with `crucible worker`")
            _runtime = build()
            _runtime.start()
        return _runtime


def run_worker(runtime: WorkerRuntime) -> None:
    """``crucible worker``: ``runtime`` (``crucible.wiring.build_worker``) started, then
    a Celery worker receiving wake-ups; returns after a warm shutdown (running
    evaluations get ``shutdown_grace_s``)."""
    settings = runtime.settings
    if settings.worker_metrics_port is not None:
        # Runs in this worker's process: its own sandbox run histograms.
        start_http_server(
            settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=REGISTRY
        )
    app = make_celery(settings, wake=wake)
    runtime.start()
    install_runtime(runtime)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                "--concurrency=1",  # wake-ups only; sandboxes run in the runtime's loop
                f"--queues={QUEUE}",
                f"--hostname={runtime.info.id.replace('@', '-')}@%h",
                "--loglevel=INFO",
                "--without-mingle",
            ]
        )
    finally:
        runtime.stop()
