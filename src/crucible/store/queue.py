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

from sqlalchemy import String, bindparam, cast, func, insert, null, or_, select, union_all, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session, aliased

from crucible.core.errors import NotFound
from crucible.core.lifecycle import TERMINAL, Priority, Status, check_transition
from crucible.store.db import Database, now
from crucible.store.evaluations import RECORD_COLUMNS, labels_of
from crucible.store.tables import ApiKey, Attempt, DeadLetter, Evaluation, OwnerTurn
from crucible.store.tallies import tally


def _owner(key_id: Any) -> Any:
    """The owner as :class:`OwnerTurn` names it: evaluations without a key share ""."""
    return func.coalesce(key_id, "")


def _due(at: Any = None, of: Any = Evaluation) -> Any:
    """Not waiting out a retry's back-off (at ``at``, a bound parameter or now)."""
    return or_(of.not_before.is_(None), of.not_before <= (now() if at is None else at))


def _oldest(keyless: bool) -> Any:
    """The oldest due queued evaluation of one owner (``c_owner``; ``keyless``: of
    those without a key) at one priority (``c_priority``), for a claim's UPDATE."""
    owner = Evaluation.owner_key_id
    return (
        select(Evaluation.seq)
        .where(
            Evaluation.status == Status.queued,
            owner.is_(None) if keyless else owner == bindparam("c_owner"),
            Evaluation.priority == bindparam("c_priority"),
            _due(bindparam("c_now")),
        )
        .order_by(Evaluation.seq)
        .limit(1)
        # PostgreSQL: concurrent claimers skip each other's row instead of queueing
        # behind it. SQLite serialises writers (BEGIN IMMEDIATE).
        .with_for_update(skip_locked=True, of=Evaluation)
        .scalar_subquery()
    )


@dataclass(frozen=True)
class Claim:
    """The right to run one attempt of one evaluation."""

    id: str
    attempt: int
    # The evaluation's request, when the claim read it (saves the executor a read).
    request: dict[str, Any] | None = field(default=None, compare=False)


# The statements run for every evaluation are built once, with bound parameters, and
# executed on the session's connection (Core): building a statement and going through the
# ORM's DML layer cost more CPU than SQLite's work on the rows (bench/store_path.py).
_END_ATTEMPT = (
    update(Attempt)
    .where(Attempt.evaluation_id == bindparam("e_id"), Attempt.attempt == bindparam("e_attempt"))
    .values(
        finished_at=bindparam("e_finished"),
        outcome=bindparam("e_outcome"),
        error=bindparam("e_error"),
    )
)


# What the finishing UPDATE returns: the public record's columns (the executor
# publishes it) and the verdict; returned, not read again by a SELECT.
_FINISHED_COLUMNS = (*RECORD_COLUMNS, Evaluation.verdict)

_OPEN_ATTEMPT = insert(Attempt).values(
    evaluation_id=bindparam("a_id"),
    attempt=bindparam("a_attempt"),
    worker_id=bindparam("a_worker"),
    started_at=bindparam("a_at"),
)


