"""/api/v1/workers and /api/v1/dead-letters: the processes that run evaluations, and
the evaluations the platform gave up on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from crucible.api.deps import CursorDep, ServiceDep
from crucible.api.errors import responses
from crucible.api.schemas import DeadLetterList, EvaluationPublic, WorkerList
from crucible.domain.paging import PageRequest

router = APIRouter(tags=["cluster"])

DeadLetterId = Annotated[str, Path(max_length=64, description="the dead letter's id")]


@router.get("/workers")
async def list_workers(service: ServiceDep) -> WorkerList:
    """Processes that run evaluations: host, queues, capacity, running count and load
    at the last heartbeat, and state (`alive`, `dead` once silent for
    worker_dead_after_s, `stopped` after a clean shutdown). Dead and stopped ones are
    listed for an hour."""
    return await service.workers()


@router.get("/dead-letters", responses=responses(422))
async def list_dead_letters(
    service: ServiceDep,
    cursor: CursorDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> DeadLetterList:
    """Evaluations that ended in `error` (platform faults past max_attempts, or an
    internal error), newest first, each with the reason and every attempt."""
    return await service.dead_letters(PageRequest(cursor=cursor, limit=limit))


@router.post(
    "/dead-letters/{dead_letter_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {"description": "A new evaluation with the same request was queued"},
        **responses(404, 409, 503),
    },
)
async def retry_dead_letter(dead_letter_id: DeadLetterId, service: ServiceDep) -> EvaluationPublic:
    """Queue the failed evaluation's request again as a new evaluation (the failed one
    stays `error`; the dead letter's `retried_as` names the new one). 404: no such
    dead letter. 409: it was already retried. 503: the queue is full."""
    return await service.retry_dead_letter(dead_letter_id)
