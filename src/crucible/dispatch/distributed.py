"""Distributed mode's side of dispatching: putting queued evaluations on the broker,
noticing when the broker lost them, and broadcasting cancels.

The database decides what must run; the broker is only a delivery channel. Each
queued evaluation has ``enqueued_at``: NULL means "no message for it is known to be
on the broker". :class:`Publisher` takes such rows (fenced, see
``Cluster.take_unpublished``) and sends one task each. Messages can still be lost:

* a Redis without persistence restarts empty: :class:`BrokerWatch` keeps a sentinel
  key on the broker; when it is gone, every queued evaluation is marked unpublished
  and published again (duplicates of messages that did survive are no-op claims);
* anything else (a RabbitMQ queue deleted by hand): queued evaluations published more
  than ``republish_after_s`` ago are published again.

Every API instance and worker runs these (on its maintenance tick); the fences make
the work happen once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

import redis.asyncio as aioredis

from crucible.config import Settings
from crucible.dispatch.celery_app import TASK, queue_of
from crucible.events import RedisBus
from crucible.store import Cluster

log = logging.getLogger(__name__)

CANCEL_CHANNEL = "cancel"
SENTINEL = "crucible:broker-sentinel"


class Publisher:
    """Sends a task for every due, unpublished queued evaluation."""

    def __init__(self, cluster: Cluster, app: Any, *, batch: int = 500) -> None:
        self.cluster = cluster
        self.app = app
        self.batch = batch
        self._lock = asyncio.Lock()

    async def publish_pending(self) -> int:
        """Publish until nothing is pending; returns how many were sent. Raises when
        the broker refuses (those evaluations are marked unpublished again)."""
        total = 0
        async with self._lock:
            while rows := await asyncio.to_thread(self.cluster.take_unpublished, self.batch):
                try:
                    await asyncio.to_thread(self._send, rows)
                except BaseException:
                    await asyncio.to_thread(self.cluster.unpublish, [i for i, _ in rows])
                    raise
                total += len(rows)
        return total

    def _send(self, rows: list[tuple[str, int]]) -> None:
        with self.app.producer_or_acquire() as producer:
            for evaluation_id, rank in rows:
                self.app.send_task(
                    TASK,
                    args=[evaluation_id],
                    kwargs={"priority": queue_of(rank)},
                    producer=producer,
                )


class BrokerWatch:
    """Notices a broker that lost its messages, and very old unconsumed publications."""

    def __init__(self, cluster: Cluster, settings: Settings) -> None:
        self.cluster = cluster
        self.settings = settings
        url = settings.broker_url
        self.redis: Any = (
            aioredis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
            if url.startswith(("redis://", "rediss://", "unix://"))
            else None
        )

    async def check(self) -> int:
        """One look; returns how many evaluations were marked for publishing again."""
        forgotten = await asyncio.to_thread(
            self.cluster.forget_published, older_than_s=self.settings.republish_after_s
        )
        if self.redis is not None and not await self.redis.exists(SENTINEL):
            # Forget first, then set: a crash in between only repeats the forgetting.
            n = await asyncio.to_thread(self.cluster.forget_published)
            await self.redis.set(SENTINEL, secrets.token_hex(8), nx=True)
            if n:
                log.warning("the broker lost its messages: publishing %d evaluations again", n)
            forgotten += n
        return int(forgotten)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


class CeleryDispatcher:
    """The API's dispatcher in distributed mode: publishes, never runs anything."""

    def __init__(
        self, cluster: Cluster, settings: Settings, bus: RedisBus, app: Any, *, poll_s: float = 1.0
    ) -> None:
        self.publisher = Publisher(cluster, app)
        self.watch = BrokerWatch(cluster, settings)
        self.bus = bus
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    running = 0

    def notify(self) -> None:
        self._wake.set()

    async def cancel(self, evaluation_id: str) -> None:
        """Tell every worker; the one running it kills it (the database flag, already
        set by the caller, is the fallback each executor polls)."""
        with contextlib.suppress(Exception):
            await self.bus.broadcast(CANCEL_CHANNEL, evaluation_id)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="crucible-publisher")

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.publisher.publish_pending()
            except Exception as exc:
                log.warning("publishing to the broker failed: %r; retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.watch.close()
