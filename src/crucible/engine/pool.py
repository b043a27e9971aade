"""Warm one-shot sandboxes: containers created ahead of requests.

Creating a container (namespaces, cgroup, mounts, the runtime's own start-up) is most
of a short program's cost. The pool takes it off the critical path: it keeps
containers whose init is up and waiting for its job (``container.py``), so a request
only writes its files and releases the init. A warm sandbox is handed to one program
at a time (``take`` removes it) and, like any other, deleted after its run.

Sandboxes are kept per *shape*: the runtime and the limits fixed at creation (memory,
pids, CPU quota, disk). Every request, served warm or not, asks for one replacement
of its shape, up to ``size`` idle or being made, so the pool follows the demand: a
single run costs one spare, a batch at concurrency C keeps about C warm. At most
``shapes`` shapes are kept; a new one evicts the least recently used.

A sandbox that runs its programs one after another, each in namespaces and a cgroup
of its own (``Sandbox._job``), is handed back after a clean run (``give_back``) in
place of a replacement; it is still handed to one program at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class _Shelf(Generic[T]):
    idle: list[T] = field(default_factory=list)
    making: int = 0


class WarmPool(Generic[T]):
    """Idle items per shape, made by ``make(shape)`` and destroyed by ``discard(item)``.

    ``usable(item)`` is checked at ``take``: an item whose container died while idle
    is discarded, never handed out.
    """

    def __init__(
        self,
        *,
        size: int,
        shapes: int,
        make: Callable[[Hashable], Awaitable[T]],
        discard: Callable[[T], Awaitable[None]],
        usable: Callable[[T], bool],
    ) -> None:
        self.size = size
        self.shapes = shapes
        self._make = make
        self._discard = discard
        self._usable = usable
        self._shelves: OrderedDict[Hashable, _Shelf[T]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.hits = 0  # requests served warm
        self.misses = 0  # requests that found no warm item of their shape

    def take(self, shape: Hashable, *, refill: bool = True) -> T | None:
        """A warm item of ``shape``, removed from the pool, or None; asks for a refill
        (``refill=False``: the caller will, with ``fill(shape, 1)``, when it suits it)."""
        if self.size <= 0 or self._closed:
            return None
        shelf = self._shelves.get(shape)
        if shelf is None:
            shelf = self._shelves[shape] = _Shelf()
            while len(self._shelves) > self.shapes:
                _, evicted = self._shelves.popitem(last=False)
                for item in evicted.idle:
                    self._spawn(self._discard(item))
        self._shelves.move_to_end(shape)
        found = None
        while shelf.idle and found is None:
            item = shelf.idle.pop()
            if self._usable(item):
                found = item
            else:
                self._spawn(self._discard(item))
        if refill:
            self.fill(shape, 1)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def give_back(self, shape: Hashable, item: T) -> bool:
        """Keep ``item`` (taken, used, and made as good as new by its owner) for the
        next ``take`` of ``shape``; False when the pool has no room for it (closed,
        the shape evicted, or full), and the caller destroys it."""
        shelf = self._shelves.get(shape)
        if self._closed or shelf is None or len(shelf.idle) + shelf.making >= self.size:
            return False
        shelf.idle.append(item)
        return True

    def fill(self, shape: Hashable, count: int) -> None:
        """Start making up to ``count`` more items of ``shape`` (bounded by ``size``)."""
        if self.size <= 0 or self._closed:
            return
        shelf = self._shelves.setdefault(shape, _Shelf())
        for _ in range(count):
            if self._closed or len(shelf.idle) + shelf.making >= self.size:
                return
            shelf.making += 1
            self._spawn(self._refill(shape, shelf))

    async def _refill(self, shape: Hashable, shelf: _Shelf[T]) -> None:
        try:
            item = await self._make(shape)
        except Exception as exc:  # a failed refill costs latency, never a run
            log.warning("warm sandbox for %s not made: %s", shape, exc)
            return
        finally:
            shelf.making -= 1
        if self._closed or self._shelves.get(shape) is not shelf:
            await self._discard(item)  # closed or evicted while it was being made
        else:
            shelf.idle.append(item)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def busy(self) -> bool:
        """Items are being made or destroyed right now."""
        return bool(self._tasks)

    def idle(self) -> dict[Hashable, list[T]]:
        """The idle items per shape (for metrics); do not modify."""
        return {shape: list(shelf.idle) for shape, shelf in self._shelves.items()}

    async def close(self) -> None:
        """Stop refilling and destroy every idle item (waits for refills in flight)."""
        self._closed = True
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        items = [item for shelf in self._shelves.values() for item in shelf.idle]
        self._shelves.clear()
        for item in items:
            with contextlib.suppress(Exception):
                await self._discard(item)
