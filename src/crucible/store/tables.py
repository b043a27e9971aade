"""The database tables (SQLAlchemy 2 typed declarative). Migrations live in ``migrations/``.

``seq`` is an auto-incrementing integer that orders evaluations by submission (the
queue's tie-breaker and the list's cursor); ``id`` is the public, opaque name.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
SeqType = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: UTCDateTime}


class Batch(Base):
    __tablename__ = "batches"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    created_at: Mapped[datetime]
    count: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The API key that submitted it (None: before keys existed).
    owner_key_id: Mapped[str | None] = mapped_column(String(32), index=True)
    # Idempotency-Key (scoped to the key) and a digest of the body it came with.
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    # Its evaluations counted by status (n_), termination (t_) and verdict (v_), kept
    # in the same transaction as every status change (``crucible.store.tallies``), so
    # reading a batch never counts its rows.
    n_queued: Mapped[int] = mapped_column(Integer, default=0)
    n_running: Mapped[int] = mapped_column(Integer, default=0)
    n_completed: Mapped[int] = mapped_column(Integer, default=0)
    n_cancelled: Mapped[int] = mapped_column(Integer, default=0)
    n_error: Mapped[int] = mapped_column(Integer, default=0)
    t_exited: Mapped[int] = mapped_column(Integer, default=0)
    t_timeout: Mapped[int] = mapped_column(Integer, default=0)
    t_memory_limit: Mapped[int] = mapped_column(Integer, default=0)
    t_output_limit: Mapped[int] = mapped_column(Integer, default=0)
    t_compile_error: Mapped[int] = mapped_column(Integer, default=0)
    t_cancelled: Mapped[int] = mapped_column(Integer, default=0)
    v_passed: Mapped[int] = mapped_column(Integer, default=0)
    v_failed: Mapped[int] = mapped_column(Integer, default=0)


class Evaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (
        # The queue: each owner's next to claim is its lowest (priority, seq) among
        # queued, and the owners with queued work are found by skipping along it
        # (crucible.store.queue: a claim costs a few index probes per owner).
        Index("ix_evaluations_owner_queue", "status", "owner_key_id", "priority", "seq"),
        # The list, newest first, by each filter: an equality on the column, then
        # ``seq`` descending, is a range of the index read backwards (LIMIT 51 rows),
        # on both backends; a lone-column index would make PostgreSQL sort every match.
        Index("ix_evaluations_batch_seq", "batch_id", "seq"),
        Index("ix_evaluations_status_seq", "status", "seq"),
        Index("ix_evaluations_language_seq", "language", "seq"),
        Index("ix_evaluations_termination_seq", "termination", "seq"),
        Index("ix_evaluations_verdict_seq", "verdict", "seq"),
        Index("ix_evaluations_owner_seq", "owner_key_id", "seq"),
        # Is an environment in use (queued or running work naming it)?
        Index("ix_evaluations_environment", "environment", "status"),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    batch_id: Mapped[str | None] = mapped_column(String(32), ForeignKey("batches.id"))
    status: Mapped[str] = mapped_column(String(16))
    priority: Mapped[int] = mapped_column(Integer)  # Priority.rank
    language: Mapped[str] = mapped_column(String(32))
    # The normalised request (limits resolved), exactly as it will run.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # Claims so far; also the fence: only the holder of the latest claim may finish it.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    termination: Mapped[str | None] = mapped_column(String(32))
    verdict: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    # Blob digests: {"stdout": ..., "stderr": ..., "files": {path: digest}}.
    blobs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The API key that submitted it (None: before keys existed); fair share and scoping.
    owner_key_id: Mapped[str | None] = mapped_column(String(32))
    # Static-scan flags of the submitted code, as ",name,name," (LIKE-filterable on
    # both backends); informational only.
    flags: Mapped[str] = mapped_column(String(300), default="")
    # The process (workers.id) holding the current claim; recovery only touches the
    # evaluations of processes known to be dead.
    worker_id: Mapped[str | None] = mapped_column(String(96), index=True)
    # A retry's backoff: not claimed before this.
    not_before: Mapped[datetime | None]
    # The environment's name ("host": the host's toolchain); its digest, pinned at
    # submission, is in ``request``.
    environment: Mapped[str] = mapped_column(String(300), default="host")


class Worker(Base):
    """A process that runs evaluations: a Celery worker, or an embedded server.

    Its heartbeat row is the source of truth for liveness. ``node`` names the pid
    namespace (boot id + pid-namespace inode), so ``pid`` can be checked directly by
    any process on the same node.
    """

    __tablename__ = "workers"
    __table_args__ = (Index("ix_workers_liveness", "state", "last_heartbeat"),)

    id: Mapped[str] = mapped_column(String(96), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # celery | embedded
    host: Mapped[str] = mapped_column(String(255))
    node: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    proc_start: Mapped[str] = mapped_column(String(32))  # /proc/<pid>/stat start time
    queues: Mapped[str] = mapped_column(String(200), default="")
    capacity: Mapped[int] = mapped_column(Integer)
    running: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16))  # alive | dead | stopped
    started_at: Mapped[datetime]
    last_heartbeat: Mapped[datetime]
    # A sandbox host (``crucible worker --sandboxes N``): how many agent sandboxes it
    # hosts at most, how many at its last heartbeat, and the URL of its cluster
    # endpoint (None: it hosts none). ``epoch`` is bumped each time it is declared
    # dead, so a host that comes back knows the database took its sandboxes away.
    sandbox_capacity: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    sandboxes_running: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    endpoint: Mapped[str | None] = mapped_column(String(300), default=None)
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Attempt(Base):
    """One claim of an evaluation: who ran it, when, and how it ended."""

    __tablename__ = "attempts"

    evaluation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("evaluations.id", ondelete="CASCADE"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)
    worker_id: Mapped[str | None] = mapped_column(String(96))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # completed | cancelled | error | requeued (a platform fault; retried)
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)


class DeadLetter(Base):
    """An evaluation that ended in ``error``: the reason and every attempt, kept for a
    person to inspect and, if they choose, retry (as a new evaluation)."""

    __tablename__ = "dead_letters"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    evaluation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("evaluations.id", ondelete="CASCADE"), unique=True
    )
    created_at: Mapped[datetime]
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    retried_as: Mapped[str | None] = mapped_column(String(32))
    retried_at: Mapped[datetime | None]


class Label(Base):
    """One ``key: value`` label of an evaluation (a table so both backends can filter)."""

    __tablename__ = "labels"
    # The list's ``?label=k:v`` reads this index's range, already in seq order.
    __table_args__ = (Index("ix_labels_kv_seq", "key", "value", "evaluation_seq"),)

    evaluation_seq: Mapped[int] = mapped_column(
        SeqType, ForeignKey("evaluations.seq", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class OwnerTurn(Base):
    """When each owner (an API key, or "" for evaluations without one) last had an
    evaluation claimed: owners with equally many running take turns, least recently
    served first, so one slot freed at a time does not always go to the oldest batch."""

    __tablename__ = "owner_turns"

    owner: Mapped[str] = mapped_column(String(32), primary_key=True)
    served_at: Mapped[datetime]


class ApiKey(Base):
    """An API key. Only the SHA-256 of the key is stored; the key itself is shown once.

    Quota columns left None use the settings' defaults.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))  # admin | researcher
    # "crk_" + the first characters of the secret: recognisable, not enough to guess.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    max_running: Mapped[int | None] = mapped_column(Integer)
    max_queued: Mapped[int | None] = mapped_column(Integer)
    per_hour: Mapped[int | None] = mapped_column(Integer)
    max_sandboxes: Mapped[int | None] = mapped_column(Integer)
    # Per-limit ceilings (e.g. {"memory_mb": 512}), below the platform's.
    limit_ceilings: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AuditEntry(Base):
    """One state-changing request or admin action, hash-chained to the one before.

    ``hash = sha256(prev_hash + canonical JSON of the entry)``; see crucible.store.audit.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_actor", "actor_key_id", "seq"),)

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor_key_id: Mapped[str | None] = mapped_column(String(32))
    actor_name: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(200), index=True)
    source: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[int] = mapped_column(Integer)  # the HTTP status (or 0 for the CLI)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Sandbox(Base):
    """A long-lived (agent) sandbox: its settings, state and what it used.

    It lives in one process (``owner_*``, the identity the dispatcher's heartbeat
    uses): when that process is found dead, its ``running`` rows become ``lost``.
    """

    __tablename__ = "sandboxes"
    __table_args__ = (
        Index("ix_sandboxes_owner_status", "owner_key_id", "status"),
        Index("ix_sandboxes_status_process", "status", "owner_process_id"),
        Index("ix_sandboxes_environment", "environment", "status"),
        Index("ix_sandboxes_network_group", "network_group", "status"),
    )

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(32), unique=True)
    owner_key_id: Mapped[str | None] = mapped_column(String(32))
    runtime: Mapped[str] = mapped_column(String(16))
    limits: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Float, as migration 0005 made them (a bare Mapped[float] is a Double).
    ttl_s: Mapped[float] = mapped_column(Float)
    idle_timeout_s: Mapped[float] = mapped_column(Float)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16))  # running | stopped | lost
    # deleted | ttl | idle_timeout | crashed | lost | shutdown
    stop_reason: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime]
    last_activity_at: Mapped[datetime]
    stopped_at: Mapped[datetime | None]
    # The hosting process (crucible.services.identity): its id, node, host, pid and
    # the pid's start time, so a sweep can tell whether it is still alive.
    owner_process_id: Mapped[str] = mapped_column(String(96))
    owner_node: Mapped[str] = mapped_column(String(128))
    owner_host: Mapped[str] = mapped_column(String(255))
    owner_pid: Mapped[int] = mapped_column(Integer)
    owner_proc_start: Mapped[str] = mapped_column(String(32))
    cpu_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    peak_memory_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    exec_count: Mapped[int] = mapped_column(Integer, default=0)
    # The root it runs over ("host": the host skeleton) and that root's digest.
    environment: Mapped[str] = mapped_column(String(300), default="host")
    environment_digest: Mapped[str | None] = mapped_column(String(80))
    # The private network it joined ("<key>/<group>"): a compose sample's services
    # must share one host, since that network is local to the host.
    network_group: Mapped[str | None] = mapped_column(String(200), default=None)
    # Why it stopped, in words (the host lost, and since when), beside ``stop_reason``.
    stop_detail: Mapped[str | None] = mapped_column(Text, default=None)


class SandboxExec(Base):
    """One exec in a sandbox: the transcript, which outlives the sandbox. Output is a
    preview of ``inline_output_bytes`` here; the whole of it a blob when longer."""

    __tablename__ = "sandbox_execs"
    # A retried exec (the caller's Idempotency-Key) finds the first; never runs twice.
    __table_args__ = (
        UniqueConstraint("sandbox_id", "idempotency_key", name="uq_sandbox_execs_idempotency"),
    )

    sandbox_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("sandboxes.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    cmd: Mapped[list[str]] = mapped_column(JSON)
    cwd: Mapped[str | None] = mapped_column(Text)
    user: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    returncode: Mapped[int | None] = mapped_column(Integer)
    timed_out: Mapped[bool] = mapped_column(Boolean, default=False)
    # The sandbox reached its memory limit during the exec (ExecResult.memory_limit).
    memory_limit: Mapped[bool] = mapped_column(Boolean, default=False)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    stdout_preview: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    stderr_preview: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    # The engine's cap was passed (its tail kept) / the preview is shorter than the output.
    stdout_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    stderr_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    stdout_preview_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    stderr_preview_truncated: Mapped[bool] = mapped_column(Boolean, default=False)
    # Blob digests of the whole output when longer than the preview.
    stdout_blob: Mapped[str | None] = mapped_column(String(64))
    stderr_blob: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
