"""Repository functions: the only code that reads or writes the tables.

The database is the single source of truth for an evaluation's state and the queue
itself. Methods are synchronous (call them from async code through a thread);
records come back detached and safe to read anywhere.

Claims are fenced: a claim is ``UPDATE … SET status='running', attempts=attempts+1
WHERE … status='queued'``, and the attempt number it returns is the fence — finishing
or re-queuing requires ``status='running' AND attempts=<that number>``, so a stale
executor (one whose run was recovered and re-claimed meanwhile) cannot overwrite a
newer result, and two dispatchers can never both run one evaluation.

Each claim also records the claiming process (``worker_id``) and opens a row in the
attempt log; an evaluation that ends in ``error`` gets a dead letter carrying that log.
Workers, recovery, publishing and dead letters live in :mod:`crucible.store.cluster`.
"""

from __future__ import annotations

import collections
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, exists, func, insert, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from crucible.core.errors import Conflict, NotFound
from crucible.core.lifecycle import TERMINAL, Priority, Status, check_transition
from crucible.store.db import WRITE_OPTION, make_engine, migrate
from crucible.store.paging import keyset_page
from crucible.store.tables import (
    ApiKey,
    Attempt,
    Batch,
    DeadLetter,
    Evaluation,
    Label,
    OwnerTurn,
)


def now() -> datetime:
    return datetime.now(UTC)


def _owner(key_id: Any) -> Any:
    """The owner as :class:`OwnerTurn` names it: evaluations without a key share ""."""
    return func.coalesce(key_id, "")


def _due() -> Any:
    """Not waiting out a retry's back-off."""
    return or_(Evaluation.not_before.is_(None), Evaluation.not_before <= now())


def end_attempt(s: Session, claim: Claim, outcome: str, error: str | None) -> None:
    s.execute(
        update(Attempt)
        .where(Attempt.evaluation_id == claim.id, Attempt.attempt == claim.attempt)
        .values(finished_at=now(), outcome=outcome, error=error)
    )


def dead_letter(s: Session, evaluation_id: str, reason: str) -> None:
    """Record that ``evaluation_id`` ended in error, with its whole attempt log."""
    q = select(Attempt).where(Attempt.evaluation_id == evaluation_id).order_by(Attempt.attempt)
    attempts = [
        {
            "attempt": a.attempt,
            "worker_id": a.worker_id,
            "started_at": a.started_at.isoformat(),
            "finished_at": a.finished_at.isoformat() if a.finished_at else None,
            "outcome": a.outcome,
            "error": a.error,
        }
        for a in s.scalars(q)
    ]
    s.execute(
        insert(DeadLetter).values(
            id=f"dl_{secrets.token_hex(8)}",
            evaluation_id=evaluation_id,
            created_at=now(),
            reason=reason,
            attempts=attempts,
        )
    )


@dataclass(frozen=True)
class Claim:
    """The right to run one attempt of one evaluation."""

    id: str
    attempt: int
    # The evaluation's request, when the claim read it (saves the executor a read).
    request: dict[str, Any] | None = field(default=None, compare=False)


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


@dataclass(frozen=True)
class BatchCounts:
    total: int
    by_status: dict[str, int]
    by_termination: dict[str, int]
    by_verdict: dict[str, int]


