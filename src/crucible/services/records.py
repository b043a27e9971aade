"""Stored rows → public records (shared by the API, the executor and the event stream)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row

from crucible.core.lifecycle import TERMINAL, Status, Verdict
from crucible.domain.evaluations import (
    AttemptPublic,
    BatchPublic,
    DeadLetterPublic,
    EvaluationList,
    EvaluationPublic,
    WorkerPublic,
)
from crucible.services.scan import decode
from crucible.store import BatchCounts
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


def evaluation_list(
    rows: Sequence[Row[Any]], labels: dict[int, dict[str, str]], next_cursor: int | None
) -> EvaluationList:
    """A page, validated in one call: pydantic builds the 50 records, their requests
    and results in its core, not one Python-level model call each."""
    return EvaluationList.model_validate(
        {
            "items": [evaluation_fields(r, labels.get(r.seq, {})) for r in rows],
            "next_cursor": None if next_cursor is None else str(next_cursor),
        }
    )


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
