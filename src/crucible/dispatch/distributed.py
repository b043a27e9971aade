"""The API's dispatcher in distributed mode: it runs nothing, it wakes workers.

Workers claim from the database by themselves (:mod:`crucible.dispatch.claimer`), so
an API instance only has to make idle workers look sooner than their next poll: on
every submission it sends wake-ups through Celery, at most one per live sandbox slot
in the cluster (more would wake nobody new). Sending is best effort: when the broker
is down the submission is still accepted, and workers find it at their next poll.
Cancels are broadcast on the event bus; the worker running the evaluation kills it
(the database flag, polled by every executor, is the fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from crucible.dispatch import CANCEL_CHANNEL
from crucible.dispatch.celery_app import TASK, WAKE_EXPIRES_S
from crucible.services.events import RedisBus
from crucible.store import Cluster

log = logging.getLogger(__name__)


class CeleryDispatcher:
    """Coalesces ``notify`` calls into wake-up messages, sent from one task."""

    def __init__(self, cluster: Cluster, bus: RedisBus, app: Any) -> None:
        self.cluster = cluster
        self.bus = bus
        self.app = app
        self._pending = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    running = 0  # runs nothing itself

    def notify(self, n: int = 1) -> None:
        """``n`` evaluations were queued (or re-queued): wake up to ``n`` workers' slots."""
        self._pending += n
        self._wake.set()

    async def cancel(self, evaluation_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.bus.broadcast(CANCEL_CHANNEL, evaluation_id)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="crucible-waker")

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            n, self._pending = self._pending, 0
            try:
                slots = await asyncio.to_thread(self.cluster.capacity)
                await asyncio.to_thread(self._send, min(n, max(1, slots)))
            except Exception as exc:
                log.warning("waking workers failed (%r); they will find the work by polling", exc)

    def _send(self, n: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(n):
                self.app.send_task(TASK, producer=producer, expires=WAKE_EXPIRES_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
