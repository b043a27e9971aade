"""The evaluation service: the operations behind the API, and its start-up and shutdown.

Routes stay thin: they parse, call a method here, and shape the response. Everything
here raises ``crucible.core.errors`` exceptions, which ``api/errors.py`` maps to HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from crucible.core.config import Settings
from crucible.core.errors import (
    InvalidSubmission,
    NotFound,
    Overloaded,
    SandboxUnavailable,
)
from crucible.core.lifecycle import TERMINAL, Status
from crucible.domain.evaluations import (
    BatchCreate,
    BatchCreated,
    BatchPublic,
    CancelPublic,
    DeadLetterList,
    EvaluationCreate,
    EvaluationPublic,
    QueuePublic,
    WorkerList,
)
from crucible.domain.limits import resolve_limits
from crucible.domain.paging import PageRequest
from crucible.engine import Sandbox
from crucible.environments.store import HOST, Environment
from crucible.services import metrics
from crucible.services.access import Access, apply_ceilings, scoped_idempotency
from crucible.services.environments import EnvironmentService
from crucible.services.events import Event, EventBus, RedisBus, follow
from crucible.services.executor import Executor, stream_of
from crucible.services.ports import Dispatcher, Maintainer
from crucible.services.records import (
    RecordCache,
    batch_public,
    dead_letter_public,
    evaluation_list_json,
    evaluation_public,
    worker_public,
)
from crucible.services.sandbox_router import RoutedSandboxes
from crucible.services.sandboxes import SandboxService
from crucible.services.scan import scan_request
from crucible.services.submissions import merge, new_id, prepare
from crucible.store import (
    BatchCounts,
    BlobStore,
    Cluster,
    EvaluationFilter,
    NewEvaluation,
    Store,
    WorkerInfo,
)
from crucible.store.keys import KeyRecord
from crucible.store.tables import Evaluation

log = logging.getLogger(__name__)


class Service:
    """The evaluation operations over store, blobs, bus and dispatcher, in one of two
    modes (wired by :func:`crucible.wiring.build_service`).

    Embedded (``dispatcher="embedded"``): this process runs evaluations itself, with
    its own sandbox, executor, claim loop and in-process bus. Distributed
    (``"celery"``): it runs nothing; ``crucible worker`` processes claim queued
    evaluations from the database, this process wakes them through Celery and follows
    their events on the Redis bus. Either way it heartbeats (when it runs evaluations)
    and recovers dead processes' evaluations periodically.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        access: Access,
        cluster: Cluster,
        blobs: BlobStore,
        environments: EnvironmentService,
        bus: EventBus,
        dispatcher: Dispatcher,
        maintenance: Maintainer,
        identity: WorkerInfo,
        sandboxes: SandboxService | RoutedSandboxes,
        sandbox: Sandbox | None = None,
        executor: Executor | None = None,
        dispatch: bool = True,
        records: RecordCache | None = None,
    ) -> None:
        """Built by :func:`crucible.wiring.build_service`. ``sandbox`` and ``executor``
        are this process's own (embedded mode; None when distributed);
        ``sandboxes``: the long-lived sandboxes, hosted here over ``sandbox``'s
        engine (embedded) or placed on and routed to the sandbox hosts (distributed);
        ``dispatch=False`` leaves the dispatcher stopped (tests start it); ``records``:
        the finished records rendered for reads (shared with ``executor``)."""
        self.settings = settings
        self.store = store
        self.access = access  # keys, audit, quotas, scoping
        self.cluster = cluster
        self.blobs = blobs
        self.environments = environments
        self.distributed = settings.dispatcher == "celery"
        self.bus = bus
        self.dispatcher = dispatcher
        self.maintenance = maintenance
        self.identity = identity
        self.sandbox = sandbox
        self.executor = executor
        self.sandboxes = sandboxes
        self.records = records or RecordCache(settings.record_cache_mb << 20)
        self._dispatch = dispatch

    async def start(self) -> None:
        """Check the sandbox settings, migrate, sweep the sandbox's leftovers, recover
        dead processes' runs, dispatch. Raises SandboxUnavailable when
        CRUCIBLE_DEFAULT_ENVIRONMENT names no environment.

        Recovery touches only evaluations whose process is known dead: on this node a
        missing pid is dead at once (a restart after ``kill -9``); elsewhere a
        heartbeat older than ``worker_dead_after_s``.
        """
        await self.sandboxes.check_settings()  # first: a refused start leaves nothing running
        await asyncio.to_thread(self.store.migrate)
        await self.access.bootstrap()
        await asyncio.to_thread(self.environments.store.sweep)  # abandoned imports
        if self.sandbox is not None:
            await self.sandbox.sweep()
            shutil.rmtree(self.settings.data_dir / "tmp", ignore_errors=True)
            metrics.watch_warm_pool(self.sandbox)
            await self.sandbox.start_pool(resolve_limits({}, self.settings))
        await self.maintenance.heartbeat()
        await self.maintenance.recover()
        self.maintenance.start()
        await self.sandboxes.start()
        if self._dispatch:
            self.dispatcher.start()

    async def stop(self) -> None:
        await self.sandboxes.stop()
        await self.dispatcher.stop()
        await self.maintenance.stop()
        if self.sandbox is not None:
            await self.sandbox.close()
        if isinstance(self.bus, RedisBus):
            await self.bus.close()
        await asyncio.to_thread(self.store.dispose)

    # -- evaluations ------------------------------------------------------------

    async def _public(self, row: Evaluation) -> EvaluationPublic:
        labels = await asyncio.to_thread(self.store.labels_of, [row.seq])
        return evaluation_public(row, labels.get(row.seq, {}))

    async def _admit(self, n: int) -> None:
        self._check_admission(await asyncio.to_thread(self.store.queued_count), n)

    def _check_admission(self, queued: int, n: int) -> None:
        """Overloaded when ``n`` more would put the queue (``queued`` now) over max_queue."""
        if queued + n > self.settings.max_queue:
            raise Overloaded(
                f"the queue holds {queued} evaluations (max {self.settings.max_queue})",
                retry_after=max(1, min(60, queued // max(1, 10 * self.settings.max_concurrency))),
            )

    async def submit(
        self,
        body: EvaluationCreate,
        idempotency_key: str | None = None,
        who: KeyRecord | None = None,
    ) -> tuple[EvaluationPublic, bool]:
        """Queue one evaluation; returns (record, created). See Store.create_evaluation.

        Raises InvalidSubmission (also: an unknown environment, or a language it
        lacks), Forbidden (a limit above the key's ceiling), QuotaExceeded, Overloaded.
        """
        environment = await self.environments.resolve(body.environment)
        new = prepare(
            body,
            self.settings,
            idempotency_key=scoped_idempotency(idempotency_key, who),
            environment=environment,
        )
        apply_ceilings(new.request["limits"], body.limits.model_dump() if body.limits else {}, who)
        new.owner_key_id = who.id if who else None
        new.flags = scan_request(new.request)
        await self.access.check_quotas(who, 1)
        # Published before the row exists: a worker may claim it the moment it is
        # committed and publish "running" before this process got to "queued". (An
        # idempotent replay, or a submission the full queue refuses, leaves this event
        # on a stream no evaluation has.)
        await self.bus.publish(stream_of(new.id), "status", {"status": Status.queued.value})
        # Admitted in the inserting transaction, and the record as the insert returned
        # it: one thread hop and one transaction per submission, where a count, the
        # insert, a read of the row and one of its labels took four.
        row, created = await asyncio.to_thread(
            self.store.create_evaluation, new, admit=lambda queued: self._check_admission(queued, 1)
        )
        if not created:
            return await self._public(row), False
        self.dispatcher.notify(1)
        return evaluation_public(row, dict(new.labels)), True

    async def get(self, evaluation_id: str, who: KeyRecord | None = None) -> EvaluationPublic:
        return await self._public(await self.access.evaluation(evaluation_id, who))

    async def get_json(self, evaluation_id: str, who: KeyRecord | None = None) -> bytes:
        """:meth:`get` as the API's JSON: a finished record as first rendered."""
        row = await self.access.evaluation(evaluation_id, who)
        if Status(row.status) in TERMINAL and (data := self.records.get(row.id)) is not None:
            return data
        return self.records.render(await self._public(row))

    async def wait(self, evaluation_id: str, timeout_s: float) -> EvaluationPublic:
        """The record (just submitted) once final, or as it is after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                async for event in self._follow(evaluation_id):
                    if event.final:
                        # The final event carries the finished record: no need to read
                        # it back (two queries on every ?wait).
                        with contextlib.suppress(ValidationError):
                            return EvaluationPublic.model_validate(event.data)
                        break
        except TimeoutError:
            pass
        return await self.get(evaluation_id)

    async def list_json(self, where: EvaluationFilter, page: PageRequest) -> bytes:
        """A page of evaluations (an EvaluationList) as the API's JSON; finished records
        this process rendered before are not read again (``RecordCache``)."""
        held: dict[str, bytes] = {}

        def known(evaluation_id: str) -> bool:
            # Taken while the page is read, so an eviction meanwhile loses nothing.
            data = self.records.get(evaluation_id)
            if data is not None:
                held[evaluation_id] = data
            return data is not None

        found = await asyncio.to_thread(
            self.store.list_records, where, cursor=page.cursor, limit=page.limit, known=known
        )
        return evaluation_list_json(found, held, self.records)

    async def cancel(self, evaluation_id: str, who: KeyRecord | None = None) -> CancelPublic:
        """queued → cancelled; running → killed (within a second); final → Conflict."""
        await self.access.evaluation(evaluation_id, who)
        status = await asyncio.to_thread(self.store.cancel, evaluation_id)
        if status is Status.cancelled:
            row = await asyncio.to_thread(self.store.get, evaluation_id)
            public = await self._public(row)
            stream = stream_of(evaluation_id)
            await self.bus.publish(stream, "status", {"status": status.value})
            await self.bus.publish(stream, "result", public.model_dump(mode="json"))
        else:
            await self.dispatcher.cancel(evaluation_id)  # else its executor polls the flag
        return CancelPublic(id=evaluation_id, status=status)

    async def events(self, evaluation_id: str, after: int = 0) -> AsyncIterator[Event]:
        """Status changes, output chunks, then the final record (event type ``result``).

        Resumes after event ``after``. When the bus keeps no log of the stream (never
        published, expired, or lost with a restarted bus), opens with what the record
        knows, numbered ``after + 1``: the final record alone for a finished
        evaluation, else its current status, then follows the bus, whose next log
        is numbered above (see ``crucible.services.events``).
        """
        await asyncio.to_thread(self.store.get, evaluation_id)  # NotFound
        async for event in self._follow(evaluation_id, after):
            yield event

    async def _follow(self, evaluation_id: str, after: int = 0) -> AsyncIterator[Event]:
        """:meth:`events` of an evaluation known to exist."""

        async def snapshot() -> tuple[str, dict[str, Any]]:
            row = await asyncio.to_thread(self.store.get, evaluation_id)
            if Status(row.status) in TERMINAL:
                return "result", (await self._public(row)).model_dump(mode="json")
            return "status", _status_of(row)

        async for event in follow(self.bus, stream_of(evaluation_id), after, snapshot):
            yield event

    async def output(self, evaluation_id: str, stream: str, who: KeyRecord | None = None) -> bytes:
        """The whole stdout or stderr (the record may hold only a preview)."""
        row = await self.access.evaluation(evaluation_id, who)
        if row.result is None:
            raise NotFound(f"evaluation {evaluation_id} has no output yet")
        digest = row.blobs.get(stream)
        if digest:
            return await asyncio.to_thread(self.blobs.get, digest)
        text: str = row.result[stream]
        return text.encode("utf-8", "surrogateescape")

    async def file(self, evaluation_id: str, path: str, who: KeyRecord | None = None) -> Path:
        """A file the program produced; NotFound when absent or too large to keep."""
        row = await self.access.evaluation(evaluation_id, who)
        normal = PurePosixPath(path).as_posix()
        digest = (row.blobs.get("files") or {}).get(normal)
        if digest is None:
            raise NotFound(f"evaluation {evaluation_id} kept no file {path!r}")
        return await asyncio.to_thread(self.blobs.path, digest)

    # -- batches ----------------------------------------------------------------

    async def submit_batch(
        self,
        body: BatchCreate,
        who: KeyRecord | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[BatchCreated, bool]:
        """Queue a batch; returns (what was queued, created). With an Idempotency-Key
        already used for the same body, the original batch (created False)."""
        if len(body.items) > self.settings.max_batch_items:
            raise InvalidSubmission(
                f"a batch holds at most {self.settings.max_batch_items} items", field="items"
            )
        environments = await self._batch_environments(body)
        news: list[NewEvaluation] = []
        for i, item in enumerate(body.items):
            try:
                merged = merge(item, body.defaults)
                environment = environments[merged.environment or HOST]
                if isinstance(environment, InvalidSubmission):
                    raise InvalidSubmission(str(environment), field="environment")
                new = prepare(merged, self.settings, environment=environment)
                requested = merged.limits.model_dump() if merged.limits else {}
                apply_ceilings(new.request["limits"], requested, who)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                field = f"items.{i}.{where}" if where else f"items.{i}"
                raise InvalidSubmission(f"{field}: {first['msg']}", field=field) from None
            except InvalidSubmission as exc:
                exc.field = f"items.{i}.{exc.field}" if exc.field else f"items.{i}"
                raise
            new.owner_key_id = who.id if who else None
            new.flags = scan_request(new.request)
            news.append(new)
        await self.access.check_quotas(who, len(news))
        await self._admit(len(news))
        digest = hashlib.sha256(body.model_dump_json(exclude_none=True).encode()).hexdigest()
        batch, created = await asyncio.to_thread(
            functools.partial(
                self.store.create_batch,
                new_id("bt"),
                news,
                body.labels or {},
                who.id if who else None,
                idempotency_key=scoped_idempotency(idempotency_key, who),
                request_hash=digest,
            )
        )
        if created:
            self.dispatcher.notify(len(news))
        return BatchCreated(id=batch.id, count=batch.count), created

    async def _batch_environments(
        self, body: BatchCreate
    ) -> dict[str, Environment | InvalidSubmission | None]:
        """Each environment a batch names, resolved once (or why it cannot be)."""
        default = body.defaults.environment if body.defaults else None
        resolved: dict[str, Environment | InvalidSubmission | None] = {}
        for name in {item.environment or default or HOST for item in body.items}:
            try:
                resolved[name] = await self.environments.resolve(name)
            except InvalidSubmission as exc:
                resolved[name] = exc
        return resolved

    async def batch(self, batch_id: str, who: KeyRecord | None = None) -> BatchPublic:
        # The row carries its counts (crucible.store.tallies): one read, no counting.
        row = await self.access.batch(batch_id, who)
        return batch_public(row, BatchCounts.of(row))

    async def cancel_batch(self, batch_id: str, who: KeyRecord | None = None) -> BatchPublic:
        await self.access.batch(batch_id, who)
        running = await asyncio.to_thread(self.store.cancel_batch, batch_id)
        for evaluation_id in running:
            await self.dispatcher.cancel(evaluation_id)
        return await self.batch(batch_id)

    async def batch_progress(self, batch_id: str, after: int = -1) -> AsyncIterator[BatchPublic]:
        """The batch each time its number of finished evaluations grows, until all are.

        Polls the database (the source of truth; batch counts are not on the bus).
        """
        while True:
            public = await self.batch(batch_id)
            if public.done > after:
                after = public.done
                yield public
            if public.finished:
                return
            await asyncio.sleep(0.5)

    # -- the platform -----------------------------------------------------------

    async def queue(self) -> QueuePublic:
        depth, running = await asyncio.to_thread(self.store.queue_stats)
        capacity = self.settings.max_concurrency
        if self.distributed:
            capacity = await asyncio.to_thread(self.cluster.capacity)
        return QueuePublic(
            depth=depth,
            queued=sum(depth.values()),
            running=running,
            capacity=capacity,
            max_queue=self.settings.max_queue,
        )

    async def workers(self) -> WorkerList:
        rows = await asyncio.to_thread(self.cluster.workers)
        return WorkerList(items=[worker_public(r) for r in rows])

    async def dead_letters(self, page: PageRequest) -> DeadLetterList:
        rows, nxt = await asyncio.to_thread(
            self.cluster.dead_letters, cursor=page.cursor, limit=page.limit
        )
        return DeadLetterList.of([dead_letter_public(r) for r in rows], nxt)

    async def retry_dead_letter(self, dead_letter_id: str) -> EvaluationPublic:
        """Queue the dead evaluation's request again, as a new evaluation (once)."""
        await self._admit(1)
        row = await asyncio.to_thread(self.cluster.retry_dead_letter, dead_letter_id, new_id("ev"))
        await self.bus.publish(stream_of(row.id), "status", {"status": Status.queued.value})
        self.dispatcher.notify(1)
        return await self._public(row)

    async def ready(self) -> None:
        """Raise unless the database and (embedded) the default runtime or
        (distributed) the event bus are usable."""
        await asyncio.to_thread(self.store.ping)
        if self.settings.dispatcher == "celery":
            try:
                await asyncio.to_thread(_ping_broker, self.settings.broker_url)
            except Exception as exc:
                raise SandboxUnavailable(f"the broker is unreachable: {exc!r}") from None
        if isinstance(self.bus, RedisBus):
            try:
                await self.bus.ping()
            except Exception as exc:
                raise SandboxUnavailable(f"the event bus is unreachable: {exc!r}") from None
        if self.sandbox is None:
            return
        if os.geteuid() != 0:
            raise SandboxUnavailable("not root: the sandbox cannot run")
        await self.sandbox.prepare()
        self.sandbox.get_runtime(self.settings.default_runtime)  # raises when not installed


def _status_of(row: Evaluation) -> dict[str, object]:
    """A ``status`` event's data from the record (as the executor publishes it)."""
    data: dict[str, object] = {"status": row.status}
    if row.status == Status.running:
        data["attempt"] = row.attempts
    return data


def _ping_broker(url: str) -> None:
    """Connect to the Celery broker once (Redis or RabbitMQ), or raise."""
    from kombu.connection import Connection

    with Connection(url, connect_timeout=2) as conn:  # type: ignore[no-untyped-call]
        conn.ensure_connection(max_retries=1, timeout=2)
