"""The event bus: per-stream, numbered event logs with resume-from-id.

A *stream* is named by a string (``evaluation:<id>``); each published event gets the
next id of its stream (1, 2, 3, …), so a subscriber that saw event ``n`` resumes with
``after=n`` and gets every later event exactly once. A stream ends with an event whose
type is in :data:`FINAL_TYPES`; subscribers stop after it.

The bus only carries notifications: the database stays the source of truth, and an
evicted or lost stream is answered from the stored record (see ``api/routes``).
:class:`EventBus` is transport-neutral (JSON-able payloads, string names) so a Redis
implementation (streams + pub/sub) can stand behind the same interface.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

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
