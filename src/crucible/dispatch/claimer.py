"""The claim loop: whenever this process has a free slot, claim a runnable evaluation
from the database and run it. Embedded servers and Celery workers both run one.

The database is the queue. :meth:`Store.claim_next` picks the fair next evaluation
(the owner with the fewest running, then priority, then the owner served least
recently, then age; owners at their
``max_running`` and evaluations backing off are skipped) with ``FOR UPDATE SKIP
LOCKED``, so concurrent claimers on many hosts never take the same row and never wait
for each other. A message (a submission in this process, a Celery wake-up from
another one, a finished run freeing a slot) only makes the loop look *now*; without
one it looks every ``poll_s`` (with jitter, so idle workers do not poll in step).
Lost, duplicated, delayed or reordered messages therefore change when work starts by
at most ``poll_s``, never whether it starts.

An empty look is a write transaction (SQLite: ``BEGIN IMMEDIATE``, the pick, a commit;
1.1 ms of CPU), so the loop remembers that the queue was empty at its last look and,
until a wake-up says otherwise, claims only as many as were queued here since
(``notify(n)``). A run whose end is stored still looks once (it may have freed its
owner's quota), and so does every poll. A ``?wait`` request cost four claims, three of
them empty; it costs two.

A process claims only for a free sandbox slot, never ahead: what runs next is decided
when a slot frees, so a ``high`` evaluation submitted behind a backlog starts at the
next free slot on any worker. While there is queued work, the run whose sandbox is done
claims its successor in the transaction that stores its result
(``Store.finish_and_claim``: one commit and one thread hop per evaluation, where a
claim of its own cost both), and the successor starts in its slot; otherwise (the
queue was found empty, the claimer is stopping) the slot frees when the sandbox is done
(the executor's ``on_ran``) for the loop's next look.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from crucible.services.executor import Executor
from crucible.store import Claim, Store

log = logging.getLogger(__name__)


class Claimer:
    def __init__(
        self, executor: Executor, store: Store, *, concurrency: int, poll_s: float = 1.0
    ) -> None:
        self.executor = executor
        self.store = store
        self.concurrency = concurrency
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._active: set[object] = set()  # one token per claim whose sandbox still runs
        self._loop_task: asyncio.Task[None] | None = None
        # The queue was empty at the last look, and ``_fresh`` were queued here since;
        # ``_news`` counts what may have changed that (a look in flight when one
        # lands cannot tell the queue was empty).
        self._empty = False
        self._fresh = 0
        self._news = 0

    @property
    def running(self) -> int:
        return len(self._tasks)

    def notify(self, n: int = 1) -> None:
        """``n`` evaluations were queued in this process: look now rather than at the
        next poll."""
        self._fresh += n
        self._news += 1
        self._wake.set()

    def look(self) -> None:
        """Work may be runnable, how much is not known (a wake-up from another
        process): look now, until the queue is found empty."""
        self._empty = False
        self._news += 1
        self._wake.set()

    async def cancel(self, evaluation_id: str) -> None:
        """Kill ``evaluation_id`` now if it runs here (else its executor sees the flag)."""
        self.executor.cancel(evaluation_id)

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="crucible-claimer")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop claiming; let running evaluations finish for up to ``grace_s``, then
        abandon the rest (left ``running``: once this process's heartbeat row says
        stopped or dead, any process re-queues them)."""
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
            while len(self._active) < self.concurrency and not (self._empty and self._fresh <= 0):
                news = self._news
                try:
                    claim = await asyncio.to_thread(
                        self.store.claim_next, worker_id=self.executor.worker_id
                    )
                except Exception as exc:  # the database is down: the next poll retries
                    log.warning("claiming from the queue failed: %r; retrying", exc)
                    self._empty = False
                    break
                if claim is None:
                    if news == self._news:  # else: queued while it looked, maybe unseen
                        self._empty, self._fresh = True, 0
                    break
                self._fresh = max(0, self._fresh - 1)
                self._start(claim)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
            # cancel that lands as the wake-up does, and stop() then awaited this loop
            # for ever (a test's shutdown outlived its 120 s limit; the task dump said so).
            try:
                async with asyncio.timeout(self.poll_s * random.uniform(0.8, 1.2)):
                    await self._wake.wait()
            except TimeoutError:
                self._empty = False  # the poll looks whatever the last look found

    def _start(self, claim: Claim) -> None:
        # A token per claim, not the evaluation's id: a retry of the same evaluation
        # may be claimed again before this run's executor has returned.
        slot = object()
        self._active.add(slot)
        news = 0

        def free() -> None:
            if slot in self._active:
                self._active.discard(slot)
                self._wake.set()

        def ran() -> bool:
            """The sandbox is done. True: the run's finish is to claim the next for its
            slot (``then``); False: the slot is free for the loop's next claim."""
            nonlocal news
            running = slot in self._active and self._loop_task is not None
            if running and not (self._empty and self._fresh <= 0):
                news = self._news
                return True
            free()
            return False

        def then(successor: Claim | None, looked: bool) -> None:
            """What the finish claimed for this slot: ``successor`` runs in it; None
            frees it (``looked``: the claim found nothing runnable)."""
            if slot not in self._active:
                return
            self._active.discard(slot)
            if successor is not None:
                self._fresh = max(0, self._fresh - 1)
                self._start(successor)
                return
            if looked and news == self._news:
                self._empty, self._fresh = True, 0
            self._wake.set()

        task = asyncio.create_task(
            self.executor.execute(claim.id, claim=claim, on_ran=ran, then=then)
        )
        task.add_done_callback(lambda _: free())
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("executor crashed", exc_info=task.exception())
        self._empty = False  # its end is stored: its owner may be under its quota again
        self._news += 1
        self._wake.set()  # a slot is free
