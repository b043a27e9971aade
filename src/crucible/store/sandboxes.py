"""Repository functions of long-lived sandboxes and their exec transcripts.

Every state change is a fenced UPDATE on ``status='running'``: stopping, marking lost
and starting an exec race safely (the reaper, a DELETE and a sweep may all try at
once; one wins, the others change nothing). The per-key ``max_sandboxes`` quota is
checked in the transaction that inserts, serialised per key (SQLite writers already
are; PostgreSQL locks the key's row), so two concurrent creates cannot both pass it.
Likewise a private network (``network_group``) is local to one host: the insert admits
a member only on the host of the group's running members, serialised per group
(PostgreSQL: an advisory lock on the group), so two creates of one group placed at once
on two hosts cannot both pass it.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.orm import Session

from crucible.core.errors import (
    Conflict,
    NetworkElsewhere,
    NotFound,
    QuotaExceeded,
    SandboxLost,
    SandboxStopped,
    Unauthenticated,
)
from crucible.core.lifecycle import SandboxStatus, StopReason
from crucible.store.paging import keyset_page
from crucible.store.repo import Store, now
from crucible.store.tables import ApiKey, Sandbox, SandboxExec, Worker

RUNNING = SandboxStatus.running.value
# The class of the two-key advisory locks (pg_advisory_xact_lock(int4, int4)) that
# serialise a network group's inserts: "netw". The two-key space is apart from the
# one-key (bigint) locks of the audit chain and the migrations.
_NETWORK_LOCK = 0x6E657477


@dataclass(frozen=True)
class Owner:
    """The process hosting a sandbox (see ``crucible.services.identity``)."""

    id: str
    node: str
    host: str
    pid: int
    proc_start: str


@dataclass
class NewSandbox:
    id: str
    runtime: str
    limits: dict[str, Any]
    ttl_s: float
    idle_timeout_s: float
    owner: Owner
    labels: dict[str, str] = field(default_factory=dict)
    owner_key_id: str | None = None
    environment: str = "host"
    environment_digest: str | None = None
    network_group: str | None = None


class ExecExists(Exception):
    """begin_exec found an exec of the same idempotency key: ``seq`` is that exec's."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"exec {seq} has this idempotency key")
        self.seq = seq


def stopped_error(box: Sandbox) -> SandboxStopped:
    """The exception for a request to a sandbox that is no longer running: a lost one
    (its host died) is told apart from one that stopped."""
    if box.status == SandboxStatus.lost:
        why = f": {box.stop_detail}" if box.stop_detail else ""
        return SandboxLost(f"sandbox {box.id} is lost{why}")
    return SandboxStopped(f"sandbox {box.id} is {box.status} ({box.stop_reason})")


@dataclass(frozen=True)
class ExecOutcome:
    """What to record when an exec ends (previews already cut, blobs already stored)."""

    returncode: int
    timed_out: bool
    memory_limit: bool
    duration_ms: int
    stdout_preview: bytes
    stderr_preview: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_preview_truncated: bool
    stderr_preview_truncated: bool
    stdout_blob: str | None
    stderr_blob: str | None


_SANDBOXES = cast(Table, Sandbox.__table__)
_EXECS = cast(Table, SandboxExec.__table__)
_EXEC_COLUMNS = tuple(c.key for c in _EXECS.c)


_KEY_STATE = select(ApiKey.role, ApiKey.revoked_at).where(ApiKey.id == bindparam("b_key"))
_NUMBER_WHERE = (_SANDBOXES.c.id == bindparam("b_id"), _SANDBOXES.c.status == RUNNING)
_NUMBER = (
    update(_SANDBOXES)
    .where(*_NUMBER_WHERE)
    .values(exec_count=_SANDBOXES.c.exec_count + 1, last_activity_at=bindparam("b_t"))
    .returning(_SANDBOXES.c.exec_count)
)
_NUMBER_OWN = _NUMBER.where(_SANDBOXES.c.owner_key_id == bindparam("b_owner"))
_INSERT_EXEC = insert(_EXECS)
# SET what the parameters name (finished_at, error, the outcome's fields).
_FINISH_EXEC = (
    update(_EXECS)
    .where(_EXECS.c.sandbox_id == bindparam("b_id"), _EXECS.c.seq == bindparam("b_seq"))
    .returning(*_EXECS.c)
)
_ACTIVITY = update(_SANDBOXES).where(*_NUMBER_WHERE)  # SET last_activity_at (and usage)


