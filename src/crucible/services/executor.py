"""Executes one evaluation: claim → sandbox → store result (and blobs) → publish events.

This is the only path that runs an evaluation, in an embedded server or a Celery
worker alike: both claim through ``crucible.dispatch.claimer``. It is safe to call
twice for one evaluation, from two processes: the fenced claim lets one through, and
the other finds the evaluation no longer queued and does nothing.

Two channels for failure: whatever the program did is a Result (status ``completed``,
or ``cancelled``) and is never retried; a platform fault
(:class:`~crucible.core.errors.SandboxError`) re-queues the evaluation with exponential
back-off until ``max_attempts`` claims were spent, then ends it in ``error`` with a
dead letter. A database that drops its connection is waited for (``db_retry_s``).
An environment removed or replaced since submission
(:class:`~crucible.core.errors.EnvironmentUnavailable`) ends the evaluation in ``error`` at
once: no retry can bring the submitted root back.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import dataclasses
import logging
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

from crucible.core import logs
from crucible.core.config import Settings
from crucible.core.errors import EnvironmentUnavailable, InvalidSubmission, SandboxError
from crucible.core.lifecycle import Status, retry_delay_s
from crucible.domain.evaluations import EvaluationRequest
from crucible.engine import Result, Sandbox, Termination
from crucible.environments.store import HOST, EnvironmentStore
from crucible.services import metrics
from crucible.services.events import EventBus
from crucible.services.records import RecordCache, evaluation_public
from crucible.services.submissions import pinned_root, run_request, verdict
from crucible.store import BlobStore, Claim, Store

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def connection_lost(exc: BaseException) -> bool:
    """A database error worth waiting out (the server restarting, a dropped link)."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    )


def stream_of(evaluation_id: str) -> str:
    """The event-bus stream of one evaluation."""
    return f"evaluation:{evaluation_id}"