def end_attempt(s: Session, claim: Claim, outcome: str, error: str | None) -> None:
    s.connection().execute(
        _END_ATTEMPT,
        {
            "e_id": claim.id,
            "e_attempt": claim.attempt,
            "e_finished": now(),
            "e_outcome": outcome,
            "e_error": error,
        },
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
        return self._claim(self._claim_stmt("id"), worker_id, {"c_id": evaluation_id})

    def claim_next(self, *, worker_id: str | None = None) -> Claim | None:
        """Claim the next queued evaluation, sharing capacity fairly between keys:
        from the owner with the fewest running evaluations, then highest priority,
        then the owner served least recently (with one slot freed at a time every
        owner has 0 running, and the oldest batch would otherwise win every turn),
        then oldest. An owner at its max_running quota (per key, else
        ``default_max_running``; 0 is unlimited) is skipped.

        A few index probes per owner with queued work, whatever the queue's length
        (:meth:`_pick_stmt`). SQLite, one writer at a time, takes the head it picks
        in the same UPDATE. PostgreSQL picks the owner and priority, then takes that
        owner's oldest at that priority, skipping rows other claimers hold locked;
        when they hold all of them, it picks again, then orders the whole queue in
        one statement (:meth:`_next`), which sorts every queued row but cannot miss
        a runnable one."""
        with self.transaction() as s:
            return self._claim_next_in(s, worker_id)

    def _claim_next_in(self, s: Session, worker_id: str | None) -> Claim | None:
        """:meth:`claim_next` in ``s``'s transaction."""
        check_transition(Status.queued, Status.running)
        conn = s.connection()  # SQLite: BEGIN IMMEDIATE; the clock is read after it
        started = now()
        params = {"c_now": started, "c_worker": worker_id}
        if self.dialect == "sqlite":  # one writer at a time: the head picked is free
            row = conn.execute(self._claim_stmt("pick"), params).one_or_none()
            return self._claimed(s, row, worker_id, started)
        row = None
        for _ in range(2):
            pick = conn.execute(self._pick_stmt(), params).one_or_none()
            if pick is None:
                return None
            owner, priority, _seq = pick
            take = self._claim_stmt("keyless" if owner is None else "owner")
            got = {**params, "c_owner": owner, "c_priority": priority}
            row = conn.execute(take, got).one_or_none()
            if row is not None:
                break
        else:
            row = conn.execute(self._claim_stmt("next"), params).one_or_none()
        return self._claimed(s, row, worker_id, started)

    def _claim_stmt(self, which: str) -> Any:
        """The claim's UPDATE … RETURNING of one evaluation: by id (``c_id``), the
        head :meth:`_pick_stmt` picks (``pick``), the oldest of an owner
        (``c_owner``, or ``keyless``) at a priority (``c_priority``), or the fair next
        one by ordering the whole queue (``next``); built once per
        ``default_max_running`` (tests change it)."""
        key = (which, self.default_max_running)
        cache: dict[Any, Any] = self.__dict__.setdefault("_claim_cache", {})
        if key not in cache:
            if which == "id":
                picked = Evaluation.id == bindparam("c_id")
            elif which == "next":
                picked = self._next()
            elif which == "pick":
                head = self._pick_stmt().subquery("pick")
                picked = Evaluation.seq == select(head.c.seq).scalar_subquery()
            else:
                picked = Evaluation.seq == _oldest(which == "keyless")
            cache[key] = (
                update(Evaluation)
                .where(picked, Evaluation.status == Status.queued, _due(bindparam("c_now")))
                .values(
                    status=Status.running.value,
                    attempts=Evaluation.attempts + 1,
                    started_at=bindparam("c_now"),
                    worker_id=bindparam("c_worker"),
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
        return cache[key]

    def _pick_stmt(self) -> Any:
        """(owner, priority, seq) of the fair next evaluation, or no row; built once
        per ``default_max_running``.

        The owners with queued work are found by skipping along the queue's index
        (status, owner, priority, seq): a recursive CTE asks for the smallest owner
        above the last one found, an index probe each, instead of reading every
        queued row (evaluations without a key, whose owner is NULL, are one more
        candidate). Each owner's head (lowest priority rank, then seq, among its due
        queued rows) and running count are probes too; the candidates are ordered as
        :meth:`claim_next` says."""
        key = ("pick", self.default_max_running)
        cache: dict[Any, Any] = self.__dict__.setdefault("_claim_cache", {})
        if key in cache:
            return cache[key]
        skip = aliased(Evaluation, name="skip")
        owners = (
            select(func.min(Evaluation.owner_key_id).label("o"))
            .where(Evaluation.status == Status.queued)
            .cte("owners", recursive=True)
        )
        found = owners.alias("found")
        after = (
            select(func.min(skip.owner_key_id))
            .where(skip.status == Status.queued, skip.owner_key_id > found.c.o)
            .scalar_subquery()
        )
        owners = owners.union_all(select(after).where(found.c.o.is_not(None)))

        def head(of: Any, match: Any) -> Any:
            return (
                select(of.seq)
                .where(of.status == Status.queued, match, _due(bindparam("c_now"), of))
                .order_by(of.priority, of.seq)
                .limit(1)
                .scalar_subquery()
            )

        def running(of: Any, match: Any) -> Any:
            return (
                select(func.count())
                .select_from(of)
                .where(of.status == Status.running, match)
                .scalar_subquery()
            )

        h, r = aliased(Evaluation, name="h"), aliased(Evaluation, name="r")
        named = select(
            owners.c.o.label("owner"),
            head(h, h.owner_key_id == owners.c.o).label("head"),
            running(r, r.owner_key_id == owners.c.o).label("n"),
        ).where(owners.c.o.is_not(None))
        keyless = select(
            cast(null(), String(32)).label("owner"),
            head(h, h.owner_key_id.is_(None)).label("head"),
            running(r, r.owner_key_id.is_(None)).label("n"),
        )
        cand = union_all(named, keyless).subquery("candidates")
        cap = func.coalesce(ApiKey.max_running, self.default_max_running)
        picked = aliased(Evaluation, name="picked")
        cache[key] = (
            select(cand.c.owner, picked.priority, picked.seq)
            .join_from(cand, picked, picked.seq == cand.c.head)
            .outerjoin(ApiKey, ApiKey.id == cand.c.owner)
            .outerjoin(OwnerTurn, OwnerTurn.owner == _owner(cand.c.owner))
            .where(or_(cap <= 0, cand.c.n < cap))
            .order_by(
                cand.c.n,
                picked.priority,
                OwnerTurn.served_at.asc().nulls_first(),
                picked.seq,
            )
            .limit(1)
        )
        return cache[key]

    def _next(self) -> Any:
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
            .outerjoin(running, running.c.owner.is_not_distinct_from(Evaluation.owner_key_id))
            .outerjoin(ApiKey, ApiKey.id == Evaluation.owner_key_id)
            .outerjoin(OwnerTurn, OwnerTurn.owner == _owner(Evaluation.owner_key_id))
            .where(
                Evaluation.status == Status.queued,
                _due(bindparam("c_now")),
                or_(cap <= 0, n_running < cap),
            )
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
        return Evaluation.seq == nxt

    def _claim(self, stmt: Any, worker_id: str | None, params: dict[str, Any]) -> Claim | None:
        # Not through _move: the evaluation is picked by the UPDATE itself.
        check_transition(Status.queued, Status.running)
        with self.transaction() as s:
            # The clock is read once the transaction holds the write lock (SQLite:
            # BEGIN IMMEDIATE, emitted by connection()): read before, a claim that
            # waited behind the submission's own insert would start before it was
            # created (a negative queue wait).
            conn = s.connection()
            started = now()
            row = conn.execute(
                stmt, {**params, "c_now": started, "c_worker": worker_id}
            ).one_or_none()
            return self._claimed(s, row, worker_id, started)

    def _claimed(
        self, s: Session, row: Any, worker_id: str | None, started: datetime
    ) -> Claim | None:
        """The claim of ``row`` (what the claim's UPDATE returned), with its attempt
        opened, its batch's counters and its owner's turn; None without a row."""
        if row is None:
            return None
        tally(s, row[4], source=Status.queued, target=Status.running)
        conn = s.connection()
        conn.execute(
            _OPEN_ATTEMPT,
            {"a_id": row[0], "a_attempt": row[1], "a_worker": worker_id, "a_at": started},
        )
        conn.execute(self._turn_stmt(), {"t_owner": row[3] or "", "t_at": started})
        return Claim(row[0], row[1], row[2])

    def _turn_stmt(self) -> Any:
        """The owner's last turn, upserted (dialect-specific; built once)."""
        stmt = self.__dict__.get("_turn_cache")
        if stmt is None:
            upsert = (pg_insert if self.dialect == "postgresql" else sqlite_insert)(OwnerTurn)
            stmt = upsert.values(
                owner=bindparam("t_owner"), served_at=bindparam("t_at")
            ).on_conflict_do_update(
                index_elements=["owner"], set_={"served_at": upsert.excluded.served_at}
            )
            self.__dict__["_turn_cache"] = stmt
        return stmt

    def _move(
        self,
        s: Session,
        evaluation_id: str,
        source: Status,
        target: Status,
        values: dict[str, Any],
        *,
        attempt: int | None = None,
        returning: tuple[Any, ...] = (),
    ) -> Row[Any] | None:
        """``source`` → ``target`` if the evaluation is (still) in ``source``, and its
        batch's counters with it (``termination`` and ``verdict`` in ``values`` too).

        With ``attempt``, only for that claim (the fence). Returns the moved row's
        ``batch_id`` and ``returning`` columns, or None when nothing moved.
        """
        check_transition(source, target)
        key = (source, target, tuple(values), attempt is not None, returning)
        cache: dict[Any, Any] = self.__dict__.setdefault("_move_cache", {})
        stmt = cache.get(key)
        if stmt is None:
            stmt = (
                update(Evaluation)
                .where(Evaluation.id == bindparam("m_id"), Evaluation.status == source.value)
                .values(status=target.value, **{k: bindparam(f"m_{k}") for k in values})
                .returning(Evaluation.batch_id, *returning)
            )
            if attempt is not None:
                stmt = stmt.where(Evaluation.attempts == bindparam("m_attempt"))
            cache[key] = stmt
        params = {f"m_{k}": v for k, v in values.items()}
        params["m_id"] = evaluation_id
        if attempt is not None:
            params["m_attempt"] = attempt
        moved = s.connection().execute(stmt, params).one_or_none()
        if moved is None:
            return None
        tally(
            s,
            moved[0],
            source=source,
            target=target,
            termination=values.get("termination"),
            verdict=values.get("verdict"),
        )
        return moved

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
        done = self.finish_and_read(
            claim, status, result=result, termination=termination, verdict=verdict,
            blobs=blobs, error=error,
        )  # fmt: skip
        return done is not None

    def finish_and_read(
        self,
        claim: Claim,
        status: Status,
        *,
        result: dict[str, Any] | None = None,
        termination: str | None = None,
        verdict: str | None = None,
        blobs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> tuple[Row[Any], dict[str, str]] | None:
        """:meth:`finish`, and the finished evaluation (its RECORD_COLUMNS and verdict,
        returned by the finishing UPDATE itself) with its labels, read in the same
        transaction (the executor publishes it); None when the claim is stale."""
        with self.transaction() as s:
            return self._finish_in(
                s, claim, status, result=result, termination=termination, verdict=verdict,
                blobs=blobs, error=error,
            )  # fmt: skip

    def finish_and_claim(
        self, claim: Claim, status: Status, *, worker_id: str | None = None, **fields: Any
    ) -> tuple[tuple[Row[Any], dict[str, str]] | None, Claim | None]:
        """:meth:`finish_and_read` and :meth:`claim_next` in one transaction: the run
        that ends hands its sandbox slot to the next (one commit and one thread hop
        fewer per evaluation in a batch). The claim comes after the finish, so it sees
        the owner's quota the finish freed."""
        with self.transaction() as s:
            stored = self._finish_in(s, claim, status, **fields)
            return stored, self._claim_next_in(s, worker_id)

    def _finish_in(
        self,
        s: Session,
        claim: Claim,
        status: Status,
        *,
        result: dict[str, Any] | None = None,
        termination: str | None = None,
        verdict: str | None = None,
        blobs: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> tuple[Row[Any], dict[str, str]] | None:
        """:meth:`finish_and_read` in ``s``'s transaction."""
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
        row = self._move(
            s, claim.id, Status.running, status, values,
            attempt=claim.attempt, returning=_FINISHED_COLUMNS,
        )  # fmt: skip
        if row is None:
            return None
        end_attempt(s, claim, status.value, error)
        if status is Status.error:
            dead_letter(s, claim.id, error or "error")
        return row, labels_of(s, row.seq)

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
        if moved is not None:
            end_attempt(s, claim, "requeued", error)
        return moved is not None

    def _fail(self, s: Session, claim: Claim, error: str) -> bool:
        values = {"finished_at": now(), "error": error, "result": None, "blobs": {}}
        moved = self._move(s, claim.id, Status.running, Status.error, values, attempt=claim.attempt)
        if moved is not None:
            end_attempt(s, claim, Status.error.value, error)
            dead_letter(s, claim.id, error)
        return moved is not None

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
            if self._move(s, evaluation_id, Status.queued, Status.cancelled, done) is not None:
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
