"""The sandboxes' repository functions, on SQLite and on PostgreSQL (``database_url``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible.core.config import Settings
from crucible.core.errors import NetworkElsewhere, NotFound, QuotaExceeded, SandboxStopped
from crucible.core.lifecycle import SandboxStatus, StopReason
from crucible.store import Store
from crucible.store.keys import KeyStore
from crucible.store.sandboxes import ExecOutcome, NewSandbox, Owner, SandboxStore

OWNER = Owner("embedded@h:1:abc", "boot/4026531836", "h", 1, "100")
OTHER = Owner("embedded@h:2:def", "boot/4026531836", "h", 2, "200")
LIMITS = {"memory_mb": 256, "cpus": 1.0, "pids": 64, "disk_mb": 64}


@pytest.fixture
def store(database_url: str | None, tmp_path: Path) -> Iterator[Store]:
    s = Store(Settings(data_dir=tmp_path, database_url=database_url).sqlalchemy_url)
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture
def boxes(store: Store) -> SandboxStore:
    return SandboxStore(store)


def new(
    n: int, owner: Owner = OWNER, key: str | None = None, group: str | None = None
) -> NewSandbox:
    return NewSandbox(
        id=f"sbx_{n}",
        runtime="runc",
        limits=LIMITS,
        ttl_s=60.0,
        idle_timeout_s=30.0,
        owner=owner,
        labels={"n": str(n)},
        owner_key_id=key,
        network_group=group,
    )


def outcome(code: int, out: bytes = b"") -> ExecOutcome:
    return ExecOutcome(
        returncode=code,
        timed_out=False,
        memory_limit=False,
        duration_ms=5,
        stdout_preview=out,
        stderr_preview=b"",
        stdout_truncated=False,
        stderr_truncated=False,
        stdout_preview_truncated=False,
        stderr_preview_truncated=False,
        stdout_blob=None,
        stderr_blob=None,
    )


def test_create_get_list_and_page(boxes: SandboxStore) -> None:
    for n in range(5):
        boxes.create(new(n, key="key_a" if n % 2 else "key_b"))
    row = boxes.get("sbx_3")
    assert row.status == "running" and row.limits == LIMITS and row.labels == {"n": "3"}
    assert row.owner_process_id == OWNER.id and row.created_at.tzinfo is not None
    with pytest.raises(NotFound):
        boxes.get("sbx_nope")
    page, cursor = boxes.list(owner_key_id=None, status=None, cursor=None, limit=3)
    assert [r.id for r in page] == ["sbx_4", "sbx_3", "sbx_2"] and cursor is not None
    rest, end = boxes.list(owner_key_id=None, status=None, cursor=cursor, limit=3)
    assert [r.id for r in rest] == ["sbx_1", "sbx_0"] and end is None
    mine, _ = boxes.list(owner_key_id="key_a", status=None, cursor=None, limit=10)
    assert [r.id for r in mine] == ["sbx_3", "sbx_1"]
    boxes.stop("sbx_3", StopReason.deleted)
    running, _ = boxes.list(
        owner_key_id="key_a", status=SandboxStatus.running, cursor=None, limit=10
    )
    assert [r.id for r in running] == ["sbx_1"]


def test_quota_counts_running_sandboxes_only(store: Store, boxes: SandboxStore) -> None:
    key, _ = KeyStore(store).create("q", "researcher")
    boxes.create(new(1, key=key.id), max_sandboxes=2)
    boxes.create(new(2, key=key.id), max_sandboxes=2)
    with pytest.raises(QuotaExceeded, match="max_sandboxes"):
        boxes.create(new(3, key=key.id), max_sandboxes=2)
    with pytest.raises(NotFound):
        boxes.get("sbx_3")  # refused: nothing was written
    boxes.stop("sbx_1", StopReason.ttl)
    boxes.create(new(3, key=key.id), max_sandboxes=2)
    boxes.create(new(4, key=key.id), max_sandboxes=0)  # 0: unlimited


def test_concurrent_creates_cannot_both_pass_the_quota(store: Store, boxes: SandboxStore) -> None:
    key, _ = KeyStore(store).create("race", "researcher")
    results: list[str] = []
    barrier = threading.Barrier(6)

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            boxes.create(new(n, key=key.id), max_sandboxes=2)
            results.append("ok")
        except QuotaExceeded:
            results.append("refused")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ok"] * 2 + ["refused"] * 4


def test_a_network_group_stays_on_one_host_even_when_created_at_once(
    boxes: SandboxStore,
) -> None:
    """Members of one group inserted at once by two hosts: the first host's members
    go in, the other's are refused (PostgreSQL: the group's advisory lock; SQLite: one
    writer); a group whose members are stopped may start again anywhere."""
    results: list[str] = []
    barrier = threading.Barrier(6)

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            boxes.create(new(n, owner=(OWNER, OTHER)[n % 2], group="k/sample"))
            results.append("ok")
        except NetworkElsewhere:
            results.append("refused")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["ok"] * 3 + ["refused"] * 3
    running = [b for b in boxes.running() if b.network_group == "k/sample"]
    assert len({b.owner_process_id for b in running}) == 1
    boxes.create(new(10, owner=OWNER, group="k/other"))  # another group: its own host
    boxes.create(new(11, owner=OTHER, group="k/another"))
    for b in running:
        boxes.stop(b.id, StopReason.deleted)
    boxes.create(new(12, owner=OTHER, group="k/sample"))  # none running: anywhere


def test_stop_is_fenced_and_records_usage(boxes: SandboxStore) -> None:
    boxes.create(new(1))
    assert boxes.stop("sbx_1", StopReason.idle_timeout, usage=(12, 3456))
    assert not boxes.stop("sbx_1", StopReason.deleted)  # already stopped: changes nothing
    row = boxes.get("sbx_1")
    assert (row.status, row.stop_reason, row.cpu_ms, row.peak_memory_bytes) == (
        "stopped",
        "idle_timeout",
        12,
        3456,
    )
    assert row.stopped_at is not None
    boxes.create(new(2))
    assert boxes.stop("sbx_2", StopReason.lost)
    assert boxes.get("sbx_2").status == "lost"


def test_execs_are_numbered_recorded_and_outlive_the_sandbox(boxes: SandboxStore) -> None:
    boxes.create(new(1))
    before = boxes.get("sbx_1").last_activity_at
    first = boxes.begin_exec("sbx_1", ["echo", "hi"], None, None)
    second = boxes.begin_exec("sbx_1", ["sleep", "9"], "/tmp", "agent")
    assert (first.seq, second.seq) == (1, 2)
    done = boxes.finish_exec("sbx_1", 1, outcome(0, b"hi\n\xff"))
    assert done.returncode == 0 and done.stdout_preview == b"hi\n\xff"
    box = boxes.get("sbx_1")
    assert box.exec_count == 2 and box.last_activity_at >= before
    # Stopping ends the exec still running, with the reason; the transcript remains.
    boxes.stop("sbx_1", StopReason.deleted)
    with pytest.raises(SandboxStopped):
        boxes.begin_exec("sbx_1", ["true"], None, None)
    page, cursor = boxes.list_execs("sbx_1", cursor=None, limit=1)
    assert [e.cmd for e in page] == [["echo", "hi"]] and cursor == 1
    rest, end = boxes.list_execs("sbx_1", cursor=cursor, limit=10)
    assert [(e.seq, e.user, e.cwd) for e in rest] == [(2, "agent", "/tmp")] and end is None
    assert rest[0].finished_at is not None and rest[0].returncode is None
    assert rest[0].error == "the sandbox stopped: deleted"
    assert boxes.get_exec("sbx_1", 2).cmd == ["sleep", "9"]
    with pytest.raises(NotFound):
        boxes.get_exec("sbx_1", 3)
    with pytest.raises(NotFound):
        boxes.begin_exec("sbx_nope", ["true"], None, None)


def test_running_by_process(boxes: SandboxStore) -> None:
    boxes.create(new(1))
    boxes.create(new(2, owner=OTHER))
    boxes.create(new(3))
    boxes.stop("sbx_3", StopReason.deleted)
    assert [r.id for r in boxes.running(process_id=OWNER.id)] == ["sbx_1"]
    assert [r.id for r in boxes.running(other_than=OWNER.id)] == ["sbx_2"]
    boxes.discard("sbx_2")
    with pytest.raises(NotFound):
        boxes.get("sbx_2")
