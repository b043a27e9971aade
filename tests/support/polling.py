"""Poll until a state holds, within a bound, for a reason: the one poll loop of the
tests, instead of fixed sleeps wherever the state can be awaited.

``eventually(check, within=10, reason="the run to start")`` calls ``check`` every
``interval`` seconds until it returns something truthy, and returns that. Past the
bound it fails with the reason and what ``check`` last returned (or raised): a
bound, not a guess at how long something takes, so make it generous.
``aeventually`` is the same for async tests; ``check`` may then be a coroutine
function too.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class _Poll:
    def __init__(self, within: float, reason: str, ignoring: tuple[type[BaseException], ...]):
        self.deadline = time.monotonic() + within
        self.within = within
        self.reason = reason
        self.ignoring = ignoring
        self.last: Any = None
        self.error: BaseException | None = None

    def done(self, value: Any) -> bool:
        self.last, self.error = value, None
        return bool(value)

    def failed(self, exc: BaseException) -> None:
        if not isinstance(exc, self.ignoring):
            raise exc
        self.error = exc

    def check_time(self) -> None:
        if time.monotonic() >= self.deadline:
            last = repr(self.error) if self.error is not None else repr(self.last)
            raise AssertionError(
                f"not within {self.within} s: {self.reason} (last: {last})"
            ) from self.error


def eventually(
    check: Callable[[], T],
    *,
    within: float = 10.0,
    reason: str,
    interval: float = 0.05,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """``check()`` once it is truthy; AssertionError after ``within`` seconds.
    Exceptions of the ``ignoring`` types count as "not yet" (a server briefly down)."""
    poll = _Poll(within, reason, ignoring)
    while True:
        try:
            value = check()
            if poll.done(value):
                return value
        except BaseException as exc:
            poll.failed(exc)
        poll.check_time()
        time.sleep(interval)


async def aeventually(
    check: Callable[[], T] | Callable[[], Awaitable[T]],
    *,
    within: float = 10.0,
    reason: str,
    interval: float = 0.02,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """:func:`eventually` for async tests, without blocking the event loop."""
    poll = _Poll(within, reason, ignoring)
    while True:
        try:
            value: Any = check()
            if inspect.isawaitable(value):
                value = await value
            if poll.done(value):
                return value  # type: ignore[no-any-return]
        except BaseException as exc:
            poll.failed(exc)
        poll.check_time()
        await asyncio.sleep(interval)
