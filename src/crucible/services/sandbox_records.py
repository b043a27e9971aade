"""Stored sandbox rows → public records, output previews, and the live output of an
exec on the bus (shared by the service and its reaper)."""

from __future__ import annotations

import asyncio
import codecs
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from crucible.core.lifecycle import SandboxStatus, StopReason
from crucible.domain.models import (
    ExecPublic,
    SandboxLimitsPublic,
    SandboxPublic,
    SandboxResources,
    text_fields,
)
from crucible.engine.accounting import Usage
from crucible.engine.models import ExecResult
from crucible.services.events import EventBus
from crucible.store import BlobStore
from crucible.store.tables import Sandbox, SandboxExec


class HostedCreate(BaseModel):
    """A create checked and resolved where it arrived (``services.sandboxes.prepare``),
    for the process that hosts it: the row's fields, the engine's spec (a
    ``SessionSpec`` as JSON) and the key's ``max_sandboxes`` (counted in the insert).
    It crosses the cluster endpoint as JSON."""

    id: str
    runtime: str
    limits: dict[str, Any]
    ttl_s: float
    idle_timeout_s: float
    labels: dict[str, str]
    owner_key_id: str | None
    environment: str
    environment_digest: str | None
    network_group: str | None
    spec: dict[str, Any]
    max_sandboxes: int


def stream_of(sandbox_id: str) -> str:
    return f"sandbox:{sandbox_id}"


def usage_pair(usage: Usage) -> tuple[int, int]:
    return usage.cpu_ns // 1_000_000, usage.peak_memory_bytes


def sandbox_public(row: Sandbox, usage: Usage | None = None) -> SandboxPublic:
    """The record; ``usage``: live counters of a running sandbox (else the stored)."""
    cpu_ms, peak = usage_pair(usage) if usage else (row.cpu_ms, row.peak_memory_bytes)
    return SandboxPublic(
        id=row.id,
        status=SandboxStatus(row.status),
        stop_reason=StopReason(row.stop_reason) if row.stop_reason else None,
        runtime=row.runtime,
        environment=row.environment,
        environment_digest=row.environment_digest,
        worker_id=row.owner_process_id,
        stop_detail=row.stop_detail,
        limits=SandboxLimitsPublic.model_validate(row.limits),
        ttl_s=row.ttl_s,
        idle_timeout_s=row.idle_timeout_s,
        labels=row.labels,
        owner_key_id=row.owner_key_id,
        created_at=row.created_at,
        last_activity_at=row.last_activity_at,
        stopped_at=row.stopped_at,
        expires_at=row.created_at + timedelta(seconds=row.ttl_s),
        resources=SandboxResources(
            cpu_ms=cpu_ms, peak_memory_bytes=peak, exec_count=row.exec_count
        ),
    )


def exec_public(row: SandboxExec, result: ExecResult | None = None) -> ExecPublic:
    """An exec as in the transcript (previews), or with ``result``'s whole output."""
    stdout = result.stdout if result else row.stdout_preview
    stderr = result.stderr if result else row.stderr_preview
    return ExecPublic(
        sandbox_id=row.sandbox_id,
        seq=row.seq,
        cmd=row.cmd,
        cwd=row.cwd,
        user=row.user,
        started_at=row.started_at,
        finished_at=row.finished_at,
        returncode=row.returncode,
        timed_out=row.timed_out,
        memory_limit=row.memory_limit,
        duration_ms=row.duration_ms,
        **text_fields("stdout", stdout),
        **text_fields("stderr", stderr),
        stdout_truncated=row.stdout_truncated,
        stderr_truncated=row.stderr_truncated,
        stdout_preview_truncated=row.stdout_preview_truncated and result is None,
        stderr_preview_truncated=row.stderr_preview_truncated and result is None,
        error=row.error,
    )


async def recorded_exec(row: SandboxExec, blobs: BlobStore) -> ExecPublic:
    """A finished exec with its whole output, read back from the preview or the blob
    (the answer of a retried exec)."""
    whole: dict[str, bytes] = {}
    for name in ("stdout", "stderr"):
        digest: str | None = getattr(row, f"{name}_blob")
        data: bytes = getattr(row, f"{name}_preview")
        whole[name] = await asyncio.to_thread(blobs.get, digest) if digest else data
    return exec_public(row).model_copy(
        update={
            **text_fields("stdout", whole["stdout"]),
            **text_fields("stderr", whole["stderr"]),
            "stdout_preview_truncated": False,
            "stderr_preview_truncated": False,
        }
    )


def preview(data: bytes, cap: int) -> bytes:
    """The first ``cap`` bytes; when the output is text, cut at a character boundary
    (so the preview stays valid UTF-8 and needs no base64)."""
    if len(data) <= cap:
        return data
    head = data[:cap]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return head
    return head.decode("utf-8", "ignore").encode("utf-8")


class ExecEvents:
    """One exec's events on the bus, published in order by one task: what
    :meth:`publish` was given (``exec_started``, ``exec_finished``) and the output
    chunks as ``output`` events, the task's when it is called as the engine's output
    callback. The exec does not wait for the bus (a Redis round trip each) until
    :meth:`finish`, before its answer.

    The engine's callback is synchronous and may run on any thread, so chunks are
    handed to the loop with ``call_soon_threadsafe``. Text is decoded incrementally (a
    character split between chunks is kept whole); the exact bytes are in the
    finished exec.
    """

    def __init__(self, bus: EventBus, stream: str, seq: int) -> None:
        self.bus, self.stream, self.seq = bus, stream, seq
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()
        self.decoders = {
            name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")
        }
        self.task = asyncio.create_task(self._publish())

    def publish(self, type: str, data: dict[str, Any]) -> None:
        """Publish ``type`` after everything given before (from the loop's thread)."""
        self.queue.put_nowait((type, data))

    def __call__(self, stream: str, chunk: bytes) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, ("output", (stream, chunk)))

    async def _publish(self) -> None:
        while (item := await self.queue.get()) is not None:
            type_, data = item
            if type_ == "output":
                name, chunk = data
                text = self.decoders[name].decode(chunk)
                if not text:
                    continue
                data = {"seq": self.seq, "stream": name, "data": text}
            await self.bus.publish(self.stream, type_, data)

    async def finish(self) -> None:
        """Wait until all is published (once; again: at once)."""
        if not self.task.done():
            # call_soon keeps FIFO order behind chunks scheduled from other threads.
            self.loop.call_soon(self.queue.put_nowait, None)
        await self.task
