import asyncio

from crucible.services.events import (
    IDS_PER_MS,
    Event,
    InProcessBus,
    epoch_base,
    follow,
    index_after,
)

T0 = 1_750_000_000.0  # a fixed wall clock (seconds) for the buses below
BASE = epoch_base(int(T0 * 1000))


async def collect(bus: InProcessBus, stream: str, after: int = 0) -> list[Event]:
    return [e async for e in bus.subscribe(stream, after) if e is not None]


def test_epoch_base_is_the_clock_in_ids_and_stays_javascript_safe() -> None:
    assert epoch_base(1) == IDS_PER_MS
    # An epoch that lived 1 ms with fewer than IDS_PER_MS events ends below the next.
    assert epoch_base(5) + IDS_PER_MS - 1 < epoch_base(6) + 1
    year_2200_ms = int((2200 - 1970) * 365.25 * 86_400 * 1000)
    assert epoch_base(year_2200_ms) + IDS_PER_MS < 2**53


def test_index_after_finds_the_resume_point_in_any_epoch() -> None:
    events = [Event(BASE + n, "stdout", {}) for n in (1, 2, 3)]
    assert index_after(events, 0) == 0  # a fresh reader
    assert index_after(events, 42) == 0  # an id of an earlier epoch: all of this one
    assert index_after(events, BASE + 1) == 1
    assert index_after(events, BASE + 3) == 3  # up to date
    assert index_after(events, BASE + 99) == 3
    assert index_after([], 7) == 0


async def test_ids_are_consecutive_per_stream_from_its_epoch() -> None:
    bus = InProcessBus(clock=lambda: T0)
    a1 = await bus.publish("a", "status", {"n": 1})
    b1 = await bus.publish("b", "status", {})
    a2 = await bus.publish("a", "stdout", {"data": "x"})
    assert a1.id > BASE and a2.id == a1.id + 1
    assert b1.id > BASE
    assert await bus.bounds("a") == (a1.id, a2.id)
    assert await bus.bounds("nothing") is None


async def test_subscriber_gets_live_events_until_final() -> None:
    bus = InProcessBus()
    task = asyncio.create_task(collect(bus, "s"))
    await asyncio.sleep(0)
    for i in range(3):
        await bus.publish("s", "stdout", {"data": str(i)})
    await bus.publish("s", "result", {})
    events = await asyncio.wait_for(task, 5)
    first = events[0].id
    assert [e.id for e in events] == [first, first + 1, first + 2, first + 3]
    assert events[-1].final


async def test_resume_after_id_has_no_gaps_or_repeats() -> None:
    bus = InProcessBus()
    ids = [(await bus.publish("s", "stdout", {"i": i})).id for i in range(5)]
    ids.append((await bus.publish("s", "result", {})).id)
    events = await asyncio.wait_for(collect(bus, "s", after=ids[2]), 5)
    assert [e.id for e in events] == ids[3:]
    history = await bus.history("s", after=ids[4])
    assert history is not None and [e.id for e in history] == ids[5:]


async def test_resume_past_the_end_returns_at_once() -> None:
    bus = InProcessBus()
    final = await bus.publish("s", "result", {})
    assert await asyncio.wait_for(collect(bus, "s", after=final.id), 5) == []


async def test_a_restarted_bus_numbers_above_its_predecessor() -> None:
    """A client keeps its Last-Event-ID across a restart of the process (a new bus):
    the new log starts above it, so resuming yields the whole new log, once."""
    now = [T0]
    old = InProcessBus(clock=lambda: now[0])
    seen = [(await old.publish("s", "stdout", {"i": i})).id for i in range(500)]
    now[0] += 0.002  # the restart took 2 ms, and the old epoch had 500 events
    new = InProcessBus(clock=lambda: now[0])
    assert await new.bounds("s") is None
    task = asyncio.create_task(collect(new, "s", after=seen[-1]))
    await asyncio.sleep(0)
    fresh = [await new.publish("s", "stdout", {"again": i}) for i in range(3)]
    fresh.append(await new.publish("s", "result", {}))
    got = await asyncio.wait_for(task, 5)
    assert got == fresh and got[0].id > seen[-1]
    assert [e.id for e in got] == list(range(got[0].id, got[0].id + 4))


async def test_a_recreated_log_starts_above_every_id_the_bus_issued() -> None:
    bus = InProcessBus(max_ended=1, clock=lambda: T0)  # the clock stands still
    first = await bus.publish("a", "result", {})
    await bus.publish("b", "result", {})  # evicts a
    assert await bus.history("a") is None
    again = await bus.publish("a", "status", {})
    assert again.id > first.id


async def test_idle_yields_none() -> None:
    bus = InProcessBus()
    it = bus.subscribe("quiet", idle_s=0.01)
    assert await asyncio.wait_for(anext(it), 5) is None
    await it.aclose()
    assert await bus.history("quiet") is None  # the empty log was not left behind


async def test_ended_streams_are_evicted_beyond_the_cap() -> None:
    bus = InProcessBus(max_ended=2)
    for name in ("a", "b", "c"):
        await bus.publish(name, "result", {})
    assert await bus.history("a") is None
    assert len(await bus.history("c") or []) == 1


async def test_follow_keeps_events_published_while_it_read_the_record() -> None:
    """A quiet reader looks at the record; the run ends meanwhile: its record turns
    final before the worker has published the run's last events. Those are real, come
    in order, and the real final event ends the stream (not one made from the record,
    which would skip them and reuse an id)."""
    bus = InProcessBus()
    queued = await bus.publish("s", "status", {"status": "queued"})

    async def snapshot() -> tuple[str, dict]:
        if (await bus.bounds("s") or (0, 0))[1] == queued.id:  # the run, in a blink
            await bus.publish("s", "status", {"status": "running"})
            await bus.publish("s", "stdout", {"data": "hi"})
            # ... and its final event right after (well within the reader's idle_s).
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(bus.publish("s", "result", {"real": True}))
            )
        return "result", {"real": False}

    events = [e async for e in follow(bus, "s", 0, snapshot, idle_s=0.5)]
    assert [e.type for e in events] == ["status", "status", "stdout", "result"]
    assert [e.id for e in events] == list(range(queued.id, queued.id + 4))
    assert events[-1].data == {"real": True}


async def test_follow_ends_from_the_record_when_the_final_event_is_lost() -> None:
    bus = InProcessBus()
    queued = await bus.publish("s", "status", {"status": "queued"})
    await bus.publish("s", "stdout", {"data": "hi"})  # then the publisher died

    async def snapshot() -> tuple[str, dict]:
        return "result", {"from": "record"}

    events = [e async for e in follow(bus, "s", 0, snapshot, idle_s=0.01)]
    assert [e.type for e in events] == ["status", "stdout", "result"]
    assert [e.id for e in events] == [queued.id, queued.id + 1, queued.id + 2]
    assert events[-1].data == {"from": "record"}
