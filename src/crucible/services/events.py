"""The event bus: per-stream, numbered event logs with resume-from-id.

A *stream* is named by a string (``evaluation:<id>``); a subscriber that saw event
``n`` resumes with ``after=n`` and gets every later event the bus holds, exactly once.
A stream ends with an event whose type is in :data:`FINAL_TYPES`; subscribers stop
after it.

**Ids survive a restart of the bus.** Both buses keep their logs where a restart loses
them (the embedded server's memory; a Redis without persistence), while clients keep
the last id they saw. So ids are not 1, 2, 3 from zero: a log is an *epoch* of its
stream, numbered densely from a base taken from the clock when the log is created,
:func:`epoch_base` (``unix_ms * IDS_PER_MS``; the Redis server's clock for
:class:`RedisBus`, shared by every publisher). A log created after a restart therefore
starts above every id its stream had before, provided the clock did not go back and
the old epoch averaged fewer than ``IDS_PER_MS`` events per millisecond of its life
(publishing takes microseconds, so it does). Ids stay below 2**53 (JavaScript-safe)
until the year 2255. Within an epoch ids are consecutive; between epochs they jump.

What a reader gets across a restart follows from that: resuming with an id of a lost
epoch, ``subscribe(after=n)`` yields the whole new log, and nothing of the old one is
sent again (the new log never had it). Output published while the bus was down, or of
a lost epoch the reader never saw, is not replayed event by event; the final
``result`` event carries the whole record, stdout included. When the bus keeps no log
for a stream at all, ``service.events`` opens with the stored state (a ``status``
event, or for a finished evaluation the ``result``) numbered just above the reader's
id, which is below the base of any log created later. An evaluation re-run after an
embedded restart is a new attempt: its output follows a ``running`` status event with
the new ``attempt``, as after any retry.

The bus only carries notifications: the database stays the source of truth, and an
evicted or lost stream is answered from the stored record (see ``service.events``).
:class:`EventBus` is transport-neutral (JSON-able payloads, string names):
:class:`InProcessBus` serves one process, :class:`RedisBus` every API instance and
worker of a cluster (a Redis Stream per evaluation; a pub/sub channel for cancels).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# An evaluation's stream ends with its "result", a long-lived sandbox's with "stopped".
FINAL_TYPES = frozenset({"result", "stopped"})

# Ids per millisecond of an epoch's life: see the module docstring.
IDS_PER_MS = 1000


def epoch_base(unix_ms: int) -> int:
    """The id just below the first event of a log created at ``unix_ms``."""
    return unix_ms * IDS_PER_MS


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.type in FINAL_TYPES


def index_after(events: list[Event], after: int) -> int:
    """Where the events with ids above ``after`` begin in ``events`` (ids increasing).

    An id of an earlier epoch is below them all (0); one at or past the end, len.
    """
    return bisect.bisect_right(events, after, key=lambda e: e.id)


class EventBus(Protocol):
    """Publish numbered events per stream; subscribe from any id."""

    async def publish(self, stream: str, type: str, data: dict[str, Any]) -> Event:
        """Append an event to ``stream`` and wake its subscribers."""
        ...

    async def history(self, stream: str, after: int = 0) -> list[Event] | None:
        """Events after ``after``; None when the bus keeps no log for ``stream``."""
        ...

    async def bounds(self, stream: str) -> tuple[int, int] | None:
        """The first and last ids of the log the bus keeps for ``stream``; None when it
        keeps none (never published, expired, or lost with a restart of the bus)."""
        ...

    def subscribe(
        self, stream: str, after: int = 0, *, idle_s: float | None = None
    ) -> AsyncIterator[Event | None]:
        """Events after ``after``, then live ones, ending after a final event.

        With ``idle_s``, yields None whenever that long passes without an event, so
        the caller can look at the database (or send a keep-alive).
        """
        ...


Snapshot = Callable[[], Awaitable[tuple[str, dict[str, Any]]]]
"""The stored state of a stream's subject as an event (type, data): a final one
(``result``, ``stopped``) once it has ended, else its current status."""


async def follow(
    bus: EventBus, stream: str, after: int, snapshot: Snapshot, *, idle_s: float = 5.0
) -> AsyncIterator[Event]:
    """A stream's events after ``after``, backed by the database's record.

    When the bus keeps no log of the stream (never published, expired, or lost with
    a restarted bus), opens with ``snapshot()`` numbered ``after + 1``: for a subject
    that has ended that is all; else it follows the bus, whose next log is numbered
    above (see the module docstring). Quiet for ``idle_s``, it looks at the record
    again: a subject that ended where this bus cannot see (its final event lost)
    gets its final event from the record, but only once the bus has nothing newer
    than what was yielded. (The record turns final a moment before its publisher
    sends the run's last events; events published while this reader was looking
    at the record are real and come first, numbered by the bus.)
    """
    if await bus.bounds(stream) is None:
        type_, data = await snapshot()
        after += 1
        yield Event(after, type_, data)
        if type_ in FINAL_TYPES:
            return
    async for event in bus.subscribe(stream, after, idle_s=idle_s):
        if event is not None:
            after = event.id
            yield event
            continue
        type_, data = await snapshot()
        if type_ in FINAL_TYPES and not await bus.history(stream, after):
            yield Event(after + 1, type_, data)
            return


@dataclass
class _Log:
    base: int  # the epoch: ids are base + 1, base + 2, …
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None


class InProcessBus:
    """An :class:`EventBus` for one process (the embedded server).

    Logs of ended streams are kept ``retention_s`` seconds (and at most
    ``max_ended`` of them) so late readers and reconnecting clients can resume;
    after that readers fall back to the database record. A log's epoch comes from the
    wall clock (``clock``, seconds), so a bus of a restarted process numbers above its
    predecessor; within one bus a recreated log also starts above every id issued.
    """

    def __init__(
        self,
        *,
        retention_s: float = 600.0,
        max_ended: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._logs: dict[str, _Log] = {}
        self._ended: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.retention_s = retention_s
        self.max_ended = max_ended
        self._clock = clock
        self._issued = 0  # the highest id handed out, on any stream

    def _log(self, stream: str) -> _Log:
        log = self._logs.get(stream)
        if log is None:
            base = max(epoch_base(int(self._clock() * 1000)), self._issued)
            log = self._logs[stream] = _Log(base)
        return log

    def _evict(self) -> None:
        cutoff = time.monotonic() - self.retention_s
        while self._ended:
            stream, ended = next(iter(self._ended.items()))
            if ended > cutoff and len(self._ended) <= self.max_ended:
                break
            self._ended.popitem(last=False)
            self._logs.pop(stream, None)

    async def publish(self, stream: str, type: str, data: dict[str, Any]) -> Event:
        log = self._log(stream)
        if log.ended_at is not None:  # a retried run reopens its stream
            log.ended_at = None
            self._ended.pop(stream, None)
        event = Event((log.events[-1].id if log.events else log.base) + 1, type, data)
        log.events.append(event)
        self._issued = max(self._issued, event.id)
        if event.final:
            log.ended_at = time.monotonic()
            self._ended[stream] = log.ended_at
            self._evict()
        # Wake everyone waiting, then arm a fresh Event for the next round.
        log.changed.set()
        log.changed = asyncio.Event()
        return event

    async def history(self, stream: str, after: int = 0) -> list[Event] | None:
        log = self._logs.get(stream)
        return None if log is None else log.events[index_after(log.events, after) :]

    async def bounds(self, stream: str) -> tuple[int, int] | None:
        log = self._logs.get(stream)
        if log is None or not log.events:  # an empty log only holds a waiting reader
            return None
        return log.events[0].id, log.events[-1].id

    async def subscribe(
        self, stream: str, after: int = 0, *, idle_s: float | None = None
    ) -> AsyncIterator[Event | None]:
        log = self._log(stream)
        position = after  # the last id yielded
        i = index_after(log.events, position)
        try:
            while True:
                while i < len(log.events):
                    event = log.events[i]
                    i += 1
                    position = event.id
                    yield event
                    if event.final and i >= len(log.events):
                        return
                if log.events and log.events[-1].final:
                    return  # resumed at or past the end
                changed = log.changed
                try:
                    # Not wait_for: on Python 3.11 it can swallow a cancel that
                    # arrives as the event fires, and the stream never ends.
                    async with asyncio.timeout(idle_s):
                        await changed.wait()
                except TimeoutError:
                    yield None
                # The log may have been evicted and recreated meanwhile: follow the live
                # one (a new epoch, numbered above ``position``).
                if (live := self._log(stream)) is not log:
                    log = live
                    i = index_after(log.events, position)
        finally:
            # Waiting created the log; don't leave an empty one behind.
            if not log.events and self._logs.get(stream) is log:
                del self._logs[stream]


# Numbering and appending in one step, so concurrent publishers of one stream (a
# worker, and an API instance publishing "queued" or a cancel's result) never race:
# event n is the entry "<n>-0", n is one more than the stream's last entry, and a
# stream that does not exist (new, expired, or lost with a Redis restart) starts a new
# epoch at epoch_base(the Redis server's clock) + 1. Lua numbers are doubles: exact
# below 2**53, and formatted with %.0f since tostring would switch to 1.7e+15.
_APPEND = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local n
if last then
  n = tonumber(string.match(last[1], '^%d+')) + 1
else
  local t = redis.call('TIME')
  local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  n = ms * tonumber(ARGV[4]) + 1
end
local id = string.format('%.0f', n)
redis.call('XADD', KEYS[1], id .. '-0', 't', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return id
"""


