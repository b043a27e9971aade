"""The clients' side of ``api/errors.py``: an error response back to an exception.

Most refusals become :class:`ApiError` (status, message, field). Those a program must
tell apart become the exception the server raised, found by the body's ``error``
code: a file operation's ``not_found``, ``permission_denied``, ``is_a_directory`` and
``too_large`` raise the ``crucible.core.errors.SandboxFile*`` exceptions (with the path),
``sandbox_stopped`` raises :class:`~crucible.core.errors.SandboxStopped`, ``sandbox_lost``
(410: its host died) :class:`~crucible.core.errors.SandboxLost`, a SandboxStopped. (The Inspect AI
provider maps those to FileNotFoundError, PermissionError, IsADirectoryError …)
"""

from __future__ import annotations

from typing import Any

import httpx

from crucible.core.errors import (
    SandboxFileError,
    SandboxFileNotFound,
    SandboxFileTooLarge,
    SandboxIsADirectory,
    SandboxLost,
    SandboxPermissionDenied,
    SandboxStopped,
)

FILE_ERRORS: dict[str, type[SandboxFileError]] = {
    kind.code: kind
    for kind in (
        SandboxFileNotFound,
        SandboxPermissionDenied,
        SandboxIsADirectory,
        SandboxFileTooLarge,
    )
}


class ApiError(Exception):
    """The server refused a request."""

    def __init__(
        self, status: int, detail: str, field: str | None = None, error: str | None = None
    ) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.field = field
        self.error = error


def error_from(response: httpx.Response, *, path: str | None = None) -> Exception:
    """The exception for an error ``response``; ``path``: the file the request was
    about, so a file error code maps to its ``SandboxFile*`` exception."""
    try:
        body: Any = response.json()
        detail, field, error = str(body.get("detail")), body.get("field"), body.get("error")
    except (ValueError, AttributeError):
        detail, field, error = response.text[:500], None, None
    if path is not None and error in FILE_ERRORS:
        return FILE_ERRORS[error](path, detail)
    if error == "sandbox_lost":
        return SandboxLost(detail)
    if error == "sandbox_stopped":
        return SandboxStopped(detail)
    return ApiError(response.status_code, detail, field, error)


def check(response: httpx.Response, *, path: str | None = None) -> httpx.Response:
    """``response`` when it succeeded; else raises :func:`error_from`'s exception."""
    if response.status_code >= 400:
        raise error_from(response, path=path)
    return response
