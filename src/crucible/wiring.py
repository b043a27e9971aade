"""The composition root: which parts a process is made of, built in one place.

Three kinds of process, each composed here from the same few builders:

* an embedded server (``CRUCIBLE_DISPATCHER=embedded``, :func:`build_service`):
  store → access → cluster → blobs → environments → in-process bus → Sandbox (with
  its warm pool) → Executor → Claimer → Maintenance (heartbeat and recovery of this
  process's runs);
* a distributed API instance (``celery``, :func:`build_service`): the same store,
  access and environments, the Redis bus, a CeleryDispatcher waking ``crucible
  worker`` processes, and a Maintenance that only recovers (this process runs no
  evaluations, so it has no heartbeat row);
* a worker (``crucible worker``, :func:`build_worker`): store → cluster → Redis bus →
  Sandbox → Executor → Claimer → Maintenance, run by a
  :class:`~crucible.dispatch.worker.WorkerRuntime` on its own loop; with
  ``--sandboxes N`` also a :class:`SandboxService` of its own.

Embedded, this process hosts its own long-lived sandboxes (:class:`SandboxService`
over the engine's sessions), named by the identity the heartbeat uses. Distributed,
the API hosts none: :class:`RoutedSandboxes` places them on the sandbox hosts
(``crucible worker --sandboxes N``) and routes every request to the host named by
the record; its Maintenance marks ``lost`` the sandboxes of hosts declared dead.

What is built here is only constructed; each process starts its parts in its own
order (:meth:`Service.start`, :meth:`WorkerRuntime.start`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crucible.core.config import Settings, get_settings
from crucible.dispatch.celery_app import make_celery
from crucible.dispatch.claimer import Claimer
from crucible.dispatch.distributed import CeleryDispatcher
from crucible.dispatch.maintenance import Maintenance
from crucible.dispatch.worker import WorkerParts, WorkerRuntime, current_runtime
from crucible.engine import Sandbox
from crucible.environments.store import EnvironmentStore
from crucible.services import identity
from crucible.services.access import Access
from crucible.services.environments import EnvironmentService
from crucible.services.evaluations import Service
from crucible.services.events import EventBus, InProcessBus, RedisBus
from crucible.services.executor import Executor
from crucible.services.host_client import HostClient
from crucible.services.ports import Dispatcher, Maintainer
from crucible.services.records import RecordCache
from crucible.services.sandbox_router import RoutedSandboxes
from crucible.services.sandboxes import SandboxService, SessionEngine, lose_dead_hosts
from crucible.store import BlobStore, Cluster, Store, WorkerInfo
from crucible.store.sandboxes import Owner, SandboxStore


def _redis_bus(settings: Settings) -> RedisBus:
    return RedisBus(
        settings.event_redis_url, prefix=settings.prefix, retention_s=settings.event_retention_s
    )


def _environments(settings: Settings, store: Store, access: Access) -> EnvironmentService:
    return EnvironmentService(
        EnvironmentStore.of(settings),
        store,
        access.sandboxes,
        context_max_bytes=settings.build_context_max_bytes,
        context_max_entries=settings.build_context_max_entries,
        build_timeout_s=settings.build_timeout_s,
        runc=settings.runc_path,
    )


def _runner(
    settings: Settings,
    *,
    store: Store,
    blobs: BlobStore,
    bus: EventBus,
    info: WorkerInfo,
    concurrency: int,
    cancel_poll_s: float = 0.25,
    records: RecordCache | None = None,
) -> tuple[Sandbox, Executor, Claimer]:
    """What runs evaluations in this process: the engine (and its warm pool), the one
    execution path, and the claim loop that feeds it ``concurrency`` at a time."""
    sandbox = Sandbox(settings, max_concurrency=concurrency)
    executor = Executor(
        store=store,
        blobs=blobs,
        bus=bus,
        sandbox=sandbox,
        settings=settings,
        cancel_poll_s=cancel_poll_s,
        worker_id=info.id,
        records=records,
    )
    claimer = Claimer(executor, store, concurrency=concurrency, poll_s=settings.claim_poll_s)
    return sandbox, executor, claimer


def _hosted(
    settings: Settings,
    *,
    access: Access,
    blobs: BlobStore,
    bus: EventBus,
    engine: SessionEngine,
    environments: EnvironmentService,
    info: WorkerInfo,
    capacity: int = 0,
) -> SandboxService:
    """The long-lived sandboxes this process hosts; the rows name it by the identity
    its heartbeat uses, so the heartbeat row is their liveness."""
    return SandboxService(
        settings=settings,
        access=access,
        blobs=blobs,
        bus=bus,
        engine=engine,
        environments=environments,
        owner=Owner(info.id, info.node, info.host, info.pid, info.proc_start),
        capacity=capacity,
    )


def build_service(
    settings: Settings,
    *,
    bus: EventBus | None = None,
    dispatch: bool = True,
    sessions: SessionEngine | None = None,
) -> Service:
    """The API's service for ``settings.dispatcher``'s mode (see the module docstring).

    ``bus`` replaces the mode's event bus; ``dispatch=False`` leaves the dispatcher
    stopped; ``sessions`` is the engine of long-lived sandboxes (default: the real
    one, ``crucible.engine.session.Sessions``); tests inject another.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.sqlalchemy_url)
    access = Access(store, settings)  # keys, audit, quotas, scoping
    cluster = Cluster(store)
    blobs = BlobStore(settings.data_dir / "blobs")
    environments = _environments(settings, store, access)
    records = RecordCache(settings.record_cache_mb << 20)
    dispatcher: Dispatcher
    maintenance: Maintainer
    sandbox: Sandbox | None = None
    executor: Executor | None = None
    sandboxes: SandboxService | RoutedSandboxes
    if settings.dispatcher == "celery":
        redis_bus = _redis_bus(settings)
        info = identity.this_process("api", 0)  # runs nothing, hosts nothing
        bus = bus or redis_bus
        waker = CeleryDispatcher(cluster, redis_bus, make_celery(settings))
        dispatcher = waker
        routed = RoutedSandboxes(
            settings=settings,
            access=access,
            blobs=blobs,
            bus=bus,
            cluster=cluster,
            environments=environments,
            hosts=HostClient(settings.cluster_token or ""),
        )
        sandboxes = routed
        maintenance = Maintenance(
            cluster,
            settings,
            info=None,  # runs nothing: no heartbeat row
            on_recovered=waker.notify,
            duties=(routed.lose_dead_hosts,),
        )
    else:
        info = identity.this_process("embedded", settings.max_concurrency)
        bus = bus or InProcessBus()
        sandbox, executor, embedded = _runner(
            settings,
            store=store,
            blobs=blobs,
            bus=bus,
            info=info,
            concurrency=settings.max_concurrency,
            records=records,  # each finished record rendered where the API will read it
        )
        dispatcher = embedded
        local = _hosted(
            settings,
            access=access,
            blobs=blobs,
            bus=bus,
            engine=sessions if sessions is not None else sandbox.sessions,
            environments=environments,
            info=info,
        )
        sandboxes = local
        maintenance = Maintenance(
            cluster,
            settings,
            info=info,
            running=lambda: embedded.running,
            on_recovered=embedded.look,
            duties=(lambda: lose_dead_hosts(local.store, local.bus),),
            sandboxes=local.hosted,
        )
    return Service(
        settings,
        records=records,
        store=store,
        access=access,
        cluster=cluster,
        blobs=blobs,
        environments=environments,
        bus=bus,
        dispatcher=dispatcher,
        maintenance=maintenance,
        identity=info,
        sandboxes=sandboxes,
        sandbox=sandbox,
        executor=executor,
        dispatch=dispatch,
    )