class Executor:
    """Runs evaluations; ``cancel`` stops one running in this process at once.

    Cancellation from elsewhere reaches a run through :meth:`cancel` (the distributed
    worker calls it on a cancel broadcast) or, as the fallback, the
    ``cancel_requested`` flag in the database, polled every ``cancel_poll_s``.
    ``worker_id`` is recorded on every claim (the process's identity for recovery).
    ``records``: where each final record is rendered for this process's API to serve.
    """

    def __init__(
        self,
        *,
        store: Store,
        blobs: BlobStore,
        bus: EventBus,
        sandbox: Sandbox,
        settings: Settings,
        cancel_poll_s: float = 0.25,
        worker_id: str | None = None,
        records: RecordCache | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.bus = bus
        self.sandbox = sandbox
        self.settings = settings
        self.cancel_poll_s = cancel_poll_s
        self.worker_id = worker_id
        self.records = records
        self._cancels: dict[str, asyncio.Event] = {}
        self._scratch = settings.data_dir / "tmp"
        # This process's own view of the environments (a worker's settings name the
        # store it can read), consulted at run time: see submissions.pinned_root.
        self.environments = EnvironmentStore.of(settings)

    def cancel(self, evaluation_id: str) -> bool:
        """Stop ``evaluation_id`` if it runs here; False when it does not."""
        event = self._cancels.get(evaluation_id)
        if event is None:
            return False
        event.set()
        return True

    @property
    def running(self) -> int:
        return len(self._cancels)

    async def _db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn`` in a thread, retried with back-off while the database is unreachable."""
        deadline = time.monotonic() + self.settings.db_retry_s
        delay = 0.2
        while True:
            try:
                return await asyncio.to_thread(fn, *args, **kwargs)
            except DBAPIError as exc:
                if not connection_lost(exc) or time.monotonic() > deadline:
                    raise
                log.warning(
                    "database unavailable (%s); retrying in %.1fs", type(exc).__name__, delay
                )
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)

    async def execute(
        self,
        evaluation_id: str,
        *,
        claim: Claim | None = None,
        on_ran: Callable[[], bool | None] | None = None,
        then: Callable[[Claim | None, bool], None] | None = None,
    ) -> None:
        """Run ``evaluation_id`` once, claiming it first unless ``claim`` is given.

        Returns quietly when the evaluation is not queued (someone else has it).
        Platform failures end up in the record, never raised; asyncio cancellation
        (server shutdown) leaves it ``running`` for the start-up recovery.
        ``on_ran`` is called once the sandbox is done with it, before the outcome is
        stored (the claimer frees the slot then); when it returns True, the finish
        also claims the next evaluation and hands it to ``then(claim, looked)``
        (None: nothing claimed; ``looked``: nothing was runnable), which is always
        called once then.
        """
        logs.evaluation_id.set(evaluation_id)  # on this task's log lines
        if claim is None:
            claim = await self._db(self.store.claim, evaluation_id, worker_id=self.worker_id)
            if claim is None:
                return
        stream = stream_of(evaluation_id)
        successor = None  # the run's own finish claims the next (see on_ran)
        outcome = None
        cancel = self._cancels[evaluation_id] = asyncio.Event()
        scratch = self._scratch / f"{evaluation_id}-{claim.attempt}"
        try:
            if claim.request is None:
                claim = dataclasses.replace(
                    claim, request=(await self._db(self.store.get, evaluation_id)).request
                )
            request = EvaluationRequest.model_validate(claim.request)
            await self.bus.publish(
                stream, "status", {"status": "running", "attempt": claim.attempt}
            )
            outcome = await self._run(evaluation_id, request, cancel, scratch)
        except SandboxError as exc:
            await self._platform_failure(claim, exc)
            return
        except EnvironmentUnavailable as exc:
            await self._end(claim, Status.error, error=str(exc))
            return
        except InvalidSubmission as exc:  # validated at submission; only if the sandbox disagrees
            await self._end(claim, Status.error, error=f"invalid submission: {exc}")
            return
        except Exception as exc:
            log.exception("executing %s failed", evaluation_id)
            await self._end(claim, Status.error, error=f"internal error: {exc!r}")
            return
        finally:
            self._cancels.pop(evaluation_id, None)
            if on_ran is not None and on_ran() and then is not None:
                successor = then
                if outcome is None:  # a failure, already stored: nothing claimed
                    then(None, False)
            shutil.rmtree(scratch, ignore_errors=True)
        assert outcome is not None  # every other way out returned above
        await self._complete(claim, request, outcome, successor)

    async def _run(
        self, evaluation_id: str, request: EvaluationRequest, cancel: asyncio.Event, scratch: Path
    ) -> tuple[Result, dict[str, str]]:
        stream = stream_of(evaluation_id)
        root = None
        if request.environment != HOST:  # file reads: not on the loop
            root = await asyncio.to_thread(pinned_root, request, self.environments)
        chunks: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        decoders = {
            name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")
        }

        async def publish_output() -> None:
            # One publisher keeps chunks in order, whatever the bus's transport.
            while (item := await chunks.get()) is not None:
                name, data = item
                text = decoders[name].decode(data)
                if text:
                    await self.bus.publish(stream, name, {"data": text})

        async def watch_cancel() -> None:
            # A cancel before the claim never reaches here (a queued evaluation is
            # cancelled in place): the first poll can wait, which spares most short
            # runs a database read.
            while not cancel.is_set():
                await asyncio.sleep(self.cancel_poll_s)
                with contextlib.suppress(DBAPIError):  # the next poll will tell
                    if await asyncio.to_thread(self.store.cancel_requested, evaluation_id):
                        cancel.set()
                        return

        publisher = asyncio.create_task(publish_output())
        watcher = asyncio.create_task(watch_cancel())
        try:  # scratch: made by the engine if the program leaves files (copy_files)
            result = await self.sandbox.run(
                run_request(request, root),
                on_output=lambda name, data: chunks.put_nowait((name, data)),
                cancel=cancel,
                files_dir=scratch,
            )
            metrics.observe_run(request.language, result.termination.value, result.wall_ms / 1000)
            files = (
                await asyncio.to_thread(self._store_files, scratch, result) if result.files else {}
            )
        finally:
            watcher.cancel()
            chunks.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await publisher
        return result, files

    def _store_files(self, scratch: Path, result: Result) -> dict[str, str]:
        """Produced files → blobs; returns path → digest (oversized files are absent)."""
        digests: dict[str, str] = {}
        for info in result.files:
            path = scratch / info.path
            # We wrote scratch ourselves (the sandbox copies with O_NOFOLLOW), but stay strict.
            if path.is_file() and not path.is_symlink():
                digests[info.path] = self.blobs.put_file(path)
        return digests

    async def _complete(
        self,
        claim: Claim,
        request: EvaluationRequest,
        outcome: tuple[Result, dict[str, str]],
        successor: Callable[[Claim | None, bool], None] | None = None,
    ) -> None:
        result, files = outcome
        record: dict[str, Any] = result.model_dump(mode="json")
        record["verdict"] = verdict(request, result)
        blobs: dict[str, Any] = {"files": files}
        limit = self.settings.inline_output_bytes
        for name in ("stdout", "stderr"):
            data = getattr(result, name).encode("utf-8", "surrogateescape")
            if len(data) > limit:
                blobs[name] = await asyncio.to_thread(self.blobs.put, data)
                # Cut at a character boundary: drop a partial UTF-8 sequence at the end.
                record[name] = data[:limit].decode("utf-8", "ignore")
                record[f"{name}_inline_truncated"] = True
        status = (
            Status.cancelled if result.termination is Termination.cancelled else Status.completed
        )
        await self._end(
            claim,
            status,
            result=record,
            termination=result.termination.value,
            verdict=record["verdict"],
            blobs=blobs,
            successor=successor,
        )

    async def _platform_failure(self, claim: Claim, exc: SandboxError) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("evaluation %s attempt %d: %s", claim.id, claim.attempt, message)
        cancelled = await self._db(self.store.cancel_requested, claim.id)
        if cancelled:
            await self._end(claim, Status.cancelled, error=message)
        elif claim.attempt < self.settings.max_attempts:
            s = self.settings
            delay = retry_delay_s(
                claim.attempt, base_s=s.retry_backoff_s, max_s=s.retry_backoff_max_s
            )
            if await self._db(self.store.requeue, claim, message, delay_s=delay):
                await self.bus.publish(
                    stream_of(claim.id), "status", {"status": "queued", "error": message}
                )
        else:
            await self._end(claim, Status.error, error=message)

    async def _end(
        self,
        claim: Claim,
        status: Status,
        *,
        successor: Callable[[Claim | None, bool], None] | None = None,
        **fields: Any,
    ) -> None:
        """Store the final state (fenced) and publish the final record; with
        ``successor``, claim the next evaluation in the same transaction and hand it
        over (always, once: None if the transaction failed)."""
        # Stored and read back in one transaction: the final record to publish.
        if successor is None:
            stored = await self._db(self.store.finish_and_read, claim, status, **fields)
        else:
            claimed, looked = None, False
            try:
                stored, claimed = await self._db(
                    self.store.finish_and_claim, claim, status, worker_id=self.worker_id, **fields
                )
                looked = True
            finally:
                successor(claimed, looked)
        if stored is None:
            log.warning("evaluation %s attempt %d: claim was stale", claim.id, claim.attempt)
            return
        public = evaluation_public(*stored)
        if self.records is not None:
            self.records.render(public)
        stream = stream_of(claim.id)
        await self.bus.publish(stream, "status", {"status": status.value})
        await self.bus.publish(stream, "result", public.model_dump(mode="json"))
