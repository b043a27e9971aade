"""Keys, the fair-share claim and the audit chain, on SQLite and on PostgreSQL; the
static scan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import bindparam, event, text
from test_store import new

from crucible.core.config import Settings
from crucible.core.lifecycle import Priority, Status
from crucible.services.access import Access, VerifiedKeys
from crucible.services.scan import decode, encode, scan_python, scan_request, scan_text
from crucible.store import Store
from crucible.store.audit import AuditEvent, AuditLog
from crucible.store.keys import KeyRecord, KeyStore, hash_key


@pytest.fixture
def store(database_url: str | None, tmp_path: Path) -> Iterator[Store]:
    s = Store(Settings(data_dir=tmp_path, database_url=database_url).sqlalchemy_url)
    s.migrate()
    yield s
    s.dispose()


def test_keys_store_only_a_hash(store: Store) -> None:
    keys = KeyStore(store)
    record, secret = keys.create("alice", "researcher")
    assert secret.startswith("crk_") and len(secret) >= 40
    assert record.prefix == secret[:10] and record.role == "researcher"
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT key_hash FROM api_keys")).scalar_one()
    assert stored == hash_key(secret) and secret not in stored
    assert keys.authenticate(secret) == record
    assert keys.authenticate(secret + "x") is None
    assert keys.authenticate("not-a-key") is None
    keys.revoke(record.id)
    assert keys.authenticate(secret) is None
    # ensure() brings a configured bootstrap key back, as an admin.
    again = keys.ensure(secret)
    assert again.id == record.id and again.admin and keys.authenticate(secret) is not None
    assert keys.count_active() == 1


class CountingKeys(KeyStore):
    """A KeyStore that counts its reads and writes; ``during_read`` runs inside a read."""

    reads = touches = 0
    during_read: object = None

    def authenticate(self, secret: str) -> KeyRecord | None:
        self.reads += 1
        if callable(self.during_read):
            self.during_read()
        return super().authenticate(secret)

    def touch(self, key_id: str) -> None:
        self.touches += 1
        super().touch(key_id)


async def test_verified_keys_bound_revocation(store: Store, tmp_path: Path) -> None:
    """A verified key is remembered for ttl_s, never longer; a revoke by another
    process applies within it, one through Access at once."""
    clock = [100.0]
    keys = CountingKeys(store)
    verified = VerifiedKeys(keys, ttl_s=1.0, clock=lambda: clock[0])
    record, secret = keys.create("alice", "researcher")
    first = await verified.authenticate(secret)
    assert first is not None and first.id == record.id and (keys.reads, keys.touches) == (1, 1)
    for _ in range(5):  # remembered: no read, and last_used_at is not written again
        assert await verified.authenticate(secret) == first
    assert (keys.reads, keys.touches) == (1, 1)
    assert await verified.authenticate("crk_unknown") is None and keys.reads == 2

    keys.revoke(record.id)  # as `crucible keys revoke` does, on the database
    clock[0] += 0.99
    assert await verified.authenticate(secret) is not None  # within the bound
    clock[0] += 0.02
    assert await verified.authenticate(secret) is None  # past it: read, and refused
    assert await verified.authenticate(secret) is None  # revoked ones are not remembered
    assert keys.reads == 4

    # Through this process's Access: the next request is refused.
    access = Access(store, Settings(data_dir=tmp_path))
    access.verified = VerifiedKeys(keys, ttl_s=60.0, clock=lambda: clock[0])
    bob, bob_secret = keys.create("bob", "researcher")
    assert await access.authenticate(bob_secret) is not None
    assert (await access.set_quotas(bob.id, {"per_hour": 7})).per_hour == 7
    again = await access.authenticate(bob_secret)
    assert again is not None and again.per_hour == 7  # quotas too apply at once
    await access.revoke(bob.id)
    assert await access.authenticate(bob_secret) is None


async def test_verified_keys_forget_during_a_read(store: Store) -> None:
    """A read under way when forget() runs is used but not remembered."""
    keys = CountingKeys(store)
    verified = VerifiedKeys(keys, ttl_s=60.0)
    _, secret = keys.create("carol", "researcher")
    keys.during_read = verified.forget
    assert await verified.authenticate(secret) is not None
    keys.during_read = None
    assert await verified.authenticate(secret) is not None and keys.reads == 2
    assert await verified.authenticate(secret) is not None and keys.reads == 2
    off = VerifiedKeys(keys, ttl_s=0)  # 0: every request reads
    for _ in range(3):
        assert await off.authenticate(secret) is not None
    assert keys.reads == 5


def test_fair_share_claim(store: Store) -> None:
    """A's five were queued first; B's normal one is claimed third, not seventh."""
    for n in range(5):
        store.create_evaluation(new(n, owner_key_id="key_a"))
    store.create_evaluation(new(10, owner_key_id="key_b"))
    store.create_evaluation(new(11, Priority.high, owner_key_id="key_b"))
    order = []
    while (claim := store.claim_next()) is not None:
        order.append(claim.id)
    # All at 0 running: priority (B's high). Then A (0 running) before B (1); then
    # both at 1, both normal: B, served longer ago; then A's rest.
    assert order[:4] == ["ev_11", "ev_0", "ev_10", "ev_1"], order
    assert sorted(order) == sorted(f"ev_{n}" for n in (0, 1, 2, 3, 4, 10, 11))


def test_fair_share_one_slot_owners_take_turns(store: Store) -> None:
    """One slot, freed after each run: every owner has 0 running at every claim, so the
    running count cannot decide. Owners take turns, least recently served first (the
    oldest batch used to win every turn: B's work waited behind all of A's)."""
    for n in range(3):
        store.create_evaluation(new(n, owner_key_id="key_a"))
    first = store.claim_next()
    assert first is not None and first.id == "ev_0"
    store.finish(first, Status.completed, result={})
    for n in range(10, 12):
        store.create_evaluation(new(n, owner_key_id="key_b"))
    store.create_evaluation(new(20))  # no key: an owner of its own
    order = []
    while (claim := store.claim_next()) is not None:
        order.append(claim.id)
        store.finish(claim, Status.completed, result={})
    assert order == ["ev_10", "ev_20", "ev_1", "ev_11", "ev_2"], order


def test_fair_share_counts_the_running_of_evaluations_without_a_key(store: Store) -> None:
    """Evaluations without a key are an owner like any other: with one of theirs
    running, a key with none running goes first (their running count was read as 0)."""
    store.create_evaluation(new(0))
    store.create_evaluation(new(1))
    first = store.claim_next()
    assert first is not None and first.id == "ev_0"
    store.create_evaluation(new(2, owner_key_id="key_a"))
    second = store.claim_next()
    assert second is not None and second.id == "ev_2"


def test_the_claim_skips_rows_another_claimer_holds(store: Store) -> None:
    """PostgreSQL: a claimer that holds the head of the queue locked (its claim not yet
    committed) is skipped, not waited for; with every queued row of the picked owner
    locked, the claim falls back to ordering the whole queue and takes another
    owner's. (SQLite serialises writers: nothing to skip.)"""
    if store.dialect != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    store.create_evaluation(new(0, owner_key_id="key_a"))
    store.create_evaluation(new(1, owner_key_id="key_a"))
    store.create_evaluation(new(2, owner_key_id="key_b"))
    lock = "SELECT id FROM evaluations WHERE id IN :ids FOR UPDATE"
    with store.engine.connect() as other:
        other.execute(text(lock).bindparams(bindparam("ids", expanding=True)), {"ids": ["ev_0"]})
        claim = store.claim_next()
        assert claim is not None and claim.id == "ev_1"  # key_a's next, not ev_0
        other.rollback()
        other.execute(text(lock).bindparams(bindparam("ids", expanding=True)), {"ids": ["ev_0"]})
        # key_a has 1 running now: key_b is picked, and its only row is free.
        claim = store.claim_next()
        assert claim is not None and claim.id == "ev_2"
        other.rollback()
    store.create_evaluation(new(3, owner_key_id="key_c"))
    with store.engine.connect() as other:
        # key_c (0 running) is picked each time, but its only row is held.
        other.execute(text(lock).bindparams(bindparam("ids", expanding=True)), {"ids": ["ev_3"]})
        claim = store.claim_next()
        assert claim is not None and claim.id == "ev_0"  # the whole queue, ordered
        other.rollback()