def compose_worker(
    settings: Settings,
    *,
    info: WorkerInfo,
    concurrency: int,
    on_epoch: Callable[[int], None],
) -> WorkerParts:
    """A worker's parts (see the module docstring), called by its runtime on its own
    loop. ``on_epoch``: the runtime's answer to being declared dead while cut off."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.sqlalchemy_url)
    store.default_max_running = settings.quota_max_running  # as in the API (access.py)
    blobs = BlobStore(settings.data_dir / "blobs")
    bus = _redis_bus(settings)
    sandbox, executor, claimer = _runner(
        settings,
        store=store,
        blobs=blobs,
        bus=bus,
        info=info,
        concurrency=concurrency,
        # The cancel channel is the fast path; the flag is polled as the fallback.
        cancel_poll_s=1.0,
    )
    hosted: SandboxService | None = None
    if settings.sandbox_host_capacity > 0:
        access = Access(store, settings)
        hosted = _hosted(
            settings,
            access=access,
            blobs=blobs,
            bus=bus,
            engine=sandbox.sessions,
            environments=_environments(settings, store, access),
            info=info,
            capacity=settings.sandbox_host_capacity,
        )
    records = SandboxStore(store)
    maintenance = Maintenance(
        Cluster(store),
        settings,
        info=info,
        running=lambda: executor.running,
        on_recovered=claimer.look,
        duties=(lambda: lose_dead_hosts(records, bus),),
        sandboxes=hosted.hosted if hosted is not None else lambda: 0,
        on_epoch=on_epoch,
    )
    return WorkerParts(
        store=store,
        bus=bus,
        sandbox=sandbox,
        executor=executor,
        claimer=claimer,
        maintenance=maintenance,
        sandboxes=hosted,
    )


def build_worker(settings: Settings, *, concurrency: int) -> WorkerRuntime:
    """A worker process's runtime (not started): ``crucible worker``."""
    return WorkerRuntime(settings, concurrency=concurrency, compose=compose_worker)


def wake(task: Any, *hint: Any, **_: Any) -> None:
    """The ``crucible.wake`` task of ``celery -A crucible.wiring worker --pool threads``:
    the worker's runtime is built at the first task (``crucible worker`` builds it
    before the first, and registers :func:`crucible.dispatch.worker.wake`)."""
    settings: Settings = task.app.conf.crucible_settings
    current_runtime(lambda: build_worker(settings, concurrency=settings.max_concurrency)).wake()


def __getattr__(name: str) -> Any:
    # For ``celery -A crucible.wiring worker --pool threads``: the app of the
    # CRUCIBLE_* settings with the task registered, built on first use (see
    # crucible.dispatch.celery_app's for an app that only sends and monitors).
    if name in ("app", "celery"):
        return make_celery(get_settings(), wake=wake)
    raise AttributeError(name)
