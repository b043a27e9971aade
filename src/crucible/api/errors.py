"""Platform errors → HTTP, in one place. Routes raise ``crucible.core.errors``; this maps them.

InvalidSubmission  422 (PayloadTooLarge 413)   NotFound   404
Conflict           409                          Overloaded 503 + Retry-After
SandboxError       503                          PullFailed 502 (a registry said no)
BuildFailed        422 with ``error: "build_failed"`` (the build's own output tail)
other              500
Unauthenticated    401 + WWW-Authenticate       Forbidden  403
QuotaExceeded      429 (+ Retry-After when waiting helps)
SandboxFileError   by kind: not_found 404, permission_denied 403, is_a_directory 409,
                   too_large 413; the body's ``error`` is the exception's ``code``
SandboxStopped     409 with ``error: "sandbox_stopped"``
SandboxLost        410 with ``error: "sandbox_lost"`` (its host died; never moved)
NetworkElsewhere   409 with ``error: "network_elsewhere"`` (distributed; send it again)

``error`` is machine-readable where a client must tell failures apart that share a
status (a missing file vs a missing sandbox, both 404): clients map it back to the
exception (``crucible.client``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from crucible.api.schemas import ErrorPublic
from crucible.core.errors import (
    BuildFailed,
    Conflict,
    CrucibleError,
    Forbidden,
    InvalidSubmission,
    NetworkElsewhere,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PullFailed,
    QuotaExceeded,
    SandboxError,
    SandboxFileError,
    SandboxFileNotFound,
    SandboxFileTooLarge,
    SandboxIsADirectory,
    SandboxLost,
    SandboxPermissionDenied,
    SandboxStopped,
    Unauthenticated,
)

STATUS: list[tuple[type[CrucibleError], int]] = [
    (SandboxFileNotFound, 404),
    (SandboxPermissionDenied, 403),
    (SandboxIsADirectory, 409),
    (SandboxFileTooLarge, 413),
    (SandboxFileError, 422),
    (SandboxLost, 410),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (QuotaExceeded, 429),
    (PayloadTooLarge, 413),
    (InvalidSubmission, 422),
    (NotFound, 404),
    (Conflict, 409),
    (Overloaded, 503),
    (SandboxError, 503),
    (PullFailed, 502),
    # What was asked did not build (a RUN step failed): the request's doing, like a
    # bad Dockerfile; ``error`` tells the two apart.
    (BuildFailed, 422),
]


def status_of(exc: CrucibleError) -> int:
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code
    return 500


def error_code(exc: CrucibleError) -> str | None:
    """The machine-readable ``error`` of the answer, for the failures that have one."""
    if isinstance(exc, SandboxFileError):
        return exc.code
    if isinstance(exc, SandboxLost):
        return "sandbox_lost"
    if isinstance(exc, SandboxStopped):
        return "sandbox_stopped"
    if isinstance(exc, NetworkElsewhere):
        return "network_elsewhere"
    if isinstance(exc, BuildFailed):
        return "build_failed"
    return None


def _body(
    detail: str,
    field: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    error: str | None = None,
) -> Any:
    public = ErrorPublic(detail=detail, field=field, errors=errors, error=error)
    return public.model_dump(exclude_none=True)


async def _crucible_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, CrucibleError)
    headers: dict[str, str] | None = None
    if isinstance(exc, Overloaded) and exc.retry_after > 0:
        headers = {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, Unauthenticated):
        headers = {"WWW-Authenticate": 'Bearer realm="crucible"'}
    field = exc.field if isinstance(exc, InvalidSubmission) else None
    return JSONResponse(
        _body(str(exc), field, error=error_code(exc)), status_code=status_of(exc), headers=headers
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        # "body" / "query" prefixes say where; the field is the rest.
        field = ".".join(loc[1:]) if len(loc) > 1 else ".".join(loc)
        errors.append({"field": field, "reason": e["msg"], "in": loc[0] if loc else None})
    first = errors[0] if errors else {"field": None, "reason": "invalid request"}
    detail = f"{first['field']}: {first['reason']}" if first["field"] else str(first["reason"])
    return JSONResponse(_body(detail, first["field"], errors), status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(CrucibleError, _crucible_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` for the error codes an endpoint can answer."""
    text = {
        400: "The body could not be read as the declared content type",
        401: "No valid API key (send `Authorization: Bearer <key>`)",
        403: "The key's role or limit ceilings do not allow this",
        429: "Over one of the key's quotas (see the message and Retry-After)",
        404: "No such evaluation, batch, sandbox, file or dead letter",
        409: "Conflicts with the current state (or Idempotency-Key reuse)",
        410: "The sandbox is lost with its host (`error: sandbox_lost`); its transcript"
        " stays readable",
        413: "Code or files larger than the server accepts",
        422: "Invalid request; `field` names the culprit",
        502: "A registry could not be read: unreachable, credentials refused, no such image",
        503: "Queue full (see Retry-After) or the platform is unavailable",
    }
    return {c: {"model": ErrorPublic, "description": text[c]} for c in codes}
