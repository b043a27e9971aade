"""The cluster endpoint's error wire: what a host raises is raised again, the same
class with its parts, in the API instance (which maps it to HTTP in one table)."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import httpx
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
from crucible.dispatch.host import HostServer, parse_listen
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


async def test_the_endpoint_answers_without_nagle() -> None:
    """The accepted socket has TCP_NODELAY: asyncio sets it only when the listener's
    proto is IPPROTO_TCP, and without it the answer's second write (uvicorn sends the
    headers and the body apart) waits for the caller's delayed ACK, 40 ms a call."""
    service = SimpleNamespace(owner=SimpleNamespace(id="worker@test"), capacity=1)
    server = HostServer(service, token="t", listen="127.0.0.1:0")  # type: ignore[arg-type]
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/cluster/v1/healthz"
        async with httpx.AsyncClient(headers={"Authorization": "Bearer t"}) as client:
            assert (await client.get(url)).json()["owner"] == "worker@test"
            connections = list(server.server.server_state.connections)
            assert connections
            for conn in connections:
                sock = conn.transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        await server.stop()
