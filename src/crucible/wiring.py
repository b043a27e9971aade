"""The composition root: which parts a process is made of, built in one place.

``crucible serve`` (and any in-process app, ``crucible.api.app.create_app``) gets a
:class:`~crucible.services.evaluations.Service` from :func:`build_service`, in one of
two modes:

* embedded (``CRUCIBLE_DISPATCHER=embedded``): store → access → cluster → blobs →
  environments → in-process bus → Sandbox (with its warm pool) → Executor → Claimer
  → Maintenance (heartbeat and recovery of this process's runs);
* distributed (``celery``): the same store, access and environments, the Redis bus,
  a CeleryDispatcher waking ``crucible worker`` processes, and a Maintenance that
  only recovers (this process runs no evaluations, so it has no heartbeat row).

Embedded, this process hosts its own long-lived sandboxes (:class:`SandboxService`
over the engine's sessions), named by the identity the heartbeat uses. Distributed,
it hosts none: :class:`RoutedSandboxes` places them on the sandbox hosts (``crucible
worker --sandboxes N``) and routes every request to the host named by the record;
its Maintenance marks ``lost`` the sandboxes of hosts declared dead.

A worker process composes its runner in :class:`crucible.dispatch.worker.WorkerRuntime`
(its own loop, built inside it).
"""

from __future__ import annotations

from crucible.core.config import Settings
from crucible.dispatch.celery_app import make_celery
from crucible.dispatch.claimer import Claimer
from crucible.dispatch.distributed import CeleryDispatcher
from crucible.dispatch.maintenance import Maintenance
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
from crucible.services.sandbox_router import RoutedSandboxes
from crucible.services.sandboxes import SandboxService, SessionEngine, lose_dead_hosts
from crucible.store import BlobStore, Cluster, Store
from crucible.store.sandboxes import Owner


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
    environments = EnvironmentService(
        EnvironmentStore.of(settings),
        store,
        access.sandboxes,
        context_max_bytes=settings.build_context_max_bytes,
        context_max_entries=settings.build_context_max_entries,
        build_timeout_s=settings.build_timeout_s,
        runc=settings.runc_path,
    )
    dispatcher: Dispatcher
    maintenance: Maintainer
    sandbox: Sandbox | None = None
    executor: Executor | None = None
    sandboxes: SandboxService | RoutedSandboxes
    if settings.dispatcher == "celery":
        redis_bus = RedisBus(
            settings.event_redis_url,
            prefix=settings.prefix,
            retention_s=settings.event_retention_s,
        )
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
        sandbox = Sandbox(settings)
        executor = Executor(
            store=store,
            blobs=blobs,
            bus=bus,
            sandbox=sandbox,
            settings=settings,
            worker_id=info.id,
        )
        embedded = Claimer(
            executor,
            store,
            concurrency=settings.max_concurrency,
            poll_s=settings.claim_poll_s,
        )
        dispatcher = embedded
        # Long-lived sandboxes live in this process; the rows name it by the
        # identity the heartbeat uses.
        local = SandboxService(
            settings=settings,
            access=access,
            blobs=blobs,
            bus=bus,
            engine=sessions if sessions is not None else sandbox.sessions,
            environments=environments,
            owner=Owner(info.id, info.node, info.host, info.pid, info.proc_start),
        )
        sandboxes = local
        maintenance = Maintenance(
            cluster,
            settings,
            info=info,
            running=lambda: embedded.running,
            on_recovered=embedded.notify,
            duties=(lambda: lose_dead_hosts(local.store, local.bus),),
            sandboxes=local.hosted,
        )
    return Service(
        settings,
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
