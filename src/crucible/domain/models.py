"""Domain shapes of long-lived (agent) sandboxes, below the API: the service, the
client and the CLI use them, and ``crucible.api.schemas`` re-exports them, so the
arrows point one way (the evaluation shapes beside them: :mod:`.evaluations`). Their
statuses, which the store persists, are in :mod:`crucible.core.lifecycle`.

Output is bytes in the engine (:class:`crucible.engine.models.ExecResult`); on the
wire it is text: ``stdout``/``stderr`` hold it decoded as UTF-8 (invalid bytes become
U+FFFD), and ``stdout_base64``/``stderr_base64`` are set exactly when the bytes are
not valid UTF-8, carrying them unchanged. So ``raw = b64decode(x_base64) if x_base64
else x.encode()`` holds whatever the command printed.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from crucible.core.lifecycle import SandboxStatus, StopReason
from crucible.domain.execs import ExecRequest
from crucible.domain.paging import Page
from crucible.engine.models import RuntimeName

LabelKey = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=r"^[^:]+$")]
LabelValue = Annotated[str, StringConstraints(max_length=200)]
# An environment's name as a request gives it (checked against the store, which
# also checks its form: crucible.environments.store.check_name).
EnvironmentName = Annotated[str, StringConstraints(min_length=1, max_length=300)]


class SandboxLimitsCreate(BaseModel):
    """Requested limits of the whole sandbox; unset ones take the server's defaults."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int | None = Field(None, description="memory of the whole sandbox, MiB")
    cpus: float | None = Field(None, description="CPU cores quota")
    pids: int | None = Field(None, description="processes and threads")
    disk_mb: int | None = Field(None, description="writable layer over the root, MiB")


class SandboxNetwork(BaseModel):
    """A place on a private network shared by the sandboxes of one ``group`` (one
    sample's compose services): they reach each other by host name, and nothing else.
    Every member names the same ``members``; the network is made with the first and
    removed with the last. Groups are per API key. runc and crun only."""

    model_config = ConfigDict(extra="forbid")

    group: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    hostname: str = Field(examples=["victim"])
    members: list[str] = Field(min_length=1, max_length=200, examples=[["default", "victim"]])


class SandboxCreate(BaseModel):
    """A long-lived sandbox to create. Unset fields take the server's defaults."""

    model_config = ConfigDict(extra="forbid")

    runtime: RuntimeName | None = Field(
        None, description="runc, crun or gvisor (default: the server's CRUCIBLE_DEFAULT_RUNTIME)"
    )
    environment: EnvironmentName | None = Field(
        None,
        description="the root the sandbox's writable layer goes over (GET"
        " /api/v1/environments); default: the server's CRUCIBLE_DEFAULT_ENVIRONMENT,"
        " else host (the host skeleton: the host's toolchain, with python and pip)",
        examples=["host", "python:3.12-slim"],
    )
    limits: SandboxLimitsCreate | None = None
    network: SandboxNetwork | None = Field(
        None, description="default: no network at all (loopback only)"
    )
    ttl_s: float | None = Field(None, description="stopped this long after creation")
    idle_timeout_s: float | None = Field(None, description="stopped after this long idle")
    labels: dict[LabelKey, LabelValue] | None = Field(None, max_length=50)


class SandboxLimitsPublic(BaseModel):
    memory_mb: int
    cpus: float
    pids: int
    disk_mb: int


class SandboxResources(BaseModel):
    """What the sandbox used so far (its cgroup's counters) and how many execs."""

    cpu_ms: int
    peak_memory_bytes: int
    exec_count: int


