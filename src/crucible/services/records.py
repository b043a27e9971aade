"""Stored rows → public records (shared by the API, the executor and the event stream)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy import Row

from crucible.core.lifecycle import TERMINAL, Status, Verdict
from crucible.domain.evaluations import (
    AttemptPublic,
    BatchPublic,
    DeadLetterPublic,
    EvaluationPublic,
    WorkerPublic,
)
from crucible.services.scan import decode
from crucible.store import BatchCounts, RecordPage
from crucible.store.tables import Batch, DeadLetter, Evaluation, Worker


def evaluation_fields(row: Evaluation | Row[Any], labels: dict[str, str]) -> dict[str, Any]:
    """An EvaluationPublic's fields, not yet validated, from a stored row (the ORM's or
    a plain row of ``crucible.store.evaluations.RECORD_COLUMNS``)."""
    wait = None
    if row.started_at is not None:
        wait = int((row.started_at - row.created_at).total_seconds() * 1000)
    return {
        "id": row.id,
        "status": row.status,
        "batch_id": row.batch_id,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "queue_wait_ms": wait,
        "attempts": row.attempts,
        "error": row.error,
        "worker_id": row.worker_id,
        "request": {**row.request, "labels": labels},
        "result": row.result or None,
        "owner_key_id": row.owner_key_id,
        "flags": decode(row.flags),
    }


def evaluation_public(row: Evaluation | Row[Any], labels: dict[str, str]) -> EvaluationPublic:
    return EvaluationPublic.model_validate(evaluation_fields(row, labels))


class RecordCache:
    """Finished evaluations' records as JSON, by id; the least recently used go first.

    A finished record never changes (no status leads out of completed, cancelled or
    error, and labels and flags are fixed at submission), so it can be served again as
    it was first rendered: a page of finished evaluations, which the UI and scripts
    read over and over, costs one index read instead of loading, validating and
    serializing fifty records. Bounded by ``max_bytes`` (0: nothing is kept); each
    process has its own. Thread-safe: the store's reads consult it from worker threads.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, evaluation_id: str) -> bytes | None:
        with self._lock:
            data = self._items.get(evaluation_id)
            if data is not None:
                self._items.move_to_end(evaluation_id)
            return data

    def render(self, public: EvaluationPublic) -> bytes:
        """``public`` as the API's JSON; kept when it is final (and fits)."""
        data = public.__pydantic_serializer__.to_json(public)
        if public.status in TERMINAL and len(data) <= self.max_bytes // 16:
            with self._lock:
                old = self._items.pop(public.id, None)
                self._bytes += len(data) - (len(old) if old is not None else 0)
                self._items[public.id] = data
                while self._bytes > self.max_bytes:
                    self._bytes -= len(self._items.popitem(last=False)[1])
        return data

    @property
    def size(self) -> tuple[int, int]:
        """(records, bytes) held."""
        return len(self._items), self._bytes


def evaluation_list_json(page: RecordPage, held: dict[str, bytes], cache: RecordCache) -> bytes:
    """An EvaluationList as JSON: the records ``held`` (taken from ``cache`` when the
    page was read) as they are, the others rendered (and cached when final)."""
    parts = []
    for evaluation_id in page.ids:
        data = held.get(evaluation_id)
        if data is None:
            row = page.rows.get(evaluation_id)
            if row is None:  # deleted between the page's two reads
                continue
            data = cache.render(evaluation_public(row, page.labels.get(row.seq, {})))
        parts.append(data)
    cursor = None if page.next_cursor is None else str(page.next_cursor)
    return b'{"items":[%s],"next_cursor":%s}' % (b",".join(parts), json.dumps(cursor).encode())


def batch_public(batch: Batch, counts: BatchCounts) -> BatchPublic:
    done = sum(n for status, n in counts.by_status.items() if Status(status) in TERMINAL)
    passed = counts.by_verdict.get(Verdict.passed, 0)
    judged = sum(counts.by_verdict.values())
    return BatchPublic(
        id=batch.id,
        created_at=batch.created_at,
        count=batch.count,
        labels=batch.labels,
        by_status=counts.by_status,
        by_termination=counts.by_termination,
        by_verdict=counts.by_verdict,
        done=done,
        progress=done / batch.count if batch.count else 1.0,
        pass_rate=passed / judged if judged else None,
        finished=done >= batch.count,
    )


def worker_public(row: Worker) -> WorkerPublic:
    return WorkerPublic(
        id=row.id,
        kind=row.kind,
        host=row.host,
        pid=row.pid,
        queues=[q for q in row.queues.split(",") if q],
        capacity=row.capacity,
        running=row.running,
        load=row.running / row.capacity if row.capacity else 0.0,
        state=row.state,
        started_at=row.started_at,
        last_heartbeat=row.last_heartbeat,
        sandbox_capacity=row.sandbox_capacity,
        sandboxes_running=row.sandboxes_running,
    )


def dead_letter_public(row: DeadLetter) -> DeadLetterPublic:
    return DeadLetterPublic(
        id=row.id,
        evaluation_id=row.evaluation_id,
        created_at=row.created_at,
        reason=row.reason,
        attempts=[AttemptPublic.model_validate(a) for a in row.attempts],
        retried_as=row.retried_as,
        retried_at=row.retried_at,
    )
