"""The store of evaluations: the only code that reads or writes their tables.

The database is the single source of truth for an evaluation's state and the queue
itself. Methods are synchronous (call them from async code through a thread);
records come back detached and safe to read anywhere.

Claims are fenced: a claim is ``UPDATE … SET status='running', attempts=attempts+1
WHERE … status='queued'``, and the attempt number it returns is the fence — finishing
or re-queuing requires ``status='running' AND attempts=<that number>``, so a stale
executor (one whose run was recovered and re-claimed meanwhile) cannot overwrite a
newer result, and two dispatchers can never both run one evaluation.

Each claim also records the claiming process (``worker_id``) and opens a row in the
attempt log; an evaluation that ends in ``error`` gets a dead letter carrying that log.
Workers, recovery, publishing and dead letters live in :mod:`crucible.store.cluster`.

``Store`` is assembled from one module per concern, on :class:`~crucible.store.db.Database`:
:mod:`~crucible.store.evaluations` (submission, reads), :mod:`~crucible.store.queue`
(claims and their ends) and :mod:`~crucible.store.batches`. Their names are importable
from here as before.
"""

from __future__ import annotations

from crucible.store.batches import BatchCounts, Batches
from crucible.store.db import Database, now
from crucible.store.evaluations import EvaluationFilter, Evaluations, NewEvaluation, RecordPage
from crucible.store.queue import Claim, Queue, dead_letter, end_attempt

__all__ = [
    "BatchCounts",
    "Claim",
    "Database",
    "EvaluationFilter",
    "NewEvaluation",
    "RecordPage",
    "Store",
    "dead_letter",
    "end_attempt",
    "now",
]


class Store(Batches, Evaluations, Queue):
    """Evaluations, batches and the queue, on SQLite or PostgreSQL."""
