"""The HTTP API (FastAPI) under /api/v1; build it with ``crucible.api.app.create_app``."""
