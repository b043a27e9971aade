"""The cluster endpoint's error wire: what a host raises is raised again, the same
class with its parts, in the API instance (which maps it to HTTP in one table)."""

from __future__ import annotations

import pytest

from crucible.core.errors import (
    Conflict,
    CrucibleError,
    InvalidSubmission,
    Overloaded,
    QuotaExceeded,
    RuntimeFailure,
    SandboxFileNotFound,
    SandboxLost,
    SandboxStopped,
    SandboxUnavailable,
)
from crucible.dispatch.host import parse_listen
from crucible.services.host_client import error_body, error_of


@pytest.mark.parametrize(
    "exc",
    [
        SandboxLost("sandbox sbx_1 is lost: its host w stopped heartbeating"),
        SandboxStopped("sandbox sbx_1 is stopped (deleted)"),
        SandboxFileNotFound("/x/y", "/x/y: not found"),
        InvalidSubmission("timeout out of bounds", field="timeout_s"),
        QuotaExceeded("quota max_sandboxes", retry_after=0),
        Overloaded("this host is full", retry_after=1),
        Conflict("Idempotency-Key reuse"),
    ],
)
def test_errors_cross_the_wire_unchanged(exc: CrucibleError) -> None:
    back = error_of(error_body(exc))
    assert type(back) is type(exc) and str(back) == str(exc)
    for part in ("path", "field", "retry_after"):
        assert getattr(back, part, None) == getattr(exc, part, None)


def test_a_runtime_failure_and_an_unknown_kind_are_unavailable() -> None:
    back = error_of(error_body(RuntimeFailure("create", 1, "boom")))
    assert type(back) is SandboxUnavailable and "boom" in str(back)
    assert type(error_of({"kind": "Nonsense", "detail": "?"})) is SandboxUnavailable


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.2:8600") == ("127.0.0.2", 8600)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError, match="ADDR:PORT"):
        parse_listen("8600")
