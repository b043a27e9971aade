import asyncio

from crucible.events import Event, InProcessBus


async def collect(bus: InProcessBus, stream: str, after: int = 0) -> list[Event]:
    return [e async for e in bus.subscribe(stream, after) if e is not None]


async def test_ids_increase_per_stream() -> None:
    bus = InProcessBus()
    a1 = await bus.publish("a", "status", {"n": 1})
    b1 = await bus.publish("b", "status", {})
    a2 = await bus.publish("a", "stdout", {"data": "x"})
    assert (a1.id, a2.id, b1.id) == (1, 2, 1)


async def test_subscriber_gets_live_events_until_final() -> None:
    bus = InProcessBus()
    task = asyncio.create_task(collect(bus, "s"))
    await asyncio.sleep(0)
    for i in range(3):
        await bus.publish("s", "stdout", {"data": str(i)})
    await bus.publish("s", "result", {})
    events = await asyncio.wait_for(task, 5)
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert events[-1].final


async def test_resume_after_id_has_no_gaps_or_repeats() -> None:
    bus = InProcessBus()
    for i in range(5):
        await bus.publish("s", "stdout", {"i": i})
    await bus.publish("s", "result", {})
    events = await asyncio.wait_for(collect(bus, "s", after=3), 5)
    assert [e.id for e in events] == [4, 5, 6]


async def test_resume_past_the_end_returns_at_once() -> None:
    bus = InProcessBus()
    await bus.publish("s", "result", {})
    assert await asyncio.wait_for(collect(bus, "s", after=1), 5) == []


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
    assert [e.id for e in await bus.history("c") or []] == [1]
