"""The pieces of distributed mode against real servers, in process: the Redis event
bus and cancel channel, and the cluster's fenced database operations."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from redis.exceptions import RedisError

from crucible.core.config import Settings
from crucible.core.lifecycle import Priority, Status
from crucible.services.events import Event, RedisBus, epoch_base
from crucible.store import Claim, Cluster, NewEvaluation, Store, WorkerInfo
from support.polling import aeventually


async def collect(bus: RedisBus, stream: str, after: int = 0) -> list[Event]:
    return [e async for e in bus.subscribe(stream, after) if e is not None]


async def test_redis_bus_numbers_resumes_and_ends(redis_server) -> None:
    bus = RedisBus(redis_server.url, prefix="t", retention_s=60)
    other = RedisBus(redis_server.url, prefix="t", retention_s=60)  # another process
    try:
        assert await bus.history("s") is None
        live = asyncio.create_task(collect(other, "s"))
        await asyncio.sleep(0.1)
        ids = [(await bus.publish("s", "stdout", {"data": str(i)})).id for i in range(5)]
        base = ids[0] - 1  # the epoch: the Redis server's clock when the stream began
        assert ids == [base + n for n in (1, 2, 3, 4, 5)]
        assert abs(base - epoch_base(int(time.time() * 1000))) < epoch_base(60_000)
        await other.publish("s", "result", {"status": "completed"})
        events = await asyncio.wait_for(live, 10)
        assert [e.id - base for e in events] == [1, 2, 3, 4, 5, 6] and events[-1].final
        # Resume after 3 on any instance: exactly 4, 5, 6; at the end: nothing.
        assert [e.id - base for e in await collect(other, "s", after=base + 3)] == [4, 5, 6]
        assert await collect(bus, "s", after=base + 6) == []
        history = await bus.history("s", after=base + 4)
        assert history is not None and [e.id - base for e in history] == [5, 6]
        assert await bus.bounds("s") == (base + 1, base + 6)
        assert await bus.bounds("none") is None
        ttl = await bus.redis.ttl("t:events:s")
        assert 0 < ttl <= 60  # expires after the run
    finally:
        await bus.close()
        await other.close()


async def test_concurrent_publishers_never_share_an_id(redis_server) -> None:
    buses = [RedisBus(redis_server.url, prefix="c") for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(b.publish("s", "stdout", {"i": i}) for i in range(50) for b in buses)
        )
        ids = sorted(e.id for e in results)
        assert ids == list(range(ids[0], ids[0] + 200))
    finally:
        for b in buses:
            await b.close()


async def reconnected(bus: RedisBus) -> None:
    """Wait (bounded) until the bus's connection pool reaches the restarted server."""

    async def up() -> bool:
        await bus.ping()
        return True

    await aeventually(
        up, within=10, reason="redis to come back", interval=0.1, ignoring=(RedisError,)
    )


async def test_a_restarted_redis_numbers_above_what_readers_saw(redis_server) -> None:
    """Without persistence a restart loses the stream; its next epoch starts above
    every id a reader can hold, so resuming with such an id yields the new log."""
    bus = RedisBus(redis_server.url, prefix="r")
    try:
        seen = [(await bus.publish("s", "stdout", {"i": i})).id for i in range(3)]
        redis_server.restart()
        await reconnected(bus)
        assert await bus.bounds("s") is None
        fresh = [await bus.publish("s", "stdout", {"again": i}) for i in range(2)]
        fresh.append(await bus.publish("s", "result", {}))
        assert fresh[0].id > seen[-1] and [e.id - fresh[0].id for e in fresh] == [0, 1, 2]
        assert await collect(bus, "s", after=seen[-1]) == fresh
    finally:
        await bus.close()


async def test_cancel_channel(redis_server) -> None:
    bus = RedisBus(redis_server.url, prefix="k")
    got: list[str] = []

    async def listen() -> None:
        async for message in bus.listen("cancel"):
            got.append(message)
            return

    try:
        task = asyncio.create_task(listen())
        # Until the listener has subscribed: broadcast counts who received it.
        await aeventually(
            lambda: bus.broadcast("cancel", "ev_1"), within=2.5, reason="a listener", interval=0.05
        )
        await asyncio.wait_for(task, 5)
        assert got == ["ev_1"]
    finally:
        await bus.close()


@pytest.fixture
def pg_store(database: str) -> Iterator[Store]:
    store = Store(Settings(database_url=database).sqlalchemy_url)
    store.migrate()
    yield store
    store.dispose()


def new(n: int, priority: Priority = Priority.normal) -> NewEvaluation:
    return NewEvaluation(
        id=f"ev_{n}", priority=priority, language="python",
        request={"code": "print(1)"}, request_hash=str(n),
    )  # fmt: skip


def info(name: str, node: str = "elsewhere", pid: int = 1, start: str = "1") -> WorkerInfo:
    return WorkerInfo(
        id=name, kind="celery", host="h", node=node, pid=pid, proc_start=start, capacity=2
    )


