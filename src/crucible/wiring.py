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

In both, this process hosts its own long-lived sandboxes (:class:`SandboxService`
over the engine's sessions), named by the identity the heartbeat uses.

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
from crucible.services.ports import Dispatcher, Maintainer
from crucible.services.sandboxes import SandboxService, SessionEngine
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
    environments = EnvironmentService(EnvironmentStore.of(settings), store, access.sandboxes)
    dispatcher: Dispatcher
    maintenance: Maintainer
    sandbox: Sandbox | None = None
    executor: Executor | None = None
    if settings.dispatcher == "celery":
        redis_bus = RedisBus(
            settings.event_redis_url,
            prefix=settings.prefix,
            retention_s=settings.event_retention_s,
        )
        info = identity.this_process("api", 0)  # hosts sandboxes only
        bus = bus or redis_bus
        waker = CeleryDispatcher(cluster, redis_bus, make_celery(settings))
        dispatcher = waker
        maintenance = Maintenance(
            cluster,
            settings,
            info=None,  # runs nothing: no heartbeat row
            on_recovered=waker.notify,
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
        maintenance = Maintenance(
            cluster,
            settings,
            info=info,
            running=lambda: embedded.running,
            on_recovered=embedded.notify,
        )
    # In distributed mode this engine runs no evaluations (no warm pool), only the
    # sandboxes this API instance hosts.
    session_host = sandbox or Sandbox(settings.model_copy(update={"pool_size": 0}))
    # Long-lived sandboxes live in this process in both modes (an API instance hosts
    # its own); the rows name it by the identity the heartbeat uses.
    sandboxes = SandboxService(
        settings=settings,
        access=access,
        blobs=blobs,
        bus=bus,
        engine=sessions if sessions is not None else session_host.sessions,
        environments=environments,
        owner=Owner(info.id, info.node, info.host, info.pid, info.proc_start),
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
        session_host=session_host,
        sandbox=sandbox,
        executor=executor,
        dispatch=dispatch,
    )
