"""The sandbox's data: what to run (:class:`RunRequest`) and what happened (:class:`Result`).

A ``Result`` is data about the untrusted program, whatever it did; platform failures
are exceptions (``crucible.core.errors``), never a ``Result``.
"""

from __future__ import annotations

import base64
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RuntimeName = Literal["runc", "crun", "gvisor"]


class Termination(StrEnum):
    """Why the program stopped; see the verdict table in the README."""

    exited = "exited"
    timeout = "timeout"
    memory_limit = "memory_limit"
    output_limit = "output_limit"
    compile_error = "compile_error"
    cancelled = "cancelled"


class Limits(BaseModel):
    """Limits as applied to one run (every field resolved, none optional)."""

    model_config = ConfigDict(frozen=True)

    timeout_s: float = Field(description="wall-clock limit, seconds")
    cpu_s: float = Field(description="CPU-time limit over all processes, seconds")
    memory_mb: int = Field(description="memory limit (no swap), MiB")
    pids: int = Field(description="maximum number of processes and threads")
    cpus: float = Field(description="CPU cores quota")
    output_bytes: int = Field(description="cap on stdout+stderr, bytes")
    disk_mb: int = Field(description="size of the /workspace and /tmp tmpfs, MiB")


class EnvironmentRoot(BaseModel):
    """An environment's root file system, as the engine takes it (see
    ``crucible.environments.store``): the read-only lower layer of a run's or a sandbox's
    root, with what the image's config says about running in it."""

    model_config = ConfigDict(frozen=True)

    name: str
    digest: str
    path: Path  # the read-only root on the host
    env: dict[str, str] = Field(default_factory=dict)  # the image config's Env
    workdir: str = ""
    user: str = ""
    programs: dict[str, str] = Field(default_factory=dict)  # e.g. python3 -> /usr/bin/python3


class RunRequest(BaseModel):
    """One program to run. ``files`` maps relative paths to contents."""

    model_config = ConfigDict(frozen=True)

    language: str = "python"
    code: str | None = None
    files: dict[str, str] | None = None
    entrypoint: str | None = None
    stdin: str = ""
    args: list[str] = Field(default_factory=list)
    limits: Limits
    runtime: RuntimeName = "runc"
    environment: EnvironmentRoot | None = None  # None: the host's toolchain


def display_name(raw: bytes) -> str:
    """A file name as valid UTF-8 text: its bytes that are not UTF-8 as ``\\xNN``."""
    return raw.decode("utf-8", "backslashreplace")


class FileInfo(BaseModel):
    """A file the program left in /workspace.

    The program chose the name: any bytes but ``/`` and NUL. ``path`` is always valid
    UTF-8 (bytes that are not appear as ``\\xNN``), and ``path_b64`` then carries the
    exact bytes, so every record is valid JSON and no name is lost."""

    model_config = ConfigDict(frozen=True)

    path: str = Field(description="relative path; bytes that are not UTF-8 shown as \\xNN")
    size: int
    path_b64: str | None = Field(
        None, description="the path's exact bytes (base64), when they are not valid UTF-8"
    )

    @classmethod
    def of(cls, raw: bytes, size: int) -> FileInfo:
        path = display_name(raw)
        exact = None if path.encode() == raw else base64.b64encode(raw).decode()
        return cls(path=path, size=size, path_b64=exact)

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data: Any) -> Any:
        # Records stored before names were escaped hold lone surrogates (Python's
        # surrogateescape), which no JSON encoder accepts: escape them on the way in.
        if isinstance(data, dict) and isinstance(data.get("path"), str):
            try:
                data["path"].encode()
            except UnicodeEncodeError:
                raw = data["path"].encode("utf-8", "surrogateescape")
                return {**data, **cls.of(raw, int(data.get("size", 0))).model_dump()}
        return data


class RuntimeInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: RuntimeName
    version: str


class Events(BaseModel):
    """Counters read from the run's own cgroup (the kernel's, not guessed)."""

    model_config = ConfigDict(frozen=True)

    oom_kill: int = 0
    pids_limit: int = 0
    # Charges that hit the memory limit (v1 memory.failcnt, v2 memory.events max).
    memory_limit_hits: int = 0


class Result(BaseModel):
    """Everything the sandbox observed about one run."""

    model_config = ConfigDict(frozen=True)

    termination: Termination
    exit_code: int | None
    signal: str | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_ms: int
    cpu_ms: int
    peak_memory_bytes: int
    files: list[FileInfo]
    files_omitted: dict[str, int] = Field(
        default_factory=dict,
        description="what the listing of files left out, by reason: entries (past the"
        " count cap), deep (directories past the depth cap), special (links, FIFOs,"
        " sockets, devices), unreadable, time (the walk's time budget ran out)",
    )
    runtime: RuntimeInfo
    limits: Limits
    events: Events


# -- long-lived (agent) sandboxes: see crucible.engine.session ------------------------


class SessionLimits(BaseModel):
    """Limits for a whole long-lived sandbox (every exec in it shares them)."""

    model_config = ConfigDict(frozen=True)

    memory_mb: int = Field(description="memory limit of the whole sandbox (no swap), MiB")
    cpus: float = Field(description="CPU cores quota")
    pids: int = Field(description="maximum number of processes and threads")
    disk_mb: int = Field(description="size of the writable layer over the root, MiB")


class NetworkAttachment(BaseModel):
    """A sandbox's place on a private network shared with the other sandboxes of the
    same ``group`` (one sample's services): its ``hostname``, and every member's
    name, itself included (each member's /etc/hosts names them all)."""

    model_config = ConfigDict(frozen=True)

    group: str = Field(min_length=1, max_length=200)
    hostname: str
    members: tuple[str, ...]


class SessionSpec(BaseModel):
    """What to create: a long-lived sandbox an agent drives step by step."""

    model_config = ConfigDict(frozen=True)

    runtime: RuntimeName = "runc"
    limits: SessionLimits
    environment: EnvironmentRoot | None = None  # None: the Debian-looking host skeleton
    network: NetworkAttachment | None = None  # None: no network at all (loopback only)


class ExecResult(BaseModel):
    """What one ``exec`` in a long-lived sandbox did (data, whatever the command did)."""

    model_config = ConfigDict(frozen=True)

    returncode: int = Field(description="exit code; 128+N when killed by signal N")
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = Field(description="stdout passed its cap; the tail was kept")
    stderr_truncated: bool = Field(description="stderr passed its cap; the tail was kept")
    timed_out: bool = Field(description="the exec's timeout killed its process tree")
    memory_limit: bool = Field(
        False,
        description="the sandbox reached its memory limit during the exec: an OOM kill was"
        " counted, its peak first came within 1 MiB of the limit, or it was there when the"
        " timeout struck (a program thrashing at its limit)",
    )
    duration_ms: int
    cpu_us: int | None = Field(
        None,
        description="CPU time (user + system) of the exec's processes that ended with it;"
        " None when the runtime's exec ran it (gVisor, or the agent off)",
    )
    max_rss_kb: int | None = Field(
        None, description="the largest resident set of those processes, KiB; None as cpu_us"
    )