def test_duplicate_delivery_claims_once(pg_store: Store) -> None:
    pg_store.create_evaluation(new(1))
    claims: list[Claim | None] = []
    barrier = threading.Barrier(8)

    def deliver() -> None:
        barrier.wait()
        claims.append(pg_store.claim("ev_1", worker_id="w"))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    won = [c for c in claims if c is not None]
    assert len(won) == 1
    assert pg_store.finish(won[0], Status.completed, result={"ok": True})
    assert not pg_store.finish(won[0], Status.completed, result={"second": True})
    assert pg_store.get("ev_1").result == {"ok": True}


def test_dead_worker_orphans_are_requeued_once_then_dead_lettered(pg_store: Store) -> None:
    cluster = Cluster(pg_store)
    cluster.heartbeat(info("w1"), running=1)
    cluster.heartbeat(info("w2"), running=0)
    pg_store.create_evaluation(new(1))
    claim = pg_store.claim("ev_1", worker_id="w1")
    assert claim is not None

    def recover(dead_after_s: float) -> tuple[int, int]:
        return cluster.recover_orphans(
            node="here", alive_here=lambda pid, start: True, dead_after_s=dead_after_s,
            stuck_after_s=3600, max_attempts=2, backoff=lambda attempt: 0.0,
        )  # fmt: skip

    assert recover(60) == (0, 0)  # heartbeats are fresh: nobody is touched
    time.sleep(0.3)
    cluster.heartbeat(info("w2"), running=0)
    # Several processes notice at once: exactly one re-queues.
    with_threads: list[tuple[int, int]] = []
    threads = [threading.Thread(target=lambda: with_threads.append(recover(0.2))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(r for r, _f in with_threads) == 1
    states = {w.id: w.state for w in cluster.workers()}
    assert states == {"w1": "dead", "w2": "alive"}
    row = pg_store.get("ev_1")
    assert row.status == Status.queued and row.worker_id is None
    assert not pg_store.finish(claim, Status.completed)  # the dead worker's claim is fenced
    second = pg_store.claim("ev_1", worker_id="w2")
    assert second is not None and second.attempt == 2
    cluster.heartbeat(info("w2"), running=1)
    time.sleep(0.3)
    assert recover(0.2) == (0, 1)  # out of attempts: error + dead letter
    row = pg_store.get("ev_1")
    assert row.status == Status.error and "interrupted" in (row.error or "")
    letters, _ = cluster.dead_letters(cursor=None, limit=10)
    assert len(letters) == 1 and letters[0].evaluation_id == "ev_1"
    assert [a["outcome"] for a in letters[0].attempts] == ["requeued", "error"]
    assert [a["worker_id"] for a in letters[0].attempts] == ["w1", "w2"]
    retried = cluster.retry_dead_letter(letters[0].id, "ev_again")
    assert retried.status == Status.queued and retried.request == row.request
    with pytest.raises(Exception, match="already retried"):
        cluster.retry_dead_letter(letters[0].id, "ev_again2")


def test_same_node_dead_pid_is_recovered_at_once(pg_store: Store) -> None:
    cluster = Cluster(pg_store)
    cluster.heartbeat(info("gone", node="here", pid=4242, start="7"), running=1)
    cluster.heartbeat(info("live", node="here", pid=4343, start="8"), running=1)
    for n, owner in ((1, "gone"), (2, "live")):
        pg_store.create_evaluation(new(n))
        assert pg_store.claim(f"ev_{n}", worker_id=owner) is not None
    result = cluster.recover_orphans(
        node="here", alive_here=lambda pid, start: pid == 4343, dead_after_s=3600,
        stuck_after_s=3600, max_attempts=3, backoff=lambda attempt: 0.0,
    )  # fmt: skip
    assert result == (1, 0)
    assert pg_store.get("ev_1").status == Status.queued
    assert pg_store.get("ev_2").status == Status.running  # a live process's run is left alone


def test_concurrent_claimers_take_each_evaluation_once_and_respect_backoff(
    pg_store: Store,
) -> None:
    """The database is the queue: claimers racing on PostgreSQL (SKIP LOCKED) take
    every queued evaluation exactly once, high priority first, and none that is
    backing off."""
    for n in range(40):
        pg_store.create_evaluation(new(n, Priority.low if n % 2 else Priority.high))
    claims: list[Claim] = []
    lock = threading.Lock()

    def claimer() -> None:
        while (claim := pg_store.claim_next(worker_id="w")) is not None:
            with lock:
                claims.append(claim)

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(c.id for c in claims) == sorted(f"ev_{n}" for n in range(40))  # once each
    # High before low, but for the few lows that racing claimers took while another
    # claimer held the last highs locked (one per other claimer at most).
    late_highs = [c.id for c in claims[20 + 5 :] if int(c.id[3:]) % 2 == 0]
    assert late_highs == [], [c.id for c in claims]
    assert pg_store.requeue(claims[0], "runtime crashed", delay_s=30)
    assert pg_store.claim_next(worker_id="w") is None  # backing off: not claimable…
    assert pg_store.claim(claims[0].id) is None  # …not even by its id