class Store:
    """Evaluations, batches and the queue, on SQLite or PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = make_engine(url)
        # Per-key max_running when a key has no override (0: unlimited); see claim_next.
        self.default_max_running = 0
        self.dialect = self.engine.dialect.name
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(
            self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )

    def migrate(self) -> None:
        migrate(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    def ping(self) -> None:
        """Raise when the database is unusable."""
        with self._read() as s:
            s.execute(text("SELECT 1"))

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._write() as s, s.begin():
            yield s

    # The store's public unit of work, for its other modules (cluster, keys, audit,
    # sandboxes): they never reach for the private _tx/_read.
    def transaction(self) -> AbstractContextManager[Session]:
        """A write transaction: committed on exit, rolled back on an exception."""
        return self._tx()

    def reading(self) -> Session:
        """A read-only session (use as a context manager); records stay readable."""
        return self._read()

    # -- submission -------------------------------------------------------------

    def queued_count(self) -> int:
        with self._read() as s:
            q = select(func.count()).where(Evaluation.status == Status.queued)
            return int(s.scalar(q) or 0)

    def owner_queued(self, owner_key_id: str) -> int:
        """How many of this key's evaluations are queued (the max_queued quota)."""
        with self._read() as s:
            q = select(func.count()).where(
                Evaluation.owner_key_id == owner_key_id, Evaluation.status == Status.queued
            )
            return int(s.scalar(q) or 0)

    def environment_in_use(self, environment: str) -> int:
        """How many evaluations naming ``environment`` are queued or running."""
        with self._read() as s:
            q = select(func.count()).where(
                Evaluation.environment == environment,
                Evaluation.status.in_([Status.queued.value, Status.running.value]),
            )
            return int(s.scalar(q) or 0)

    def owner_last_hour(self, owner_key_id: str) -> tuple[int, float | None]:
        """(evaluations this key submitted in the last hour, age in seconds of the
        oldest of them) for the per_hour quota."""
        since = now() - timedelta(hours=1)
        with self._read() as s:
            q = select(func.count(), func.min(Evaluation.created_at)).where(
                Evaluation.owner_key_id == owner_key_id, Evaluation.created_at > since
            )
            count, oldest = s.execute(q).one()
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        age = (now() - oldest).total_seconds() if oldest is not None else None
        return int(count or 0), age

    def create_evaluation(self, new: NewEvaluation) -> tuple[Evaluation, bool]:
        """Insert ``new``; returns (record, created).

        With an idempotency key already used for the same request, returns the
        original (created False); for a different request raises Conflict.
        """
        try:
            with self._tx() as s:
                self._insert(s, [new], batch_id=None)
        except IntegrityError:
            if new.idempotency_key is None:
                raise
            with self._read() as s:
                q = select(Evaluation).where(Evaluation.idempotency_key == new.idempotency_key)
                original = s.scalars(q).one_or_none()
            if original is None:
                raise
            if original.request_hash != new.request_hash:
                raise Conflict(
                    "Idempotency-Key already used for a different request body"
                ) from None
            return original, False
        return self.get(new.id), True

    def create_batch(
        self,
        batch_id: str,
        items: Sequence[NewEvaluation],
        labels: dict[str, str],
        owner_key_id: str | None = None,
        *,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
    ) -> tuple[Batch, bool]:
        """Insert a batch and all its evaluations in one transaction; returns (batch,
        created). With an idempotency key already used for the same body, returns the
        original batch (created False, nothing inserted); for another body, Conflict."""
        try:
            with self._tx() as s:
                batch = Batch(
                    id=batch_id,
                    created_at=now(),
                    count=len(items),
                    labels=labels,
                    cancel_requested=False,
                    owner_key_id=owner_key_id,
                    idempotency_key=idempotency_key,
                    request_hash=request_hash,
                )
                s.add(batch)
                s.flush()
                self._insert(s, items, batch_id=batch_id)
        except IntegrityError:
            if idempotency_key is None:
                raise
            with self._read() as s:
                q = select(Batch).where(Batch.idempotency_key == idempotency_key)
                original = s.scalars(q).one_or_none()
            if original is None:
                raise
            if original.request_hash != request_hash:
                raise Conflict("Idempotency-Key already used for a different batch") from None
            return original, False
        return batch, True

    def _insert(self, s: Session, items: Sequence[NewEvaluation], batch_id: str | None) -> None:
        created = now()
        rows = [
            {
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
            for n in items
        ]
        stmt = insert(Evaluation).returning(Evaluation.seq, sort_by_parameter_order=True)
        seqs = list(s.scalars(stmt, rows))
        labels = [
            {"evaluation_seq": seq, "key": k, "value": v}
            for seq, n in zip(seqs, items, strict=True)
            for k, v in n.labels.items()
        ]
        if labels:
            s.execute(insert(Label), labels)

    # -- reading ----------------------------------------------------------------

    def get(self, evaluation_id: str) -> Evaluation:
        """The evaluation; raises NotFound."""
        with self._read() as s:
            row = s.scalars(select(Evaluation).where(Evaluation.id == evaluation_id)).one_or_none()
        if row is None:
            raise NotFound(f"no evaluation {evaluation_id!r}")
        return row

    def get_with_labels(self, evaluation_id: str) -> tuple[Evaluation, dict[str, str]]:
        """The evaluation and its labels, in one read; raises NotFound."""
        with self._read() as s:
            row = s.scalars(select(Evaluation).where(Evaluation.id == evaluation_id)).one_or_none()
            if row is None:
                raise NotFound(f"no evaluation {evaluation_id!r}")
            labels = s.scalars(select(Label).where(Label.evaluation_seq == row.seq))
            return row, {label.key: label.value for label in labels}

    def labels_of(self, seqs: Sequence[int]) -> dict[int, dict[str, str]]:
        out: dict[int, dict[str, str]] = collections.defaultdict(dict)
        if not seqs:
            return out
        with self._read() as s:
            for label in s.scalars(select(Label).where(Label.evaluation_seq.in_(seqs))):
                out[label.evaluation_seq][label.key] = label.value
        return out

    def list_evaluations(
        self, where: EvaluationFilter, *, cursor: int | None, limit: int
    ) -> tuple[list[Evaluation], int | None]:
        """Newest first; returns (page, cursor of the next page or None)."""
        q = select(Evaluation)
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
            q = q.where(
                exists().where(
                    Label.evaluation_seq == Evaluation.seq, Label.key == key, Label.value == value
                )
            )
        with self._read() as s:
            return keyset_page(s, q, Evaluation.seq, cursor=cursor, limit=limit)

    def cancel_requested(self, evaluation_id: str) -> bool:
        with self._read() as s:
            q = select(Evaluation.cancel_requested).where(Evaluation.id == evaluation_id)
            return bool(s.scalar(q))

    def evaluation_counts(self) -> dict[tuple[str, str | None, str], int]:
        """Evaluations by (status, termination, language), for the metrics."""
        with self._read() as s:
            q = select(
                Evaluation.status, Evaluation.termination, Evaluation.language, func.count()
            ).group_by(Evaluation.status, Evaluation.termination, Evaluation.language)
            return {(st, te, la): int(n) for st, te, la, n in s.execute(q)}

    def queue_stats(self) -> tuple[dict[str, int], int]:
        """(queued count by priority name, running count)."""
        names = {p.rank: p.value for p in Priority}
        depth = dict.fromkeys(names.values(), 0)
        with self._read() as s:
            q = (
                select(Evaluation.priority, func.count())
                .where(Evaluation.status == Status.queued)
                .group_by(Evaluation.priority)
            )
            for rank, count in s.execute(q):
                depth[names.get(rank, str(rank))] = int(count)
            running = s.scalar(select(func.count()).where(Evaluation.status == Status.running))
        return depth, int(running or 0)

    # -- the queue --------------------------------------------------------------

    def claim(self, evaluation_id: str, *, worker_id: str | None = None) -> Claim | None:
        """Claim one queued evaluation; None when it is not (or no longer) queued, or
        its retry back-off has not passed yet."""
        return self._claim(Evaluation.id == evaluation_id, worker_id)

    def claim_next(self, *, worker_id: str | None = None) -> Claim | None:
        """Claim the next queued evaluation, sharing capacity fairly between keys:
        from the owner with the fewest running evaluations, then highest priority,
        then the owner served least recently (with one slot freed at a time every
        owner has 0 running, and the oldest batch would otherwise win every turn),
        then oldest. An owner at its max_running quota (per key, else
        ``default_max_running``; 0 is unlimited) is skipped."""
        running = (
            select(Evaluation.owner_key_id.label("owner"), func.count().label("n"))
            .where(Evaluation.status == Status.running)
            .group_by(Evaluation.owner_key_id)
            .subquery()
        )
        n_running = func.coalesce(running.c.n, 0)
        cap = func.coalesce(ApiKey.max_running, self.default_max_running)
        nxt = (
            select(Evaluation.seq)
            .outerjoin(running, running.c.owner == Evaluation.owner_key_id)
            .outerjoin(ApiKey, ApiKey.id == Evaluation.owner_key_id)
            .outerjoin(OwnerTurn, OwnerTurn.owner == _owner(Evaluation.owner_key_id))
            .where(Evaluation.status == Status.queued, _due(), or_(cap <= 0, n_running < cap))
            .order_by(
                n_running,
                Evaluation.priority,
                OwnerTurn.served_at.asc().nulls_first(),
                Evaluation.seq,
            )
            .limit(1)
            # PostgreSQL: concurrent claimers skip each other's row instead of
            # queueing behind it. SQLite serialises writers (BEGIN IMMEDIATE).
            .with_for_update(skip_locked=True, of=Evaluation)
            .scalar_subquery()
        )
        return self._claim(Evaluation.seq == nxt, worker_id)

    def _claim(self, which: Any, worker_id: str | None) -> Claim | None:
        # Not through _move: the evaluation is picked by the UPDATE itself.
        check_transition(Status.queued, Status.running)
        with self._tx() as s:
            # The clock is read once the transaction holds the write lock (SQLite:
            # BEGIN IMMEDIATE, emitted by connection()): read before, a claim that
            # waited behind the submission's own insert would start before it was
            # created (a negative queue wait).
            s.connection()
            started = now()
            stmt = (
                update(Evaluation)
                .where(which, Evaluation.status == Status.queued, _due())
                .values(
                    status=Status.running.value,
                    attempts=Evaluation.attempts + 1,
                    started_at=started,
                    worker_id=worker_id,
                    not_before=None,
                )
                .returning(
                    Evaluation.id, Evaluation.attempts, Evaluation.request, Evaluation.owner_key_id
                )
            )
            row = s.execute(stmt).one_or_none()
            if row is None:
                return None
            s.execute(
                insert(Attempt).values(
                    evaluation_id=row[0], attempt=row[1], worker_id=worker_id, started_at=started
                )
            )
            self._took_turn(s, row[3] or "", started)
        return Claim(row[0], row[1], row[2])

    def _took_turn(self, s: Session, owner: str, at: datetime) -> None:
        upsert = (pg_insert if self.dialect == "postgresql" else sqlite_insert)(OwnerTurn)
        s.execute(
            upsert.values(owner=owner, served_at=at).on_conflict_do_update(
                index_elements=["owner"], set_={"served_at": at}
            )
        )

    def _move(
        self,
        s: Session,
        evaluation_id: str,
        source: Status,
        target: Status,
        values: dict[str, Any],
        *,
        attempt: int | None = None,
    ) -> bool:
        """``source`` → ``target`` if the evaluation is (still) in ``source``.

        With ``attempt``, only for that claim (the fence). Returns whether it moved.
        """
        check_transition(source, target)
        stmt = (
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status == source.value)
            .values(status=target.value, **values)
        )
        if attempt is not None:
            stmt = stmt.where(Evaluation.attempts == attempt)
        return bool(s.execute(stmt).rowcount)  # type: ignore[attr-defined]

    def finish(
        self,
        claim: Claim,
        status: Status,
        *,
        result: dict[str, Any] | None = None,
        termination: str | None = None,
        verdict: str | None = None,
        blobs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """Record the end of ``claim``'s run; False when the claim is stale (fenced out)."""
        if status not in TERMINAL:
            raise ValueError(f"{status} is not a final status")
        values = {
            "finished_at": now(),
            "result": result,
            "termination": termination,
            "verdict": verdict,
            "blobs": blobs or {},
            "error": error,
        }
        with self._tx() as s:
            if not self._move(s, claim.id, Status.running, status, values, attempt=claim.attempt):
                return False
            end_attempt(s, claim, status.value, error)
            if status is Status.error:
                dead_letter(s, claim.id, error or "error")
            return True

    def requeue(self, claim: Claim, error: str, *, delay_s: float = 0.0) -> bool:
        """Put ``claim``'s evaluation back in the queue after a platform fault; it is
        not claimed again before ``delay_s`` (the retry's back-off) has passed."""
        with self._tx() as s:
            return self._requeue(s, claim, error, delay_s)

    def _requeue(self, s: Session, claim: Claim, error: str, delay_s: float) -> bool:
        values = {
            "error": error,
            "started_at": None,
            "worker_id": None,
            "not_before": now() + timedelta(seconds=delay_s) if delay_s > 0 else None,
        }
        moved = self._move(
            s, claim.id, Status.running, Status.queued, values, attempt=claim.attempt
        )
        if moved:
            end_attempt(s, claim, "requeued", error)
        return moved

    def _fail(self, s: Session, claim: Claim, error: str) -> bool:
        values = {"finished_at": now(), "error": error, "result": None, "blobs": {}}
        moved = self._move(s, claim.id, Status.running, Status.error, values, attempt=claim.attempt)
        if moved:
            end_attempt(s, claim, Status.error.value, error)
            dead_letter(s, claim.id, error)
        return moved

    def recover_claims(
        self,
        s: Session,
        claims: Sequence[Claim],
        reason: str,
        *,
        max_attempts: int,
        backoff: Callable[[int], float],
    ) -> tuple[int, int]:
        """Re-queue (after ``backoff(attempt)`` s) or fail each interrupted claim, fenced."""
        requeued = failed = 0
        for claim in claims:
            if claim.attempt >= max_attempts:
                failed += self._fail(s, claim, f"{reason}; {claim.attempt} attempts, giving up")
            else:
                requeued += self._requeue(s, claim, reason, backoff(claim.attempt))
        return requeued, failed

    def cancel(self, evaluation_id: str) -> Status:
        """Cancel: queued → cancelled at once; running → flagged (the executor stops it).

        Returns the status after the call; raises NotFound, or Conflict when finished.
        """
        with self._tx() as s:
            done = {"finished_at": now(), "cancel_requested": True}
            if self._move(s, evaluation_id, Status.queued, Status.cancelled, done):
                return Status.cancelled
            current = s.scalar(select(Evaluation.status).where(Evaluation.id == evaluation_id))
            if current is None:
                raise NotFound(f"no evaluation {evaluation_id!r}")
            status = Status(current)
            check_transition(status, Status.cancelled)  # Conflict when already finished
            s.execute(
                update(Evaluation)
                .where(Evaluation.id == evaluation_id)
                .values(cancel_requested=True)
            )
            return status

    def recover(self, max_attempts: int) -> tuple[int, int]:
        """After a crash: re-queue interrupted runs, or fail those out of attempts.

        Returns (re-queued, failed). Treats *every* ``running`` evaluation as
        orphaned, so only for tools and tests: servers and workers use
        ``Cluster.recover_orphans``, which only touches dead processes' evaluations.
        """
        with self._tx() as s:
            q = select(Evaluation.id, Evaluation.attempts).where(
                Evaluation.status == Status.running
            )
            claims = [Claim(i, a) for i, a in s.execute(q)]
            return self.recover_claims(
                s, claims, "interrupted", max_attempts=max_attempts, backoff=lambda _a: 0.0
            )

    # -- batches ----------------------------------------------------------------

    def get_batch(self, batch_id: str) -> Batch:
        with self._read() as s:
            row = s.scalars(select(Batch).where(Batch.id == batch_id)).one_or_none()
        if row is None:
            raise NotFound(f"no batch {batch_id!r}")
        return row

    def batch_counts(self, batch_id: str) -> BatchCounts:
        q = (
            select(Evaluation.status, Evaluation.termination, Evaluation.verdict, func.count())
            .where(Evaluation.batch_id == batch_id)
            .group_by(Evaluation.status, Evaluation.termination, Evaluation.verdict)
        )
        by_status: collections.Counter[str] = collections.Counter()
        by_term: collections.Counter[str] = collections.Counter()
        by_verdict: collections.Counter[str] = collections.Counter()
        total = 0
        with self._read() as s:
            for status, termination, verdict, count in s.execute(q):
                total += count
                by_status[status] += count
                if termination:
                    by_term[termination] += count
                if verdict:
                    by_verdict[verdict] += count
        return BatchCounts(total, dict(by_status), dict(by_term), dict(by_verdict))

    def cancel_batch(self, batch_id: str) -> list[str]:
        """Cancel a batch's queued evaluations; flag and return its running ones."""
        self.get_batch(batch_id)
        check_transition(Status.queued, Status.cancelled)
        with self._tx() as s:
            s.execute(update(Batch).where(Batch.id == batch_id).values(cancel_requested=True))
            s.execute(
                update(Evaluation)
                .where(
                    Evaluation.batch_id == batch_id,
                    Evaluation.status == Status.queued,
                )
                .values(status=Status.cancelled.value, finished_at=now(), cancel_requested=True)
            )
            s.execute(
                update(Evaluation)
                .where(Evaluation.batch_id == batch_id, Evaluation.status == Status.running)
                .values(cancel_requested=True)
            )
            running = s.scalars(
                select(Evaluation.id).where(
                    Evaluation.batch_id == batch_id, Evaluation.status == Status.running
                )
            )
            return list(running)
