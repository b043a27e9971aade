"""One settings object for the whole platform, read from ``CRUCIBLE_*`` variables.

Limits have a default (applied when a request names none) and a ceiling (a request
above it is rejected, never silently clamped).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LimitBounds(BaseModel):
    """Default and ceiling for every per-run limit."""

    timeout_s: tuple[float, float] = (10.0, 300.0)
    cpu_s: tuple[float, float] = (10.0, 300.0)
    memory_mb: tuple[int, int] = (256, 4096)
    pids: tuple[int, int] = (64, 1024)
    cpus: tuple[float, float] = (1.0, 4.0)
    output_bytes: tuple[int, int] = (1 << 20, 64 << 20)
    disk_mb: tuple[int, int] = (64, 1024)

    # Floors: below these nothing useful can run (a JVM needs ~64 MB to start).
    minimum: dict[str, float] = Field(
        default_factory=lambda: {
            "timeout_s": 0.1,
            "cpu_s": 0.1,
            "memory_mb": 16,
            "pids": 4,
            "cpus": 0.1,
            "output_bytes": 1,
            "disk_mb": 1,
        }
    )


class SandboxBounds(BaseModel):
    """Default and ceiling of a long-lived (agent) sandbox's limits and lifetimes.

    The limits hold for the whole sandbox (every exec in it shares them); ``ttl_s``
    bounds its life from creation, ``idle_timeout_s`` the time without an exec;
    ``exec_timeout_s`` one exec's wall clock.
    """

    memory_mb: tuple[int, int] = (512, 4096)
    cpus: tuple[float, float] = (1.0, 4.0)
    pids: tuple[int, int] = (256, 1024)
    disk_mb: tuple[int, int] = (1024, 8192)
    ttl_s: tuple[float, float] = (3600.0, 86_400.0)
    idle_timeout_s: tuple[float, float] = (600.0, 86_400.0)
    exec_timeout_s: tuple[float, float] = (60.0, 3600.0)

    minimum: dict[str, float] = Field(
        default_factory=lambda: {
            "memory_mb": 16,
            "cpus": 0.1,
            "pids": 8,
            "disk_mb": 1,
            "ttl_s": 0.1,
            "idle_timeout_s": 0.1,
            "exec_timeout_s": 0.01,
        }
    )


class Settings(BaseSettings):
    """Every tunable of the platform. ``CRUCIBLE_<NAME>`` overrides ``<name>``."""

    model_config = SettingsConfigDict(env_prefix="CRUCIBLE_", env_nested_delimiter="__")

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("data")
    # Runtime state (bundles, workspaces, runtime roots). tmpfs-backed /run by default.
    state_dir: Path = Path("/run/crucible")
    # Prefix of every container id, cgroup and bundle this platform creates; the
    # start-up sweep removes leftovers carrying it and nothing else.
    prefix: str = "crucible"
    # The built web UI; default: frontend/dist of the source checkout.
    frontend_dir: Path | None = None

    runc_path: str = "runc"
    runsc_path: str = "runsc"
    crun_path: str = "crun"
    # crun by measurement: the least CPU per run of the three (bench/sandbox_overhead.py).
    default_runtime: Literal["runc", "crun", "gvisor"] = "crun"
    runtime_timeout_s: float = 30.0  # for create/start/kill/delete, not for the program
    # Execs into agent sandboxes through the init's exec agent (engine/agent.py) under
    # runc and crun, instead of a runtime `exec` per command; gVisor always uses `exec`.
    exec_agent: bool = True
    # Warm one-shot sandboxes (engine/pool.py): idle ones kept per shape (runtime and
    # container limits); None: max_concurrency; 0 turns the pool off.
    pool_size: int | None = None
    pool_shapes: int = 2
    # How many programs one warm sandbox runs, one after another, each with namespaces
    # and a cgroup of its own (engine/sandbox.py, Sandbox._job); 1: a fresh container
    # for every program. Under runc and crun, on the host's root, without a compile step.
    sandbox_reuse: int = 100

    # Environments (crucible.environments.store): the store, by default <data_dir>/environments
    # (shared by every worker, like the blobs), and the largest image accepted, as an
    # archive and unpacked.
    environments_dir: Path | None = None
    environment_max_bytes: int = 4 << 30
    # The environment of an agent sandbox whose create names none (the API, the Inspect
    # provider, `crucible sandbox create`); None: host, the host skeleton (which has
    # python, pip, bash and coreutils, as Inspect's default image). A name the store
    # lacks stops the start-up of whatever hosts sandboxes; naming `host` still gives
    # the host. One-shot evaluations keep `host` as their default.
    default_environment: str | None = None
    # Dockerfile builds through the API (POST /environments/build, admins): the
    # largest context archive accepted, as sent and unpacked; its most entries; and
    # the time limit of each build step (a base's pull, buildah bud, the import).
    build_context_max_bytes: int = 1 << 30
    build_context_max_entries: int = 200_000
    build_timeout_s: float = 1800.0

    max_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1)
    limits: LimitBounds = Field(default_factory=LimitBounds)
    compile_limits: dict[str, float] = Field(
        default_factory=lambda: {
            "timeout_s": 60.0,
            "cpu_s": 60.0,
            "memory_mb": 1024,
            "pids": 128,
            "cpus": 2.0,
            "output_bytes": 1 << 20,
        }
    )
    max_code_bytes: int = 1 << 20
    max_files: int = 100  # produced files reported per run
    max_file_bytes: int = 10 << 20  # a produced file larger than this is listed, not kept
    output_chunk_bytes: int = 4096  # live output granularity

    database_url: str | None = None  # default: sqlite under data_dir
    # Distributed mode (dispatcher "celery"): the Celery broker (Redis or RabbitMQ by
    # URL) and the Redis of the event bus and cancel channel (default: the broker when
    # that is Redis).
    broker_url: str = "redis://127.0.0.1:6379/0"
    redis_url: str | None = None
    dispatcher: Literal["embedded", "celery"] = "embedded"
    max_queue: int = 100_000
    max_attempts: int = 3
    # Retries of platform faults wait base * 2^(attempt-1), capped, times a jitter in [0.5, 1].
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    # Every process that runs evaluations writes a heartbeat row this often; one silent
    # for worker_dead_after_s is dead and its running evaluations are re-queued.
    heartbeat_s: float = 2.0
    worker_dead_after_s: float = 20.0
    # A process with a free sandbox slot looks for runnable evaluations in the database
    # this often when nothing woke it (a lost wake-up delays work by at most this).
    claim_poll_s: float = 1.0
    # On SIGTERM, running evaluations get this long to finish before they are left to
    # recovery (re-queued elsewhere).
    shutdown_grace_s: float = 30.0
    # Event streams in Redis are kept this long after their final event.
    event_retention_s: float = 600.0
    # How long the executor keeps retrying a database call that lost its connection.
    db_retry_s: float = 120.0
    inline_output_bytes: int = 64 << 10  # preview kept in the record; the rest is a blob
    # Finished records kept rendered for reads, per process (services/records.py); 0: off.
    record_cache_mb: int = Field(64, ge=0)
    max_batch_items: int = 10_000

    # Access control. The server makes sure this exact key exists as an admin key
    # (automation, tests); without it, the first start with no keys prints a new one.
    bootstrap_admin_key: str | None = Field(default=None, repr=False)
    # A key read from the database stays verified this long in each API process, so
    # most requests need no database read to authenticate. Revoking (or re-quotaing) a
    # key through this process's API applies at once; through the CLI or another API
    # instance, within this many seconds. 0: read the key on every request.
    key_cache_s: float = Field(1.0, ge=0, le=60)
    # Browser origins allowed to call the API cross-origin; empty: CORS off.
    cors_origins: list[str] = Field(default_factory=list)
    # Largest request body accepted (413 above it); a batch of many programs is large.
    max_body_bytes: int = 64 << 20
    log_format: Literal["text", "json"] = "text"
    # Per-key quotas (an admin can override each per key). 0 means unlimited.
    quota_max_running: int = 0
    # A Celery worker serves its own Prometheus metrics (sandbox run durations) on this
    # port when set; the API's /metrics covers the database-wide figures.
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "127.0.0.1"
    quota_max_queued: int = 0
    quota_per_hour: int = 0
    # Long-lived sandboxes running at once per key (0: unlimited).
    quota_max_sandboxes: int = 0

    # Long-lived (agent) sandboxes: limits, lifetimes, and how often the reaper looks
    # for sandboxes past their ttl_s or idle_timeout_s (the precision of both).
    sandbox_limits: SandboxBounds = Field(default_factory=SandboxBounds)
    sandbox_reap_s: float = 1.0
    # Sandbox hosts (distributed mode): `crucible worker --sandboxes N --listen
    # ADDR:PORT [--advertise URL]` hosts up to N agent sandboxes and serves them to API
    # instances on its cluster endpoint, which accepts only this shared secret (never
    # an API key); hosting refuses to start without it. API instances place each new
    # sandbox on the best of `placement_choices` random hosts with room.
    cluster_token: str | None = Field(default=None, repr=False)
    sandbox_host_capacity: int = Field(0, ge=0)
    sandbox_host_listen: str | None = None
    sandbox_host_advertise: str | None = None
    placement_choices: int = Field(3, ge=1)

    @field_validator("default_environment")
    @classmethod
    def _unset_when_empty(cls, value: str | None) -> str | None:
        return value or None  # CRUCIBLE_DEFAULT_ENVIRONMENT= unsets it

    @model_validator(mode="after")
    def _check_ceilings(self) -> Settings:
        for name in LimitBounds.model_fields:
            if name == "minimum":
                continue
            default, ceiling = getattr(self.limits, name)
            if default > ceiling:
                raise ValueError(f"limits.{name}: default {default} above ceiling {ceiling}")
        for name in SandboxBounds.model_fields:
            if name == "minimum":
                continue
            default, ceiling = getattr(self.sandbox_limits, name)
            if default > ceiling:
                raise ValueError(
                    f"sandbox_limits.{name}: default {default} above ceiling {ceiling}"
                )
        if self.worker_dead_after_s < 3 * self.heartbeat_s:
            raise ValueError("worker_dead_after_s must be at least 3 heartbeats")
        production_celery = self.environment == "production" and self.dispatcher == "celery"
        if production_celery and not (self.database_url or "").startswith("postgresql"):
            raise ValueError("the celery dispatcher needs a PostgreSQL database_url")
        return self

    @property
    def longest_run_s(self) -> float:
        """The longest an evaluation may legitimately run: compile + run ceilings + verbs."""
        return (
            self.limits.timeout_s[1]
            + self.compile_limits["timeout_s"]
            + 4 * self.runtime_timeout_s  # create, start, kill, delete
        )

    @property
    def visibility_timeout_s(self) -> float:
        """Redis transport: an unacknowledged task is redelivered after this long, so it
        must outlast the longest run (else a healthy long run is delivered twice)."""
        return self.longest_run_s + 300.0

    @property
    def event_redis_url(self) -> str:
        """The Redis of the event bus; raises ValueError when none can be derived."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url.startswith(("redis://", "rediss://", "unix://")):
            return self.broker_url
        raise ValueError("CRUCIBLE_REDIS_URL is needed when the broker is not Redis")

    @property
    def environments_root(self) -> Path:
        return self.environments_dir or self.data_dir / "environments"

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return url
        return f"sqlite:///{(self.data_dir / 'crucible.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
