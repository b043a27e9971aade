"""The API's data shapes, named by suffix: ``*Create`` in, ``*Public`` out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from crucible.domain.evaluations import (  # the evaluations' shapes live below the API
    AttemptPublic,
    BatchCreate,
    BatchCreated,
    BatchPublic,
    CancelPublic,
    DeadLetterList,
    DeadLetterPublic,
    EvaluationCreate,
    EvaluationFields,
    EvaluationList,
    EvaluationPublic,
    EvaluationRequest,
    LabelKey,
    LabelValue,
    LimitsCreate,
    QueuePublic,
    ResultPublic,
    WorkerList,
    WorkerPublic,
)
from crucible.domain.models import (  # the sandboxes' shapes live below the API
    EnvironmentBuild,
    EnvironmentPublic,
    EnvironmentPull,
    ExecCreate,
    ExecList,
    ExecPublic,
    SandboxCreate,
    SandboxLimitsCreate,
    SandboxList,
    SandboxPublic,
)
from crucible.domain.paging import Page

__all__ = [
    "AttemptPublic",
    "BatchCreate",
    "BatchCreated",
    "BatchPublic",
    "CancelPublic",
    "DeadLetterList",
    "DeadLetterPublic",
    "EnvironmentBuild",
    "EnvironmentPublic",
    "EnvironmentPull",
    "EvaluationCreate",
    "EvaluationFields",
    "EvaluationList",
    "EvaluationPublic",
    "EvaluationRequest",
    "ExecCreate",
    "ExecList",
    "ExecPublic",
    "LabelKey",
    "LabelValue",
    "LimitsCreate",
    "QueuePublic",
    "ResultPublic",
    "SandboxCreate",
    "SandboxLimitsCreate",
    "SandboxList",
    "SandboxPublic",
    "WorkerList",
    "WorkerPublic",
]


class ErrorPublic(BaseModel):
    """Every error response: a message, and the offending field when there is one."""

    detail: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = None
    error: str | None = Field(
        None,
        description="machine-readable kind, where a status is shared: not_found,"
        " permission_denied, is_a_directory, too_large (a file in a sandbox), sandbox_stopped,"
        " sandbox_lost, network_elsewhere, build_failed",
    )


# -- access control and audit ---------------------------------------------------

Role = Literal["admin", "researcher"]
LimitName = Literal["timeout_s", "cpu_s", "memory_mb", "pids", "cpus", "output_bytes", "disk_mb"]


class KeyQuotas(BaseModel):
    """Per-key overrides; null means the server's default (0 there: unlimited)."""

    model_config = ConfigDict(extra="forbid")

    max_running: int | None = Field(
        None, ge=0, le=1_000_000, description="evaluations running at once"
    )
    max_queued: int | None = Field(
        None, ge=0, le=1_000_000_000, description="evaluations waiting at once"
    )
    per_hour: int | None = Field(
        None, ge=0, le=1_000_000_000, description="evaluations submitted per hour"
    )
    max_sandboxes: int | None = Field(
        None, ge=0, le=1_000_000, description="long-lived sandboxes running at once"
    )
    limit_ceilings: dict[LimitName, Annotated[float, Field(gt=0, le=1e12)]] | None = Field(
        None, description="highest value this key may request per limit, e.g. memory_mb"
    )


class KeyCreate(KeyQuotas):
    name: str = Field(min_length=1, max_length=100)
    role: Role = "researcher"


class KeyPublic(BaseModel):
    id: str
    name: str
    role: Role
    prefix: str = Field(description="the key's first characters, to recognise it")
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    max_running: int | None
    max_queued: int | None
    per_hour: int | None
    max_sandboxes: int | None
    limit_ceilings: dict[str, float] | None


class KeyCreated(KeyPublic):
    key: str = Field(description="the secret; shown this once and never again")


class AuditPublic(BaseModel):
    seq: int
    at: datetime
    actor_key_id: str | None
    actor_name: str | None
    action: str
    target: str | None
    source: str | None
    request_id: str | None
    outcome: int = Field(description="the HTTP status of the request")
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditList(Page[AuditPublic]):
    next_cursor: str | None  # (undocumented, as it always was)


class WhoAmI(BaseModel):
    id: str
    name: str
    role: Role
