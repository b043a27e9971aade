"""Placement's walk over the candidate hosts (``RoutedSandboxes.create``), without
root or servers: a host that refuses (at its own hard cap while the database counted
room, or its engine failed) or cannot be reached is skipped and the next one tried;
an answer lost after the host made the row returns that row; none left is 503 with
every host's reason; the key's quota (429) is not retried elsewhere; a host that finds
the network group elsewhere sends the create to a placement again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from crucible.core.config import Settings
from crucible.core.errors import (
    NetworkElsewhere,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RuntimeFailure,
)
from crucible.domain.models import SandboxCreate
from crucible.services import sandbox_router
from crucible.services.host_client import HostUnreachable, error_body, error_of
from crucible.services.sandbox_router import RoutedSandboxes

REQ = SimpleNamespace(id="sbx_new", network_group=None)


class Hosts:
    """A HostClient whose hosts answer as told: an exception (raised as it would
    cross the wire, through error_body/error_of) or a record."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.tried: list[str] = []
        self.placing_seen: list[int] = []

    async def create(self, endpoint: str, req: Any) -> Any:
        self.tried.append(endpoint)
        answer = self.answers[endpoint]
        if isinstance(answer, HostUnreachable):
            raise answer
        if isinstance(answer, Exception):
            raise error_of(error_body(answer))  # as the host's answer arrives
        return answer

    async def close(self) -> None:
        pass


def router(monkeypatch: pytest.MonkeyPatch, hosts: Hosts, rows: dict[str, Any]) -> RoutedSandboxes:
    def get(sandbox_id: str) -> Any:
        if sandbox_id not in rows:
            raise NotFound(sandbox_id)
        return rows[sandbox_id]

    r = RoutedSandboxes(
        settings=Settings(cluster_token="t"),
        access=SimpleNamespace(sandboxes=SimpleNamespace(get=get)),  # type: ignore[arg-type]
        blobs=None,  # type: ignore[arg-type]
        bus=None,  # type: ignore[arg-type]
        cluster=None,  # type: ignore[arg-type]
        environments=None,  # type: ignore[arg-type]
        hosts=hosts,  # type: ignore[arg-type]
    )

    async def prepare(*_: Any) -> Any:
        return REQ

    async def candidates(_req: Any) -> list[Any]:  # in order: least loaded first
        return [SimpleNamespace(id=e, endpoint=e) for e in hosts.answers]

    monkeypatch.setattr(sandbox_router, "prepare", prepare)
    monkeypatch.setattr(r, "_candidates", candidates)
    return r


async def test_a_host_that_refuses_is_skipped_and_the_next_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = SimpleNamespace(id="sbx_new", worker_id="c")
    hosts = Hosts(
        {
            # Its own hard cap: another instance's creation was in flight there.
            "a": Overloaded("this host is full (7 running, 1 being created, capacity 8)", 1),
            "b": RuntimeFailure("create", 1, "crun: cannot set up the cgroup"),  # its engine
            "c": made,
        }
    )
    r = router(monkeypatch, hosts, rows={})
    assert await r.create(SandboxCreate()) is made
    assert hosts.tried == ["a", "b", "c"]
    assert not r._placing  # nothing counted in flight once it is placed


async def test_an_answer_lost_after_the_host_made_it_returns_that_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = Hosts({"a": HostUnreachable("reset"), "b": SimpleNamespace(id="other")})
    row = SimpleNamespace(id="sbx_new")
    monkeypatch.setattr(sandbox_router, "sandbox_public", lambda r: ("public", r))
    r = router(monkeypatch, hosts, rows={"sbx_new": row})
    assert await r.create(SandboxCreate()) == ("public", row)
    assert hosts.tried == ["a"]  # never made twice


async def test_no_host_takes_it_is_503_with_each_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = Hosts({"a": Overloaded("this host is full", 1), "b": HostUnreachable("refused")})
    r = router(monkeypatch, hosts, rows={})
    with pytest.raises(Overloaded) as info:
        await r.create(SandboxCreate())
    assert "a: this host is full" in str(info.value) and "b: refused" in str(info.value)
    assert info.value.retry_after == 2


async def test_the_keys_quota_is_not_tried_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = Hosts({"a": QuotaExceeded("quota max_sandboxes", retry_after=0), "b": object()})
    r = router(monkeypatch, hosts, rows={})
    with pytest.raises(QuotaExceeded):
        await r.create(SandboxCreate())
    assert hosts.tried == ["a"]


async def test_a_network_group_found_elsewhere_is_placed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another instance placed a member of the group on b meanwhile: a's insert refuses
    it, and the next placement reads b as the group's host (the second _candidates)."""
    made = SimpleNamespace(id="sbx_new", worker_id="b")
    hosts = Hosts({"a": NetworkElsewhere("network 'k/s' has running members on b"), "b": made})
    r = router(monkeypatch, hosts, rows={})
    rounds: list[list[str]] = [["a"], ["b"]]

    async def candidates(_req: Any) -> list[Any]:
        return [SimpleNamespace(id=e, endpoint=e) for e in rounds.pop(0)]

    monkeypatch.setattr(r, "_candidates", candidates)
    assert await r.create(SandboxCreate()) is made
    assert hosts.tried == ["a", "b"] and not rounds and not r._placing


async def test_a_network_group_that_keeps_moving_is_409_after_a_few_placements(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hosts = Hosts({"a": NetworkElsewhere("network 'k/s' has running members on b")})
    r = router(monkeypatch, hosts, rows={})
    with pytest.raises(NetworkElsewhere):
        await r.create(SandboxCreate())
    assert hosts.tried == ["a"] * sandbox_router.GROUP_PLACEMENTS


def test_network_elsewhere_answers_409_with_its_error_code() -> None:
    """A client tells it from other conflicts by ``error``: it may send the create again."""
    from crucible.api.errors import error_code, status_of

    exc = NetworkElsewhere("network 'k/s' has running members on b")
    assert (status_of(exc), error_code(exc)) == (409, "network_elsewhere")
