"""/api/v1/sandboxes: long-lived sandboxes an agent drives step by step."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response, status

from crucible.api.deps import (
    ClaimDep,
    CursorDep,
    IdempotencyKey,
    LastEventId,
    PrincipalDep,
    ServiceDep,
)
from crucible.api.errors import responses
from crucible.api.schemas import (
    ExecCreate,
    ExecList,
    ExecPublic,
    SandboxCreate,
    SandboxList,
    SandboxPublic,
)
from crucible.api.sse import SSE_RESPONSE, parse_last_event_id, sse_response
from crucible.core.lifecycle import SandboxStatus

router = APIRouter(prefix="/sandboxes", tags=["sandboxes"])

SandboxId = Annotated[str, Path(max_length=64, description="the sandbox's id (sbx_…)")]
FilePath = Annotated[
    str,
    Query(
        min_length=1,
        max_length=4096,
        description="absolute, or relative to the sandbox's working directory",
    ),
]
OCTET = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


@router.post("", status_code=status.HTTP_201_CREATED, responses=responses(403, 409, 422, 429, 503))
async def create_sandbox(
    body: SandboxCreate, service: ServiceDep, who: PrincipalDep, request: Request
) -> SandboxPublic:
    """Create a sandbox that stays up until deleted, its `ttl_s` passes, or it is idle
    for `idle_timeout_s`. 403: a limit above the key's ceiling; 422: a limit outside
    the server's bounds; 409 (`network_elsewhere`, distributed): its `network` group's
    members moved to another host at every placement tried, so it can be sent again;
    429: the key's `max_sandboxes` are running; 503: no engine, or (distributed) no
    sandbox host with room, with `Retry-After`. `worker_id` names the host it was placed
    on."""
    record = await service.sandboxes.create(body, who)
    request.state.audit_target = record.id
    return record


@router.get("", responses=responses(422))
async def list_sandboxes(
    service: ServiceDep,
    who: PrincipalDep,
    cursor: CursorDep,
    status: SandboxStatus | None = None,
    owner_key_id: Annotated[str | None, Query(description="admins: one key's")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> SandboxList:
    """Sandboxes, newest first; a researcher sees their own, an admin everyone's."""
    return await service.sandboxes.list(
        who, owner_key_id=owner_key_id, status=status, cursor=cursor, limit=limit
    )


@router.get("/{sandbox_id}", responses=responses(404))
async def get_sandbox(
    sandbox_id: SandboxId, service: ServiceDep, who: PrincipalDep
) -> SandboxPublic:
    """The sandbox: status, `stop_reason`, limits, lifetimes and resources used."""
    return await service.sandboxes.get(sandbox_id, who)


@router.delete(
    "/{sandbox_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=responses(404, 503),
)
async def delete_sandbox(sandbox_id: SandboxId, service: ServiceDep, who: PrincipalDep) -> None:
    """Stop and remove the sandbox (`stop_reason` deleted); its record and transcript
    remain. Deleting a stopped sandbox changes nothing (204 all the same)."""
    await service.sandboxes.delete(sandbox_id, who)


@router.post("/{sandbox_id}/exec", responses=responses(404, 409, 410, 422, 503))
async def exec_in_sandbox(
    sandbox_id: SandboxId,
    body: ExecCreate,
    service: ServiceDep,
    who: ClaimDep,
    idempotency_key: IdempotencyKey = None,
) -> ExecPublic:
    """Run `cmd` (an argv) and answer when it ends, with its whole output (up to the
    engine's cap per stream). The command's failure is data (`returncode`,
    `timed_out`); 409 (`error: sandbox_stopped`) when the sandbox has stopped; 410
    (`error: sandbox_lost`) when its host was lost. With an `Idempotency-Key` (unique
    within the sandbox) the command runs at most once: a retry, through any API
    instance, answers the first exec (waiting while it runs); 409 for the same key
    with another command."""
    return await service.sandboxes.exec(sandbox_id, body, who, idempotency_key=idempotency_key)


@router.put(
    "/{sandbox_id}/file",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    openapi_extra={"requestBody": {"required": True, "content": OCTET}},
    responses=responses(403, 404, 409, 410, 413, 503),
)
async def write_sandbox_file(
    sandbox_id: SandboxId, path: FilePath, request: Request, service: ServiceDep, who: PrincipalDep
) -> None:
    """Write the request body (raw bytes) at `path`, creating parents. 403
    `permission_denied`, 409 `is_a_directory` or `sandbox_stopped`, 413 `too_large`
    (over 100 MiB)."""
    await service.sandboxes.write_file(sandbox_id, path, await request.body(), who)


@router.get(
    "/{sandbox_id}/file",
    response_class=Response,
    responses={
        200: {"content": OCTET, "description": "The file's bytes"},
        **responses(403, 404, 409, 410, 413, 503),
    },
)
async def read_sandbox_file(
    sandbox_id: SandboxId, path: FilePath, service: ServiceDep, who: PrincipalDep
) -> Response:
    """The bytes at `path`. 404 `not_found` (no such file; a missing sandbox has no
    `error`), 403 `permission_denied`, 409 `is_a_directory` or `sandbox_stopped`,
    413 `too_large`."""
    data = await service.sandboxes.read_file(sandbox_id, path, who)
    return Response(data, media_type="application/octet-stream")


@router.get("/{sandbox_id}/execs", responses=responses(404, 422))
async def list_sandbox_execs(
    sandbox_id: SandboxId,
    service: ServiceDep,
    who: PrincipalDep,
    cursor: CursorDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ExecList:
    """The transcript, oldest first: every exec with its command, user, exit code,
    duration and an output preview. It outlives the sandbox."""
    return await service.sandboxes.execs(sandbox_id, who, cursor=cursor, limit=limit)


@router.get(
    "/{sandbox_id}/execs/{seq}/output/{stream}",
    response_class=Response,
    responses={200: {"content": OCTET, "description": "The whole stream"}, **responses(404)},
)
async def sandbox_exec_output(
    sandbox_id: SandboxId,
    seq: Annotated[int, Path(ge=1, le=2**31 - 1, description="the exec's number")],
    stream: Literal["stdout", "stderr"],
    service: ServiceDep,
    who: PrincipalDep,
) -> Response:
    """The whole stdout or stderr of one exec (the transcript holds a preview)."""
    data = await service.sandboxes.exec_output(sandbox_id, seq, stream, who)
    return Response(data, media_type="application/octet-stream")


@router.get(
    "/{sandbox_id}/events",
    response_class=Response,
    responses={**SSE_RESPONSE, **responses(404, 422)},
)
async def sandbox_events(
    sandbox_id: SandboxId,
    service: ServiceDep,
    who: PrincipalDep,
    last_event_id: LastEventId = None,
) -> Response:
    """Server-Sent Events: `exec_started` (the exec), `output` (`seq`, `stream`,
    `data`), `exec_finished` (the exec with a preview of its output), and last
    `stopped` (the record). Without a log of the stream, it opens with `status`
    (the record). Reconnect with `Last-Event-ID` to resume."""
    after = parse_last_event_id(last_event_id)
    await service.sandboxes.get(sandbox_id, who)  # 404 before the stream starts

    async def events() -> AsyncIterator[tuple[int, str, Any]]:
        async for event in service.sandboxes.events(sandbox_id, after):
            yield event.id, event.type, event.data

    return sse_response(events())
