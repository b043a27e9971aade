"""The event bus: per-stream, numbered event logs with resume-from-id.

A *stream* is named by a string (``evaluation:<id>``); each published event gets the
next id of its stream (1, 2, 3, …), so a subscriber that saw event ``n`` resumes with
``after=n`` and gets every later event exactly once. A stream ends with an event whose
type is in :data:`FINAL_TYPES`; subscribers stop after it.

The bus only carries notifications: the database stays the source of truth, and an
evicted or lost stream is answered from the stored record (see ``service.events``).
:class:`EventBus` is transport-neutral (JSON-able payloads, string names):
:class:`InProcessBus` serves one process, :class:`RedisBus` every API instance and
worker of a cluster (a Redis Stream per evaluation; a pub/sub channel for cancels).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

FINAL_TYPES = frozenset({"result"})


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]

    @property
    def final(self) -> bool:
        return self.type in FINAL_TYPES


class EventBus(Protocol):
    """Publish numbered events per stream; subscribe from any id."""

    async def publish(self, stream: str, type: str, data: dict[str, Any]) -> Event:
        """Append an event to ``stream`` and wake its subscribers."""
        ...

    async def history(self, stream: str, after: int = 0) -> list[Event] | None:
        """Events after ``after``; None when the bus keeps no log for ``stream``."""
        ...

    def subscribe(
        self, stream: str, after: int = 0, *, idle_s: float | None = None
    ) -> AsyncIterator[Event | None]:
        """Events after ``after``, then live ones, ending after a final event.

        With ``idle_s``, yields None whenever that long passes without an event, so
        the caller can look at the database (or send a keep-alive).
        """
        ...


@dataclass
class _Log:
    events: list[Event] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    ended_at: float | None = None


class InProcessBus:
    """An :class:`EventBus` for one process (the embedded server).

    Logs of ended streams are kept ``retention_s`` seconds (and at most
    ``max_ended`` of them) so late readers and reconnecting clients can resume;
    after that readers fall back to the database record.
    """

    def __init__(self, *, retention_s: float = 600.0, max_ended: int = 10_000) -> None:
        self._logs: dict[str, _Log] = {}
        self._ended: collections.OrderedDict[str, float] = collections.OrderedDict()
        self.retention_s = retention_s
        self.max_ended = max_ended

    def _log(self, stream: str) -> _Log:
        log = self._logs.get(stream)
        if log is None:
            log = self._logs[stream] = _Log()
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
        event = Event(len(log.events) + 1, type, data)
        log.events.append(event)
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
        return None if log is None else log.events[after:]

    async def subscribe(
        self, stream: str, after: int = 0, *, idle_s: float | None = None
    ) -> AsyncIterator[Event | None]:
        log = self._log(stream)
        position = after
        try:
            while True:
                while position < len(log.events):
                    event = log.events[position]
                    position += 1
                    yield event
                    if event.final and position >= len(log.events):
                        return
                if log.events and log.events[-1].final:
                    return  # resumed at or past the end
                changed = log.changed
                try:
                    await asyncio.wait_for(changed.wait(), idle_s)
                except TimeoutError:
                    yield None
                # The log may have been evicted and recreated meanwhile: follow the live one.
                log = self._log(stream)
        finally:
            # Waiting created the log; don't leave an empty one behind.
            if not log.events and self._logs.get(stream) is log:
                del self._logs[stream]


# Numbering and appending in one step, so concurrent publishers of one stream (a
# worker, and an API instance publishing "queued" or a cancel's result) never race:
# the counter gives ids 1, 2, 3, … and the entry is stored under "<n>-0".
_APPEND = """
local n = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], n .. '-0', 't', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return n
"""


class RedisBus:
    """An :class:`EventBus` shared by every process of a cluster, over Redis Streams.

    Stream ``s`` is the Redis stream ``<prefix>:events:<s>`` plus its counter; entry
    ``n-0`` is event ``n``. Readers use XRANGE for history and XREAD BLOCK for live
    events, from any process, so resuming after id ``n`` on another API instance sees
    the same log. A stream expires ``retention_s`` after its final event (and
    ``live_ttl_s`` after its last event while running, should its run be lost).

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
            n = await self._append(keys=[key, f"{key}:n"], args=[type, payload, int(ttl)])
        except RedisError as exc:
            log.warning("event bus: dropped a %s event of %s: %r", type, stream, exc)
            return Event(0, type, data)
        return Event(int(n), type, data)

    @staticmethod
    def _event(entry_id: str, fields: dict[str, str]) -> Event:
        data = json.loads(fields["d"])
        return Event(int(entry_id.split("-", 1)[0]), str(fields["t"]), data)

    async def history(self, stream: str, after: int = 0) -> list[Event] | None:
        key = self._key(stream)
        entries = await self.redis.xrange(key, min=f"{after + 1}-0")
        if not entries and not await self.redis.exists(key):
            return None
        return [self._event(i, f) for i, f in entries]

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
