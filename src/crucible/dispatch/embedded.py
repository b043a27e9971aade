"""The embedded dispatcher: an asyncio loop in the server that runs N evaluations at once.

It claims work from the database (the queue lives there), so a restart loses nothing
and another dispatcher on the same database can never take the same evaluation.
Submissions wake it through :meth:`EmbeddedDispatcher.notify`; it also polls every
``poll_s`` to pick up work it was not told about (retries, other API processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from crucible.executor import Executor
from crucible.store import Store

log = logging.getLogger(__name__)


class EmbeddedDispatcher:
    def __init__(
        self, executor: Executor, store: Store, *, concurrency: int, poll_s: float = 1.0
    ) -> None:
        self.executor = executor
        self.store = store
        self.concurrency = concurrency
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    @property
    def running(self) -> int:
        return len(self._tasks)

    def notify(self) -> None:
        """New work was queued: look now rather than at the next poll."""
        self._wake.set()

    async def cancel(self, evaluation_id: str) -> None:
        """Kill ``evaluation_id`` now if it runs here (else its executor sees the flag)."""
        self.executor.cancel(evaluation_id)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="crucible-dispatcher")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; let running evaluations finish for up to ``grace_s``, then
        abandon the rest (left ``running``, they are re-queued at the next start)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            while len(self._tasks) < self.concurrency:
                try:
                    claim = await asyncio.to_thread(
                        self.store.claim_next, worker_id=self.executor.worker_id
                    )
                except Exception:
                    log.exception("claiming from the queue failed; retrying")
                    break
                if claim is None:
                    break
                task = asyncio.create_task(self.executor.execute(claim.id, claim=claim))
                self._tasks.add(task)
                task.add_done_callback(self._finished)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("executor crashed", exc_info=task.exception())
        self._wake.set()  # a slot is free