class RedisBus:
    """An :class:`EventBus` shared by every process of a cluster, over Redis Streams.

    Stream ``s`` is the Redis stream ``<prefix>:events:<s>``; entry ``n-0`` is event
    ``n``, numbered in Lua on the Redis server (see ``_APPEND``). Readers use XRANGE
    for history and XREAD BLOCK for live events, from any process, so resuming after
    id ``n`` on another API instance sees the same log. A stream expires
    ``retention_s`` after its final event (and ``live_ttl_s`` after its last event
    while running, should its run be lost).

    Publishing is best effort: when Redis is unreachable the event is dropped (with a
    warning) rather than failing the run, since readers fall back to the database.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "crucible",
        retention_s: float = 600.0,
        live_ttl_s: float = 86_400.0,
    ) -> None:
        # Any: redis-py's reply types are unions over decode_responses; with
        # decode_responses=True every reply below is str-keyed, checked in _event.
        self.redis: Any = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
        )
        self.prefix = prefix
        self.retention_s = retention_s
        self.live_ttl_s = live_ttl_s
        self._append = self.redis.register_script(_APPEND)

    def _key(self, stream: str) -> str:
        return f"{self.prefix}:events:{stream}"

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> None:
        await self.redis.ping()

    async def publish(self, stream: str, type: str, data: dict[str, Any]) -> Event:
        key = self._key(stream)
        ttl = self.retention_s if type in FINAL_TYPES else self.live_ttl_s
        payload = json.dumps(data, separators=(",", ":"))
        try:
            n = await self._append(keys=[key], args=[type, payload, int(ttl), IDS_PER_MS])
        except RedisError as exc:
            log.warning("event bus: dropped a %s event of %s: %r", type, stream, exc)
            return Event(0, type, data)
        return Event(int(n), type, data)

    @staticmethod
    def _id(entry_id: str) -> int:
        return int(entry_id.split("-", 1)[0])

    @classmethod
    def _event(cls, entry_id: str, fields: dict[str, str]) -> Event:
        return Event(cls._id(entry_id), str(fields["t"]), json.loads(fields["d"]))

    async def history(self, stream: str, after: int = 0) -> list[Event] | None:
        key = self._key(stream)
        entries = await self.redis.xrange(key, min=f"{after + 1}-0")
        if not entries and not await self.redis.exists(key):
            return None
        return [self._event(i, f) for i, f in entries]

    async def bounds(self, stream: str) -> tuple[int, int] | None:
        key = self._key(stream)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)
            first, last = await pipe.execute()
        if not first or not last:
            return None
        return self._id(first[0][0]), self._id(last[0][0])

    async def subscribe(
        self, stream: str, after: int = 0, *, idle_s: float | None = None
    ) -> AsyncIterator[Event | None]:
        key = self._key(stream)
        position = after
        last = await self.redis.xrevrange(key, count=1)
        if last and self._event(*last[0]).final and self._event(*last[0]).id <= position:
            return  # resumed at or past the end
        block_ms = int((idle_s or 30.0) * 1000)
        while True:
            try:
                reply = await self.redis.xread({key: f"{position}-0"}, count=500, block=block_ms)
            except RedisError as exc:
                # Redis restarting: let the caller look at the database, then retry.
                log.warning("event bus: reading %s failed: %r", stream, exc)
                await asyncio.sleep(min(idle_s or 1.0, 1.0))
                reply = []
            if not reply:
                if idle_s is not None:
                    yield None
                continue
            for entry_id, fields in reply[0][1]:
                event = self._event(entry_id, fields)
                position = event.id
                yield event
                if event.final:
                    return

    # -- the cancel channel -------------------------------------------------------------

    async def broadcast(self, channel: str, message: str) -> int:
        """Send ``message`` to every current listener of ``channel``; returns how many."""
        return int(await self.redis.publish(f"{self.prefix}:{channel}", message))

    async def listen(self, channel: str) -> AsyncIterator[str]:
        """Messages on ``channel`` for as long as the connection holds (raises RedisError
        when it breaks; the caller resubscribes)."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(f"{self.prefix}:{channel}")
            while True:
                message = await pubsub.get_message(timeout=30.0)
                if message is not None and message["type"] == "message":
                    yield str(message["data"])
        finally:
            await pubsub.aclose()
