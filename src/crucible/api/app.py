"""The FastAPI application: routes under /api/v1, the service started in its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

import crucible
from crucible.api import errors, frontend
from crucible.api.routes import batches, evaluations, system
from crucible.config import Settings, get_settings
from crucible.service import Service

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, dispatch: bool = True) -> FastAPI:
    """The app; ``dispatch=False`` serves the API without running anything."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = Service(settings, dispatch=dispatch)
        await service.start()
        app.state.service = service
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="Crucible",
        summary="Run untrusted, model-written code safely, observably and at scale.",
        version=getattr(crucible, "__version__", "0.1.0"),
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    errors.install(app)
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(evaluations.router)
    api.include_router(batches.router)
    api.include_router(system.router)
    app.include_router(api)
    app.include_router(system.probes)
    # Last: the UI's catch-all must not shadow any API route.
    frontend.install(app, settings.frontend_dir or frontend.default_frontend_dir())
    return app
