"""A distributed worker process: Celery delivers, the shared executor runs.

Event-loop model. Celery's pool is synchronous and the executor is async, so each
worker process owns one asyncio loop, run forever in a daemon thread, with one
Sandbox (``concurrency`` slots), one database pool, one Redis bus and one executor.
Celery runs with the *threads* pool and ``concurrency`` threads: each task thread
submits ``executor.execute(id)`` to the loop and blocks until it ends, so at most
``concurrency`` sandboxes run at once and the process stays a single normal process —
the Sandbox marks it PR_SET_CHILD_SUBREAPER and reaps its runtimes' orphans, which a
prefork child would also do, but one process per host keeps one heartbeat, one
identity and one cancel subscription per worker. ``kill -9`` of the worker kills all
of it at once; its heartbeat stops and other processes recover its evaluations.

The loop also runs the process's maintenance (heartbeat, orphan recovery, publishing,
broker watch) and listens on the cancel channel, killing a local run within
milliseconds of a cancel on any API instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from prometheus_client import start_http_server
from redis.exceptions import RedisError

from crucible.config import Settings
from crucible.dispatch import identity
from crucible.dispatch.distributed import CANCEL_CHANNEL, BrokerWatch, Publisher
from crucible.dispatch.maintenance import Maintenance
from crucible.events import RedisBus
from crucible.executor import Executor
from crucible.metrics import REGISTRY
from crucible.sandbox import Sandbox
from crucible.store import BlobStore, Cluster, Store

log = logging.getLogger(__name__)

T = TypeVar("T")

_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


class WorkerRuntime:
    """The asyncio side of one worker process (see the module docstring)."""

    def __init__(
        self, settings: Settings, *, concurrency: int, queues: str, app: Any = None
    ) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.queues = queues
        self.app = app
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="crucible-loop", daemon=True
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.info = identity.this_process("celery", concurrency, queues)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop from another thread; wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def start(self) -> None:
        self._thread.start()
        self.call(self._start())

    def execute(self, evaluation_id: str) -> None:
        """The Celery task's body: one evaluation, in this process's loop."""
        self.call(self._execute_fair(evaluation_id))

    async def _execute_fair(self, evaluation_id: str) -> None:
        """Run the fair pick, not necessarily the task's own evaluation.

        A task is a token meaning "one queued evaluation may run now"; which one is
        chosen as in the embedded dispatcher (``Store.claim_next``: the owner with the
        fewest running, then priority, then age; owners at their max_running skipped),
        so one key's 10,000-item batch cannot hold everyone else's work behind it on
        the broker. Tokens are conserved: every queued evaluation was published once,
        so the task of an evaluation run early by someone else's token later runs
        another one. When nothing may run now (back-off, max_running), the token goes
        back: the task's evaluation is marked unpublished and the publisher sends it
        again. A duplicate or late delivery claims only what is really queued.
        """
        claim = await self.executor._db(self.store.claim_next, worker_id=self.executor.worker_id)
        if claim is None:
            await asyncio.to_thread(self.cluster.unpublish, [evaluation_id])
            return
        await self.executor.execute(claim.id, claim=claim)

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
        duties = []
        if self.app is not None:
            self.publisher = Publisher(self.cluster, self.app)
            self.watch = BrokerWatch(self.cluster, s)
            duties = [self.watch.check, self.publisher.publish_pending]
        self.maintenance = Maintenance(
            self.cluster,
            s,
            info=self.info,
            running=lambda: self.executor.running,
            duties=tuple(duties),
        )
        await self.maintenance.heartbeat()  # registered before the first claim
        self.maintenance.start()
        self._tasks.append(asyncio.create_task(self._listen_cancels()))

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
        await self.maintenance.stop()
        if self.app is not None:
            await self.watch.close()
        await self.bus.close()
        await asyncio.to_thread(self.store.dispose)


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
            from crucible.dispatch.celery_app import make_celery

            _runtime = WorkerRuntime(
                settings,
                concurrency=settings.max_concurrency,
                queues="high,normal,low",
                app=make_celery(settings),
            )
            _runtime.start()
        return _runtime


def run_worker(settings: Settings, *, concurrency: int, queues: list[str]) -> None:
    """``crucible worker``: the runtime, then a Celery worker (threads pool) consuming
    ``queues`` in the order given; returns after a warm shutdown."""
    if settings.worker_metrics_port is not None:
        # Runs in this worker's process: its own sandbox run histograms.
        start_http_server(
            settings.worker_metrics_port, addr=settings.worker_metrics_host, registry=REGISTRY
        )
    from crucible.dispatch.celery_app import make_celery

    app = make_celery(settings)
    runtime = WorkerRuntime(settings, concurrency=concurrency, queues=",".join(queues), app=app)
    runtime.start()
    install_runtime(runtime)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency}",
                f"--queues={','.join(queues)}",
                f"--hostname={runtime.info.id.replace('@', '-')}@%h",
                "--loglevel=INFO",
                "--without-mingle",
            ]
        )
    finally:
        runtime.stop()
