"""Turns API submissions into stored evaluations, and stored ones into sandbox runs.

Validation happens here, before anything is queued, so a request that cannot run is
refused with 4xx instead of failing later in a worker. Judging (``expected_output``,
``test_code``) lives here too: it is how a request becomes a program and a verdict.

Environments: a request names one (``host`` by default). At submission the name is
resolved (:func:`resolve_environment`; unknown → 422 naming the known ones) and the
language checked against what it has; the stored request keeps the name and the
digest. At run time :func:`run_request` resolves the name again in the worker's own
store and refuses (:class:`~crucible.core.errors.EnvironmentUnavailable`) a root that is
gone or is no longer the one submitted to.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from crucible.core.config import Settings
from crucible.core.errors import (
    EnvironmentUnavailable,
    InvalidSubmission,
    NotFound,
    PayloadTooLarge,
)
from crucible.core.lifecycle import Priority, Verdict
from crucible.domain.evaluations import EvaluationCreate, EvaluationFields, EvaluationRequest
from crucible.domain.limits import resolve_limits
from crucible.engine.languages import get_language
from crucible.engine.models import EnvironmentRoot, Result, RunRequest, Termination
from crucible.engine.workspace import safe_relative
from crucible.environments.store import HOST, Environment, EnvironmentStore
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


def resolve_environment(
    name: str | None, store: EnvironmentStore, *, default: str | None = None
) -> Environment | None:
    """The environment a request names (None: ``default``, the operator's
    CRUCIBLE_DEFAULT_ENVIRONMENT for sandboxes, else ``host``). Raises
    InvalidSubmission (field ``environment``) naming the known ones and the import
    command; for a default, naming the setting too."""
    if name is None and default is not None:
        try:
            return resolve_environment(default, store)
        except InvalidSubmission as exc:
            raise InvalidSubmission(
                f"no environment named, and the default (CRUCIBLE_DEFAULT_ENVIRONMENT) is "
                f"not there: {exc}; name one, or `host`",
                field="environment",
            ) from None
    if name is None or name == HOST:
        return None
    try:
        return store.get(name)
    except NotFound as exc:
        raise InvalidSubmission(str(exc), field="environment") from None


def check_language(language: str, environment: Environment | None) -> None:
    """InvalidSubmission (field ``language``) unless ``language`` runs there."""
    get_language(language)  # InvalidSubmission listing the supported languages
    if environment is not None and language not in environment.languages:
        has = ", ".join(environment.languages) or "none of the known languages"
        raise InvalidSubmission(
            f"environment {environment.name!r} has no {language} (its languages: {has})",
            field="language",
        )


def prepare(
    body: EvaluationCreate,
    settings: Settings,
    *,
    idempotency_key: str | None = None,
    environment: Environment | None = None,
) -> NewEvaluation:
    """Validate ``body`` and resolve its defaults; raises InvalidSubmission / PayloadTooLarge.

    ``environment``: what ``body.environment`` resolved to (:func:`resolve_environment`;
    None: host).
    """
    language = body.language or "python"
    if (body.environment or HOST) != (environment.name if environment else HOST):
        raise ValueError("environment does not match the body's")  # a caller's bug
    check_language(language, environment)
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
        environment=environment.name if environment else HOST,
        environment_digest=environment.digest if environment else None,
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
        environment=request.environment,
    )


def pinned_root(request: EvaluationRequest, store: EnvironmentStore) -> EnvironmentRoot | None:
    """The root a stored request was submitted to, from ``store`` (None: host).

    Raises EnvironmentUnavailable when the name is gone or now holds another root:
    running elsewhere than what was submitted would be a different evaluation.
    """
    if request.environment == HOST:
        return None
    name = request.environment
    try:
        env = store.get(name)
    except NotFound:
        raise EnvironmentUnavailable(
            f"environment {name!r} was removed after this evaluation was submitted;"
            " import it again and resubmit"
        ) from None
    if env.digest != request.environment_digest:
        raise EnvironmentUnavailable(
            f"environment {name!r} changed since this evaluation was submitted (then"
            f" {request.environment_digest}, now {env.digest}); resubmit to run in it"
        )
    return env.root_spec()


def run_request(request: EvaluationRequest, root: EnvironmentRoot | None = None) -> RunRequest:
    """The sandbox request for a stored evaluation (``test_code`` appended), in
    ``root`` (:func:`pinned_root`; None: the host's toolchain)."""
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
        environment=root,
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
