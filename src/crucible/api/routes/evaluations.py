"""/api/v1/evaluations: submit, read, list, cancel, follow, download."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import FileResponse

from crucible.api.deps import CursorDep, IdempotencyKey, LastEventId, PrincipalDep, ServiceDep
from crucible.api.errors import responses
from crucible.api.schemas import CancelPublic, EvaluationCreate, EvaluationList, EvaluationPublic
from crucible.api.sse import SSE_RESPONSE, parse_last_event_id, sse_response
from crucible.core.errors import InvalidSubmission
from crucible.core.lifecycle import TERMINAL, Status, Verdict
from crucible.domain.paging import PageRequest
from crucible.engine.models import Termination
from crucible.store import EvaluationFilter

router = APIRouter(prefix="/evaluations", tags=["evaluations"])

ScanFlag = Literal["process", "network", "ffi", "file_write", "dynamic_code"]
EvaluationId = Annotated[str, Path(max_length=64, description="the evaluation's id")]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {
            "model": EvaluationPublic,
            "description": "Finished within ?wait, or the original of a repeated Idempotency-Key",
        },
        202: {"description": "Queued"},
        **responses(403, 409, 413, 422, 429, 503),
    },
)
async def submit_evaluation(
    body: EvaluationCreate,
    service: ServiceDep,
    who: PrincipalDep,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    wait: Annotated[
        float | None, Query(ge=0, le=60, description="wait up to this many seconds for the end")
    ] = None,
) -> EvaluationPublic:
    """Queue a program. Answers at once (202), or after it ends when `wait` is given (200).

    403: a limit above the key's ceiling; 429: over a quota of the key.
    """
    record, created = await service.submit(body, idempotency_key, who)
    request.state.audit_target = record.id
    if not created:
        response.status_code = status.HTTP_200_OK
    if wait:
        record = await service.wait(record.id, wait)
    if record.status in TERMINAL:
        response.status_code = status.HTTP_200_OK
    return record


def _label(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    key, sep, val = value.partition(":")
    if not sep or not key:
        raise InvalidSubmission("label filter must look like key:value", field="label")
    return key, val


@router.get("", response_model=EvaluationList, responses=responses(422))
async def list_evaluations(
    service: ServiceDep,
    who: PrincipalDep,
    cursor: CursorDep,
    status: Status | None = None,
    language: str | None = None,
    verdict: Verdict | None = None,
    termination: Termination | None = None,
    label: Annotated[str | None, Query(description="key:value")] = None,
    batch_id: str | None = None,
    flag: Annotated[ScanFlag | None, Query(description="only those the scan flagged so")] = None,
    owner_key_id: Annotated[str | None, Query(description="admins: one key's")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """Evaluations, newest first, filtered; pages follow `next_cursor`.

    A researcher sees only their own evaluations; an admin sees everyone's.
    """
    where = EvaluationFilter(
        status=status,
        language=language,
        verdict=verdict.value if verdict else None,
        termination=termination.value if termination else None,
        label=_label(label),
        batch_id=batch_id,
        owner_key_id=owner_key_id if who.admin else who.id,
        flag=flag,
    )
    # Rendered by the service (finished records once, then as stored): no response
    # model to validate and serialize again.
    page = await service.list_json(where, PageRequest(cursor=cursor, limit=limit))
    return Response(page, media_type="application/json")


@router.get("/{evaluation_id}", response_model=EvaluationPublic, responses=responses(404))
async def get_evaluation(
    evaluation_id: EvaluationId, service: ServiceDep, who: PrincipalDep
) -> Response:
    """The evaluation: status, timings, the request and, once finished, the result."""
    record = await service.get_json(evaluation_id, who)
    return Response(record, media_type="application/json")


@router.post("/{evaluation_id}/cancel", responses=responses(404, 409))
async def cancel_evaluation(
    evaluation_id: EvaluationId, service: ServiceDep, who: PrincipalDep
) -> CancelPublic:
    """Queued: it never runs. Running: killed within a second. Finished: 409."""
    return await service.cancel(evaluation_id, who)


@router.get(
    "/{evaluation_id}/events",
    response_class=Response,
    responses={**SSE_RESPONSE, **responses(404, 422)},
)
async def evaluation_events(
    evaluation_id: EvaluationId,
    service: ServiceDep,
    who: PrincipalDep,
    last_event_id: LastEventId = None,
) -> Response:
    """Server-Sent Events: `status`, `stdout`, `stderr`, then `result` (the final record).

    Reconnect with `Last-Event-ID` to resume without gaps or repeats.
    """
    after = parse_last_event_id(last_event_id)
    await service.get(evaluation_id, who)  # 404 before the stream starts

    async def events() -> AsyncIterator[tuple[int, str, Any]]:
        async for event in service.events(evaluation_id, after):
            yield event.id, event.type, event.data

    return sse_response(events())


@router.get(
    "/{evaluation_id}/output/{stream}",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {}}, "description": "The whole stream"},
        **responses(404),
    },
)
async def evaluation_output(
    evaluation_id: EvaluationId,
    stream: Literal["stdout", "stderr"],
    service: ServiceDep,
    who: PrincipalDep,
) -> Response:
    """The complete stdout or stderr, even when the record holds only a preview."""
    data = await service.output(evaluation_id, stream, who)
    return Response(data, media_type="text/plain; charset=utf-8")


@router.get(
    "/{evaluation_id}/files/{path:path}",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file"},
        **responses(404),
    },
)
async def evaluation_file(
    evaluation_id: EvaluationId, path: str, service: ServiceDep, who: PrincipalDep
) -> Response:
    """A file the program left in /workspace (files over max_file_bytes are not kept)."""
    blob = await service.file(evaluation_id, path, who)
    name = path.rsplit("/", 1)[-1]
    return FileResponse(blob, media_type="application/octet-stream", filename=name)
