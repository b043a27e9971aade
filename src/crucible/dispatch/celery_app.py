"""The Celery app of distributed mode: one task, ``crucible.execute(evaluation_id)``.

A task carries only an evaluation's id; the database holds everything else and stays
the source of truth, so a lost or duplicated message costs a re-publish or a no-op
claim, never an evaluation. The task calls the same :meth:`Executor.execute` as the
embedded dispatcher, inside the worker process's own event loop
(:mod:`crucible.dispatch.worker`).

Configuration, and why:

* ``acks_late`` + ``reject_on_worker_lost``: a message is acknowledged after the run,
  so a worker killed mid-run leaves it for redelivery (the fenced claim makes the
  redelivery a no-op when the evaluation was already recovered and re-run).
* ``worker_prefetch_multiplier=1``: a worker reserves no more tasks than it has
  sandbox slots, so a high-priority task is never stuck behind a local backlog.
* ``visibility_timeout`` (Redis transport) outlasts the longest allowed run
  (``Settings.visibility_timeout_s``), else a healthy long run is delivered twice.
* JSON only, no result backend (results live in the database).
* Routing by priority into the ``high``, ``normal`` and ``low`` queues. On Redis,
  ``queue_order_strategy="priority"`` makes the worker's BRPOP list the queues in that
  fixed order (the default rotates them), and Redis answers BRPOP from the first
  non-empty list, so a worker always takes ``high`` work first.
* Task events on (``-E`` and sent events), so Flower can watch the cluster.

Run a worker with ``crucible worker``; ``celery -A crucible.dispatch.celery_app worker
--pool threads`` works too (the runtime is then built at the first task).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from crucible.config import Settings, get_settings
from crucible.lifecycle import Priority

TASK = "crucible.execute"
QUEUES: tuple[str, ...] = tuple(p.value for p in sorted(Priority, key=lambda p: p.rank))


def queue_of(rank: int) -> str:
    """The queue of a stored priority rank."""
    for p in Priority:
        if p.rank == rank:
            return p.value
    return Priority.normal.value


def route(
    name: str, args: Any, kwargs: dict[str, Any], options: Any, task: Any = None, **kw: Any
) -> dict[str, str] | None:
    """Celery router: ``crucible.execute`` goes to the queue named by its priority."""
    if name != TASK:
        return None
    priority = (kwargs or {}).get("priority", Priority.normal.value)
    return {"queue": priority if priority in QUEUES else Priority.normal.value}


def execute(task: Any, evaluation_id: str, priority: str = Priority.normal.value) -> None:
    """Run one evaluation on this worker (``priority`` only chose the queue)."""
    from crucible.dispatch.worker import current_runtime

    current_runtime(task.app.conf.crucible_settings).execute(evaluation_id)


def make_celery(settings: Settings) -> Celery:
    """A Celery app for ``settings``' broker, configured as described above."""
    app = Celery("crucible", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        crucible_settings=settings,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(name, routing_key=name) for name in QUEUES],  # type: ignore[no-untyped-call]
        task_default_queue=Priority.normal.value,
        task_routes=(route,),
        broker_transport_options={
            "visibility_timeout": int(settings.visibility_timeout_s),
            "queue_order_strategy": "priority",
        },
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # A broker hiccup must not abandon sandboxes that are running fine: their
        # results go to the database, and a redelivered duplicate is a no-op claim.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        worker_hijack_root_logger=False,
        worker_disable_rate_limits=True,
    )
    app.task(name=TASK, bind=True, ignore_result=True)(execute)
    return app


# For ``celery -A crucible.dispatch.celery_app`` and Flower; the app reads the
# CRUCIBLE_* settings of the process importing it.
app = make_celery(get_settings())
