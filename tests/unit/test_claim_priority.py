"""Priority holds across workers: what runs next is decided when a slot frees.

Three claimers (three workers, two sandbox slots each) over one real store hold a
backlog of ``low`` evaluations; then one ``high`` arrives. It must start at the next
free slot, before every evaluation that was still queued when it arrived. Workers that
claimed ahead (two per slot, as before) started the work they held first.

The executor is faked (a unit test of the claim path): each run holds its sandbox slot
until the test lets it finish, and storing its result takes a while after that, as
the real executor's database round trips do.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from crucible.core.config import Settings
from crucible.core.lifecycle import Priority, Status
from crucible.dispatch.claimer import Claimer
from crucible.store import Claim, NewEvaluation, Store
from support.polling import aeventually

SLOTS = 2
WORKERS = 3


class GatedExecutor:
    """Runs nothing: a run holds one of the worker's sandbox slots until released."""

    def __init__(self, store: Store, worker_id: str, started: list[str]) -> None:
        self.store = store
        self.worker_id = worker_id
        self.started = started
        self.sandbox = asyncio.Semaphore(SLOTS)  # the engine's own bound
        self.release: dict[str, asyncio.Event] = {}
        self.closing = asyncio.Event()  # the test is over: every run ends at once

    async def execute(self, evaluation_id: str, *, claim: Claim, on_ran=None, then=None) -> None:  # type: ignore[no-untyped-def]
        gate = self.release.setdefault(evaluation_id, asyncio.Event())
        if self.closing.is_set():
            gate.set()
        async with self.sandbox:
            self.started.append(evaluation_id)
            await gate.wait()
        successor = on_ran is not None and on_ran() and then is not None
        await asyncio.sleep(0.01)  # storing the result
        if not successor:
            await asyncio.to_thread(self.store.finish, claim, Status.completed, result={})
            return
        claimed, looked = None, False
        try:  # the finish claims the next for this slot, as the executor's does
            _, claimed = await asyncio.to_thread(
                self.store.finish_and_claim, claim, Status.completed,
                worker_id=self.worker_id, result={},
            )  # fmt: skip
            looked = True
        finally:
            then(claimed, looked)


