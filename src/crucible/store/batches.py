"""The ``batches`` table: a batch and its evaluations, inserted in one transaction."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.exc import IntegrityError

from crucible.core.errors import Conflict, NotFound
from crucible.core.lifecycle import Status, check_transition
from crucible.store.db import now
from crucible.store.evaluations import Evaluations, NewEvaluation
from crucible.store.tables import Batch, Evaluation
from crucible.store.tallies import counts_of, tally

_BATCH_BY_ID = select(Batch.__table__).where(Batch.__table__.c.id == bindparam("id"))


@dataclass(frozen=True)
class BatchCounts:
    total: int
    by_status: dict[str, int]
    by_termination: dict[str, int]
    by_verdict: dict[str, int]

    @classmethod
    def of(cls, batch: Batch) -> BatchCounts:
        """From the counters on the batch's row (see ``crucible.store.tallies``)."""
        by_status, by_termination, by_verdict = counts_of(batch)
        return cls(sum(by_status.values()), by_status, by_termination, by_verdict)


class Batches(Evaluations):
    """Creating (with idempotency keys), counting and cancelling batches."""

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
            with self.transaction() as s:
                batch = Batch(
                    id=batch_id,
                    created_at=now(),
                    count=len(items),
                    labels=labels,
                    cancel_requested=False,
                    n_queued=len(items),
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
            with self.reading() as s:
                q = select(Batch).where(Batch.idempotency_key == idempotency_key)
                original = s.scalars(q).one_or_none()
            if original is None:
                raise
            if original.request_hash != request_hash:
                raise Conflict("Idempotency-Key already used for a different batch") from None
            return original, False
        return batch, True

    # -- batches ----------------------------------------------------------------

    def get_batch(self, batch_id: str) -> Batch:
        """The batch (detached); raises NotFound.

        Read as a plain row on a bare connection, not through a session: a batch's
        progress is what clients poll, and the ORM's query was most of its cost.
        """
        with self.engine.connect() as c:
            row = c.execute(_BATCH_BY_ID, {"id": batch_id}).one_or_none()
        if row is None:
            raise NotFound(f"no batch {batch_id!r}")
        return Batch(**row._mapping)

    def batch_counts(self, batch_id: str) -> BatchCounts:
        """The batch's counts, from the counters on its row (one primary-key read,
        whatever its size); raises NotFound."""
        return BatchCounts.of(self.get_batch(batch_id))

    def count_batch_rows(self, batch_id: str) -> BatchCounts:
        """The batch's counts by counting its evaluations (a ``GROUP BY`` over every
        row): what the counters must always equal, for tests and benchmarks."""
        q = (
            select(Evaluation.status, Evaluation.termination, Evaluation.verdict, func.count())
            .where(Evaluation.batch_id == batch_id)
            .group_by(Evaluation.status, Evaluation.termination, Evaluation.verdict)
        )
        by_status: collections.Counter[str] = collections.Counter()
        by_term: collections.Counter[str] = collections.Counter()
        by_verdict: collections.Counter[str] = collections.Counter()
        total = 0
        with self.reading() as s:
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
        with self.transaction() as s:
            cancelled = s.execute(
                update(Evaluation)
                .where(
                    Evaluation.batch_id == batch_id,
                    Evaluation.status == Status.queued,
                )
                .values(status=Status.cancelled.value, finished_at=now(), cancel_requested=True)
            ).rowcount  # type: ignore[attr-defined]
            s.execute(
                update(Evaluation)
                .where(Evaluation.batch_id == batch_id, Evaluation.status == Status.running)
                .values(cancel_requested=True)
            )
            running = list(
                s.scalars(
                    select(Evaluation.id).where(
                        Evaluation.batch_id == batch_id, Evaluation.status == Status.running
                    )
                )
            )
            # The batch row last: evaluation rows are always locked before it.
            s.execute(update(Batch).where(Batch.id == batch_id).values(cancel_requested=True))
            tally(s, batch_id, source=Status.queued, target=Status.cancelled, n=cancelled)
            return running
