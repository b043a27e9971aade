"""The long-lived (agent) sandbox service: create, exec, files, delete, and the reaper.

The engine (``crucible.engine.session.Sessions``, or any :class:`SessionEngine`) is
injected; this module adds what the API needs around it: per-key scoping and the
``max_sandboxes`` quota, limits resolved against the settings, a transcript of every
exec in the database (output previews, the whole output as blobs), live events on the
bus (stream ``sandbox:<id>``: ``exec_started``, ``output`` chunks, ``exec_finished``,
and finally ``stopped``), and a reaper that stops sandboxes at their ``ttl_s`` or
``idle_timeout_s``. Sandboxes live in the process that created them (the rows name
it); a sweep marks ``running`` rows of dead processes ``lost``. Everything raises
``crucible.core.errors`` exceptions, mapped to HTTP by ``api/errors.py``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from crucible.core.config import Settings
from crucible.core.errors import (
    InvalidSubmission,
    NotFound,
    SandboxFileTooLarge,
    SandboxStopped,
    SandboxUnavailable,
)
from crucible.environments.store import HOST
from crucible.services import identity
from crucible.services.access import Access, apply_ceilings
from crucible.services.events import Event, EventBus, follow

if TYPE_CHECKING:
    from crucible.services.environments import EnvironmentService
from crucible.core.lifecycle import SandboxStatus, StopReason
from crucible.domain.limits import resolve_bounds, resolve_session_limits
from crucible.domain.models import (
    ExecCreate,
    ExecList,
    ExecPublic,
    SandboxCreate,
    SandboxList,
    SandboxPublic,
)
from crucible.engine.accounting import Usage
from crucible.engine.caps import MAX_EXEC_OUTPUT, MAX_FILE_BYTES
from crucible.engine.models import ExecResult, SessionSpec
from crucible.engine.output import OutputCallback
from crucible.services.sandbox_records import (
    LiveOutput,
    exec_public,
    preview,
    sandbox_public,
    stream_of,
    usage_pair,
)
from crucible.store import BlobStore
from crucible.store.keys import KeyRecord
from crucible.store.repo import now
from crucible.store.sandboxes import ExecOutcome, NewSandbox, Owner
from crucible.store.tables import Sandbox

log = logging.getLogger(__name__)

Stream = Literal["stdout", "stderr"]


class SessionHandle(Protocol):
    """What the service uses of one engine sandbox (``crucible.engine.session.Session``)."""

    id: str

    @property
    def alive(self) -> bool: ...

    async def exec(
        self,
        cmd: list[str],
        *,
        input: bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        output_cap: int = MAX_EXEC_OUTPUT,
        detach: bool = False,
    ) -> ExecResult: ...

    async def write_file(self, path: str, data: bytes) -> None: ...

    async def read_file(self, path: str, *, max_bytes: int = MAX_FILE_BYTES) -> bytes: ...

    def usage(self) -> Usage: ...

    async def close(self) -> Usage: ...


class SessionEngine(Protocol):
    """What the service uses of the engine (``crucible.engine.session.Sessions``)."""

    async def create(self, spec: SessionSpec, *, session_id: str) -> SessionHandle: ...

    def get(self, session_id: str) -> SessionHandle | None: ...

    async def sweep(self) -> builtins.list[str]: ...

    async def close_all(self) -> None: ...


class SandboxService:
    """Long-lived sandboxes hosted by this process, over the injected ``engine``."""

    def __init__(
        self,
        *,
        settings: Settings,
        access: Access,
        blobs: BlobStore,
        bus: EventBus,
        engine: SessionEngine,
        owner: Owner,
        environments: EnvironmentService,
    ) -> None:
        """``environments``: where a create's ``environment`` is looked up."""
        self.settings = settings
        self.environments = environments
        self.access = access
        self.store = access.sandboxes
        self.blobs = blobs
        self.bus = bus
        self.engine = engine
        self.owner = owner
        self._busy: Counter[str] = Counter()  # execs in flight, per sandbox
        # Rows whose engine sandbox is still being made: the row comes first (the
        # quota is counted in the insert), so the reaper would see it running with no
        # session and stop it as crashed.
        self._creating: set[str] = set()
        self._stopping: set[str] = set()  # being stopped by _stop (see there)
        self._reaper: asyncio.Task[None] | None = None

    # -- start and stop -------------------------------------------------------------

    async def check_settings(self) -> None:
        """Raise SandboxUnavailable when CRUCIBLE_DEFAULT_ENVIRONMENT names no
        environment of the store: at start-up, before anything runs, rather than at
        each create (which would look it up again, as it does for a named one)."""
        default = self.settings.default_environment
        try:
            await self.environments.resolve(default)
        except InvalidSubmission as exc:
            raise SandboxUnavailable(f"CRUCIBLE_DEFAULT_ENVIRONMENT={default!r}: {exc}") from None

    async def start(self) -> None:
        """Sweep (the engine's leftovers, and the rows of dead processes), then reap."""
        try:
            for sandbox_id in await self.engine.sweep():
                await self._mark_lost(sandbox_id)
        except NotImplementedError:
            log.warning("the long-lived sandbox engine is not available in this build")
        await self.sweep()
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_loop(), name="crucible-sandbox-reaper")

    async def stop(self) -> None:
        """Stop every sandbox this process hosts (reason ``shutdown``)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for row in await asyncio.to_thread(self.store.running, process_id=self.owner.id):
            await self._stop(row.id, StopReason.shutdown)
        with contextlib.suppress(NotImplementedError):
            await self.engine.close_all()

    # -- sandboxes ------------------------------------------------------------------

    async def create(self, body: SandboxCreate, who: KeyRecord | None = None) -> SandboxPublic:
        """Create a running sandbox (``environment`` unset: the settings'
        ``default_environment``, else host). Raises InvalidSubmission (a limit outside
        its bounds, an unknown environment), Forbidden (above the key's ceiling),
        QuotaExceeded (max_sandboxes), SandboxUnavailable / RuntimeFailure (the
        engine could not)."""
        requested = body.limits.model_dump() if body.limits else {}
        limits = resolve_session_limits(requested, self.settings)
        values: dict[str, Any] = limits.model_dump()
        apply_ceilings(values, requested, who)
        times = resolve_bounds(
            {"ttl_s": body.ttl_s, "idle_timeout_s": body.idle_timeout_s},
            self.settings.sandbox_limits,
            ("ttl_s", "idle_timeout_s"),
            prefix="",
        )
        runtime = body.runtime or self.settings.default_runtime
        environment = await self.environments.resolve(
            body.environment, default=self.settings.default_environment
        )  # None: host
        network = None
        if body.network is not None:
            # Per key: a key joins only networks its own sandboxes made.
            owner = who.id if who else "anonymous"
            network = {
                "group": f"{owner}/{body.network.group}",
                "hostname": body.network.hostname,
                "members": tuple(body.network.members),
            }
        spec = SessionSpec.model_validate(
            {
                "runtime": runtime,
                "limits": values,
                "environment": environment.root_spec() if environment else None,
                "network": network,
            }
        )
        new = NewSandbox(
            id=f"sbx_{secrets.token_hex(10)}",
            runtime=runtime,
            limits=values,
            ttl_s=float(times["ttl_s"]),
            idle_timeout_s=float(times["idle_timeout_s"]),
            owner=self.owner,
            labels=body.labels or {},
            owner_key_id=who.id if who else None,
            environment=environment.name if environment else HOST,
            environment_digest=environment.digest if environment else None,
        )
        quota = self.access.quota(who, "max_sandboxes") if who else 0
        self._creating.add(new.id)
        try:
            row = await asyncio.to_thread(self.store.create, new, max_sandboxes=quota)
            await self._create_session(spec, new.id)
        finally:
            self._creating.discard(new.id)
        return sandbox_public(row)

    async def _create_session(self, spec: SessionSpec, sandbox_id: str) -> None:
        try:
            await self.engine.create(spec, session_id=sandbox_id)
        except NotImplementedError:
            await asyncio.to_thread(self.store.discard, sandbox_id)
            raise SandboxUnavailable(
                "long-lived sandboxes need the session engine, which this build lacks"
            ) from None
        except BaseException:
            await asyncio.to_thread(self.store.discard, sandbox_id)  # it never existed
            raise

    async def get(self, sandbox_id: str, who: KeyRecord | None = None) -> SandboxPublic:
        return self._public(await self.access.sandbox(sandbox_id, who))

    def _public(self, row: Sandbox) -> SandboxPublic:
        usage = None
        if row.status == SandboxStatus.running and row.owner_process_id == self.owner.id:
            session = self.engine.get(row.id)
            if session is not None:
                with contextlib.suppress(Exception):  # counters are best effort
                    usage = session.usage()
        return sandbox_public(row, usage)

    async def list(
        self,
        who: KeyRecord | None,
        *,
        owner_key_id: str | None = None,
        status: SandboxStatus | None = None,
        cursor: int | None = None,
        limit: int = 50,
    ) -> SandboxList:
        """Newest first; a researcher's own, an admin's everyone's (or ``owner_key_id``'s)."""
        owner = owner_key_id if who is None or who.admin else who.id
        rows, nxt = await asyncio.to_thread(
            self.store.list, owner_key_id=owner, status=status, cursor=cursor, limit=limit
        )
        return SandboxList(
            items=[self._public(r) for r in rows],
            next_cursor=str(nxt) if nxt is not None else None,
        )

    async def delete(self, sandbox_id: str, who: KeyRecord | None = None) -> None:
        """Stop it (reason ``deleted``); the record and transcript remain. A stopped
        sandbox is left as it is."""
        row = await self.access.sandbox(sandbox_id, who)
        if row.status != SandboxStatus.running:
            return
        if row.owner_process_id != self.owner.id:
            raise self._elsewhere(row)
        await self._stop(sandbox_id, StopReason.deleted)

    def _elsewhere(self, row: Sandbox) -> SandboxUnavailable:
        return SandboxUnavailable(
            f"sandbox {row.id} is hosted by another server ({row.owner_host}, process"
            f" {row.owner_pid}); send its requests there"
        )

    async def _session(self, row: Sandbox) -> SessionHandle:
        """The engine's sandbox of a running row; SandboxStopped when it is gone."""
        if row.status != SandboxStatus.running:
            raise SandboxStopped(f"sandbox {row.id} is {row.status} ({row.stop_reason})")
        if row.owner_process_id != self.owner.id:
            raise self._elsewhere(row)
        session = self.engine.get(row.id)
        if session is None or not session.alive:
            await self._stop(row.id, StopReason.crashed)
            raise SandboxStopped(f"sandbox {row.id} crashed")
        return session

    async def _stop(self, sandbox_id: str, reason: StopReason) -> bool:
        """Close the engine's sandbox and record the stop once; publishes ``stopped``.
        One stop at a time per sandbox: while a delete closes it, its init is already
        dead, and the reaper must not record that as a crash (it did, in a browser test)."""
        if sandbox_id in self._stopping:
            return False
        self._stopping.add(sandbox_id)
        try:
            return await self._close_and_record(sandbox_id, reason)
        finally:
            self._stopping.discard(sandbox_id)

    async def _close_and_record(self, sandbox_id: str, reason: StopReason) -> bool:
        usage: tuple[int, int] | None = None
        session = self.engine.get(sandbox_id)
        if session is not None:
            try:
                usage = usage_pair(await session.close())
            except Exception:
                log.exception(
                    "closing sandbox %s failed; the engine's sweep removes it", sandbox_id
                )
        moved = await asyncio.to_thread(self.store.stop, sandbox_id, reason, usage=usage)
        if moved:
            row = await asyncio.to_thread(self.store.get, sandbox_id)
            record = sandbox_public(row).model_dump(mode="json")
            await self.bus.publish(stream_of(sandbox_id), "stopped", record)
            log.info("sandbox %s stopped: %s", sandbox_id, reason.value)
        return moved

    async def _mark_lost(self, sandbox_id: str) -> None:
        with contextlib.suppress(NotFound):
            await self._stop(sandbox_id, StopReason.lost)

    # -- exec and files -------------------------------------------------------------

    async def exec(
        self, sandbox_id: str, body: ExecCreate, who: KeyRecord | None = None
    ) -> ExecPublic:
        """Run one command; the answer has its whole output. Raises SandboxStopped
        (409) when the sandbox has stopped, InvalidSubmission for a timeout out of
        bounds."""
        timeout = resolve_bounds(
            {"exec_timeout_s": body.timeout_s},
            self.settings.sandbox_limits,
            ("exec_timeout_s",),
            prefix="",
        )["exec_timeout_s"]
        row = await self.access.sandbox(sandbox_id, who)
        session = await self._session(row)
        self._busy[sandbox_id] += 1  # before the row: the reaper must not see it idle
        try:
            return await self._exec(session, sandbox_id, body, float(timeout))
        finally:
            self._busy[sandbox_id] -= 1
            if self._busy[sandbox_id] <= 0:
                del self._busy[sandbox_id]

    async def _exec(
        self, session: SessionHandle, sandbox_id: str, body: ExecCreate, timeout: float
    ) -> ExecPublic:
        started = await asyncio.to_thread(
            self.store.begin_exec, sandbox_id, body.cmd, body.cwd, body.user
        )
        stream = stream_of(sandbox_id)
        await self.bus.publish(stream, "exec_started", exec_public(started).model_dump(mode="json"))
        live = LiveOutput(self.bus, stream, started.seq)
        try:
            result = await session.exec(
                body.cmd,
                input=body.stdin(),
                cwd=body.cwd,
                env=body.env,
                user=body.user,
                timeout_s=timeout,
                on_output=live,
                detach=bool(body.detach),
            )
        except Exception as exc:  # no result: the transcript says why
            await live.finish()
            error = str(exc) or type(exc).__name__
            await asyncio.to_thread(self.store.fail_exec, sandbox_id, started.seq, error)
            raise
        finally:
            if not live.task.done():
                await live.finish()
        usage = None
        with contextlib.suppress(Exception):  # counters are best effort
            usage = usage_pair(session.usage())
        row = await asyncio.to_thread(
            self.store.finish_exec, sandbox_id, started.seq, await self._outcome(result), usage
        )
        await self.bus.publish(stream, "exec_finished", exec_public(row).model_dump(mode="json"))
        return exec_public(row, result)

    async def _outcome(self, result: ExecResult) -> ExecOutcome:
        cap = self.settings.inline_output_bytes
        previews: dict[str, Any] = {}
        for name in ("stdout", "stderr"):
            data: bytes = getattr(result, name)
            previews[f"{name}_preview"] = preview(data, cap)
            longer = len(data) > cap
            previews[f"{name}_preview_truncated"] = longer
            previews[f"{name}_blob"] = (
                await asyncio.to_thread(self.blobs.put, data) if longer else None
            )
        return ExecOutcome(
            returncode=result.returncode,
            timed_out=result.timed_out,
            memory_limit=result.memory_limit,
            duration_ms=result.duration_ms,
            stdout_truncated=result.stdout_truncated,
            stderr_truncated=result.stderr_truncated,
            **previews,
        )

    async def write_file(
        self, sandbox_id: str, path: str, data: bytes, who: KeyRecord | None = None
    ) -> None:
        """Write ``data`` at ``path``; the engine's file errors pass through."""
        if len(data) > MAX_FILE_BYTES:
            raise SandboxFileTooLarge(path, f"{path}: larger than {MAX_FILE_BYTES} bytes")
        session = await self._session(await self.access.sandbox(sandbox_id, who))
        await session.write_file(_path(path), data)
        await asyncio.to_thread(self.store.touch, sandbox_id)

    async def read_file(self, sandbox_id: str, path: str, who: KeyRecord | None = None) -> bytes:
        session = await self._session(await self.access.sandbox(sandbox_id, who))
        data = await session.read_file(_path(path), max_bytes=MAX_FILE_BYTES)
        await asyncio.to_thread(self.store.touch, sandbox_id)
        return data

    # -- the transcript -------------------------------------------------------------

    async def execs(
        self, sandbox_id: str, who: KeyRecord | None, *, cursor: int | None, limit: int
    ) -> ExecList:
        await self.access.sandbox(sandbox_id, who)
        rows, nxt = await asyncio.to_thread(
            self.store.list_execs, sandbox_id, cursor=cursor, limit=limit
        )
        return ExecList(
            items=[exec_public(r) for r in rows],
            next_cursor=str(nxt) if nxt is not None else None,
        )

    async def exec_output(
        self, sandbox_id: str, seq: int, stream: Stream, who: KeyRecord | None = None
    ) -> bytes:
        """The whole stdout or stderr of one exec (the transcript holds a preview)."""
        await self.access.sandbox(sandbox_id, who)
        row = await asyncio.to_thread(self.store.get_exec, sandbox_id, seq)
        digest: str | None = getattr(row, f"{stream}_blob")
        if digest is not None:
            return await asyncio.to_thread(self.blobs.get, digest)
        data: bytes = getattr(row, f"{stream}_preview")
        return data

    async def events(self, sandbox_id: str, after: int = 0) -> AsyncIterator[Event]:
        """``exec_started``, ``output``, ``exec_finished`` events, then ``stopped``
        (the final record). With no log on the bus, opens with a ``status`` event
        carrying the record (see ``crucible.services.events.follow``)."""
        await asyncio.to_thread(self.store.get, sandbox_id)  # NotFound

        async def snapshot() -> tuple[str, dict[str, Any]]:
            row = await asyncio.to_thread(self.store.get, sandbox_id)
            kind = "status" if row.status == SandboxStatus.running else "stopped"
            return kind, self._public(row).model_dump(mode="json")

        async for event in follow(self.bus, stream_of(sandbox_id), after, snapshot):
            yield event

    # -- the reaper and the sweep ---------------------------------------------------

    async def reap(self) -> builtins.list[tuple[str, StopReason]]:
        """Stop this process's sandboxes past their ttl_s, idle (no exec running) past
        their idle_timeout_s, or whose init died; returns what it stopped and why."""
        stopped: builtins.list[tuple[str, StopReason]] = []
        t = now()
        for row in await asyncio.to_thread(self.store.running, process_id=self.owner.id):
            if row.id in self._creating:
                continue
            session = self.engine.get(row.id)
            reason: StopReason | None = None
            if session is None or not session.alive:
                reason = StopReason.crashed
            elif t >= row.created_at + timedelta(seconds=row.ttl_s):
                reason = StopReason.ttl
            elif not self._busy[row.id] and t >= row.last_activity_at + timedelta(
                seconds=row.idle_timeout_s
            ):
                reason = StopReason.idle_timeout
            if reason is not None and await self._stop(row.id, reason):
                stopped.append((row.id, reason))
        return stopped

    def _dead(self, row: Sandbox) -> bool:
        """Is the process that hosted ``row`` known to be dead? On this node: its pid
        is gone or reused (a previous incarnation of this server, after ``kill -9``).
        On this host after a reboot (another boot id): everything before it is."""
        if row.owner_process_id == self.owner.id:
            return False
        if row.owner_node == self.owner.node:
            return not identity.alive_here(row.owner_pid, row.owner_proc_start)
        boot, _, _ = row.owner_node.partition("/")
        return row.owner_host == self.owner.host and boot != self.owner.node.partition("/")[0]

    async def sweep(self) -> builtins.list[str]:
        """Mark ``lost`` the running sandboxes of processes known to be dead."""
        rows = await asyncio.to_thread(self.store.running, other_than=self.owner.id)
        lost = [row.id for row in rows if self._dead(row)]
        for sandbox_id in lost:
            if await asyncio.to_thread(self.store.stop, sandbox_id, StopReason.lost):
                row = await asyncio.to_thread(self.store.get, sandbox_id)
                record = sandbox_public(row).model_dump(mode="json")
                await self.bus.publish(stream_of(sandbox_id), "stopped", record)
        if lost:
            log.warning("marked %d sandboxes of dead processes lost", len(lost))
        return lost

    async def _reap_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.settings.sandbox_reap_s)
            ticks += 1
            try:
                await self.reap()
                if ticks % 30 == 0:  # other processes' deaths: rarer, and cheap
                    await self.sweep()
            except Exception as exc:  # the database may be down: retried next tick
                log.warning("sandbox reaper: %r", exc)


def _path(path: str) -> str:
    if not path or "\0" in path:
        raise InvalidSubmission("path must be a non-empty path without NUL", field="path")
    return path
