"""/api/v1/batches: many evaluations at once, followed as one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status

from crucible.api.deps import IdempotencyKey, LastEventId, PrincipalDep, ServiceDep
from crucible.api.errors import responses
from crucible.api.schemas import BatchCreate, BatchCreated, BatchPublic
from crucible.api.sse import SSE_RESPONSE, parse_last_event_id, sse_response

router = APIRouter(prefix="/batches", tags=["batches"])

BatchId = Annotated[str, Path(max_length=64)]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"description": "Already queued under this Idempotency-Key"},
        202: {"description": "Queued"},
        **responses(403, 409, 413, 422, 429, 503),
    },
)
async def submit_batch(
    body: BatchCreate,
    service: ServiceDep,
    who: PrincipalDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BatchCreated:
    """Queue up to max_batch_items evaluations; `defaults` fill what items leave unset.

    With an `Idempotency-Key` already used (by this API key) for the same body: the
    batch it made, 200, nothing queued again; for another body, 409.
    """
    queued, created = await service.submit_batch(body, who, idempotency_key)
    request.state.audit_target = queued.id
    if not created:
        response.status_code = status.HTTP_200_OK
    return queued


@router.get("/{batch_id}", responses=responses(404))
async def get_batch(batch_id: BatchId, service: ServiceDep, who: PrincipalDep) -> BatchPublic:
    """Counts by status, termination and verdict; progress and pass rate."""
    return await service.batch(batch_id, who)


@router.post("/{batch_id}/cancel", responses=responses(404))
async def cancel_batch(batch_id: BatchId, service: ServiceDep, who: PrincipalDep) -> BatchPublic:
    """Cancel the batch's queued evaluations and kill its running ones."""
    return await service.cancel_batch(batch_id, who)


@router.get(
    "/{batch_id}/events",
    response_class=Response,
    responses={**SSE_RESPONSE, **responses(404, 422)},
)
async def batch_events(
    batch_id: BatchId, service: ServiceDep, who: PrincipalDep, last_event_id: LastEventId = None
) -> Response:
    """`progress` events (the batch record) as evaluations finish; the id is the
    number finished, so `Last-Event-ID` resumes from there. Ends when all are done."""
    after = parse_last_event_id(last_event_id) if last_event_id else -1
    await service.batch(batch_id, who)  # 404 before the stream starts

    async def events() -> AsyncIterator[tuple[int, str, Any]]:
        async for public in service.batch_progress(batch_id, after):
            kind = "done" if public.finished else "progress"
            yield public.done, kind, public.model_dump(mode="json")

    return sse_response(events())
