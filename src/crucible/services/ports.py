"""What the services need of the layers above them, as Protocols.

The evaluation service queues work and asks for cancellations, but which dispatcher
delivers the work (the embedded claim loop, or Celery wake-ups to workers) and who
recovers dead processes' evaluations are decided by the composition root
(``crucible.wiring``), which hands it implementations of these. So the service never
imports ``crucible.dispatch``.
"""

from __future__ import annotations

from typing import Protocol


class Dispatcher(Protocol):
    """Delivers queued evaluations to executors: ``crucible.dispatch.claimer.Claimer``
    (embedded) or ``crucible.dispatch.distributed.CeleryDispatcher``."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    def notify(self, n: int = 1) -> None:
        """``n`` evaluations were queued (or re-queued): look for work now."""

    async def cancel(self, evaluation_id: str) -> None:
        """Kill a running evaluation wherever it runs (best effort; the executor also
        polls the cancel flag)."""


class Maintainer(Protocol):
    """Heartbeats this process and re-queues dead processes' evaluations:
    ``crucible.dispatch.maintenance.Maintenance``."""

    async def heartbeat(self) -> None: ...

    async def recover(self) -> tuple[int, int]: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...
