import pytest

from crucible.core.errors import Conflict
from crucible.core.lifecycle import (
    ALLOWED,
    TERMINAL,
    Priority,
    Status,
    check_transition,
    sources_of,
)


def test_final_statuses_allow_nothing() -> None:
    for status in TERMINAL:
        assert ALLOWED[status] == frozenset()
        for target in Status:
            with pytest.raises(Conflict):
                check_transition(status, target)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Status.queued, Status.running),
        (Status.queued, Status.cancelled),
        (Status.running, Status.completed),
        (Status.running, Status.error),
        (Status.running, Status.queued),
    ],
)
def test_allowed(current: Status, target: Status) -> None:
    check_transition(current, target)


def test_queued_cannot_complete_without_running() -> None:
    with pytest.raises(Conflict, match="queued"):
        check_transition(Status.queued, Status.completed)


def test_sources_of() -> None:
    assert sources_of(Status.cancelled) == {Status.queued, Status.running}
    assert sources_of(Status.completed) == {Status.running}


def test_priority_rank_orders_high_first() -> None:
    assert sorted(Priority, key=lambda p: p.rank) == [Priority.high, Priority.normal, Priority.low]