def test_a_claim_costs_the_same_behind_a_long_queue(store: Store) -> None:
    """A claim probes indexes per owner with queued work: SQLite runs as many virtual
    machine instructions for it behind 3,000 queued evaluations as behind 30 (each
    claim sorted the whole queue before: 9 ms of CPU at 10,000 queued). Counted by a
    progress handler called at every instruction, which no load changes."""
    if store.dialect != "sqlite":
        pytest.skip("SQLite's instruction count (PostgreSQL's plan follows its statistics)")
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    store.write_engine.dispose()  # the claims write
    event.listen(
        store.write_engine, "connect", lambda conn, _rec: conn.set_progress_handler(count, 1)
    )

    def instructions_of_a_claim() -> int:
        steps[0] = 0
        assert store.claim_next() is not None
        return steps[0]

    for n in range(30):
        store.create_evaluation(new(n, owner_key_id=f"key_{n % 3}" if n % 4 else None))
    store.claim_next()  # the pool's connection opened, its pragmas run
    short = instructions_of_a_claim()
    items = [new(n, owner_key_id=f"key_{n % 3}" if n % 4 else None) for n in range(100, 3100)]
    store.create_batch("b_long", items, {})
    long = instructions_of_a_claim()
    assert long < short * 1.5, (short, long)