class SandboxPublic(BaseModel):
    id: str
    status: SandboxStatus
    stop_reason: StopReason | None = Field(description="why it stopped; null while running")
    runtime: RuntimeName
    environment: str = Field(description="the environment's name (host: the host skeleton)")
    environment_digest: str | None = Field(description="its digest at creation; null for host")
    limits: SandboxLimitsPublic
    ttl_s: float
    idle_timeout_s: float
    labels: dict[str, str]
    owner_key_id: str | None = Field(description="the API key that created it")
    created_at: datetime
    last_activity_at: datetime
    stopped_at: datetime | None
    expires_at: datetime = Field(description="created_at + ttl_s")
    resources: SandboxResources
    worker_id: str | None = Field(
        None,
        description="the process hosting it (an id of /api/v1/workers: a `crucible worker"
        " --sandboxes N` in distributed mode, the server itself embedded)",
    )
    stop_detail: str | None = Field(
        None, description="why it stopped, in words (e.g. which host was lost)"
    )


class SandboxList(Page[SandboxPublic]):
    pass


class ExecCreate(BaseModel):
    """One command to run in the sandbox (an argv, no shell unless you ask for one)."""

    model_config = ConfigDict(extra="forbid")

    cmd: list[Annotated[str, StringConstraints(max_length=1 << 20)]] = Field(
        min_length=1, max_length=10_000, examples=[["bash", "-lc", "echo hello"]]
    )
    input: str | None = Field(None, description="stdin, as text")
    input_base64: str | None = Field(None, description="stdin, as base64 bytes")
    cwd: str | None = Field(None, max_length=4096, description="default: the working dir")
    env: dict[str, str] | None = Field(None, max_length=1000)
    user: str | None = Field(None, max_length=64, description="a user inside the sandbox")
    timeout_s: float | None = Field(
        None, gt=0, description="kills the exec's processes (not the sandbox) after this"
    )
    detach: bool | None = Field(
        None,
        description="start cmd as a service (its own session, output discarded) and answer"
        " once it runs (127/126 when it cannot be executed)",
    )

    @model_validator(mode="after")
    def _one_input(self) -> ExecCreate:
        if self.input is not None and self.input_base64 is not None:
            raise ValueError("give input or input_base64, not both")
        if self.input_base64 is not None:
            try:
                base64.b64decode(self.input_base64, validate=True)
            except ValueError:
                raise ValueError("input_base64 is not valid base64") from None
        return self

    def stdin(self) -> bytes | None:
        if self.input_base64 is not None:
            return base64.b64decode(self.input_base64)
        return self.input.encode() if self.input is not None else None

    def request(self) -> ExecRequest:
        """This body as the value the services pass on (stdin decoded)."""
        return ExecRequest(
            self.cmd, self.stdin(), self.cwd, self.env, self.user, self.timeout_s,
            bool(self.detach),
        )  # fmt: skip


class ExecPublic(BaseModel):
    """One exec: the command, and (once finished) what it did.

    In the answer to POST …/exec the output is whole (up to the engine's cap per
    stream, past which the tail is kept: ``*_truncated``). In the transcript
    (GET …/execs) it is a preview of ``inline_output_bytes``
    (``*_preview_truncated``); GET …/execs/{seq}/output/{stream} has all of it.
    """

    sandbox_id: str
    seq: int = Field(description="1, 2, 3… within the sandbox")
    cmd: list[str]
    cwd: str | None
    user: str | None
    started_at: datetime
    finished_at: datetime | None = Field(description="null while it runs")
    returncode: int | None = Field(description="128+N when killed by signal N; null: no end")
    timed_out: bool
    memory_limit: bool = Field(
        False,
        description="the sandbox reached its memory limit during the exec (an OOM kill, its"
        " peak first at the limit, or at the limit when the timeout struck)",
    )
    duration_ms: int | None
    stdout: str
    stderr: str
    stdout_base64: str | None = Field(None, description="set when stdout is not UTF-8")
    stderr_base64: str | None = Field(None, description="set when stderr is not UTF-8")
    stdout_truncated: bool = Field(description="the engine's cap was passed; the tail kept")
    stderr_truncated: bool
    stdout_preview_truncated: bool = Field(False, description="stdout here is a preview")
    stderr_preview_truncated: bool = False
    error: str | None = Field(None, description="why it has no result (the sandbox stopped)")

    @property
    def stdout_bytes(self) -> bytes:
        """stdout exactly as the command wrote it."""
        return raw_output(self.stdout, self.stdout_base64)

    @property
    def stderr_bytes(self) -> bytes:
        return raw_output(self.stderr, self.stderr_base64)


