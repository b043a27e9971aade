"""The FastAPI application: routes under /api/v1, the service started in its lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

import crucible
from crucible.api import errors, frontend
from crucible.api.deps import authenticate, require_admin
from crucible.api.middleware import Guard
from crucible.api.routes import (
    audit,
    batches,
    cluster,
    environments,
    evaluations,
    keys,
    sandboxes,
    system,
)
from crucible.core.config import Settings, get_settings
from crucible.engine.caps import MAX_FILE_BYTES
from crucible.services.sandboxes import SessionEngine
from crucible.wiring import build_service

# POST …/exec: stdin up to MAX_FILE_BYTES as base64 (4/3), plus the argv and env.
EXEC_BODY_BYTES = MAX_FILE_BYTES * 4 // 3 + (8 << 20)

API_PREFIX = "/api/v1"


def create_app(
    settings: Settings | None = None,
    *,
    dispatch: bool = True,
    sessions: SessionEngine | None = None,
) -> FastAPI:
    """The app; ``dispatch=False`` serves the API without running anything;
    ``sessions`` replaces the engine of long-lived sandboxes (tests)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = build_service(settings, dispatch=dispatch, sessions=sessions)
        await service.start()
        app.state.service = service
        # What start-up made lives as long as the server: out of the collector's sight,
        # a full collection no longer walks it (133 ms each, every few hundred runs).
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
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
    # Every /api/v1 route needs a key; /healthz, /readyz, /metrics and the UI do not.
    # Documented once for all: any route can answer these (401 from authenticate, 413
    # from the body limit, 400/422 from parsing, always in the ErrorPublic shape).
    # The sandboxes' routes each name their principal (PrincipalDep, or for exec a
    # ClaimDep checked in its own transaction), so that router gets no router-wide
    # authenticate: it would look the key up again (test_every_api_route_authenticates).
    api = APIRouter(prefix=API_PREFIX, responses=errors.responses(400, 401, 413, 422))
    auth = [Depends(authenticate)]
    admin = [Depends(require_admin)]
    api.include_router(evaluations.router, dependencies=auth)
    api.include_router(batches.router, dependencies=auth)
    api.include_router(sandboxes.router)
    api.include_router(environments.router, dependencies=auth)
    api.include_router(system.router, dependencies=auth)
    api.include_router(cluster.router, dependencies=admin, responses=errors.responses(403))
    api.include_router(keys.router, dependencies=auth)
    api.include_router(audit.router, dependencies=auth)
    app.include_router(api)
    app.include_router(system.probes)
    # Last: the UI's catch-all must not shadow any API route.
    frontend.install(app, settings.frontend_dir or frontend.default_frontend_dir())
    if settings.cors_origins:  # off unless configured
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
                "X-Request-ID",
            ],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(
        Guard,
        max_body_bytes=settings.max_body_bytes,
        docs_path=f"{API_PREFIX}/docs",
        uploads=(
            ("PUT", f"{API_PREFIX}/sandboxes/[^/]+/file", MAX_FILE_BYTES),
            # An exec's stdin may be as large as a file, sent as base64 in JSON.
            ("POST", f"{API_PREFIX}/sandboxes/[^/]+/exec", EXEC_BODY_BYTES),
            # An image archive, streamed to disk; the store enforces its own limit.
            ("POST", f"{API_PREFIX}/environments", settings.environment_max_bytes),
            ("POST", f"{API_PREFIX}/environments/build", settings.build_context_max_bytes),
        ),
    )
    return app
