"""Repository functions of long-lived sandboxes and their exec transcripts.

Every state change is a fenced UPDATE on ``status='running'``: stopping, marking lost
and starting an exec race safely (the reaper, a DELETE and a sweep may all try at
once; one wins, the others change nothing). The per-key ``max_sandboxes`` quota is
checked in the transaction that inserts, serialised per key (SQLite writers already
are; PostgreSQL locks the key's row), so two concurrent creates cannot both pass it.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import func, select, update

from crucible.core.errors import NotFound, QuotaExceeded, SandboxStopped
from crucible.core.lifecycle import SandboxStatus, StopReason
from crucible.store.repo import Store, now
from crucible.store.tables import ApiKey, Sandbox, SandboxExec

RUNNING = SandboxStatus.running.value
T = TypeVar("T")


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


def _page(rows: list[T], limit: int, key: int | None) -> tuple[list[T], int | None]:
    """The first ``limit`` rows, and the cursor of the next page (``key`` of the last
    row kept) when there are more."""
    return (rows[:limit], key) if len(rows) > limit else (rows, None)


class SandboxStore:
    """The ``sandboxes`` and ``sandbox_execs`` tables, on the store's engine."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- sandboxes ----------------------------------------------------------------

    def create(self, new: NewSandbox, *, max_sandboxes: int = 0) -> Sandbox:
        """Insert a running sandbox; QuotaExceeded when its key already has
        ``max_sandboxes`` running (0: unlimited)."""
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
        )
        with self.store.transaction() as s:
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
        q = select(Sandbox).order_by(Sandbox.seq.desc()).limit(limit + 1)
        if cursor is not None:
            q = q.where(Sandbox.seq < cursor)
        if owner_key_id is not None:
            q = q.where(Sandbox.owner_key_id == owner_key_id)
        if status is not None:
            q = q.where(Sandbox.status == status.value)
        with self.store.reading() as s:
            rows = list(s.scalars(q))
        return _page(rows, limit, rows[limit - 1].seq if len(rows) > limit else None)

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
    ) -> bool:
        """running → stopped (``lost`` for reason lost), with the final (cpu_ms,
        peak_memory_bytes) when known. False when it was no longer running."""
        status = SandboxStatus.lost if reason is StopReason.lost else SandboxStatus.stopped
        values: dict[str, Any] = {
            "status": status.value,
            "stop_reason": reason.value,
            "stopped_at": now(),
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
                        error=f"the sandbox stopped: {reason.value}",
                    )
                )
        return bool(moved)

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
        self, sandbox_id: str, cmd: Sequence[str], cwd: str | None, user: str | None
    ) -> SandboxExec:
        """Number and record an exec about to start; SandboxStopped unless running."""
        t = now()
        with self.store.transaction() as s:
            q = select(Sandbox).where(Sandbox.id == sandbox_id)
            if self.store.dialect == "postgresql":
                q = q.with_for_update()
            box = s.scalars(q).one_or_none()
            if box is None:
                raise NotFound(f"no sandbox {sandbox_id!r}")
            if box.status != RUNNING:
                raise SandboxStopped(f"sandbox {sandbox_id} is {box.status} ({box.stop_reason})")
            box.exec_count += 1
            box.last_activity_at = t
            row = SandboxExec(
                sandbox_id=sandbox_id,
                seq=box.exec_count,
                cmd=list(cmd),
                cwd=cwd,
                user=user,
                started_at=t,
                timed_out=False,
                memory_limit=False,
                stdout_preview=b"",
                stderr_preview=b"",
                stdout_truncated=False,
                stderr_truncated=False,
                stdout_preview_truncated=False,
                stderr_preview_truncated=False,
            )
            s.add(row)
        return row

    def finish_exec(
        self,
        sandbox_id: str,
        seq: int,
        outcome: ExecOutcome,
        usage: tuple[int, int] | None = None,
    ) -> SandboxExec:
        """Record what the exec did; its end is the sandbox's latest activity. ``usage``
        (cpu_ms, peak_memory_bytes) of the sandbox so far, in the same transaction."""
        t = now()
        with self.store.transaction() as s:
            row = s.get(SandboxExec, (sandbox_id, seq))
            if row is None:
                raise NotFound(f"no exec {seq} in sandbox {sandbox_id!r}")
            row.finished_at = t
            row.error = None
            for name, value in vars(outcome).items():
                setattr(row, name, value)
            values: dict[str, object] = {"last_activity_at": t}
            if usage is not None:
                values.update(cpu_ms=usage[0], peak_memory_bytes=usage[1])
            s.execute(
                update(Sandbox)
                .where(Sandbox.id == sandbox_id, Sandbox.status == RUNNING)
                .values(**values)
            )
        return row

    def fail_exec(self, sandbox_id: str, seq: int, error: str) -> None:
        """The exec ended without a result (the sandbox stopped under it)."""
        with self.store.transaction() as s:
            s.execute(
                update(SandboxExec)
                .where(SandboxExec.sandbox_id == sandbox_id, SandboxExec.seq == seq)
                .values(finished_at=now(), error=error[:2000])
            )

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
        q = (
            select(SandboxExec)
            .where(SandboxExec.sandbox_id == sandbox_id)
            .order_by(SandboxExec.seq)
            .limit(limit + 1)
        )
        if cursor is not None:
            q = q.where(SandboxExec.seq > cursor)
        with self.store.reading() as s:
            rows = list(s.scalars(q))
        return _page(rows, limit, rows[limit - 1].seq if len(rows) > limit else None)
