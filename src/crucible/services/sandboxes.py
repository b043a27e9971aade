"""The long-lived (agent) sandbox service: create, exec, files, delete, and the reaper.

The engine (``crucible.engine.session.Sessions``, or any :class:`SessionEngine`) is
injected; this module adds what the API needs around it: per-key scoping and the
``max_sandboxes`` quota, limits resolved against the settings, a transcript of every
exec in the database (output previews, the whole output as blobs), live events on the
bus (stream ``sandbox:<id>``: ``exec_started``, ``output`` chunks, ``exec_finished``,
and finally ``stopped``), and a reaper that stops sandboxes at their ``ttl_s`` or
``idle_timeout_s``. Sandboxes live in the process that hosts them (the rows name
it): the embedded server, or in distributed mode a ``crucible worker --sandboxes N``,
which serves this service to API instances over its cluster endpoint
(:mod:`crucible.dispatch.host`; the API side is
:class:`crucible.services.sandbox_router.RoutedSandboxes`). A sweep marks ``running``
rows of dead processes ``lost``; any process marks ``lost`` the sandboxes of hosts
declared dead (:func:`lose_dead_hosts`), and a host closes whatever it still runs
that the database no longer gives it (:meth:`SandboxService.reap`). Everything raises
``crucible.core.errors`` exceptions, mapped to HTTP by ``api/errors.py``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from crucible.core.config import Settings
from crucible.core.errors import (
    Conflict,
    InvalidSubmission,
    NotFound,
    Overloaded,
    SandboxFileTooLarge,
    SandboxStopped,
    SandboxUnavailable,
)
from crucible.environments.store import HOST
from crucible.services import identity
from crucible.services.access import Access, Claim, apply_ceilings
from crucible.services.events import Event, EventBus, follow

if TYPE_CHECKING:
    from crucible.services.environments import EnvironmentService
from crucible.core.lifecycle import SandboxStatus, StopReason
from crucible.domain.execs import ExecRequest
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
    ExecEvents,
    HostedCreate,
    exec_public,
    preview,
    recorded_exec,
    sandbox_public,
    stream_of,
    usage_pair,
)
from crucible.store import BlobStore
from crucible.store.keys import KeyRecord
from crucible.store.repo import now
from crucible.store.sandboxes import (
    ExecExists,
    ExecOutcome,
    NewSandbox,
    Owner,
    SandboxStore,
    stopped_error,
)
from crucible.store.tables import Sandbox, SandboxExec

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

    def all(self) -> Sequence[SessionHandle]: ...

    async def sweep(self) -> builtins.list[str]: ...

    async def close_all(self) -> None: ...


class SandboxRecords:
    """What every process answers from the database, the bus and the blobs alone: the
    records, the transcript, the events. Shared by the hosting service and the API
    side of distributed mode (:class:`~crucible.services.sandbox_router.RoutedSandboxes`)."""

    settings: Settings
    access: Access
    store: SandboxStore
    blobs: BlobStore
    bus: EventBus
    environments: EnvironmentService

    async def check_settings(self) -> None:
        """Raise SandboxUnavailable when CRUCIBLE_DEFAULT_ENVIRONMENT names no
        environment of the store: at start-up, before anything runs, rather than at
        each create (which would look it up again, as it does for a named one)."""
        default = self.settings.default_environment
        try:
            await self.environments.resolve(default)
        except InvalidSubmission as exc:
            raise SandboxUnavailable(f"CRUCIBLE_DEFAULT_ENVIRONMENT={default!r}: {exc}") from None

    def _public(self, row: Sandbox) -> SandboxPublic:
        return sandbox_public(row)

    async def get(self, sandbox_id: str, who: KeyRecord | None = None) -> SandboxPublic:
        return self._public(await self.access.sandbox(sandbox_id, who))

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
        return SandboxList.of([self._public(r) for r in rows], nxt)

    # -- the transcript -------------------------------------------------------------

    async def execs(
        self, sandbox_id: str, who: KeyRecord | None, *, cursor: int | None, limit: int
    ) -> ExecList:
        await self.access.sandbox(sandbox_id, who)
        rows, nxt = await asyncio.to_thread(
            self.store.list_execs, sandbox_id, cursor=cursor, limit=limit
        )
        return ExecList.of([exec_public(r) for r in rows], nxt)

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


class SandboxService(SandboxRecords):
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
        capacity: int = 0,
    ) -> None:
        """``environments``: where a create's ``environment`` is looked up;
        ``capacity``: the most sandboxes this process hosts at once, counting those
        being created (0: no bound but the engine's; a host refuses above it with
        Overloaded, and placement tries another)."""
        self.settings = settings
        self.environments = environments
        self.access = access
        self.store = access.sandboxes
        self.blobs = blobs
        self.bus = bus
        self.engine = engine
        self.owner = owner
        self.capacity = capacity
        self._busy: Counter[str] = Counter()  # execs in flight, per sandbox
        # Rows whose engine sandbox is still being made: the row comes first (the
        # quota is counted in the insert), so the reaper would see it running with no
        # session and stop it as crashed.
        self._creating: set[str] = set()
        self._stopping: set[str] = set()  # being stopped by _stop (see there)
        self._reaper: asyncio.Task[None] | None = None
        # Execs running here by idempotency key: a retry that reaches this host while
        # the first is running waits for its answer instead of running it again.
        self._inflight: dict[tuple[str, str], asyncio.Future[ExecPublic]] = {}

    # -- start and stop -------------------------------------------------------------

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
        QuotaExceeded (max_sandboxes), Overloaded (this host is full), SandboxUnavailable
        / RuntimeFailure (the engine could not)."""
        return await self.host(
            await prepare(self.settings, self.access, self.environments, body, who)
        )

    async def host(self, req: HostedCreate) -> SandboxPublic:
        """Create the sandbox ``req`` describes (checked and resolved by
        :func:`prepare`, here or in the API instance that placed it) in this process:
        the row first (its insert counts the key's quota), then the engine's sandbox.
        Overloaded when this process already hosts ``capacity``."""
        if self.capacity:
            mine = await asyncio.to_thread(self.store.running_count, self.owner.id)
            if mine + len(self._creating) >= self.capacity:
                raise Overloaded(
                    f"this host is full ({mine} sandboxes running, {len(self._creating)}"
                    f" being created, capacity {self.capacity})",
                    retry_after=1,
                )
        new = NewSandbox(
            id=req.id,
            runtime=req.runtime,
            limits=req.limits,
            ttl_s=req.ttl_s,
            idle_timeout_s=req.idle_timeout_s,
            owner=self.owner,
            labels=req.labels,
            owner_key_id=req.owner_key_id,
            environment=req.environment,
            environment_digest=req.environment_digest,
            network_group=req.network_group,
        )
        spec = SessionSpec.model_validate(req.spec)
        self._creating.add(new.id)
        try:
            row = await asyncio.to_thread(self.store.create, new, max_sandboxes=req.max_sandboxes)
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

    def _public(self, row: Sandbox) -> SandboxPublic:
        usage = None
        if row.status == SandboxStatus.running and row.owner_process_id == self.owner.id:
            session = self.engine.get(row.id)
            if session is not None:
                with contextlib.suppress(Exception):  # counters are best effort
                    usage = session.usage()
        return sandbox_public(row, usage)

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
        """The engine's sandbox of a running row; SandboxStopped (SandboxLost) when it
        is gone."""
        if row.status != SandboxStatus.running:
            raise stopped_error(row)
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
        self,
        sandbox_id: str,
        body: ExecCreate,
        who: KeyRecord | Claim | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> ExecPublic:
        """Run one command; the answer has its whole output. Raises SandboxStopped
        (409) when the sandbox has stopped, SandboxLost (410) when its host died,
        InvalidSubmission for a timeout out of bounds, Unauthenticated when ``who``'s
        key has been revoked. With ``idempotency_key`` the command runs at most once:
        a retry gets the first exec's answer (waiting for it while it runs); the same
        key with another command is a Conflict."""
        request = body.request()
        timeout = exec_timeout(self.settings, request)
        session = self.engine.get(sandbox_id)
        if session is None or not session.alive:
            key = await self.access.verify(who)
            row = await self.access.sandbox(sandbox_id, key)
            if idempotency_key is not None:
                done = await replay(
                    self.store, self.blobs, sandbox_id, idempotency_key, request.argv
                )
                if done is not None:
                    return done
            session = await self._session(row)
        # else the sandbox runs here: begin_exec checks the caller's key (revoked or
        # gone: 401; not its sandbox and no admin's: 404) and reads the row under its
        # lock, refusing a stopped or lost one and a key reused for another command,
        # and answering a retried key (ExecExists), all in the transaction that
        # records the exec: no read before it.
        caller = who.key.id if isinstance(who, Claim) else who.id if who else None
        self._busy[sandbox_id] += 1  # before the row: the reaper must not see it idle
        try:
            return await self._exec(session, sandbox_id, request, timeout, idempotency_key, caller)
        finally:
            self._busy[sandbox_id] -= 1
            if self._busy[sandbox_id] <= 0:
                del self._busy[sandbox_id]

    async def _exec(
        self,
        session: SessionHandle,
        sandbox_id: str,
        request: ExecRequest,
        timeout: float,
        key: str | None,
        caller: str | None,
    ) -> ExecPublic:
        try:
            started = await asyncio.to_thread(
                self.store.begin_exec,
                sandbox_id,
                request.argv,
                request.cwd,
                request.user,
                key,
                caller=caller,
            )
        except ExecExists as exists:
            assert key is not None
            log.info("exec %d of %s retried (same key): waiting for it", exists.seq, sandbox_id)
            return await self._await_exec(sandbox_id, key, request.argv, timeout)
        if key is None:
            return await self._run_exec(session, sandbox_id, request, timeout, started)
        future: asyncio.Future[ExecPublic] = asyncio.get_running_loop().create_future()
        self._inflight[(sandbox_id, key)] = future
        try:
            answer = await self._run_exec(session, sandbox_id, request, timeout, started)
            future.set_result(answer)
            return answer
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: nobody may be waiting
            raise
        finally:
            del self._inflight[(sandbox_id, key)]

    async def _await_exec(
        self, sandbox_id: str, key: str, cmd: Sequence[str], timeout: float
    ) -> ExecPublic:
        """The answer of exec ``seq`` (a retry of it arrived): from the run in this
        process, else from the database once it has finished."""
        future = self._inflight.get((sandbox_id, key))
        if future is not None:
            return await asyncio.shield(future)
        # Bounded by the exec's own ceiling and the engine's kill: past it the exec is
        # over whatever happened (it was cut short: the sandbox stopped).
        async with asyncio.timeout(timeout + self.settings.runtime_timeout_s):
            while True:
                done = await replay(self.store, self.blobs, sandbox_id, key, cmd)
                if done is not None:
                    return done
                await asyncio.sleep(0.1)

    async def _run_exec(
        self,
        session: SessionHandle,
        sandbox_id: str,
        request: ExecRequest,
        timeout: float,
        started: SandboxExec,
    ) -> ExecPublic:
        # One ordered publisher for the exec's events (exec_started, the output,
        # exec_finished): the exec waits for none of them until its answer.
        events = ExecEvents(self.bus, stream_of(sandbox_id), started.seq)
        events.publish("exec_started", exec_public(started).model_dump(mode="json"))

        def record(result: ExecResult) -> SandboxExec:
            # One thread hop: the blobs of long output, the counters, the transaction.
            usage = None
            with contextlib.suppress(Exception):  # counters are best effort
                usage = usage_pair(session.usage())
            return self.store.finish_exec(sandbox_id, started.seq, self._outcome(result), usage)

        try:
            try:
                result = await session.exec(
                    request.argv,
                    input=request.stdin(),
                    cwd=request.cwd,
                    env=request.env,
                    user=request.user,
                    timeout_s=timeout,
                    on_output=events,
                    detach=request.detach,
                )
            except Exception as exc:  # no result: the transcript says why
                await events.finish()  # its output before the failure is recorded
                error = str(exc) or type(exc).__name__
                await asyncio.to_thread(self.store.fail_exec, sandbox_id, started.seq, error)
                raise
            row = await asyncio.to_thread(record, result)
            answer = exec_public(row, result)
            # Output within the previews: the event's record is the answer itself.
            cut = row.stdout_preview_truncated or row.stderr_preview_truncated
            finished = exec_public(row) if cut else answer
            events.publish("exec_finished", finished.model_dump(mode="json"))
            return answer
        finally:
            await events.finish()  # once; a second call returns at once

    def _outcome(self, result: ExecResult) -> ExecOutcome:
        cap = self.settings.inline_output_bytes
        previews: dict[str, Any] = {}
        for name in ("stdout", "stderr"):
            data: bytes = getattr(result, name)
            previews[f"{name}_preview"] = preview(data, cap)
            longer = len(data) > cap
            previews[f"{name}_preview_truncated"] = longer
            previews[f"{name}_blob"] = self.blobs.put(data) if longer else None
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

    # -- the reaper and the sweep ---------------------------------------------------

    async def reap(self) -> builtins.list[tuple[str, StopReason]]:
        """Stop this process's sandboxes past their ttl_s, idle (no exec running) past
        their idle_timeout_s, or whose init died; returns what it stopped and why."""
        stopped: builtins.list[tuple[str, StopReason]] = []
        t = now()
        rows = await asyncio.to_thread(self.store.running, process_id=self.owner.id)
        for row in rows:
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
        await self._drop_orphans({row.id for row in rows})
        return stopped

    async def _drop_orphans(self, mine: set[str]) -> None:
        """Close the engine's sandboxes the database no longer gives this process
        (marked ``lost`` while it was cut off, or stopped by another process): the
        database decides, so there are never two live copies of a sandbox."""
        try:
            sessions = self.engine.all()
        except NotImplementedError:
            return
        for session in sessions:
            sid = session.id
            if sid in mine or sid in self._creating or sid in self._stopping:
                continue
            log.warning("closing sandbox %s: the database no longer gives it to this host", sid)
            with contextlib.suppress(Exception):
                await session.close()

    def hosted(self) -> int:
        """How many of the engine's sandboxes this process runs (its heartbeat's)."""
        try:
            return len(self.engine.all())
        except NotImplementedError:
            return 0

    async def drop_orphans(self) -> None:
        """:meth:`_drop_orphans` now (this host was declared dead and came back)."""
        rows = await asyncio.to_thread(self.store.running, process_id=self.owner.id)
        await self._drop_orphans({row.id for row in rows})

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


