"""The queue and the probes."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response

from crucible.api.deps import ServiceDep
from crucible.api.errors import responses
from crucible.api.schemas import QueuePublic
from crucible.services import metrics

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


@probes.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {metrics.CONTENT_TYPE: {}}, "description": "Prometheus text"}},
)
async def get_metrics(service: ServiceDep) -> Response:
    """Prometheus metrics: HTTP latency by route, sandbox run durations, evaluations by
    status/termination/language, queue depth by priority, running and capacity."""

    def snapshot() -> dict[str, Any]:
        depth, running = service.store.queue_stats()
        return {
            "evaluations": service.store.evaluation_counts(),
            "depth": depth,
            "running": running,
            "capacity": service.settings.max_concurrency,
        }

    body = await asyncio.to_thread(metrics.render, snapshot)
    return Response(body, media_type=metrics.CONTENT_TYPE)
