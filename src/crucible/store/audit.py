"""The audit log: append-only, hash-chained.

Each entry stores ``prev_hash`` (the previous entry's ``hash``; 64 zeros for the first)
and ``hash = sha256(prev_hash + canonical JSON of its own fields, seq included)``.
Editing an entry breaks its own hash; deleting one breaks the next entry's
``prev_hash``; re-numbering breaks the hashes (seq is hashed). Only the removal of the
newest entries leaves a valid (shorter) chain: :meth:`AuditLog.verify` returns the head
hash so it can be recorded elsewhere and compared later (``--expect-head``).

Appends are serialised so the chain stays linear: SQLite writers already are
(``BEGIN IMMEDIATE``), PostgreSQL takes a transaction-scoped advisory lock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, or_, select, text

from crucible.store.paging import keyset_page
from crucible.store.repo import Store, now
from crucible.store.tables import AuditEntry

GENESIS = "0" * 64
_TABLE = cast(Table, AuditEntry.__table__)
# Built once: an append per state-changing request.
_LAST = select(_TABLE.c.seq, _TABLE.c.hash).order_by(_TABLE.c.seq.desc()).limit(1)
_INSERT = insert(_TABLE)
_PG_LOCK = 0x61756469  # "audi": the advisory lock id of the chain's tail


@dataclass(frozen=True)
class AuditEvent:
    """What to record; ``at`` and the chain are filled in by :meth:`AuditLog.append`."""

    action: str
    outcome: int
    actor_key_id: str | None = None
    actor_name: str | None = None
    target: str | None = None
    source: str | None = None
    request_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None  # key id or key name
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class Verification:
    checked: int
    head: str
    broken_seq: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


def canonical(row: AuditEntry) -> bytes:
    """The bytes an entry's hash covers (everything but the two hashes)."""
    content = {
        "seq": row.seq,
        "at": row.at.astimezone(UTC).isoformat(),
        "actor_key_id": row.actor_key_id,
        "actor_name": row.actor_name,
        "action": row.action,
        "target": row.target,
        "source": row.source,
        "request_id": row.request_id,
        "outcome": row.outcome,
        "detail": row.detail,
    }
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def entry_hash(prev_hash: str, row: AuditEntry) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical(row)).hexdigest()


class AuditLog:
    """The ``audit_log`` table, on the store's engine."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def append(self, event: AuditEvent) -> AuditEntry:
        with self.store.transaction() as s:
            if self.store.dialect == "postgresql":
                s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
            last = s.connection().execute(_LAST).one_or_none()
            seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS)
            row = AuditEntry(
                seq=seq,
                at=now(),  # microseconds survive both backends, so the hash is stable
                actor_key_id=event.actor_key_id,
                actor_name=event.actor_name,
                action=event.action,
                target=(event.target or None) and event.target[:200],
                source=event.source,
                request_id=event.request_id,
                outcome=event.outcome,
                detail=event.detail,
                prev_hash=prev,
                hash="",
            )
            row.hash = entry_hash(prev, row)
            # A Core INSERT: one per state-changing request, and the ORM's unit of
            # work costs more than the statement.
            values = {c.key: getattr(row, c.key) for c in _TABLE.c}
            s.connection().execute(_INSERT, values)
        return row

    def list(
        self, where: AuditFilter, *, cursor: int | None, limit: int
    ) -> tuple[list[AuditEntry], int | None]:
        """Newest first; returns (page, cursor of the next page or None)."""
        q = select(AuditEntry)
        if where.actor is not None:
            q = q.where(
                or_(AuditEntry.actor_key_id == where.actor, AuditEntry.actor_name == where.actor)
            )
        if where.action is not None:
            q = q.where(AuditEntry.action == where.action)
        if where.target is not None:
            q = q.where(AuditEntry.target == where.target)
        if where.since is not None:
            q = q.where(AuditEntry.at >= where.since)
        if where.until is not None:
            q = q.where(AuditEntry.at < where.until)
        with self.store.reading() as s:
            return keyset_page(s, q, AuditEntry.seq, cursor=cursor, limit=limit)

    def _all(self, batch: int = 1000) -> Iterator[AuditEntry]:
        after = 0
        while True:
            with self.store.reading() as s:
                q = (
                    select(AuditEntry)
                    .where(AuditEntry.seq > after)
                    .order_by(AuditEntry.seq)
                    .limit(batch)
                )
                rows = list(s.scalars(q))
            if not rows:
                return
            yield from rows
            after = rows[-1].seq

    def verify(self, *, expect_head: str | None = None) -> Verification:
        """Walk the chain from the start; the first entry that does not fit is named.

        ``expect_head``: a head hash recorded earlier, which must still be in the chain
        (catches the removal of the newest entries, which a chain alone cannot).
        """
        prev, expected_seq, checked = GENESIS, 1, 0
        seen_head = expect_head is None
        for row in self._all():
            if row.seq != expected_seq:
                return Verification(
                    checked, prev, row.seq, f"entry {expected_seq} is missing (next is {row.seq})"
                )
            if row.prev_hash != prev:
                return Verification(
                    checked, prev, row.seq, "prev_hash does not match the entry before it"
                )
            if entry_hash(prev, row) != row.hash:
                return Verification(checked, prev, row.seq, "content does not match its hash")
            prev, expected_seq, checked = row.hash, row.seq + 1, checked + 1
            seen_head = seen_head or row.hash == expect_head
        if not seen_head:
            return Verification(
                checked, prev, expected_seq, "the expected head is gone: newest entries removed"
            )
        return Verification(checked, prev)
