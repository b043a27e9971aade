"""Serves the built web UI (frontend/dist) at ``/`` with client-side routing.

Files that exist are served as they are; any other path outside the API answers with
index.html so that the UI's router can handle deep links such as /evaluations/<id>.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse

import crucible

_NOT_UI = ("api/", "healthz", "readyz", "metrics")


def default_frontend_dir() -> Path:
    """frontend/dist of the source checkout this package is installed from."""
    return Path(crucible.__file__).resolve().parents[2] / "frontend" / "dist"


def install(app: FastAPI, dist: Path) -> bool:
    """Add the UI's catch-all route; False (and nothing added) when it is not built."""
    root = dist.resolve()
    index = root / "index.html"
    if not index.is_file():
        return False

    @app.get("/{path:path}", include_in_schema=False)
    async def ui(path: str) -> FileResponse:
        if path.startswith(_NOT_UI):
            raise HTTPException(status_code=404, detail="not found")
        candidate = (root / path).resolve()
        if path and candidate.is_relative_to(root) and candidate.is_file():
            # Vite names assets by content hash: they may be cached for good.
            cache = (
                "public, max-age=31536000, immutable" if path.startswith("assets/") else "no-cache"
            )
            return FileResponse(candidate, headers={"Cache-Control": cache})
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    return True
