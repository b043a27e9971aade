"""Access control in process: keys and roles, per-key scoping, quotas, fair share,
the audit trail, HTTP hardening, metrics and the static-scan flags."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from crucible.store.audit import AuditLog
from support.api import ApiFactory
from support.polling import aeventually

SLEEP = "import time\ntime.sleep({s})\nprint('done')\n"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@asynccontextmanager
async def as_key(admin: httpx.AsyncClient, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=admin._transport, base_url=str(admin.base_url), headers=bearer(key), timeout=60
    ) as client:
        yield client


async def new_key(admin: httpx.AsyncClient, name: str, **fields: Any) -> tuple[str, str]:
    r = await admin.post("/keys", json={"name": name, "role": "researcher", **fields})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["key"].startswith("crk_") and body["prefix"] == body["key"][:10]
    return body["id"], body["key"]


async def test_every_api_route_needs_a_key(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False) as (admin, _service), as_key(admin, "") as anon:
        anon.headers.pop("Authorization")
        for method, path in [
            ("GET", "/evaluations"),
            ("POST", "/evaluations"),
            ("GET", "/evaluations/ev_x"),
            ("GET", "/evaluations/ev_x/events"),
            ("POST", "/batches"),
            ("GET", "/queue"),
            ("GET", "/keys"),
            ("GET", "/audit"),
            ("GET", "/workers"),
        ]:
            r = await anon.request(method, path, json={})
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
        bad = await anon.get("/queue", headers=bearer("crk_not-a-real-key"))
        assert bad.status_code == 401 and "not valid" in bad.json()["detail"]
        assert (
            await anon.get("/queue", headers={"Authorization": "Basic eDp5"})
        ).status_code == 401
        # Probes, metrics and the UI stay open.
        root = "http://test"
        for path in ("/healthz", "/metrics"):
            assert (await anon.get(root + path)).status_code == 200
        assert (await admin.get("/keys/me")).json()["role"] == "admin"


async def test_roles_and_revocation(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False) as (admin, _service):
        key_id, key = await new_key(admin, "alice")
        async with as_key(admin, key) as alice:
            me = (await alice.get("/keys/me")).json()
            assert me == {"id": key_id, "name": "alice", "role": "researcher"}
            for method, path in [
                ("GET", "/keys"),
                ("POST", "/keys"),
                ("DELETE", f"/keys/{key_id}"),
                ("GET", "/audit"),
                ("GET", "/workers"),
                ("GET", "/dead-letters"),
            ]:
                r = await alice.request(method, path, json={"name": "x"})
                assert r.status_code == 403, (method, path, r.text)
            assert (await alice.get("/queue")).status_code == 200
            listed = (await admin.get("/keys")).json()
            assert {k["name"] for k in listed} >= {"alice", "bootstrap"}
            assert all("key" not in k and "key_hash" not in k for k in listed)
            revoked = await admin.delete(f"/keys/{key_id}")
            assert revoked.status_code == 200 and revoked.json()["revoked_at"]
            assert (await alice.get("/queue")).status_code == 401


async def test_researchers_see_only_their_own(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False) as (admin, _service):
        a_id, a_key = await new_key(admin, "a")
        _b_id, b_key = await new_key(admin, "b")
        async with as_key(admin, a_key) as a, as_key(admin, b_key) as b:
            ev = (await a.post("/evaluations", json={"code": "print(1)"})).json()
            assert ev["owner_key_id"] == a_id
            batch = (await a.post("/batches", json={"items": [{"code": "print(2)"}]})).json()
            for path in (
                f"/evaluations/{ev['id']}",
                f"/evaluations/{ev['id']}/events",
                f"/evaluations/{ev['id']}/output/stdout",
                f"/evaluations/{ev['id']}/files/x",
                f"/batches/{batch['id']}",
                f"/batches/{batch['id']}/events",
            ):
                r = await b.get(path)
                assert r.status_code == 404, (path, r.text)
            # The same 404 as for an id that does not exist: nothing leaks.
            assert (
                (await b.get("/evaluations/ev_nope")).json()["detail"].startswith("no evaluation")
            )
            assert (await b.post(f"/evaluations/{ev['id']}/cancel")).status_code == 404
            assert (await b.post(f"/batches/{batch['id']}/cancel")).status_code == 404
            assert (await b.get("/evaluations")).json()["items"] == []
            assert len((await a.get("/evaluations")).json()["items"]) == 2
            # An admin sees everyone's, and can narrow to one key.
            assert len((await admin.get("/evaluations")).json()["items"]) == 2
            mine = (await admin.get("/evaluations", params={"owner_key_id": a_id})).json()
            assert len(mine["items"]) == 2
            assert (await admin.get(f"/evaluations/{ev['id']}")).status_code == 200
            # Idempotency keys are per caller: b's reuse of a's is b's own evaluation.
            first = await a.post(
                "/evaluations", json={"code": "1"}, headers={"Idempotency-Key": "k"}
            )
            other = await b.post(
                "/evaluations", json={"code": "1"}, headers={"Idempotency-Key": "k"}
            )
            assert first.json()["id"] != other.json()["id"]
            assert (await a.post(f"/evaluations/{ev['id']}/cancel")).status_code == 200


async def test_quotas(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False, quota_max_queued=3) as (admin, _service):
        _id, key = await new_key(admin, "q")
        async with as_key(admin, key) as q:
            for _ in range(3):
                assert (await q.post("/evaluations", json={"code": "1"})).status_code == 202
            over = await q.post("/evaluations", json={"code": "1"})
            assert over.status_code == 429 and "max_queued" in over.json()["detail"]
            assert int(over.headers["retry-after"]) > 0
            big = await q.post("/batches", json={"items": [{"code": "1"}] * 5})
            assert big.status_code == 429 and "retry-after" not in big.headers
        # Per-key overrides by an admin: per_hour and limit ceilings.
        key_id, key = await new_key(
            admin, "r", per_hour=2, max_queued=0, limit_ceilings={"memory_mb": 128}
        )
        async with as_key(admin, key) as r:
            ok = await r.post("/evaluations", json={"code": "1"})
            assert ok.status_code == 202
            # The default (256 MB) is above the ceiling: lowered to it, not refused.
            assert ok.json()["request"]["limits"]["memory_mb"] == 128
            refused = await r.post("/evaluations", json={"code": "1", "limits": {"memory_mb": 512}})
            assert refused.status_code == 403 and "ceiling" in refused.json()["detail"]
            assert (await r.post("/evaluations", json={"code": "1"})).status_code == 202
            hourly = await r.post("/evaluations", json={"code": "1"})
            assert hourly.status_code == 429 and "per_hour" in hourly.json()["detail"]
            assert 0 < int(hourly.headers["retry-after"]) <= 3601
            raised = await admin.patch(f"/keys/{key_id}", json={"per_hour": 10})
            assert raised.json()["per_hour"] == 10 and raised.json()["limit_ceilings"]
            assert (await r.post("/evaluations", json={"code": "1"})).status_code == 202
            # Admins are not above their own quotas' code path: the bootstrap key has none.
            assert (await admin.post("/evaluations", json={"code": "1"})).status_code == 202


async def test_max_running_is_applied_by_the_claim(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False) as (admin, service):
        key_id, key = await new_key(admin, "one-at-a-time", max_running=1)
        async with as_key(admin, key) as r:
            for _ in range(2):
                await r.post("/evaluations", json={"code": "1"})
        first = await asyncio.to_thread(service.store.claim_next)
        assert first is not None
        assert await asyncio.to_thread(service.store.claim_next) is None  # at its quota
        await admin.patch(f"/keys/{key_id}", json={"max_running": None})
        assert await asyncio.to_thread(service.store.claim_next) is not None


async def test_fair_share_between_keys(make_api: ApiFactory) -> None:
    """One sandbox slot; a's large batch is queued first, then b submits one program.
    b's starts while most of a's batch is still queued (FIFO would run it last)."""
    async with make_api(max_concurrency=1) as (admin, _service):
        _a, a_key = await new_key(admin, "a")
        _b, b_key = await new_key(admin, "b")
        async with as_key(admin, a_key) as a, as_key(admin, b_key) as b:
            items = [{"code": SLEEP.format(s=0.3)} for _ in range(8)]
            batch = (await a.post("/batches", json={"items": items})).json()

            async def a_started() -> bool:
                counts = (await admin.get(f"/batches/{batch['id']}")).json()["by_status"]
                return bool(counts.get("queued", 0) < len(items))

            await aeventually(a_started, within=30, reason="the first of a's batch to be claimed")
            ev = (await b.post("/evaluations?wait=30", json={"code": "print('b')"})).json()
            assert ev["status"] == "completed", ev
            await a.post(f"/batches/{batch['id']}/cancel")
            page = (await a.get("/evaluations", params={"batch_id": batch["id"]})).json()
    # Judged by the records' own times, not by how far the batch got (that depends on
    # the machine's load): of a's items still queued when b's arrived, at most one (a
    # claim racing b's insert) may start before b's. FIFO would start all of them first.
    overtook = [
        e["id"]
        for e in page["items"]
        if e["started_at"] and ev["created_at"] < e["started_at"] < ev["started_at"]
    ]
    assert len(overtook) <= 1, (overtook, ev["created_at"], ev["started_at"])


async def test_audit_trail_and_tampering(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False) as (admin, service):
        key_id, key = await new_key(admin, "auditee")
        async with as_key(admin, key) as r:
            ev = (await r.post("/evaluations", json={"code": "1"})).json()
            await r.post(f"/evaluations/{ev['id']}/cancel")
            await r.get("/keys")  # a read: not audited
            await r.post("/keys", json={"name": "nope"})  # refused: audited with 403
        await admin.delete(f"/keys/{key_id}")
        entries = (await admin.get("/audit", params={"limit": 50})).json()["items"]
        actions = [(e["action"], e["outcome"], e["actor_name"]) for e in reversed(entries)]
        assert actions == [
            ("create_key", 201, "bootstrap"),
            ("submit_evaluation", 202, "auditee"),
            ("cancel_evaluation", 200, "auditee"),
            ("create_key", 403, "auditee"),
            ("revoke_key", 200, "bootstrap"),
        ]
        submit = entries[-2]
        assert submit["target"] == ev["id"] and submit["request_id"] and submit["source"]
        assert entries[0]["target"] == key_id
        by_actor = (await admin.get("/audit", params={"actor": "auditee"})).json()["items"]
        assert len(by_actor) == 3
        by_target = (await admin.get("/audit", params={"target": ev["id"]})).json()["items"]
        assert {e["action"] for e in by_target} == {"submit_evaluation", "cancel_evaluation"}
        page = (await admin.get("/audit", params={"limit": 2})).json()
        rest = (await admin.get("/audit", params={"cursor": page["next_cursor"]})).json()
        assert len(page["items"]) == 2 and len(rest["items"]) == 3
        assert (await admin.get("/audit", params={"since": "2000-01-01"})).status_code == 422

        log = AuditLog(service.store)
        ok = log.verify()
        assert ok.ok and ok.checked == 5
        with service.store.engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET target = 'someone-else' WHERE seq = 3"))
        edited = log.verify()
        assert not edited.ok and edited.broken_seq == 3 and "hash" in (edited.reason or "")
        with service.store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE seq = 3"))
        deleted = log.verify()
        assert not deleted.ok and deleted.broken_seq == 4 and "missing" in (deleted.reason or "")
        # Removing the newest entries is caught against a head recorded earlier.
        with service.store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE seq >= 3"))
        assert log.verify().ok
        truncated = log.verify(expect_head=ok.head)
        assert not truncated.ok and "head" in (truncated.reason or "")


async def test_hardening_headers_request_id_body_limit(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False, max_body_bytes=2000) as (admin, _service):
        r = await admin.get("/queue")
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert "script-src 'self';" in r.headers["content-security-policy"]
        assert len(r.headers["x-request-id"]) == 32
        given = await admin.get("/queue", headers={"X-Request-ID": "trace-42"})
        assert given.headers["x-request-id"] == "trace-42"
        odd = await admin.get("/queue", headers={"X-Request-ID": "bad id\twith spaces"})
        assert odd.headers["x-request-id"] != "bad id\twith spaces"
        big = await admin.post("/evaluations", json={"code": "x" * 5000})
        assert big.status_code == 413 and big.headers["x-request-id"]

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            yield b'{"code": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        streamed = await admin.post(
            "/evaluations", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413
        # CORS is off unless configured.
        pre = await admin.options(
            "/queue",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        assert "access-control-allow-origin" not in pre.headers


async def test_cors_when_configured(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False, cors_origins=["https://ui.example"]) as (admin, _s):
        pre = await admin.options(
            "/queue",
            headers={
                "Origin": "https://ui.example",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert pre.headers["access-control-allow-origin"] == "https://ui.example"


async def test_metrics_parse(make_api: ApiFactory) -> None:
    async with make_api() as (admin, _service):
        await admin.post("/evaluations?wait=30", json={"code": "print(1)"})
        await admin.get("/evaluations")
        root = "http://test"
        r = await admin.get(root + "/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        for name in (
            "crucible_http_requests",
            "crucible_http_request_duration_seconds",
            "crucible_sandbox_run_seconds",
            "crucible_evaluations",
            "crucible_queue_depth",
            "crucible_running",
            "crucible_capacity",
        ):
            assert name in families, sorted(families)
        routes = {s.labels.get("route") for s in families["crucible_http_requests"].samples}
        assert "/api/v1/evaluations" in routes
        done = [
            s
            for s in families["crucible_evaluations"].samples
            if s.labels == {"status": "completed", "termination": "exited", "language": "python"}
        ]
        assert done and done[0].value >= 1
        runs = [
            s
            for s in families["crucible_sandbox_run_seconds"].samples
            if s.name.endswith("_count") and s.labels.get("language") == "python"
        ]
        assert runs and runs[0].value >= 1
        depth = {s.labels["priority"] for s in families["crucible_queue_depth"].samples}
        assert depth == {"high", "normal", "low"}


async def test_scan_flags_are_stored_and_filterable(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False) as (admin, _service):
        net = await admin.post("/evaluations", json={"code": "import socket\nprint(1)"})
        spawn = await admin.post(
            "/evaluations",
            json={"language": "c", "code": 'int main(){fork();system("id");return 0;}'},
        )
        plain = await admin.post("/evaluations", json={"code": "print(1)"})
        assert net.json()["flags"] == ["network"]
        assert spawn.json()["flags"] == ["process"]
        assert plain.json()["flags"] == []
        found = (await admin.get("/evaluations", params={"flag": "network"})).json()["items"]
        assert [e["id"] for e in found] == [net.json()["id"]]
        assert (await admin.get("/evaluations", params={"flag": "nope"})).status_code == 422
