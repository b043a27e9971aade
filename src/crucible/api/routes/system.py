"""The queue and the probes."""

from __future__ import annotations

from fastapi import APIRouter

from crucible.api.deps import ServiceDep
from crucible.api.errors import responses
from crucible.api.schemas import QueuePublic

router = APIRouter(tags=["system"])
probes = APIRouter(tags=["system"])


@router.get("/queue")
async def get_queue(service: ServiceDep) -> QueuePublic:
    """Queued evaluations by priority, running ones, and this server's capacity."""
    return await service.queue()


@probes.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@probes.get("/readyz", responses=responses(503))
async def readyz(service: ServiceDep) -> dict[str, str]:
    """The database answers and the default runtime can run sandboxes."""
    await service.ready()
    return {"status": "ready"}
