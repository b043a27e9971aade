"""The periodic duties every Crucible process shares, so none depends on a supervisor.

Each process that runs evaluations (a Celery worker, an embedded server) writes a
heartbeat row every ``heartbeat_s``. Every process — API instances and workers alike —
also looks for orphans: workers silent for ``worker_dead_after_s`` (or, on the same
node, whose pid is gone) are declared dead, and their running evaluations re-queued
with back-off, or failed into a dead letter after ``max_attempts``. All of it is fenced
in the database (:mod:`crucible.store.cluster`), so when several notice at once only
one re-queues. Extra duties (publishing, broker checks) ride on the same tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from crucible.core.config import Settings
from crucible.core.lifecycle import retry_delay_s
from crucible.services import identity
from crucible.store import Cluster, WorkerInfo

log = logging.getLogger(__name__)

Duty = Callable[[], Awaitable[object]]


class Maintenance:
    def __init__(
        self,
        cluster: Cluster,
        settings: Settings,
        *,
        info: WorkerInfo | None,
        running: Callable[[], int] = lambda: 0,
        duties: tuple[Duty, ...] = (),
        on_recovered: Callable[[], None] = lambda: None,
        sandboxes: Callable[[], int] = lambda: 0,
        on_epoch: Callable[[int], None] = lambda _epoch: None,
    ) -> None:
        """``sandboxes``: agent sandboxes this process hosts, for its heartbeat;
        ``on_epoch``: called when the heartbeat row's epoch moved since the last beat
        (this process was declared dead meanwhile; a host then drops what the
        database took from it)."""
        self.cluster = cluster
        self.settings = settings
        self.info = info
        self.running = running
        self.duties = duties
        self.on_recovered = on_recovered
        self.sandboxes = sandboxes
        self.on_epoch = on_epoch
        self.epoch: int | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def backoff(self, attempt: int) -> float:
        s = self.settings
        return retry_delay_s(attempt, base_s=s.retry_backoff_s, max_s=s.retry_backoff_max_s)

    async def heartbeat(self) -> None:
        if self.info is not None:
            epoch = await asyncio.to_thread(
                self.cluster.heartbeat, self.info, self.running(), self.sandboxes()
            )
            if self.epoch is not None and epoch != self.epoch:
                log.warning("this process was declared dead (epoch %d → %d)", self.epoch, epoch)
                self.on_epoch(epoch)
            self.epoch = epoch

    async def recover(self) -> tuple[int, int]:
        """One look for orphans; returns (re-queued, failed)."""
        s = self.settings
        requeued, failed = await asyncio.to_thread(
            partial(
                self.cluster.recover_orphans,
                node=identity.node(),
                alive_here=identity.alive_here,
                dead_after_s=s.worker_dead_after_s,
                stuck_after_s=s.visibility_timeout_s,
                max_attempts=s.max_attempts,
                backoff=self.backoff,
            )
        )
        if requeued or failed:
            log.warning("recovered orphaned evaluations: %d re-queued, %d failed", requeued, failed)
            self.on_recovered()
        return requeued, failed

    async def tick(self) -> None:
        """One round of every duty but the heartbeat; a failing duty (database down) is
        logged and retried at the next tick."""
        for duty in (self.recover, *self.duties):
            try:
                await duty()
            except Exception as exc:
                log.warning("maintenance: %s failed: %r", getattr(duty, "__name__", duty), exc)

    def start(self) -> None:
        # The heartbeat has a loop of its own: a slow duty (publishing a large batch)
        # must never delay it into looking dead.
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._beat(), name="crucible-heartbeat"),
                asyncio.create_task(self._loop(), name="crucible-maintenance"),
            ]

    async def _beat(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except Exception as exc:
                log.warning("heartbeat failed: %r", exc)
            await asyncio.sleep(self.settings.heartbeat_s)

    async def _loop(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.settings.heartbeat_s)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self.info is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.cluster.stopped, self.info.id)
