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

The loop also runs the process's maintenance (heartbeat, orphan recovery) and
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
import logging
import shutil
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from prometheus_client import start_http_server
from redis.exceptions import RedisError

from crucible.core.config import Settings, get_settings
from crucible.core.errors import SandboxUnavailable
from crucible.dispatch import CANCEL_CHANNEL
from crucible.dispatch.celery_app import QUEUE, make_celery
from crucible.dispatch.claimer import Claimer
from crucible.dispatch.host import HostServer
from crucible.dispatch.maintenance import Maintenance
from crucible.domain.limits import resolve_limits
from crucible.engine import Sandbox
from crucible.environments.store import EnvironmentStore
from crucible.services import identity, metrics
from crucible.services.access import Access
from crucible.services.environments import EnvironmentService
from crucible.services.events import RedisBus
from crucible.services.executor import Executor
from crucible.services.metrics import REGISTRY
from crucible.services.sandboxes import SandboxService, lose_dead_hosts
from crucible.store import BlobStore, Cluster, Store
from crucible.store.sandboxes import Owner, SandboxStore

log = logging.getLogger(__name__)

T = TypeVar("T")

_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


class WorkerRuntime:
    """The asyncio side of one worker process (see the module docstring)."""

    def __init__(self, settings: Settings, *, concurrency: int) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="crucible-loop", daemon=True
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.info = identity.this_process("celery", concurrency, QUEUE)
        self.sandboxes: SandboxService | None = None
        self.endpoint: HostServer | None = None

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop from another thread; wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def start(self) -> None:
        self._thread.start()
        self.call(self._start())

    def wake(self) -> None:
        """The Celery task's body: look for runnable work now (from a task thread)."""
        self.loop.call_soon_threadsafe(self.claimer.notify)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(s.sqlalchemy_url)
        self.store.default_max_running = s.quota_max_running  # as in the API (access.py)
        await asyncio.to_thread(self.store.migrate)
        self.cluster = Cluster(self.store)
        self.bus = RedisBus(s.event_redis_url, prefix=s.prefix, retention_s=s.event_retention_s)
        self.sandbox = Sandbox(s, max_concurrency=self.concurrency)
        await self.sandbox.sweep()  # leftovers of dead supervisors on this state dir
        metrics.watch_warm_pool(self.sandbox)
        await self.sandbox.start_pool(resolve_limits({}, self.settings))
        shutil.rmtree(s.data_dir / "tmp" / self.info.id, ignore_errors=True)
        self.executor = Executor(
            store=self.store,
            blobs=BlobStore(s.data_dir / "blobs"),
            bus=self.bus,
            sandbox=self.sandbox,
            settings=s,
            # The cancel channel is the fast path; the flag is polled as the fallback.
            cancel_poll_s=1.0,
            worker_id=self.info.id,
        )
        self.claimer = Claimer(
            self.executor,
            self.store,
            concurrency=self.concurrency,
            poll_s=s.claim_poll_s,
        )
        if s.sandbox_host_capacity > 0:
            await self._start_hosting()
        records = SandboxStore(self.store)
        self.maintenance = Maintenance(
            self.cluster,
            s,
            info=self.info,
            running=lambda: self.executor.running,
            on_recovered=self.claimer.notify,
            duties=(lambda: lose_dead_hosts(records, self.bus),),
            sandboxes=self._sandboxes_running,
            on_epoch=self._declared_dead,
        )
        await self.maintenance.heartbeat()  # registered before the first claim
        self.maintenance.start()
        self.claimer.start()
        self._tasks.append(asyncio.create_task(self._listen_cancels()))

    async def _start_hosting(self) -> None:
        """The sandbox service of this host and its cluster endpoint, before the first
        heartbeat (which advertises them). Refuses without a cluster token or a
        listening address: an endpoint open to anyone would run anyone's code."""
        s = self.settings
        if not s.cluster_token:
            raise SandboxUnavailable(
                "hosting sandboxes (--sandboxes) needs CRUCIBLE_CLUSTER_TOKEN, the secret"
                " API instances present to this host's cluster endpoint"
            )
        if not s.sandbox_host_listen:
            raise SandboxUnavailable("hosting sandboxes (--sandboxes) needs --listen ADDR:PORT")
        access = Access(self.store, s)
        environments = EnvironmentService(EnvironmentStore.of(s), self.store, access.sandboxes)
        info = self.info
        self.sandboxes = SandboxService(
            settings=s,
            access=access,
            blobs=BlobStore(s.data_dir / "blobs"),
            bus=self.bus,
            engine=self.sandbox.sessions,
            owner=Owner(info.id, info.node, info.host, info.pid, info.proc_start),
            environments=environments,
            capacity=s.sandbox_host_capacity,
        )
        await self.sandboxes.check_settings()
        await self.sandboxes.start()  # sweeps the leftovers of dead owners, then reaps
        self.endpoint = HostServer(
            self.sandboxes, token=s.cluster_token, listen=s.sandbox_host_listen
        )
        await self.endpoint.start()
        advertise = s.sandbox_host_advertise or f"http://{self.endpoint.addr}:{self.endpoint.port}"
        self.info = dataclasses.replace(
            info, sandbox_capacity=s.sandbox_host_capacity, endpoint=advertise
        )
        log.info("hosting up to %d sandboxes at %s", s.sandbox_host_capacity, advertise)

    def _sandboxes_running(self) -> int:
        return self.sandboxes.hosted() if self.sandboxes is not None else 0

    def _declared_dead(self, _epoch: int) -> None:
        """Declared dead while cut off: its sandboxes are ``lost`` in the database, so
        close them here now (the reaper would at its next tick)."""
        if self.sandboxes is not None:
            self._tasks.append(asyncio.create_task(self.sandboxes.drop_orphans()))

    async def _listen_cancels(self) -> None:
        while True:
            try:
                async for evaluation_id in self.bus.listen(CANCEL_CHANNEL):
                    self.executor.cancel(evaluation_id)
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
        await self.claimer.stop(grace_s=self.settings.shutdown_grace_s)
        if self.sandboxes is not None:
            await self.sandboxes.stop()  # reason shutdown, before the row says stopped
        await self.maintenance.stop()
        await self.sandbox.close()
        await self.bus.close()
        await asyncio.to_thread(self.store.dispose)


