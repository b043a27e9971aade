"""The Celery app of distributed mode: one task, ``crucible.wake``.

Celery carries wake-ups, not work. The database is the queue (see
:mod:`crucible.dispatch.claimer`): every ``crucible worker`` claims runnable
evaluations straight from it whenever a sandbox slot is free, and polls it every
``claim_poll_s`` when idle. A wake-up makes an idle worker look at once instead of at
its next poll, so a message lost, duplicated, delayed or held by a worker that died
changes only how soon work starts (by at most one poll), never whether it runs; and
priorities and fair share are decided by the claim, in one place, not by the order
in which a broker happens to deliver.

Configuration, and why:

* One queue, ``crucible``: a wake-up says nothing about which evaluation runs, so
  there is nothing to route.
* Acknowledged on receipt (no ``acks_late``): the task only sets an event, so there
  is nothing to redeliver if the worker dies afterwards.
* JSON only, no result backend, messages expire after ``WAKE_EXPIRES_S`` (a stale
  wake-up is worth nothing; the poll covers it).
* The worker runs Celery's *threads* pool with one thread: the task body takes
  microseconds; the sandboxes run in the worker's own asyncio loop.

Run a worker with ``crucible worker``; ``celery -A crucible.wiring worker --pool
threads`` works too (the worker's runtime is then built at the first task).
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from kombu.entity import Queue

from crucible.core.config import Settings, get_settings

TASK = "crucible.wake"
QUEUE = "crucible"
WAKE_EXPIRES_S = 60.0


def make_celery(settings: Settings, *, wake: Callable[..., None] | None = None) -> Celery:
    """A Celery app for ``settings``' broker, configured as described above.

    ``wake`` is the task's body, registered only by a process that runs it (a
    worker: :func:`crucible.dispatch.worker.wake`); API processes only send the task,
    by name. Taking it as an argument keeps this module below the worker's (they were
    an import cycle)."""
    app = Celery("crucible", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        crucible_settings=settings,
        task_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        task_queues=[Queue(QUEUE, routing_key=QUEUE)],  # type: ignore[no-untyped-call]
        task_default_queue=QUEUE,
        task_default_routing_key=QUEUE,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        worker_hijack_root_logger=False,
        worker_disable_rate_limits=True,
    )
    if wake is not None:
        app.task(name=TASK, bind=True, ignore_result=True)(wake)
    return app


def __getattr__(name: str) -> Celery:
    # For ``celery -A crucible.dispatch.celery_app`` (Flower, inspect, purge): the app
    # of the CRUCIBLE_* settings of the importing process, built on first use rather
    # than at import (servers import this module without needing an app of its own).
    # It sends and monitors; a worker that runs the task is ``crucible worker`` (or
    # ``celery -A crucible.wiring worker --pool threads``).
    if name in ("app", "celery"):
        return make_celery(get_settings())
    raise AttributeError(name)