def new(n: int, priority: Priority) -> NewEvaluation:
    return NewEvaluation(
        id=f"ev_{n}",
        priority=priority,
        language="python",
        request={"code": f"print({n})"},
        request_hash=f"h{n}",
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(Settings(data_dir=tmp_path).sqlalchemy_url)
    s.migrate()
    yield s  # type: ignore[misc]
    s.dispose()


async def test_a_high_evaluation_starts_at_the_next_free_slot_ahead_of_any_backlog(
    store: Store,
) -> None:
    for n in range(30):
        store.create_evaluation(new(n, Priority.low))
    started: list[str] = []
    executors = [GatedExecutor(store, f"w{k}", started) for k in range(WORKERS)]
    claimers = [
        Claimer(e, store, concurrency=SLOTS, poll_s=0.05)  # type: ignore[arg-type]
        for e in executors
    ]
    for c in claimers:
        c.start()
    try:
        # The bounds are generous: claims take milliseconds.
        await aeventually(
            lambda: len(started) == WORKERS * SLOTS, reason="every slot running", interval=0.005
        )
        await asyncio.sleep(0.2)  # every claimer has had its chance to claim ahead
        before = set(started)
        store.create_evaluation(new(99, Priority.high))
        for c in claimers:
            c.notify()
        # Free one slot on the first worker: the next run there, or anywhere, is the high.
        first = next(i for i in started if i in executors[0].release)
        executors[0].release[first].set()
        await aeventually(
            lambda: len(started) > len(before), reason="a slot to free and a claim", interval=0.005
        )
        after = [i for i in started if i not in before]
        assert after[0] == "ev_99", f"{after[0]} (claimed ahead) started before the high one"
    finally:
        for e in executors:
            e.closing.set()
            for gate in e.release.values():
                gate.set()
        for c in claimers:
            await c.stop(grace_s=5)


class CountingStore:
    """The real store, with its claims counted (a claim is a write transaction)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.claims = 0
        self.empty = 0

    def claim_next(self, *, worker_id: str | None = None) -> Claim | None:
        self.claims += 1
        claim = self.store.claim_next(worker_id=worker_id)
        self.empty += claim is None
        return claim


async def test_an_empty_queue_costs_one_look_per_run_not_three(store: Store) -> None:
    """After the queue was found empty, a submission of one here is claimed without a
    second look, and the finished run looks once (it may free an owner's quota): two
    claims per evaluation, one of them empty (four before, three empty). No poll
    helps: it is a minute away."""
    started: list[str] = []
    executor = GatedExecutor(store, "w1", started)
    counting = CountingStore(store)
    claimer = Claimer(executor, counting, concurrency=SLOTS, poll_s=60)  # type: ignore[arg-type]
    claimer.start()
    try:
        await aeventually(lambda: counting.empty == 1, reason="the first look finds nothing")
        for n in range(3):
            before = counting.claims
            store.create_evaluation(new(n, Priority.normal))
            claimer.notify(1)
            await aeventually(lambda n=n: f"ev_{n}" in started, reason="the run to start")
            executor.release[f"ev_{n}"].set()
            await aeventually(
                lambda b=before: counting.claims - b == 2, reason="the look after the run"
            )
            await asyncio.sleep(0.05)  # a third look would have come by now
            assert counting.claims - before == 2
    finally:
        executor.closing.set()
        for gate in executor.release.values():
            gate.set()
        await claimer.stop(grace_s=5)


async def test_a_wakeup_from_elsewhere_and_a_freed_quota_are_looked_at_at_once(
    store: Store,
) -> None:
    """A wake-up of unknown count (another process queued work, orphans recovered)
    looks although the last look found nothing; and an owner at its quota gets its
    next evaluation when its run ends, not at the next poll."""
    started: list[str] = []
    executor = GatedExecutor(store, "w1", started)
    claimer = Claimer(executor, store, concurrency=SLOTS, poll_s=60)
    claimer.start()
    try:
        await asyncio.sleep(0.05)  # the first look: nothing
        store.create_evaluation(new(1, Priority.normal))  # queued by someone else
        claimer.look()
        await aeventually(lambda: "ev_1" in started, reason="the wake-up to be looked at")
        store.default_max_running = 1
        for n in (2, 3):
            store.create_evaluation(new(n, Priority.normal))
        claimer.notify(2)
        executor.release["ev_1"].set()
        await aeventually(lambda: "ev_2" in started, reason="the owner's next")
        await asyncio.sleep(0.05)
        assert "ev_3" not in started  # the quota: one at a time
        executor.release["ev_2"].set()
        await aeventually(lambda: "ev_3" in started, reason="the quota freed by the run")
    finally:
        executor.closing.set()
        for gate in executor.release.values():
            gate.set()
        await claimer.stop(grace_s=5)


async def test_a_wakeup_during_an_empty_look_is_not_lost(store: Store) -> None:
    """A look that finds nothing while a wake-up lands (it read before the submission
    committed) must not mark the queue empty: the wake-up is looked at at once, not
    at the next poll (a minute away)."""
    started: list[str] = []
    executor = GatedExecutor(store, "w1", started)
    looking, answer = threading.Event(), threading.Event()

    class SlowEmptyLook:
        calls = 0

        def claim_next(self, *, worker_id: str | None = None) -> Claim | None:
            self.calls += 1
            if self.calls == 1:  # read before the submission: nothing
                looking.set()
                answer.wait(10)
                return None
            return store.claim_next(worker_id=worker_id)

    claimer = Claimer(executor, SlowEmptyLook(), concurrency=SLOTS, poll_s=60)  # type: ignore[arg-type]
    claimer.start()
    try:
        await asyncio.to_thread(looking.wait, 10)
        store.create_evaluation(new(1, Priority.normal))
        claimer.notify(1)
        answer.set()
        await aeventually(lambda: "ev_1" in started, reason="the wake-up to be looked at")
    finally:
        answer.set()
        executor.closing.set()
        for gate in executor.release.values():
            gate.set()
        await claimer.stop(grace_s=5)
