"""Repository functions of a cluster of processes sharing one database: the heartbeat
rows of the processes that run evaluations, recovery of dead processes' evaluations,
and dead letters.

Every change that two processes may race to make is a fenced UPDATE: declaring a
worker dead requires the heartbeat it was judged by; re-queuing an orphan requires
``status='running' AND attempts=<its claim>``. Whoever notices first wins; the others
change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_, select, update

from crucible.core.errors import Conflict, NotFound
from crucible.core.lifecycle import Status
from crucible.store.paging import keyset_page
from crucible.store.repo import Claim, Store, now
from crucible.store.tables import DeadLetter, Evaluation, Label, Worker

ALIVE, DEAD, STOPPED = "alive", "dead", "stopped"


@dataclass(frozen=True)
class WorkerInfo:
    """What a process says about itself when it registers."""

    id: str
    kind: str
    host: str
    node: str
    pid: int
    proc_start: str
    capacity: int
    queues: str = ""
    sandbox_capacity: int = 0  # agent sandboxes it hosts at most (0: none)
    endpoint: str | None = None  # its cluster endpoint, for API instances


class Cluster:
    """Workers, orphan recovery, publication and dead letters over a :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- workers ------------------------------------------------------------------

    def heartbeat(self, info: WorkerInfo, running: int, sandboxes_running: int = 0) -> int:
        """Register or refresh ``info``'s row (a process declared dead that heartbeats
        again is alive again; its old claims stay fenced out, and its sandboxes stay
        ``lost``). Returns the row's epoch: a host whose epoch moved was declared dead
        meanwhile (see ``recover_orphans``)."""
        t = now()
        with self.store.transaction() as s:
            epoch = s.scalar(
                update(Worker)
                .where(Worker.id == info.id)
                .values(
                    last_heartbeat=t,
                    running=running,
                    state=ALIVE,
                    capacity=info.capacity,
                    sandbox_capacity=info.sandbox_capacity,
                    sandboxes_running=sandboxes_running,
                    endpoint=info.endpoint,
                )
                .returning(Worker.epoch)
            )
            if epoch is None:
                s.execute(
                    insert(Worker).values(
                        id=info.id,
                        kind=info.kind,
                        host=info.host,
                        node=info.node,
                        pid=info.pid,
                        proc_start=info.proc_start,
                        queues=info.queues,
                        capacity=info.capacity,
                        running=running,
                        state=ALIVE,
                        started_at=t,
                        last_heartbeat=t,
                        sandbox_capacity=info.sandbox_capacity,
                        sandboxes_running=sandboxes_running,
                        endpoint=info.endpoint,
                        epoch=0,
                    )
                )
        return int(epoch or 0)

    def stopped(self, worker_id: str) -> None:
        """A clean shutdown: whatever it still held is recovered at the next check."""
        with self.store.transaction() as s:
            s.execute(update(Worker).where(Worker.id == worker_id).values(state=STOPPED))

    def workers(self, *, keep_s: float = 3600.0) -> list[Worker]:
        """Live workers, and the dead or stopped seen within ``keep_s``; newest first."""
        cutoff = now() - timedelta(seconds=keep_s)
        q = (
            select(Worker)
            .where(or_(Worker.state == ALIVE, Worker.last_heartbeat >= cutoff))
            .order_by(Worker.started_at.desc())
        )
        with self.store.reading() as s:
            return list(s.scalars(q))

    def hosts(self, *, fresh_s: float) -> list[Worker]:
        """Sandbox hosts alive with a heartbeat within ``fresh_s``: the candidates of
        placement (a host about to be declared dead is no candidate)."""
        q = select(Worker).where(
            Worker.state == ALIVE,
            Worker.sandbox_capacity > 0,
            Worker.endpoint.is_not(None),
            Worker.last_heartbeat >= now() - timedelta(seconds=fresh_s),
        )
        with self.store.reading() as s:
            return list(s.scalars(q))

    def worker(self, worker_id: str) -> Worker | None:
        with self.store.reading() as s:
            return s.get(Worker, worker_id)

    def capacity(self) -> int:
        with self.store.reading() as s:
            rows = s.scalars(select(Worker.capacity).where(Worker.state == ALIVE))
            return sum(rows)

    # -- recovery -------------------------------------------------------------------

    def recover_orphans(
        self,
        *,
        node: str,
        alive_here: Callable[[int, str], bool],
        dead_after_s: float,
        stuck_after_s: float,
        max_attempts: int,
        backoff: Callable[[int], float],
    ) -> tuple[int, int]:
        """Declare silent workers dead, then re-queue (or fail, after ``max_attempts``)
        the running evaluations of every process that is not alive.

        A worker is dead when its heartbeat is older than ``dead_after_s``, or at once
        when it lives on this ``node`` and ``alive_here(pid, proc_start)`` says its
        process is gone. Running evaluations without a live owner (pre-0002 rows have
        none) and those running longer than ``stuck_after_s`` are orphans too.
        Returns (re-queued, failed).
        """
        t = now()
        cutoff = t - timedelta(seconds=dead_after_s)
        with self.store.transaction() as s:
            rows = s.execute(
                select(
                    Worker.id, Worker.node, Worker.pid, Worker.proc_start, Worker.last_heartbeat
                ).where(Worker.state == ALIVE)
            ).all()
            for wid, wnode, pid, start, beat in rows:
                if beat < cutoff or (wnode == node and not alive_here(pid, start)):
                    s.execute(
                        update(Worker)
                        .where(
                            Worker.id == wid, Worker.state == ALIVE, Worker.last_heartbeat == beat
                        )
                        .values(state=DEAD, epoch=Worker.epoch + 1)
                    )
            q = (
                select(Evaluation.id, Evaluation.attempts, Worker.state)
                .outerjoin(Worker, Worker.id == Evaluation.worker_id)
                .where(
                    Evaluation.status == Status.running,
                    or_(
                        Worker.id.is_(None),
                        Worker.state != ALIVE,
                        Evaluation.started_at < t - timedelta(seconds=stuck_after_s),
                    ),
                )
            )
            found = s.execute(q).all()
            dead = [Claim(i, a) for i, a, state in found if state != ALIVE]
            stuck = [Claim(i, a) for i, a, state in found if state == ALIVE]
            r1, f1 = self.store.recover_claims(
                s, dead, "interrupted: its process died", max_attempts=max_attempts, backoff=backoff
            )
            r2, f2 = self.store.recover_claims(
                s, stuck, "stuck: ran past the longest run allowed", max_attempts=max_attempts,
                backoff=backoff,
            )  # fmt: skip
            # Forget long-gone processes.
            s.execute(
                delete(Worker).where(
                    Worker.state != ALIVE, Worker.last_heartbeat < t - timedelta(days=1)
                )
            )
        return r1 + r2, f1 + f2

    # -- dead letters -----------------------------------------------------------------

    def dead_letters(
        self, *, cursor: int | None, limit: int
    ) -> tuple[list[DeadLetter], int | None]:
        """Newest first; returns (page, cursor of the next page or None)."""
        with self.store.reading() as s:
            return keyset_page(s, select(DeadLetter), DeadLetter.seq, cursor=cursor, limit=limit)

    def dead_letter(self, dead_letter_id: str) -> DeadLetter:
        with self.store.reading() as s:
            row = s.scalars(select(DeadLetter).where(DeadLetter.id == dead_letter_id)).one_or_none()
        if row is None:
            raise NotFound(f"no dead letter {dead_letter_id!r}")
        return row

    def retry_dead_letter(self, dead_letter_id: str, new_id: str) -> Evaluation:
        """Queue a new evaluation with the dead one's request and labels, once.

        The failed evaluation stays in ``error`` (a final status is final); the dead
        letter points at the new one. Raises NotFound, or Conflict when already retried.
        """
        with self.store.transaction() as s:
            letter = s.scalars(
                select(DeadLetter).where(DeadLetter.id == dead_letter_id)
            ).one_or_none()
            if letter is None:
                raise NotFound(f"no dead letter {dead_letter_id!r}")
            taken = s.execute(
                update(DeadLetter)
                .where(DeadLetter.id == dead_letter_id, DeadLetter.retried_as.is_(None))
                .values(retried_as=new_id, retried_at=now())
            ).rowcount  # type: ignore[attr-defined]
            if not taken:
                raise Conflict(f"dead letter {dead_letter_id} was already retried")
            old = s.scalars(select(Evaluation).where(Evaluation.id == letter.evaluation_id)).one()
            created: datetime = now()
            seq = s.scalar(
                insert(Evaluation)
                .values(
                    id=new_id,
                    batch_id=None,
                    status=Status.queued.value,
                    priority=old.priority,
                    language=old.language,
                    request=old.request,
                    environment=old.environment,
                    idempotency_key=None,
                    request_hash=old.request_hash,
                    created_at=created,
                    attempts=0,
                    cancel_requested=False,
                    blobs={},
                )
                .returning(Evaluation.seq)
            )
            labels = s.execute(
                select(Label.key, Label.value).where(Label.evaluation_seq == old.seq)
            ).all()
            if labels:
                s.execute(
                    insert(Label),
                    [{"evaluation_seq": seq, "key": k, "value": v} for k, v in labels],
                )
        return self.store.get(new_id)
