"""The queue, which lives in the ``evaluations`` table: fenced claims and their ends.

A claim is ``UPDATE … SET status='running', attempts=attempts+1 WHERE … status='queued'``,
and the attempt number it returns is the fence: finishing or re-queuing requires
``status='running' AND attempts=<that number>``. Each claim opens a row in the attempt
log (``attempts``); an evaluation that ends in ``error`` gets a dead letter carrying it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from crucible.core.errors import NotFound
from crucible.core.lifecycle import TERMINAL, Priority, Status, check_transition
from crucible.store.db import Database, now
from crucible.store.tables import ApiKey, Attempt, DeadLetter, Evaluation, OwnerTurn
from crucible.store.tallies import tally


def _owner(key_id: Any) -> Any:
    """The owner as :class:`OwnerTurn` names it: evaluations without a key share ""."""
    return func.coalesce(key_id, "")


def _due() -> Any:
    """Not waiting out a retry's back-off."""
    return or_(Evaluation.not_before.is_(None), Evaluation.not_before <= now())


@dataclass(frozen=True)
class Claim:
    """The right to run one attempt of one evaluation."""

    id: str
    attempt: int
    # The evaluation's request, when the claim read it (saves the executor a read).
    request: dict[str, Any] | None = field(default=None, compare=False)


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


class Queue(Database):
    """Claims (fair between keys), finishing, re-queuing, cancelling, recovery."""

    # Per-key max_running when a key has no override (0: unlimited); see claim_next.
    default_max_running: int = 0

    def queue_stats(self) -> tuple[dict[str, int], int]:
        """(queued count by priority name, running count)."""
        names = {p.rank: p.value for p in Priority}
        depth = dict.fromkeys(names.values(), 0)
        with self.reading() as s:
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
        with self.transaction() as s:
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
                    Evaluation.id,
                    Evaluation.attempts,
                    Evaluation.request,
                    Evaluation.owner_key_id,
                    Evaluation.batch_id,
                )
            )
            row = s.execute(stmt).one_or_none()
            if row is None:
                return None
            tally(s, row[4], source=Status.queued, target=Status.running)
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
        """``source`` → ``target`` if the evaluation is (still) in ``source``, and its
        batch's counters with it (``termination`` and ``verdict`` in ``values`` too).

        With ``attempt``, only for that claim (the fence). Returns whether it moved.
        """
        check_transition(source, target)
        stmt = (
            update(Evaluation)
            .where(Evaluation.id == evaluation_id, Evaluation.status == source.value)
            .values(status=target.value, **values)
            .returning(Evaluation.batch_id)
        )
        if attempt is not None:
            stmt = stmt.where(Evaluation.attempts == attempt)
        moved = s.execute(stmt).one_or_none()
        if moved is None:
            return False
        tally(
            s,
            moved[0],
            source=source,
            target=target,
            termination=values.get("termination"),
            verdict=values.get("verdict"),
        )
        return True

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
        with self.transaction() as s:
            if not self._move(s, claim.id, Status.running, status, values, attempt=claim.attempt):
                return False
            end_attempt(s, claim, status.value, error)
            if status is Status.error:
                dead_letter(s, claim.id, error or "error")
            return True

    def requeue(self, claim: Claim, error: str, *, delay_s: float = 0.0) -> bool:
        """Put ``claim``'s evaluation back in the queue after a platform fault; it is
        not claimed again before ``delay_s`` (the retry's back-off) has passed."""
        with self.transaction() as s:
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
        with self.transaction() as s:
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
        with self.transaction() as s:
            q = select(Evaluation.id, Evaluation.attempts).where(
                Evaluation.status == Status.running
            )
            claims = [Claim(i, a) for i, a in s.execute(q)]
            return self.recover_claims(
                s, claims, "interrupted", max_attempts=max_attempts, backoff=lambda _a: 0.0
            )
