"""An evaluation's life: its statuses and the one table of allowed transitions.

    queued ──► running ──► completed   (the sandbox finished; see result.termination)
      │          │   ├───► cancelled   (stopped on request)
      │          │   └───► error       (the platform failed, not the program)
      │          └───────► queued      (retry after a platform fault, or recovery)
      └────────────────► cancelled

Every status change in the store goes through :func:`check_transition` (or its
SQL form, :func:`sources_of`), so an illegal change raises Conflict in one place.

A long-lived sandbox's life is shorter: :class:`SandboxStatus`, with a
:class:`StopReason` once stopped (the store persists both; the API shows them).
"""

from __future__ import annotations

import random
from enum import StrEnum

from crucible.core.errors import Conflict


class Status(StrEnum):
    queued = "queued"
    running = "running"
    completed = "completed"
    cancelled = "cancelled"
    error = "error"


class Priority(StrEnum):
    high = "high"
    normal = "normal"
    low = "low"

    @property
    def rank(self) -> int:
        """Sort key: lower runs first."""
        return _RANKS[self]


class Verdict(StrEnum):
    passed = "passed"
    failed = "failed"


_RANKS = {Priority.high: 0, Priority.normal: 1, Priority.low: 2}

TERMINAL = frozenset({Status.completed, Status.cancelled, Status.error})

ALLOWED: dict[Status, frozenset[Status]] = {
    Status.queued: frozenset({Status.running, Status.cancelled}),
    Status.running: frozenset({Status.completed, Status.cancelled, Status.error, Status.queued}),
    Status.completed: frozenset(),
    Status.cancelled: frozenset(),
    Status.error: frozenset(),
}


def sources_of(target: Status) -> frozenset[Status]:
    """The statuses from which ``target`` may be reached (for fenced UPDATEs)."""
    return frozenset(s for s, targets in ALLOWED.items() if target in targets)


def check_transition(current: Status, target: Status) -> None:
    """Raise Conflict unless ``current`` → ``target`` is allowed."""
    if target not in ALLOWED[current]:
        raise Conflict(f"evaluation is {current.value}; it cannot become {target.value}")


def retry_delay_s(attempt: int, *, base_s: float, max_s: float) -> float:
    """Back-off before retry number ``attempt`` (1, 2, …) after a platform fault:
    exponential, capped, with jitter in [0.5, 1] so retries of one incident spread out."""
    return random.uniform(0.5, 1.0) * min(max_s, base_s * 2.0 ** max(0, attempt - 1))


class SandboxStatus(StrEnum):
    """``running`` → ``stopped`` (with a reason) | ``lost`` (its process died)."""

    running = "running"
    stopped = "stopped"
    lost = "lost"


class StopReason(StrEnum):
    deleted = "deleted"  # DELETE /sandboxes/{id}
    ttl = "ttl"  # its ttl_s passed
    idle_timeout = "idle_timeout"  # idle_timeout_s without an exec
    crashed = "crashed"  # the sandbox's init died under it
    lost = "lost"  # the process hosting it died (found by the start-up sweep)
    shutdown = "shutdown"  # the server hosting it stopped