class ExecList(Page[ExecPublic]):
    pass


def text_fields(name: str, data: bytes) -> dict[str, str | None]:
    """``{name: text, name_base64: exact bytes or None}`` as described above."""
    try:
        return {name: data.decode("utf-8"), f"{name}_base64": None}
    except UnicodeDecodeError:
        return {
            name: data.decode("utf-8", "replace"),
            f"{name}_base64": base64.b64encode(data).decode("ascii"),
        }


def raw_output(text: str, b64: str | None) -> bytes:
    """The exact bytes of an output field pair (the inverse of :func:`text_fields`)."""
    return base64.b64decode(b64) if b64 is not None else text.encode("utf-8")


class EnvironmentBuild(BaseModel):
    """What a Dockerfile build was made from: its cache key covers exactly these
    (``crucible env build --dockerfile``, a compose ``build:``)."""

    key: str = Field(description="the cache key: sha256 hex of the record below")
    format: str = Field(
        description="the version of the record's shape", examples=["crucible-dockerfile-v1"]
    )
    dockerfile: str = Field(description="sha256:… of the Dockerfile's text")
    context: str = Field(description="sha256:… of the context's tree (names, modes, bytes)")
    bases: dict[str, str] = Field(
        description="each FROM image as written → the digest it resolved to",
        examples=[{"python:3.12-slim": "sha256:…"}],
    )
    args: dict[str, str] = Field(description="the build args given")
    target: str | None = Field(None, description="the stage built (none: the last)")


class EnvironmentPublic(BaseModel):
    """A named, content-addressed, read-only root file system runs can name."""

    name: str = Field(examples=["python:3.12-slim"])
    digest: str = Field(description="sha256:… of its content; names may share one")
    size_bytes: int = Field(description="disk used by the root")
    created_at: datetime
    source: str = Field(
        description="docker-archive, oci, registry (pulled), build (mmdebstrap) or dockerfile"
    )
    env: list[str] = Field(description="the image config's Env (KEY=value)")
    workdir: str = Field(description="the image config's WorkingDir")
    user: str = Field(description="the image config's User")
    entrypoint: list[str] = Field(default_factory=list, description="the image config's Entrypoint")
    cmd: list[str] = Field(
        default_factory=list,
        description="the image config's Cmd (a compose service naming no command starts"
        " entrypoint + cmd)",
    )
    programs: dict[str, str] = Field(description="program → its path inside the root")
    languages: list[str] = Field(description="the languages whose programs it has")
    ref: str | None = Field(
        None,
        description="pulled: the image reference, normalised (docker.io/library/python:3.12)",
        examples=["docker.io/library/python:3.12-slim"],
    )
    manifest_digest: str | None = Field(
        None,
        description="pulled: the digest of the manifest the reference named (pull"
        " <repository>@<digest> for the same image again)",
    )
    build: EnvironmentBuild | None = Field(
        None, description="a Dockerfile build (source dockerfile): what it was made from"
    )


class EnvironmentPull(BaseModel):
    """An image to pull from its registry into an environment."""

    model_config = ConfigDict(extra="forbid")

    ref: str = Field(
        min_length=1,
        max_length=300,
        description="[host[:port]/]name[:tag][@sha256:…]; a digest must match what the"
        " registry serves",
        examples=["python:3.12-slim", "ghcr.io/org/tool@sha256:…"],
    )
    name: EnvironmentName | None = Field(
        None, description="default: the reference as Docker shows it (python:3.12-slim)"
    )
    replace: bool = Field(False, description="replace an environment of this name")
