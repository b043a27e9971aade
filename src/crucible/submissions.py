"""Turns API submissions into stored evaluations, and stored ones into sandbox runs.

Validation happens here, before anything is queued, so a request that cannot run is
refused with 4xx instead of failing later in a worker. Judging (``expected_output``,
``test_code``) lives here too: it is how a request becomes a program and a verdict.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from crucible.api.schemas import EvaluationCreate, EvaluationFields, EvaluationRequest
from crucible.config import Settings
from crucible.errors import InvalidSubmission, PayloadTooLarge
from crucible.lifecycle import Priority, Verdict
from crucible.limits import resolve_limits
from crucible.sandbox.languages import get_language
from crucible.sandbox.models import Result, RunRequest, Termination
from crucible.sandbox.workspace import safe_relative
from crucible.store import NewEvaluation


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def request_hash(body: EvaluationFields) -> str:
    """A digest of the submission as sent, for Idempotency-Key comparisons."""
    canonical = json.dumps(body.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def merge(item: EvaluationFields, defaults: EvaluationFields | None) -> EvaluationCreate:
    """``item`` over ``defaults``; ``limits`` and ``labels`` merge key by key.

    Raises pydantic's ValidationError when the merged item is invalid.
    """
    values: dict[str, Any] = {}
    if defaults is not None:
        values.update(defaults.model_dump(exclude_none=True))
    for name, value in item.model_dump(exclude_none=True).items():
        if name in ("limits", "labels") and isinstance(values.get(name), dict):
            values[name] = {**values[name], **value}
        else:
            values[name] = value
    return EvaluationCreate.model_validate(values)


def prepare(
    body: EvaluationCreate, settings: Settings, *, idempotency_key: str | None = None
) -> NewEvaluation:
    """Validate ``body`` and resolve its defaults; raises InvalidSubmission / PayloadTooLarge."""
    language = body.language or "python"
    get_language(language)  # InvalidSubmission listing the supported languages
    size = len((body.code or "").encode()) + len((body.test_code or "").encode())
    size += sum(len(k) + len(v.encode()) for k, v in (body.files or {}).items())
    if size > settings.max_code_bytes:
        raise PayloadTooLarge(
            f"code and files total {size} bytes; the limit is {settings.max_code_bytes}",
            field="code",
        )
    if body.files is not None:
        for name in body.files:
            safe_relative(name)
        if body.entrypoint is None:
            raise InvalidSubmission("files need an entrypoint", field="entrypoint")
        if body.entrypoint not in body.files:
            raise InvalidSubmission(
                f"entrypoint {body.entrypoint!r} is not among the files", field="entrypoint"
            )
    elif body.entrypoint is not None:
        safe_relative(body.entrypoint)
    if body.test_code is not None and language != "python":
        raise InvalidSubmission("test_code is supported for python only", field="test_code")
    requested = body.limits.model_dump() if body.limits else None
    request = EvaluationRequest(
        language=language,
        code=body.code,
        files=body.files,
        entrypoint=body.entrypoint,
        stdin=body.stdin or "",
        args=body.args or [],
        limits=resolve_limits(requested, settings),
        runtime=body.runtime or settings.default_runtime,
        priority=body.priority or Priority.normal,
        labels=body.labels or {},
        expected_output=body.expected_output,
        test_code=body.test_code,
    )
    return NewEvaluation(
        id=new_id("ev"),
        priority=request.priority,
        language=language,
        request=request.model_dump(mode="json"),
        request_hash=request_hash(body),
        labels=request.labels,
        idempotency_key=idempotency_key,
    )


def run_request(request: EvaluationRequest) -> RunRequest:
    """The sandbox request for a stored evaluation (``test_code`` appended)."""
    code, files = request.code, request.files
    if request.test_code is not None:
        if code is not None:
            code = f"{code}\n\n{request.test_code}\n"
        elif files is not None and request.entrypoint is not None:
            files = dict(files)
            files[request.entrypoint] = f"{files[request.entrypoint]}\n\n{request.test_code}\n"
    return RunRequest(
        language=request.language,
        code=code,
        files=files,
        entrypoint=request.entrypoint,
        stdin=request.stdin,
        args=request.args,
        limits=request.limits,
        runtime=request.runtime,
    )


def _normalise(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def verdict(request: EvaluationRequest, result: Result) -> Verdict | None:
    """passed / failed when the request asks for judging, else None.

    Passing needs a clean exit (status 0) and, with ``expected_output``, complete
    stdout equal to it once trailing whitespace (per line and at the end) is ignored.
    """
    if request.expected_output is None and request.test_code is None:
        return None
    ok = result.termination is Termination.exited and result.exit_code == 0
    if ok and request.expected_output is not None:
        ok = not result.stdout_truncated and _normalise(result.stdout) == _normalise(
            request.expected_output
        )
    return Verdict.passed if ok else Verdict.failed
