"""The server serves the built UI at / with client-side routing, never over the API."""

from __future__ import annotations

from pathlib import Path

import httpx

from support.api import ApiFactory
from support.auth_keys import AUTH


async def test_ui_routes_and_assets(make_api: ApiFactory, tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><div id=root></div>")
    (dist / "assets" / "app-1234.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("outside dist")
    async with make_api(dispatch=False, frontend_dir=dist) as (api, _service):
        transport = api._transport
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/")).text.startswith("<!doctype html>")
            # A deep link is the UI's to route.
            deep = await client.get("/evaluations/abc")
            assert deep.status_code == 200 and "root" in deep.text
            asset = await client.get("/assets/app-1234.js")
            assert asset.text == "console.log(1)"
            assert "immutable" in asset.headers["cache-control"]
            # Path traversal falls back to index.html, never a file outside dist.
            assert "outside dist" not in (await client.get("/..%2Fsecret.txt")).text
            assert "outside dist" not in (await client.get("/assets/%2E%2E/%2E%2E/secret.txt")).text
            # Unknown API paths stay JSON 404s, and the API still answers.
            assert (await client.get("/api/v1/nope")).status_code == 404
            assert (await client.get("/api/v1/queue")).status_code == 401
            assert (await client.get("/api/v1/queue", headers=AUTH)).status_code == 200
            assert (await client.get("/healthz")).status_code == 200


async def test_no_ui_when_not_built(make_api: ApiFactory, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    async with (
        make_api(dispatch=False, frontend_dir=missing) as (api, _service),
        httpx.AsyncClient(transport=api._transport, base_url="http://test") as client,
    ):
        assert (await client.get("/")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200
