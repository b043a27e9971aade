"""A batch's counts by status, termination and verdict, kept on its row.

Reading a batch must not count its evaluations (10,000 rows per poll): the batch row
carries one counter per status (``n_<status>``), per termination (``t_<termination>``)
and per verdict (``v_<verdict>``). Every statement in the store that changes an
evaluation's status calls :func:`tally` in the same transaction, with the number of
rows it moved, so the counters cannot drift from the rows: a rolled-back change rolls
its counts back with it. ``tests/unit/test_store.py`` checks them against a real
count after a mixed life, on both backends.

The counter update is an ``UPDATE … SET n = n + k``, never a read-modify-write, so
concurrent finishers of one batch on PostgreSQL serialise on its row lock instead of
losing counts. It runs after the evaluation's own update, so every transaction locks
evaluation rows before the batch row (one order, no deadlock between a claim and a
batch cancel).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, update
from sqlalchemy.orm import Session

from crucible.core.lifecycle import Status, Verdict
from crucible.engine.models import Termination
from crucible.store.tables import Batch

STATUS_COLUMNS: Mapping[Status, str] = {s: f"n_{s.value}" for s in Status}
TERMINATION_COLUMNS: Mapping[Termination, str] = {t: f"t_{t.value}" for t in Termination}
VERDICT_COLUMNS: Mapping[Verdict, str] = {v: f"v_{v.value}" for v in Verdict}


def tally(
    s: Session,
    batch_id: str | None,
    *,
    source: Status | None,
    target: Status,
    n: int = 1,
    termination: str | None = None,
    verdict: str | None = None,
) -> None:
    """Count ``n`` evaluations of ``batch_id`` moved from ``source`` (None: newly
    inserted) to ``target``, ending with ``termination`` and ``verdict`` if given.

    Nothing for evaluations outside a batch (``batch_id`` None) or when ``n`` is 0.
    Raises ValueError for a termination or verdict outside the vocabulary (it would
    have no counter, and the counts would no longer add up).
    """
    if batch_id is None or n == 0:
        return
    deltas: dict[str, int] = {STATUS_COLUMNS[target]: n}
    if source is not None:
        deltas[STATUS_COLUMNS[source]] = -n
    if termination is not None:
        deltas[TERMINATION_COLUMNS[Termination(termination)]] = n
    if verdict is not None:
        deltas[VERDICT_COLUMNS[Verdict(verdict)]] = n
    s.connection().execute(_statement(tuple(deltas.items())), {"batch_id": batch_id})


@functools.lru_cache(maxsize=256)
def _statement(deltas: tuple[tuple[str, int], ...]) -> Any:
    # One statement per combination of counters (a few dozen), built once: building it
    # per status change cost more CPU than running it.
    values: dict[str, Any] = {name: getattr(Batch, name) + delta for name, delta in deltas}
    return update(Batch).where(Batch.id == bindparam("batch_id")).values(values)


def counts_of(batch: Batch) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """(by status, by termination, by verdict) from the row's counters, zeros left out
    (as a ``GROUP BY`` over the rows would)."""

    def nonzero(columns: Mapping[Any, str]) -> dict[str, int]:
        out = {}
        for key, name in columns.items():
            if n := getattr(batch, name):
                out[key.value] = int(n)
        return out

    return nonzero(STATUS_COLUMNS), nonzero(TERMINATION_COLUMNS), nonzero(VERDICT_COLUMNS)