def wake(task: Any, *hint: Any, **_: Any) -> None:
    """The ``crucible.wake`` task: make this worker look for runnable evaluations now
    (``hint``, an evaluation id or a count, is only for the worker's log)."""
    current_runtime(task.app.conf.crucible_settings).wake()


def install_runtime(runtime: WorkerRuntime) -> None:
    global _runtime
    with _runtime_lock:
        _runtime = runtime


def current_runtime(settings: Settings) -> WorkerRuntime:
    """The process's runtime; built at the first task when ``crucible worker`` did not
    build it (a plain ``celery worker --pool threads``)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = WorkerRuntime(settings, concurrency=settings.max_concurrency)
            _runtime.start()
        return _runtime


def run_worker(settings: Settings, *, concurrency: int) -> None:
    """``crucible worker``: the runtime, then a Celery worker receiving wake-ups;
    returns after a warm shutdown (running evaluations get ``shutdown_grace_s``)."""
    if settings.worker_metrics_port is not None:
        # Runs in this worker's process: its own sandbox run histograms.
        start_http_server(
            settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=REGISTRY
        )
    app = make_celery(settings, wake=wake)
    runtime = WorkerRuntime(settings, concurrency=concurrency)
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


def __getattr__(name: str) -> Any:
    # For ``celery -A crucible.dispatch.worker worker --pool threads``: the app of the
    # CRUCIBLE_* settings with the task registered, built on first use (see
    # crucible.dispatch.celery_app's for an app that only sends and monitors).
    if name in ("app", "celery"):
        return make_celery(get_settings(), wake=wake)
    raise AttributeError(name)
