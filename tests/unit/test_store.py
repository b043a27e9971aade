"""Repository functions, on SQLite and on PostgreSQL (the ``database_url`` fixture)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from crucible.core.config import Settings
from crucible.core.errors import Conflict, NotFound
from crucible.core.lifecycle import Priority, Status
from crucible.store import Claim, Cluster, EvaluationFilter, NewEvaluation, Store, WorkerInfo
from crucible.store.tables import Batch


@pytest.fixture
def store(database_url: str | None, tmp_path: Path) -> Store:
    cfg = Settings(data_dir=tmp_path, database_url=database_url)
    tmp_path.mkdir(exist_ok=True)
    s = Store(cfg.sqlalchemy_url)
    s.migrate()
    yield s  # type: ignore[misc]
    s.dispose()


def new(n: int, priority: Priority = Priority.normal, **kw: object) -> NewEvaluation:
    values: dict[str, object] = {
        "id": f"ev_{n}",
        "priority": priority,
        "language": "python",
        "request": {"code": f"print({n})"},
        "request_hash": f"h{n}",
    }
    values.update(kw)
    return NewEvaluation(**values)  # type: ignore[arg-type]


def test_migrate_is_idempotent_and_create_get(store: Store) -> None:
    store.migrate()
    row, created = store.create_evaluation(new(1, labels={"team": "a"}))
    assert created and row.status == Status.queued and row.attempts == 0
    assert store.get("ev_1").request == {"code": "print(1)"}
    assert store.labels_of([row.seq]) == {row.seq: {"team": "a"}}
    with pytest.raises(NotFound):
        store.get("ev_nope")


def test_idempotency_key(store: Store) -> None:
    first, created = store.create_evaluation(new(1, idempotency_key="k"))
    again, created_again = store.create_evaluation(new(2, idempotency_key="k", request_hash="h1"))
    assert created and not created_again and again.id == first.id
    with pytest.raises(Conflict):
        store.create_evaluation(new(3, idempotency_key="k", request_hash="other"))
    assert store.queued_count() == 1


def test_claim_order_priority_then_submission(store: Store) -> None:
    store.create_evaluation(new(1, Priority.low))
    store.create_evaluation(new(2, Priority.normal))
    store.create_evaluation(new(3, Priority.high))
    store.create_evaluation(new(4, Priority.normal))
    order = []
    while (claim := store.claim_next()) is not None:
        order.append(claim.id)
        assert claim.attempt == 1
    assert order == ["ev_3", "ev_2", "ev_4", "ev_1"]


def test_a_claim_carries_the_request_and_the_finish_reads_the_record(store: Store) -> None:
    """The executor reads nothing after the claim, nor after the finish: the finishing
    transaction returns the record and its labels (and a stale claim nothing)."""
    store.create_evaluation(new(1, labels={"suite": "a"}))
    claim = store.claim_next()
    assert claim is not None and claim.request == store.get("ev_1").request
    done = store.finish_and_read(claim, Status.completed, result={"ok": True}, verdict="passed")
    assert done is not None
    row, labels = done
    assert (row.status, row.result, row.verdict, labels) == (
        "completed", {"ok": True}, "passed", {"suite": "a"},
    )  # fmt: skip
    assert (row.finished_at, labels) == (
        store.get("ev_1").finished_at, store.get_with_labels("ev_1")[1],
    )  # fmt: skip
    assert store.finish_and_read(claim, Status.error, error="again") is None  # fenced
    assert store.get("ev_1").status == "completed"


def test_claim_is_fenced(store: Store) -> None:
    store.create_evaluation(new(1))
    claim = store.claim("ev_1")
    assert claim is not None
    assert store.claim("ev_1") is None  # already running
    # Recovery re-queues it and someone else claims attempt 2: attempt 1 is stale.
    assert store.recover(max_attempts=3) == (1, 0)
    second = store.claim_next()
    assert second is not None and second.attempt == 2
    assert not store.finish(claim, Status.completed, result={"stale": True})
    assert store.finish(second, Status.completed, result={"ok": True})
    assert store.get("ev_1").result == {"ok": True}
    with pytest.raises(ValueError):
        store.finish(second, Status.running)


def test_concurrent_claimers_never_share(store: Store) -> None:
    for n in range(60):
        store.create_evaluation(new(n))
    claimed: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while (claim := store.claim_next()) is not None:
            with lock:
                claimed.append(claim.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed) == sorted(f"ev_{n}" for n in range(60))


def test_cancel(store: Store) -> None:
    for n in (1, 2, 3):
        store.create_evaluation(new(n))
    assert store.cancel("ev_1") is Status.cancelled
    assert store.claim("ev_1") is None  # a cancelled evaluation never runs
    claim = store.claim("ev_2")
    assert claim is not None
    assert store.cancel("ev_2") is Status.running
    assert store.cancel_requested("ev_2")
    assert store.finish(claim, Status.cancelled)
    with pytest.raises(Conflict):
        store.cancel("ev_2")
    with pytest.raises(NotFound):
        store.cancel("ev_nope")


def test_requeue_after_platform_fault(store: Store) -> None:
    store.create_evaluation(new(1))
    claim = store.claim_next()
    assert claim is not None
    assert store.requeue(claim, "runtime failed")
    row = store.get("ev_1")
    assert row.status == Status.queued and row.error == "runtime failed"
    again = store.claim_next()
    assert again is not None and again.attempt == 2


def test_recover_gives_up_after_max_attempts(store: Store) -> None:
    store.create_evaluation(new(1))
    store.create_evaluation(new(2))
    for _ in range(2):
        assert store.claim("ev_1") is not None
        store.recover(max_attempts=2)
    assert store.get("ev_1").status == Status.error
    assert store.get("ev_2").status == Status.queued


def test_list_filters_and_cursor(store: Store) -> None:
    for n in range(7):
        store.create_evaluation(new(n, labels={"parity": "even" if n % 2 == 0 else "odd"}))
    page = store.list_records(EvaluationFilter(), cursor=None, limit=3)
    assert page.ids == ["ev_6", "ev_5", "ev_4"] and page.next_cursor is not None
    assert sorted(page.rows) == sorted(page.ids)
    seen = list(page.ids)
    while page.next_cursor is not None:
        page = store.list_records(EvaluationFilter(), cursor=page.next_cursor, limit=3)
        seen += page.ids
    assert seen == [f"ev_{n}" for n in range(6, -1, -1)]
    odd = store.list_records(EvaluationFilter(label=("parity", "odd")), cursor=None, limit=10)
    assert odd.ids == ["ev_5", "ev_3", "ev_1"]
    assert {odd.rows[i].seq: odd.labels[odd.rows[i].seq] for i in odd.ids} == {
        odd.rows[i].seq: {"parity": "odd"} for i in odd.ids
    }
    store.cancel("ev_0")
    cancelled = store.list_records(EvaluationFilter(status=Status.cancelled), cursor=None, limit=10)
    assert cancelled.ids == ["ev_0"]


def test_list_loads_only_the_records_the_caller_does_not_hold(store: Store) -> None:
    for n in range(5):
        store.create_evaluation(new(n, labels={"n": str(n)}))
    asked: list[str] = []

    def known(evaluation_id: str) -> bool:
        asked.append(evaluation_id)
        return evaluation_id in {"ev_4", "ev_2"}

    page = store.list_records(EvaluationFilter(), cursor=None, limit=4, known=known)
    assert page.ids == ["ev_4", "ev_3", "ev_2", "ev_1"] and page.next_cursor is not None
    assert asked == page.ids  # the page's own, not the row read to find the next cursor
    assert sorted(page.rows) == ["ev_1", "ev_3"]
    assert sorted(page.labels.values(), key=str) == [{"n": "1"}, {"n": "3"}]
    everything = store.list_records(EvaluationFilter(), cursor=None, limit=4, known=lambda _: True)
    assert everything.ids == page.ids and everything.rows == {} and everything.labels == {}


def test_a_batch_replayed_under_its_idempotency_key_is_the_original(store: Store) -> None:
    first, created = store.create_batch(
        "bt_a", [new(n) for n in range(3)], {}, idempotency_key="k", request_hash="h1"
    )
    again, replayed = store.create_batch(
        "bt_b", [new(n + 10) for n in range(3)], {}, idempotency_key="k", request_hash="h1"
    )
    assert created and not replayed and again.id == first.id == "bt_a"
    assert store.queued_count() == 3  # nothing of the replay was inserted
    with pytest.raises(Conflict, match="different batch"):
        store.create_batch("bt_c", [new(20)], {}, idempotency_key="k", request_hash="h2")
    assert store.queued_count() == 3


def test_batches(store: Store) -> None:
    store.create_batch("bt_1", [new(n) for n in range(5)], {"run": "x"})
    claim = store.claim_next()
    assert claim is not None
    store.finish(claim, Status.completed, termination="exited", verdict="passed")
    running = store.claim_next()
    assert running is not None
    assert store.cancel_batch("bt_1") == [running.id]
    counts = store.batch_counts("bt_1")
    assert counts.total == 5
    assert counts.by_status == {"completed": 1, "running": 1, "cancelled": 3}
    assert counts.by_verdict == {"passed": 1}
    depth, n_running = store.queue_stats()
    assert depth == {"high": 0, "normal": 0, "low": 0} and n_running == 1
    with pytest.raises(NotFound):
        store.get_batch("bt_nope")
    assert counts == store.count_batch_rows("bt_1")


def test_batch_counters_equal_the_rows_after_a_mixed_life(store: Store) -> None:
    """The counters on the batch row (``crucible.store.tallies``) are kept through
    every status change: claim, finish (passed, failed verdict, cancelled while
    running), cancel of one queued evaluation, re-queue after its worker was lost,
    recovery out of attempts into a dead letter, a stale finish fenced out, and the
    cancel of the rest of the batch. After each step they equal a real count."""
    cluster = Cluster(store)
    w = WorkerInfo(id="w1", kind="embedded", host="h", node="n", pid=1, proc_start="1", capacity=4)
    cluster.heartbeat(w, running=0)
    store.create_batch("bt_m", [new(n) for n in range(10)], {})
    store.create_evaluation(new(99))  # outside the batch: counted nowhere

    def check(**expected: int) -> None:
        counted = store.count_batch_rows("bt_m")
        assert store.batch_counts("bt_m") == counted
        assert counted.total == 10
        assert {k: v for k, v in counted.by_status.items()} == expected

    def claim(worker_id: str | None = "w1") -> Claim:
        c = store.claim_next(worker_id=worker_id)
        assert c is not None and c.id != "ev_99"
        return c

    check(queued=10)
    store.cancel("ev_99")  # a claim would pick ev_0 first anyway; keep ev_99 out
    passed, failed, killed = claim(), claim(), claim()
    check(queued=7, running=3)
    assert store.finish(passed, Status.completed, termination="exited", verdict="passed")
    assert store.finish(failed, Status.completed, termination="timeout", verdict="failed")
    assert store.finish(killed, Status.cancelled, termination="cancelled")
    assert not store.finish(passed, Status.completed, termination="exited")  # fenced
    check(queued=7, completed=2, cancelled=1)
    assert store.cancel("ev_3") == Status.cancelled
    check(queued=6, completed=2, cancelled=2)
    # A lost worker: its run goes back to the queue, then dies again, out of attempts.
    lost = claim()
    cluster.stopped("w1")
    recover = dict(
        node="n", alive_here=lambda pid, start: False, dead_after_s=3600.0,
        stuck_after_s=3600.0, max_attempts=2, backoff=lambda attempt: 0.0,
    )  # fmt: skip
    assert cluster.recover_orphans(**recover) == (1, 0)  # type: ignore[arg-type]
    check(queued=6, completed=2, cancelled=2)
    assert store.claim(lost.id, worker_id="w1") is not None
    check(queued=5, completed=2, cancelled=2, running=1)
    assert cluster.recover_orphans(**recover) == (0, 1)  # type: ignore[arg-type]
    check(queued=5, completed=2, cancelled=2, error=1)
    assert not store.requeue(lost, "late")  # the first claim is long fenced out
    # A platform fault re-queues a run; then the rest of the batch is cancelled.
    fault = claim()
    assert store.requeue(fault, "fault")
    running = claim()
    check(queued=4, completed=2, cancelled=2, error=1, running=1)
    assert store.cancel_batch("bt_m") == [running.id]
    check(completed=2, cancelled=6, error=1, running=1)
    assert store.finish(running, Status.cancelled, termination="cancelled")
    counts = store.batch_counts("bt_m")
    assert counts.by_status == {"completed": 2, "cancelled": 7, "error": 1}
    assert counts.by_termination == {"exited": 1, "timeout": 1, "cancelled": 2}
    assert counts.by_verdict == {"passed": 1, "failed": 1}
    assert counts == store.count_batch_rows("bt_m")


def test_a_termination_outside_the_vocabulary_is_refused_and_counts_nothing(
    store: Store,
) -> None:
    store.create_batch("bt_v", [new(1)], {})
    c = store.claim_next()
    assert c is not None
    with pytest.raises(ValueError):
        store.finish(c, Status.completed, termination="vanished")
    # The transaction rolled back with its counts: still running, still counted so.
    assert store.get("ev_1").status == Status.running
    assert store.batch_counts("bt_v") == store.count_batch_rows("bt_v")


def test_the_counters_migration_backfills_from_the_rows(store: Store) -> None:
    from alembic import command
    from sqlalchemy import update

    from crucible.store.db import alembic_config

    store.create_batch("bt_b", [new(n) for n in range(4)], {})
    c = store.claim_next()
    assert c is not None
    store.finish(c, Status.completed, termination="exited", verdict="passed")
    truth = store.count_batch_rows("bt_b")
    cfg = alembic_config(store.engine.url.render_as_string(hide_password=False))
    command.downgrade(cfg, "0010")
    command.upgrade(cfg, "head")
    assert store.batch_counts("bt_b") == truth
    with store.transaction() as s:  # and a drifted row is caught by the comparison
        s.execute(update(Batch).where(Batch.id == "bt_b").values(n_queued=0))
    assert store.batch_counts("bt_b") != truth


def test_the_migrations_build_the_schema_the_models_declare(store: Store) -> None:
    """Every table, column and index of ``crucible.store.tables`` is what the
    migrations made (a model changed without its migration would pass every other
    test on a fresh database and fail on an upgraded one)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from crucible.store.tables import Base

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_submission_is_admitted_in_its_own_transaction(store: Store) -> None:
    """``admit`` sees the queue's length inside the inserting transaction; when it
    refuses, nothing is inserted. The record comes from the insert itself."""
    seen: list[int] = []

    def admit(queued: int) -> None:
        seen.append(queued)
        if queued >= 2:
            raise Conflict("full")

    for n in range(2):
        row, created = store.create_evaluation(new(n, labels={"k": "v"}), admit=admit)
        assert created and (row.id, row.status, row.request) == (
            f"ev_{n}", "queued", {"code": f"print({n})"},
        )  # fmt: skip
        assert row.created_at == store.get(f"ev_{n}").created_at
    with pytest.raises(Conflict):
        store.create_evaluation(new(2), admit=admit)
    assert seen == [0, 1, 2] and store.queued_count() == 2
    with pytest.raises(NotFound):
        store.get("ev_2")


def test_sqlite_writers_take_the_write_lock_when_they_begin(store: Store) -> None:
    """A write transaction holds SQLite's write lock from its BEGIN (a deferred one
    could fail to upgrade without waiting), a read does not; and neither engine has
    an execution event listener (one makes SQLAlchemy dispatch events around every
    statement)."""
    if store.dialect != "sqlite":
        pytest.skip("SQLite's locking")
    import sqlite3

    path = store.engine.url.database
    assert path is not None

    def lock_is_free() -> bool:
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            other.close()

    with store.transaction() as s:
        s.connection()
        assert not lock_is_free()
    with store.reading() as s:
        s.connection()
        assert lock_is_free()
    assert lock_is_free()
    assert not store.engine._has_events and not store.write_engine._has_events