def _columns(row: SandboxExec) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _EXEC_COLUMNS}


class SandboxStore:
    """The ``sandboxes`` and ``sandbox_execs`` tables, on the store's engine."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- sandboxes ----------------------------------------------------------------

    def create(self, new: NewSandbox, *, max_sandboxes: int = 0) -> Sandbox:
        """Insert a running sandbox; QuotaExceeded when its key already has
        ``max_sandboxes`` running (0: unlimited); NetworkElsewhere when its network
        group has running members on another host."""
        t = now()
        row = Sandbox(
            id=new.id,
            owner_key_id=new.owner_key_id,
            runtime=new.runtime,
            limits=new.limits,
            ttl_s=new.ttl_s,
            idle_timeout_s=new.idle_timeout_s,
            labels=new.labels,
            status=RUNNING,
            stop_reason=None,
            created_at=t,
            last_activity_at=t,
            stopped_at=None,
            owner_process_id=new.owner.id,
            owner_node=new.owner.node,
            owner_host=new.owner.host,
            owner_pid=new.owner.pid,
            owner_proc_start=new.owner.proc_start,
            cpu_ms=0,
            peak_memory_bytes=0,
            exec_count=0,
            environment=new.environment,
            environment_digest=new.environment_digest,
            network_group=new.network_group,
        )
        with self.store.transaction() as s:
            if new.network_group is not None:  # first: always this lock, then the key's
                self._join_network(s, new)
            if new.owner_key_id is not None and max_sandboxes > 0:
                if self.store.dialect == "postgresql":
                    s.execute(
                        select(ApiKey.id).where(ApiKey.id == new.owner_key_id).with_for_update()
                    )
                running = s.scalar(
                    select(func.count())
                    .select_from(Sandbox)
                    .where(Sandbox.owner_key_id == new.owner_key_id, Sandbox.status == RUNNING)
                )
                if int(running or 0) >= max_sandboxes:
                    raise QuotaExceeded(
                        f"quota max_sandboxes: this key has {running} sandboxes running"
                        f" (max {max_sandboxes}); delete one first",
                        retry_after=0,  # waiting alone does not help before a ttl
                    )
            s.add(row)
        return row

    def _join_network(self, s: Session, new: NewSandbox) -> None:
        """Refuse a member of a network whose running members are on another host.

        Placement looks the group's host up before it calls a host, so two creates of a
        new group placed at once (two API instances) can pick two hosts; this check,
        in the inserting transaction, is what holds. On PostgreSQL the group's inserts
        are serialised by a transaction-scoped advisory lock: the second waits for the
        first to commit, then reads its row (READ COMMITTED: the query's snapshot is
        taken after the lock is granted). SQLite's writers are serialised already
        (``BEGIN IMMEDIATE``), and an embedded server is its group's only host."""
        group = new.network_group
        if self.store.dialect == "postgresql":
            s.execute(
                text("SELECT pg_advisory_xact_lock(:cls, hashtext(:group))"),
                {"cls": _NETWORK_LOCK, "group": group},
            )
        elsewhere = s.scalar(
            select(Sandbox.owner_process_id)
            .where(
                Sandbox.network_group == group,
                Sandbox.status == RUNNING,
                Sandbox.owner_process_id != new.owner.id,
            )
            .limit(1)
        )
        if elsewhere is not None:
            raise NetworkElsewhere(
                f"network {group!r} has running members on host {elsewhere}, and a"
                " private network is local to one host: create it there"
            )

    def discard(self, sandbox_id: str) -> None:
        """Remove the row of a sandbox the engine failed to create (it never existed)."""
        with self.store.transaction() as s:
            row = s.scalars(select(Sandbox).where(Sandbox.id == sandbox_id)).one_or_none()
            if row is not None:
                s.delete(row)

    def get(self, sandbox_id: str) -> Sandbox:
        with self.store.reading() as s:
            row = s.scalars(select(Sandbox).where(Sandbox.id == sandbox_id)).one_or_none()
        if row is None:
            raise NotFound(f"no sandbox {sandbox_id!r}")
        return row

    def list(
        self,
        *,
        owner_key_id: str | None,
        status: SandboxStatus | None,
        cursor: int | None,
        limit: int,
    ) -> tuple[builtins.list[Sandbox], int | None]:
        """Newest first; ``owner_key_id`` None: everyone's. Returns (page, next cursor)."""
        q = select(Sandbox)
        if owner_key_id is not None:
            q = q.where(Sandbox.owner_key_id == owner_key_id)
        if status is not None:
            q = q.where(Sandbox.status == status.value)
        with self.store.reading() as s:
            return keyset_page(s, q, Sandbox.seq, cursor=cursor, limit=limit)

    def running(
        self, *, process_id: str | None = None, other_than: str | None = None
    ) -> builtins.list[Sandbox]:
        """Running sandboxes, of one process, or of every process but one."""
        q = select(Sandbox).where(Sandbox.status == RUNNING).order_by(Sandbox.seq)
        if process_id is not None:
            q = q.where(Sandbox.owner_process_id == process_id)
        if other_than is not None:
            q = q.where(Sandbox.owner_process_id != other_than)
        with self.store.reading() as s:
            return list(s.scalars(q))

    def running_count(self, process_id: str) -> int:
        """How many sandboxes of one process are running (a host's hard cap)."""
        q = select(func.count()).where(
            Sandbox.status == RUNNING, Sandbox.owner_process_id == process_id
        )
        with self.store.reading() as s:
            return int(s.scalar(q) or 0)

    def environment_in_use(self, environment: str) -> int:
        """How many running sandboxes run over ``environment``."""
        q = select(func.count()).where(
            Sandbox.environment == environment, Sandbox.status == RUNNING
        )
        with self.store.reading() as s:
            return int(s.scalar(q) or 0)

    def stop(
        self,
        sandbox_id: str,
        reason: StopReason,
        *,
        usage: tuple[int, int] | None = None,
        detail: str | None = None,
    ) -> bool:
        """running → stopped (``lost`` for reason lost), with the final (cpu_ms,
        peak_memory_bytes) when known and ``detail``, why in words. False when it was
        no longer running."""
        status = SandboxStatus.lost if reason is StopReason.lost else SandboxStatus.stopped
        values: dict[str, Any] = {
            "status": status.value,
            "stop_reason": reason.value,
            "stopped_at": now(),
            "stop_detail": detail,
        }
        if usage is not None:
            values["cpu_ms"], values["peak_memory_bytes"] = usage
        with self.store.transaction() as s:
            moved = s.execute(
                update(Sandbox)
                .where(Sandbox.id == sandbox_id, Sandbox.status == RUNNING)
                .values(**values)
            ).rowcount  # type: ignore[attr-defined]
            if moved:  # an exec cut short by the stop has no result, and says why
                s.execute(
                    update(SandboxExec)
                    .where(SandboxExec.sandbox_id == sandbox_id, SandboxExec.finished_at.is_(None))
                    .values(
                        finished_at=values["stopped_at"],
                        error=f"the sandbox stopped: {detail or reason.value}",
                    )
                )
        return bool(moved)

    def on_dead_hosts(self) -> builtins.list[tuple[str, str]]:
        """Running sandboxes whose host's heartbeat row is no longer alive (declared
        dead, or stopped without stopping them): (sandbox id, host id). Sandboxes of
        processes without a heartbeat row are the sweep's (``SandboxService.sweep``)."""
        q = (
            select(Sandbox.id, Worker.id)
            .join(Worker, Worker.id == Sandbox.owner_process_id)
            .where(Sandbox.status == RUNNING, Worker.state != "alive")
        )
        with self.store.reading() as s:
            return [(sid, wid) for sid, wid in s.execute(q).all()]

    def load(self) -> dict[str, int]:
        """Running sandboxes per hosting process (placement's count)."""
        q = (
            select(Sandbox.owner_process_id, func.count())
            .where(Sandbox.status == RUNNING)
            .group_by(Sandbox.owner_process_id)
        )
        with self.store.reading() as s:
            return {owner: int(n) for owner, n in s.execute(q).all()}

    def host_of_group(self, network_group: str) -> str | None:
        """The host of the running sandboxes on private network ``network_group``."""
        q = (
            select(Sandbox.owner_process_id)
            .where(Sandbox.network_group == network_group, Sandbox.status == RUNNING)
            .limit(1)
        )
        with self.store.reading() as s:
            return s.scalar(q)

    def touch(self, sandbox_id: str) -> None:
        """Activity other than an exec (a file written or read) keeps it from idling."""
        with self.store.transaction() as s:
            s.execute(
                update(Sandbox)
                .where(Sandbox.id == sandbox_id, Sandbox.status == RUNNING)
                .values(last_activity_at=now())
            )

    # -- execs ----------------------------------------------------------------------

    def begin_exec(
        self,
        sandbox_id: str,
        cmd: Sequence[str],
        cwd: str | None,
        user: str | None,
        idempotency_key: str | None = None,
        *,
        caller: str | None = None,
    ) -> SandboxExec:
        """Number and record an exec about to start; SandboxStopped (SandboxLost)
        unless running. With ``idempotency_key``: ExecExists when an exec of the
        sandbox already has that key (the same command; another: Conflict). The check
        runs under the sandbox's row lock (the UPDATE takes it on PostgreSQL; SQLite
        serialises writers), and the unique constraint on (sandbox_id,
        idempotency_key) backs it. ``caller``: the id of the key asking, checked here
        in the same transaction: Unauthenticated when it is revoked or gone, NotFound
        when the sandbox is not its own and it is no admin's (None: the platform).

        Three statements when it runs (the key, the numbering UPDATE … RETURNING, the
        INSERT), plus the key's exec when there is an idempotency key; the reads that
        tell why it cannot run come only when it cannot."""
        t = now()
        with self.store.transaction() as s:
            owner = None
            conn = s.connection()
            if caller is not None:
                key = conn.execute(_KEY_STATE, {"b_key": caller}).one_or_none()
                if key is None or key.revoked_at is not None:
                    raise Unauthenticated("the API key is not valid (unknown or revoked)")
                owner = None if key.role == "admin" else caller
            # Statements built once with bound parameters (here and in finish_exec):
            # building one per call, its values coerced each time, cost more than
            # running it, and so does the ORM's unit of work.
            params = {"b_id": sandbox_id, "b_t": t}
            if owner is None:
                seq = conn.execute(_NUMBER, params).scalar()
            else:
                seq = conn.execute(_NUMBER_OWN, {**params, "b_owner": owner}).scalar()
            if idempotency_key is not None and seq is not None:
                self._check_key(s, sandbox_id, idempotency_key, cmd)
            if seq is None:  # why not: missing, another's, or no longer running
                box = s.scalars(select(Sandbox).where(Sandbox.id == sandbox_id)).one_or_none()
                if box is None or (owner is not None and box.owner_key_id != owner):
                    raise NotFound(f"no sandbox {sandbox_id!r}")
                if idempotency_key is not None:
                    self._check_key(s, sandbox_id, idempotency_key, cmd)
                raise stopped_error(box)
            row = SandboxExec(
                sandbox_id=sandbox_id,
                seq=seq,
                cmd=list(cmd),
                cwd=cwd,
                user=user,
                started_at=t,
                finished_at=None,
                returncode=None,
                duration_ms=None,
                error=None,
                timed_out=False,
                memory_limit=False,
                stdout_preview=b"",
                stderr_preview=b"",
                stdout_truncated=False,
                stderr_truncated=False,
                stdout_preview_truncated=False,
                stderr_preview_truncated=False,
                stdout_blob=None,
                stderr_blob=None,
                idempotency_key=idempotency_key,
            )
            conn.execute(_INSERT_EXEC, _columns(row))
        return row

    @staticmethod
    def _check_key(s: Session, sandbox_id: str, key: str, cmd: Sequence[str]) -> None:
        """ExecExists (same command) or Conflict (another) when ``key`` was used."""
        first = s.execute(
            select(SandboxExec.seq, SandboxExec.cmd).where(
                SandboxExec.sandbox_id == sandbox_id, SandboxExec.idempotency_key == key
            )
        ).one_or_none()
        if first is None:
            return
        if first.cmd != list(cmd):
            raise Conflict(
                f"Idempotency-Key {key!r} was used for exec {first.seq} of another command"
            )
        raise ExecExists(first.seq)

    def finish_exec(
        self,
        sandbox_id: str,
        seq: int,
        outcome: ExecOutcome,
        usage: tuple[int, int] | None = None,
    ) -> SandboxExec:
        """Record what the exec did; its end is the sandbox's latest activity. ``usage``
        (cpu_ms, peak_memory_bytes) of the sandbox so far, in the same transaction.
        Two UPDATEs (the exec's RETURNING its row)."""
        t = now()
        with self.store.transaction() as s:
            conn = s.connection()
            values = {"b_id": sandbox_id, "b_seq": seq, "finished_at": t, "error": None}
            found = conn.execute(_FINISH_EXEC, {**values, **vars(outcome)}).one_or_none()
            if found is None:
                raise NotFound(f"no exec {seq} in sandbox {sandbox_id!r}")
            activity: dict[str, object] = {"b_id": sandbox_id, "last_activity_at": t}
            if usage is not None:
                activity.update(cpu_ms=usage[0], peak_memory_bytes=usage[1])
            conn.execute(_ACTIVITY, activity)
        return SandboxExec(**found._asdict())

    def fail_exec(self, sandbox_id: str, seq: int, error: str) -> None:
        """The exec ended without a result (the sandbox stopped under it)."""
        with self.store.transaction() as s:
            s.execute(
                update(SandboxExec)
                .where(SandboxExec.sandbox_id == sandbox_id, SandboxExec.seq == seq)
                .values(finished_at=now(), error=error[:2000])
            )

    def exec_of_key(self, sandbox_id: str, idempotency_key: str) -> SandboxExec | None:
        """The exec of ``sandbox_id`` recorded with ``idempotency_key``, if any."""
        q = select(SandboxExec).where(
            SandboxExec.sandbox_id == sandbox_id, SandboxExec.idempotency_key == idempotency_key
        )
        with self.store.reading() as s:
            return s.scalars(q).one_or_none()

    def get_exec(self, sandbox_id: str, seq: int) -> SandboxExec:
        with self.store.reading() as s:
            row = s.get(SandboxExec, (sandbox_id, seq))
        if row is None:
            raise NotFound(f"no exec {seq} in sandbox {sandbox_id!r}")
        return row

    def list_execs(
        self, sandbox_id: str, *, cursor: int | None, limit: int
    ) -> tuple[builtins.list[SandboxExec], int | None]:
        """The transcript in order (oldest first), from after ``cursor`` (a seq)."""
        q = select(SandboxExec).where(SandboxExec.sandbox_id == sandbox_id)
        with self.store.reading() as s:
            return keyset_page(
                s, q, SandboxExec.seq, cursor=cursor, limit=limit, newest_first=False
            )