def test_claim_respects_default_max_running(store: Store) -> None:
    store.default_max_running = 1
    for n in range(3):
        store.create_evaluation(new(n, owner_key_id="key_a"))
    assert store.claim_next() is not None
    assert store.claim_next() is None


def test_audit_chain_detects_edits_and_deletions(store: Store) -> None:
    log = AuditLog(store)
    for n in range(4):
        log.append(
            AuditEvent(
                action="submit_evaluation",
                outcome=202,
                actor_key_id="key_a",
                actor_name="alice",
                target=f"ev_{n}",
                source="127.0.0.1",
                request_id=f"r{n}",
                detail={"n": n, "text": "é"},
            )
        )
    good = log.verify()
    assert good.ok and good.checked == 4
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET outcome = 200 WHERE seq = 2"))
    assert log.verify().broken_seq == 2
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET outcome = 202 WHERE seq = 2"))
    assert log.verify().ok  # put back exactly: intact again
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq = 2"))
    broken = log.verify()
    assert broken.broken_seq == 3 and broken.checked == 1


def test_scan() -> None:
    assert scan_python("import subprocess\nsubprocess.run(['ls'])") == {"process"}
    assert scan_python("from os import system\nsystem('id')") == {"process"}
    assert scan_python("import urllib.request") == {"network"}
    assert scan_python("import ctypes") == {"ffi"}
    assert scan_python("exec('1')\n__import__('os')") == {"dynamic_code"}
    assert scan_python("open('/etc/passwd', 'w')") == {"file_write"}
    assert scan_python("open('/etc/passwd')") == set()  # reading is not writing
    assert scan_python("open('/workspace/out.txt', 'w')") == set()
    assert scan_python("from pathlib import Path\nPath('/root/x').write_text('')") == {"file_write"}
    assert scan_python("print('import socket')  # eval(") == set()  # strings, comments
    assert scan_python("def broken(:") == set()
    assert scan_text("require('child_process').exec('id')") == {"process"}
    assert scan_text("bash -c 'echo > /dev/tcp/1.2.3.4/80'") >= {"network"}
    assert scan_text("echo hi > /workspace/x") == set()
    assert scan_text("echo hi > /etc/x") == {"file_write"}
    assert decode(encode({"network", "ffi"})) == ["ffi", "network"] and encode(set()) == ""
    request = {"language": "python", "code": "print(1)", "test_code": "import socket"}
    assert scan_request(request) == ",network,"


def test_the_finish_claims_the_successor_after_freeing_the_quota(store: Store) -> None:
    """finish_and_claim stores the run's end and claims the fair next in one
    transaction, after the finish: an owner at its max_running gets its next at once.
    A stale claim stores nothing and still claims."""
    store.default_max_running = 1
    for n in range(3):
        store.create_evaluation(new(n, owner_key_id="key_a"))
    first = store.claim_next()
    assert first is not None and store.claim_next() is None  # at its quota
    stored, successor = store.finish_and_claim(first, Status.completed, result={"ok": 1})
    assert stored is not None and stored[0].status == "completed"
    assert successor is not None and successor.id == "ev_1"
    stale, after = store.finish_and_claim(first, Status.completed, result={})
    assert stale is None and after is None  # ev_1 runs: key_a is at its quota again
    assert store.get("ev_0").result == {"ok": 1}
