"""The ``evaluations`` and ``labels`` tables: submitting and reading evaluations.

A :class:`~crucible.store.repo.Store` part (with the queue and batches); methods are
synchronous and records come back detached.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Row, Select, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crucible.core.errors import Conflict, NotFound
from crucible.core.lifecycle import Priority, Status
from crucible.store.db import Database, now
from crucible.store.paging import keyset_rows
from crucible.store.tables import Evaluation, Label

# What a public record is made of (crucible.services.records): the list reads these
# columns only, as plain rows.
RECORD_COLUMNS = (
    Evaluation.seq,
    Evaluation.id,
    Evaluation.status,
    Evaluation.batch_id,
    Evaluation.created_at,
    Evaluation.started_at,
    Evaluation.finished_at,
    Evaluation.attempts,
    Evaluation.error,
    Evaluation.worker_id,
    Evaluation.request,
    Evaluation.result,
    Evaluation.owner_key_id,
    Evaluation.flags,
)
# What finds a page of them (each filter's index ends in seq).
PAGE_KEYS: tuple[Any, ...] = (Evaluation.seq, Evaluation.id)


class RecordPage(NamedTuple):
    """A page of evaluations, newest first (see ``Evaluations.list_records``)."""

    ids: list[str]
    rows: dict[str, Row[Any]]  # by id: those loaded
    labels: dict[int, dict[str, str]]  # by seq, of the rows loaded
    next_cursor: int | None


@dataclass
class NewEvaluation:
    """An evaluation ready to be inserted (validated by ``crucible.services.submissions``)."""

    id: str
    priority: Priority
    language: str
    request: dict[str, Any]
    request_hash: str
    labels: dict[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    owner_key_id: str | None = None
    flags: str = ""  # ",name,name," (crucible.services.scan)
    environment: str = "host"  # its name; the digest is in ``request``


@dataclass(frozen=True)
class EvaluationFilter:
    status: Status | None = None
    language: str | None = None
    verdict: str | None = None
    termination: str | None = None
    label: tuple[str, str] | None = None
    batch_id: str | None = None
    owner_key_id: str | None = None  # only this key's (a researcher's view)
    flag: str | None = None


class Evaluations(Database):
    """Submission (quotas' counts, inserts with idempotency keys) and reads."""

    # -- submission -------------------------------------------------------------

    def queued_count(self) -> int:
        """How many evaluations are queued (admission control, at every submission:
        a prebuilt statement on a bare connection)."""
        with self.engine.connect() as c:
            return int(c.execute(_QUEUED).scalar() or 0)

    def owner_queued(self, owner_key_id: str) -> int:
        """How many of this key's evaluations are queued (the max_queued quota)."""
        with self.engine.connect() as c:
            return int(c.execute(_OWNER_QUEUED, {"owner": owner_key_id}).scalar() or 0)

    def environment_in_use(self, environment: str) -> int:
        """How many evaluations naming ``environment`` are queued or running."""
        with self.reading() as s:
            q = select(func.count()).where(
                Evaluation.environment == environment,
                Evaluation.status.in_([Status.queued.value, Status.running.value]),
            )
            return int(s.scalar(q) or 0)

    def owner_last_hour(self, owner_key_id: str) -> tuple[int, float | None]:
        """(evaluations this key submitted in the last hour, age in seconds of the
        oldest of them) for the per_hour quota."""
        since = now() - timedelta(hours=1)
        with self.reading() as s:
            q = select(func.count(), func.min(Evaluation.created_at)).where(
                Evaluation.owner_key_id == owner_key_id, Evaluation.created_at > since
            )
            count, oldest = s.execute(q).one()
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        age = (now() - oldest).total_seconds() if oldest is not None else None
        return int(count or 0), age

    def create_evaluation(
        self, new: NewEvaluation, *, admit: Callable[[int], None] | None = None
    ) -> tuple[Any, bool]:
        """Insert ``new``; returns (record, created): its RECORD_COLUMNS as the insert
        returned them (nothing is read back).

        ``admit(queued)``, if given, is called in the inserting transaction with how
        many evaluations are queued, and may raise (admission control): nothing is
        inserted then. With an idempotency key already used for the same request,
        returns the original (created False); for a different request raises Conflict.
        """
        try:
            with self.transaction() as s:
                if admit is not None:
                    admit(int(s.connection().execute(_QUEUED).scalar() or 0))
                created = now()
                row = s.connection().execute(_INSERT_ONE, _row_of(new, None, created)).one()
                _insert_labels(s, [row.seq], [new])
        except IntegrityError:
            if new.idempotency_key is None:
                raise
            with self.reading() as s:
                q = select(Evaluation).where(Evaluation.idempotency_key == new.idempotency_key)
                original = s.scalars(q).one_or_none()
            if original is None:
                raise
            if original.request_hash != new.request_hash:
                raise Conflict(
                    "Idempotency-Key already used for a different request body"
                ) from None
            return original, False
        return row, True

    def _insert(self, s: Session, items: Sequence[NewEvaluation], batch_id: str | None) -> None:
        created = now()
        rows = [_row_of(n, batch_id, created) for n in items]
        stmt = insert(Evaluation).returning(Evaluation.seq, sort_by_parameter_order=True)
        _insert_labels(s, list(s.scalars(stmt, rows)), items)

    # -- reading ----------------------------------------------------------------

    def get(self, evaluation_id: str) -> Evaluation:
        """The evaluation; raises NotFound."""
        with self.reading() as s:
            row = s.scalars(select(Evaluation).where(Evaluation.id == evaluation_id)).one_or_none()
        if row is None:
            raise NotFound(f"no evaluation {evaluation_id!r}")
        return row

    def get_with_labels(self, evaluation_id: str) -> tuple[Evaluation, dict[str, str]]:
        """The evaluation and its labels, in one read; raises NotFound."""
        with self.reading() as s:
            return with_labels(s, evaluation_id)

    def labels_of(self, seqs: Sequence[int]) -> dict[int, dict[str, str]]:
        with self.reading() as s:
            return _labels(s, seqs)

    def list_records(
        self,
        where: EvaluationFilter,
        *,
        cursor: int | None,
        limit: int,
        known: Callable[[str], bool] | None = None,
    ) -> RecordPage:
        """A page as the API renders it, newest first, in one read: its ids, the rows
        of RECORD_COLUMNS and labels of those the caller does not already hold
        (``known(id)``: a finished record it rendered before), and the next cursor.

        Plain rows, no ORM objects (loading them was the list's largest cost). With
        ``known``, the page is found by its ids alone first, and only the others'
        records are loaded: a page of known records is one index read.
        """
        with self.reading() as s:
            if known is None:
                q = _filtered(select(*RECORD_COLUMNS), where)
                rows, nxt = keyset_rows(s, q, Evaluation.seq, cursor=cursor, limit=limit)
                ids = [r.id for r in rows]
            else:
                q = _filtered(select(*PAGE_KEYS), where)
                head, nxt = keyset_rows(s, q, Evaluation.seq, cursor=cursor, limit=limit)
                ids = [r.id for r in head]
                missing = [r.seq for r in head if not known(r.id)]
                rows = []
                if missing:
                    got = select(*RECORD_COLUMNS).where(Evaluation.seq.in_(missing))
                    rows = list(s.execute(got))
            return RecordPage(ids, {r.id: r for r in rows}, _labels(s, [r.seq for r in rows]), nxt)

    def cancel_requested(self, evaluation_id: str) -> bool:
        with self.reading() as s:
            q = select(Evaluation.cancel_requested).where(Evaluation.id == evaluation_id)
            return bool(s.scalar(q))

    def evaluation_counts(self) -> dict[tuple[str, str | None, str], int]:
        """Evaluations by (status, termination, language), for the metrics."""
        with self.reading() as s:
            q = select(
                Evaluation.status, Evaluation.termination, Evaluation.language, func.count()
            ).group_by(Evaluation.status, Evaluation.termination, Evaluation.language)
            return {(st, te, la): int(n) for st, te, la, n in s.execute(q)}


_EVALUATIONS = Evaluation.__table__.c
_QUEUED = select(func.count()).where(_EVALUATIONS.status == Status.queued.value)
_OWNER_QUEUED = select(func.count()).where(
    _EVALUATIONS.owner_key_id == bindparam("owner"), _EVALUATIONS.status == Status.queued.value
)
_INSERT_ONE = insert(Evaluation).returning(*RECORD_COLUMNS)


def _row_of(n: NewEvaluation, batch_id: str | None, created: Any) -> dict[str, Any]:
    """The evaluations row of a new evaluation."""
    return {
        "id": n.id,
        "batch_id": batch_id,
        "status": Status.queued.value,
        "priority": n.priority.rank,
        "language": n.language,
        "request": n.request,
        "idempotency_key": n.idempotency_key,
        "request_hash": n.request_hash,
        "owner_key_id": n.owner_key_id,
        "flags": n.flags,
        "environment": n.environment,
        "created_at": created,
        "attempts": 0,
        "cancel_requested": False,
        "blobs": {},
    }


def _insert_labels(s: Session, seqs: Sequence[int], items: Sequence[NewEvaluation]) -> None:
    """The labels of new evaluations (``seqs``, in the order of ``items``)."""
    labels = [
        {"evaluation_seq": seq, "key": k, "value": v}
        for seq, n in zip(seqs, items, strict=True)
        for k, v in n.labels.items()
    ]
    if labels:
        s.execute(insert(Label), labels)


_EVALUATION_BY_ID = select(Evaluation.__table__).where(Evaluation.__table__.c.id == bindparam("id"))
_LABELS_OF_ONE = select(Label.__table__.c.key, Label.__table__.c.value).where(
    Label.__table__.c.evaluation_seq == bindparam("seq")
)


def with_labels(s: Session, evaluation_id: str) -> tuple[Evaluation, dict[str, str]]:
    """The evaluation (detached) and its labels, read in ``s``'s transaction; raises
    NotFound. Plain rows from prebuilt statements on the session's connection: the
    executor reads every finished evaluation so, and the ORM query was most of the
    finishing transaction's CPU."""
    c = s.connection()
    row = c.execute(_EVALUATION_BY_ID, {"id": evaluation_id}).one_or_none()
    if row is None:
        raise NotFound(f"no evaluation {evaluation_id!r}")
    return Evaluation(**row._mapping), labels_of(s, row.seq)


def labels_of(s: Session, seq: int) -> dict[str, str]:
    """One evaluation's labels (by its ``seq``), read in ``s``'s transaction."""
    return {key: value for key, value in s.connection().execute(_LABELS_OF_ONE, {"seq": seq})}


def _labels(s: Session, seqs: Sequence[int]) -> dict[int, dict[str, str]]:
    """The labels of these evaluations, by seq."""
    out: dict[int, dict[str, str]] = collections.defaultdict(dict)
    if seqs:
        got = select(Label.evaluation_seq, Label.key, Label.value)
        for seq, key, value in s.execute(got.where(Label.evaluation_seq.in_(seqs))):
            out[seq][key] = value
    return out


def _filtered(q: Select[Any], where: EvaluationFilter) -> Select[Any]:
    if where.status is not None:
        q = q.where(Evaluation.status == where.status.value)
    if where.language is not None:
        q = q.where(Evaluation.language == where.language)
    if where.verdict is not None:
        q = q.where(Evaluation.verdict == where.verdict)
    if where.termination is not None:
        q = q.where(Evaluation.termination == where.termination)
    if where.batch_id is not None:
        q = q.where(Evaluation.batch_id == where.batch_id)
    if where.owner_key_id is not None:
        q = q.where(Evaluation.owner_key_id == where.owner_key_id)
    if where.flag is not None:
        q = q.where(Evaluation.flags.contains(f",{where.flag},", autoescape=True))
    if where.label is not None:
        key, value = where.label
        # IN, not a correlated EXISTS: the planner can start from the label's
        # index range instead of probing it for every evaluation, newest first.
        labelled = select(Label.evaluation_seq).where(Label.key == key, Label.value == value)
        q = q.where(Evaluation.seq.in_(labelled))
    return q