async def prepare(
    settings: Settings,
    access: Access,
    environments: EnvironmentService,
    body: SandboxCreate,
    who: KeyRecord | None,
) -> HostedCreate:
    """Check and resolve a create where the request arrives (the embedded server, or
    the API instance that places it): limits against the settings and the key's
    ceilings, lifetimes, the environment, the network group. Whatever hosts it gets
    the result. Raises InvalidSubmission, Forbidden."""
    requested = body.limits.model_dump() if body.limits else {}
    limits = resolve_session_limits(requested, settings)
    values: dict[str, Any] = limits.model_dump()
    apply_ceilings(values, requested, who)
    times = resolve_bounds(
        {"ttl_s": body.ttl_s, "idle_timeout_s": body.idle_timeout_s},
        settings.sandbox_limits,
        ("ttl_s", "idle_timeout_s"),
        prefix="",
    )
    runtime = body.runtime or settings.default_runtime
    environment = await environments.resolve(
        body.environment, default=settings.default_environment
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
    return HostedCreate(
        id=f"sbx_{secrets.token_hex(10)}",
        runtime=runtime,
        limits=values,
        ttl_s=float(times["ttl_s"]),
        idle_timeout_s=float(times["idle_timeout_s"]),
        labels=body.labels or {},
        owner_key_id=who.id if who else None,
        environment=environment.name if environment else HOST,
        environment_digest=environment.digest if environment else None,
        network_group=network["group"] if network else None,
        spec=spec.model_dump(mode="json"),
        max_sandboxes=access.quota(who, "max_sandboxes") if who else 0,
    )


def exec_timeout(settings: Settings, body: ExecCreate | ExecRequest) -> float:
    """The exec's timeout within its bounds (InvalidSubmission outside them)."""
    return float(
        resolve_bounds(
            {"exec_timeout_s": body.timeout_s},
            settings.sandbox_limits,
            ("exec_timeout_s",),
            prefix="",
        )["exec_timeout_s"]
    )


async def replay(
    store: SandboxStore, blobs: BlobStore, sandbox_id: str, key: str, cmd: Sequence[str]
) -> ExecPublic | None:
    """The answer of the exec recorded with ``key`` once it has finished (its whole
    output, from the previews and blobs); None when there is none or it still runs.
    Conflict when that exec ran another command. An exec cut short by the sandbox's
    end raises what a new exec would (SandboxLost or SandboxStopped): the command may
    have run, and its answer is gone with it."""
    row = await asyncio.to_thread(store.exec_of_key, sandbox_id, key)
    if row is not None and row.cmd != list(cmd):
        raise Conflict(f"Idempotency-Key {key!r} was used for exec {row.seq} of another command")
    if row is None or row.finished_at is None:
        return None
    if row.returncode is None and row.error is not None:
        box = await asyncio.to_thread(store.get, sandbox_id)
        if box.status != SandboxStatus.running:
            raise stopped_error(box)
    return await recorded_exec(row, blobs)


async def lose_dead_hosts(store: SandboxStore, bus: EventBus) -> builtins.list[str]:
    """Mark ``lost`` the running sandboxes of hosts declared dead (a Maintenance duty
    of every process, run after the tick that declares them): fenced on
    ``status='running'``, so when several processes notice at once one records it."""
    lost: builtins.list[str] = []
    for sandbox_id, host in await asyncio.to_thread(store.on_dead_hosts):
        detail = f"its host {host} stopped heartbeating; a sandbox is never moved"
        if await asyncio.to_thread(store.stop, sandbox_id, StopReason.lost, detail=detail):
            lost.append(sandbox_id)
            row = await asyncio.to_thread(store.get, sandbox_id)
            with contextlib.suppress(Exception):  # the bus is a notification
                await bus.publish(
                    stream_of(sandbox_id), "stopped", sandbox_public(row).model_dump(mode="json")
                )
    if lost:
        log.warning("marked %d sandboxes of dead hosts lost", len(lost))
    return lost


def _path(path: str) -> str:
    if not path or "\0" in path:
        raise InvalidSubmission("path must be a non-empty path without NUL", field="path")
    return path
