"""The evaluation shapes the core needs: what a submission asks for
(:class:`EvaluationCreate`, :class:`BatchCreate`), what the executor runs
(:class:`EvaluationRequest`) and the records the service returns (``*Public``,
``*List``). They live below the API so that the services, the client and the CLI
import them downward; ``crucible.api.schemas`` re-exports them, and the OpenAPI
document names them as before (a schema is named by its class, not its module).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from crucible.core.lifecycle import Priority, Status, Verdict
from crucible.domain.models import EnvironmentName
from crucible.domain.paging import Page
from crucible.engine.models import Limits, Result, RuntimeName

LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^:]+$")]
LabelValue = Annotated[str, StringConstraints(max_length=200)]


class LimitsCreate(BaseModel):
    """Requested limits; unset ones take the server's defaults (see GET /api/v1/queue)."""

    model_config = ConfigDict(extra="forbid")

    timeout_s: float | None = Field(None, description="wall-clock limit, seconds")
    cpu_s: float | None = Field(None, description="CPU-time limit, seconds")
    memory_mb: int | None = Field(None, description="memory limit, MiB")
    pids: int | None = Field(None, description="processes and threads")
    cpus: float | None = Field(None, description="CPU cores")
    output_bytes: int | None = Field(None, description="cap on stdout+stderr, bytes")
    disk_mb: int | None = Field(None, description="/workspace and /tmp size, MiB")


class EvaluationFields(BaseModel):
    """Fields shared by a submission and a batch's defaults (all optional here)."""

    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(None, description="default python", examples=["python"])
    code: str | None = Field(None, description="the program (or give files + entrypoint)")
    files: dict[str, str] | None = Field(None, description="relative path → content")
    entrypoint: str | None = Field(None, description="the file to run, among files")
    stdin: str | None = None
    args: list[str] | None = None
    limits: LimitsCreate | None = None
    runtime: RuntimeName | None = Field(
        None,
        description="runc, crun or gvisor (default: the server's CRUCIBLE_DEFAULT_RUNTIME)",
    )
    environment: EnvironmentName | None = Field(
        None,
        description="the root file system to run in (GET /api/v1/environments); default"
        " host: the host's toolchain",
        examples=["host", "python:3.12-slim"],
    )
    priority: Priority | None = None
    labels: dict[LabelKey, LabelValue] | None = Field(None, max_length=50)
    expected_output: str | None = Field(
        None, description="judged against stdout, trailing whitespace ignored"
    )
    test_code: str | None = Field(
        None, description="python: appended to the program; passes when it exits 0"
    )


class EvaluationCreate(EvaluationFields):
    """One program to evaluate: ``code``, or ``files`` and ``entrypoint``."""

    @model_validator(mode="after")
    def _code_or_files(self) -> EvaluationCreate:
        if self.code is not None and self.files is not None:
            raise ValueError("give either code or files, not both")
        if self.code is None and not self.files:
            raise ValueError("give code, or files and entrypoint")
        return self


class EvaluationRequest(BaseModel):
    """The submission as it runs: defaults applied, limits resolved."""

    language: str
    code: str | None
    files: dict[str, str] | None
    entrypoint: str | None
    stdin: str
    args: list[str]
    limits: Limits
    runtime: RuntimeName
    environment: str = Field("host", description="the environment's name")
    environment_digest: str | None = Field(
        None, description="its digest when submitted (null for host); a run needs the same"
    )
    priority: Priority
    labels: dict[str, str]
    expected_output: str | None
    test_code: str | None


class ResultPublic(Result):
    """The sandbox's Result, plus the verdict and whether the output is only a preview."""

    verdict: Verdict | None = Field(description="passed / failed; null when not judged")
    stdout_inline_truncated: bool = Field(
        False, description="stdout here is a preview; GET …/output/stdout has all of it"
    )
    stderr_inline_truncated: bool = False


class EvaluationPublic(BaseModel):
    id: str
    status: Status
    batch_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    queue_wait_ms: int | None = Field(description="from submission to the latest start")
    attempts: int
    error: str | None = Field(description="the platform failure, for status error")
    worker_id: str | None = Field(
        None, description="the process holding the current (or last) claim"
    )
    request: EvaluationRequest
    result: ResultPublic | None
    owner_key_id: str | None = Field(None, description="the API key that submitted it")
    flags: list[str] = Field(
        default_factory=list,
        description="static-scan signals of the code (process, network, ffi, file_write,"
        " dynamic_code); informational, never blocking",
    )


class EvaluationList(Page[EvaluationPublic]):
    pass


class CancelPublic(BaseModel):
    id: str
    status: Status = Field(description="cancelled, or running while the kill is under way")


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[EvaluationFields] = Field(min_length=1, description="≤ max_batch_items")
    defaults: EvaluationFields | None = Field(None, description="merged under each item")
    labels: dict[LabelKey, LabelValue] | None = Field(None, description="the batch's own")


class BatchCreated(BaseModel):
    id: str
    count: int


class BatchPublic(BaseModel):
    id: str
    created_at: datetime
    count: int
    labels: dict[str, Any]
    by_status: dict[str, int]
    by_termination: dict[str, int]
    by_verdict: dict[str, int]
    done: int = Field(description="evaluations in a final status")
    progress: float = Field(description="done / count")
    pass_rate: float | None = Field(description="passed / judged among the done")
    finished: bool


class QueuePublic(BaseModel):
    depth: dict[str, int] = Field(description="queued evaluations by priority")
    queued: int
    running: int
    capacity: int = Field(description="sandboxes run at once by this server")
    max_queue: int


class WorkerPublic(BaseModel):
    """A process that runs evaluations (a Celery worker, or an embedded server), and
    may host agent sandboxes (``crucible worker --sandboxes N``)."""

    id: str
    kind: str = Field(description="celery or embedded")
    host: str
    pid: int
    queues: list[str] = Field(description="queues consumed, in priority order")
    capacity: int = Field(description="sandboxes it runs at once")
    running: int = Field(description="evaluations running at its last heartbeat")
    load: float = Field(description="running / capacity")
    state: str = Field(description="alive, dead (stopped heartbeating) or stopped")
    started_at: datetime
    last_heartbeat: datetime
    sandbox_capacity: int = Field(
        0, description="agent sandboxes it hosts at most (0: it hosts none)"
    )
    sandboxes_running: int = Field(0, description="agent sandboxes it hosted at its last heartbeat")


class WorkerList(BaseModel):
    items: list[WorkerPublic]


class AttemptPublic(BaseModel):
    attempt: int
    worker_id: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None = Field(description="requeued, error, completed or cancelled")
    error: str | None


class DeadLetterPublic(BaseModel):
    """An evaluation that ended in ``error``, with the reason and every attempt."""

    id: str
    evaluation_id: str
    created_at: datetime
    reason: str
    attempts: list[AttemptPublic]
    retried_as: str | None = Field(description="the evaluation created by a retry")
    retried_at: datetime | None


class DeadLetterList(Page[DeadLetterPublic]):
    pass
