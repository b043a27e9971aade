"""/api/v1/sandboxes through the real app (auth, audit, store, bus, SSE), over the
in-memory engine of ``tests/support/fake_sessions.py`` (the real engine is tested on its own
and wired in at merge)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from crucible.api.app import create_app
from crucible.core.config import Settings
from crucible.services import identity
from crucible.store.repo import Store
from crucible.store.sandboxes import NewSandbox, Owner, SandboxStore
from support.api import api_factory, in_process
from support.fake_sessions import FakeSessions
from support.polling import aeventually

SandboxApi = Callable[..., Any]
LIMITS = {"memory_mb": 256, "cpus": 1.0, "pids": 64, "disk_mb": 64}


@pytest.fixture
def engine() -> FakeSessions:
    return FakeSessions()


@pytest.fixture
def sandbox_api(settings: Settings, engine: FakeSessions) -> SandboxApi:
    """``async with sandbox_api(**settings_overrides) as (client, service)``."""
    return api_factory(settings, dispatch=False, sessions=engine, timeout=30)


@asynccontextmanager
async def as_key(admin: httpx.AsyncClient, key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=admin._transport,
        base_url=str(admin.base_url),
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    ) as client:
        yield client


async def new_key(admin: httpx.AsyncClient, name: str, **quotas: Any) -> tuple[str, str]:
    r = await admin.post("/keys", json={"name": name, "role": "researcher", **quotas})
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["key"]


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/sandboxes", json=body)
    assert r.status_code == 201, r.text
    record: dict[str, Any] = r.json()
    return record


async def run(client: httpx.AsyncClient, sid: str, *cmd: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/sandboxes/{sid}/exec", json={"cmd": list(cmd), **body})
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def sse_events(body: str) -> list[tuple[int, str, dict[str, Any]]]:
    events = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and ":" in line[1:]
        )
        if "event" in fields:
            events.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return events


async def test_create_exec_files_delete_and_the_transcript(
    sandbox_api: SandboxApi, engine: FakeSessions
) -> None:
    async with sandbox_api() as (client, _service):
        box = await create(
            client,
            runtime="runc",
            limits={"memory_mb": 256, "pids": 64},
            ttl_s=600,
            idle_timeout_s=60,
            labels={"task": "t1"},
        )
        sid = box["id"]
        assert sid.startswith("sbx_") and box["status"] == "running" and box["stop_reason"] is None
        assert box["limits"] == {"memory_mb": 256, "cpus": 1.0, "pids": 64, "disk_mb": 1024}
        assert box["labels"] == {"task": "t1"} and box["ttl_s"] == 600
        spec = engine.created[-1]
        assert spec.runtime == "runc" and spec.limits.memory_mb == 256

        hello = await run(client, sid, "echo", "hello")
        assert hello["returncode"] == 0 and hello["stdout"] == "hello\n" and hello["seq"] == 1
        assert hello["stdout_base64"] is None and not hello["timed_out"]
        failed = await run(client, sid, "sh", "-c", "echo oops && exit 3", user="agent", cwd="/tmp")
        assert failed["returncode"] == 3 and failed["stdout"] == "oops\n"
        assert failed["user"] == "agent" and failed["cwd"] == "/tmp"
        piped = await run(client, sid, "cat", input_base64=base64.b64encode(b"in\n").decode())
        assert piped["stdout"] == "in\n"
        unknown = await run(client, sid, "whoami", user="mallory")
        assert unknown["returncode"] != 0 and "mallory" in unknown["stderr"]

        # Files: raw bytes both ways; non-UTF-8 output comes with its exact bytes.
        raw = bytes(range(256))
        put = await client.put(f"/sandboxes/{sid}/file", params={"path": "data.bin"}, content=raw)
        assert put.status_code == 204, put.text
        got = await client.get(f"/sandboxes/{sid}/file", params={"path": "/workspace/data.bin"})
        assert got.status_code == 200 and got.content == raw
        assert got.headers["content-type"] == "application/octet-stream"
        binary = await run(client, sid, "cat", "data.bin")
        assert base64.b64decode(binary["stdout_base64"]) == raw and "\ufffd" in binary["stdout"]

        assert (await client.delete(f"/sandboxes/{sid}")).status_code == 204
        gone = (await client.get(f"/sandboxes/{sid}")).json()
        assert gone["status"] == "stopped" and gone["stop_reason"] == "deleted"
        assert gone["stopped_at"] is not None and gone["resources"]["exec_count"] == 5
        assert gone["resources"]["cpu_ms"] == 5 and gone["resources"]["peak_memory_bytes"] > 0
        assert engine.sessions[sid].closed.is_set()
        # Deleting again changes nothing; exec and files answer 409 sandbox_stopped.
        assert (await client.delete(f"/sandboxes/{sid}")).status_code == 204
        late = await client.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]})
        assert late.status_code == 409 and late.json()["error"] == "sandbox_stopped"
        late_file = await client.get(f"/sandboxes/{sid}/file", params={"path": "data.bin"})
        assert late_file.status_code == 409 and late_file.json()["error"] == "sandbox_stopped"

        # The transcript survives the sandbox, in order, paged.
        page = (await client.get(f"/sandboxes/{sid}/execs", params={"limit": 2})).json()
        assert [e["cmd"] for e in page["items"]] == [
            ["echo", "hello"],
            ["sh", "-c", "echo oops && exit 3"],
        ]
        assert [e["returncode"] for e in page["items"]] == [0, 3]
        assert all(e["duration_ms"] is not None and e["finished_at"] for e in page["items"])
        rest = (
            await client.get(f"/sandboxes/{sid}/execs", params={"cursor": page["next_cursor"]})
        ).json()
        assert [e["seq"] for e in rest["items"]] == [3, 4, 5] and rest["next_cursor"] is None
        assert base64.b64decode(rest["items"][-1]["stdout_base64"]) == raw

        # Every state change is audited with the sandbox as its target.
        audit = (await client.get("/audit", params={"target": sid})).json()["items"]
        actions = {a["action"] for a in audit}
        assert {
            "create_sandbox",
            "exec_in_sandbox",
            "write_sandbox_file",
            "delete_sandbox",
        } <= actions


async def test_long_output_is_previewed_in_the_transcript_and_kept_whole(
    sandbox_api: SandboxApi,
) -> None:
    async with sandbox_api(inline_output_bytes=16) as (client, _service):
        sid = (await create(client))["id"]
        text = "é" * 40  # 80 bytes: the preview must not split a character
        await client.put(f"/sandboxes/{sid}/file", params={"path": "t"}, content=text.encode())
        whole = await run(client, sid, "cat", "t")
        assert whole["stdout"] == text and not whole["stdout_preview_truncated"]
        item = (await client.get(f"/sandboxes/{sid}/execs")).json()["items"][0]
        assert item["stdout_preview_truncated"] and item["stdout"] == "é" * 8
        assert item["stdout_base64"] is None
        full = await client.get(f"/sandboxes/{sid}/execs/1/output/stdout")
        assert full.content == text.encode()
        missing = await client.get(f"/sandboxes/{sid}/execs/9/output/stdout")
        assert missing.status_code == 404


async def test_exec_timeout_kills_the_exec_not_the_sandbox(sandbox_api: SandboxApi) -> None:
    async with sandbox_api() as (client, _service):
        sid = (await create(client))["id"]
        slow = await run(client, sid, "sleep", "30", timeout_s=0.2)
        assert slow["timed_out"] and slow["returncode"] == 137 and not slow["memory_limit"]
        assert (await run(client, sid, "echo", "still here"))["stdout"] == "still here\n"
        over = await client.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"], "timeout_s": 1e6})
        assert over.status_code == 422 and over.json()["field"] == "exec_timeout_s"


async def test_validation_errors_change_nothing(
    sandbox_api: SandboxApi, engine: FakeSessions
) -> None:
    async with sandbox_api() as (client, _service):
        cases: list[tuple[dict[str, Any], str]] = [
            ({"limits": {"memory_mb": 10**6}}, "limits.memory_mb"),
            ({"limits": {"cpus": 0}}, "limits.cpus"),
            ({"limits": {"swap": 1}}, "limits.swap"),
            ({"runtime": "docker"}, "runtime"),
            ({"ttl_s": 10**9}, "ttl_s"),
            ({"idle_timeout_s": 0}, "idle_timeout_s"),
            ({"labels": {"a:b": "c"}}, "labels.a:b.[key]"),
        ]
        for body, field in cases:
            r = await client.post("/sandboxes", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["field"] == field, (body, r.json())
        assert "between" in (await client.post("/sandboxes", json=cases[0][0])).json()["detail"]
        assert (await client.get("/sandboxes")).json()["items"] == [] and engine.created == []

        sid = (await create(client))["id"]
        for body in (
            {"cmd": []},
            {"cmd": ["cat"], "input": "a", "input_base64": "YQ=="},
            {"cmd": ["cat"], "input_base64": "not base64!"},
            {"cmd": ["true"], "timeout_s": -1},
            {"cmd": "echo hi"},
        ):
            r = await client.post(f"/sandboxes/{sid}/exec", json=body)
            assert r.status_code == 422, (body, r.text)
        assert (await client.get(f"/sandboxes/{sid}/execs")).json()["items"] == []
        assert (await client.get("/sandboxes", params={"cursor": "x"})).status_code == 422


async def test_file_errors_carry_their_code(
    sandbox_api: SandboxApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("crucible.services.sandboxes.MAX_FILE_BYTES", 1024)
    async with sandbox_api() as (client, _service):
        sid = (await create(client))["id"]
        url = f"/sandboxes/{sid}/file"
        cases = [
            ("GET", "nope.txt", None, 404, "not_found"),
            ("GET", "/workspace", None, 409, "is_a_directory"),
            ("PUT", "/tmp", b"x", 409, "is_a_directory"),
            ("PUT", "/etc/passwd", b"x", 403, "permission_denied"),
            ("GET", "/proc/1/environ", None, 403, "permission_denied"),
            ("PUT", "big", b"x" * 2048, 413, "too_large"),
        ]
        for method, path, content, status, code in cases:
            r = await client.request(method, url, params={"path": path}, content=content)
            assert (r.status_code, r.json().get("error")) == (status, code), (path, r.text)
        await client.put(url, params={"path": "ok"}, content=b"y" * 1024)
        assert (await client.get(url, params={"path": "ok"})).content == b"y" * 1024
        # A missing sandbox is a 404 without a file code; a missing path parameter, 422.
        nobox = await client.get("/sandboxes/sbx_nope/file", params={"path": "x"})
        assert nobox.status_code == 404 and "error" not in nobox.json()
        assert (await client.get(url)).status_code == 422


async def test_upload_limit_is_the_file_cap_not_the_body_limit(sandbox_api: SandboxApi) -> None:
    async with sandbox_api(max_body_bytes=1000) as (client, _service):
        sid = (await create(client))["id"]
        r = await client.put(f"/sandboxes/{sid}/file", params={"path": "f"}, content=b"z" * 5000)
        assert r.status_code == 204, r.text
        # So is an exec's stdin (as base64 in the JSON body).
        stdin = base64.b64encode(b"y" * 5000).decode()
        r = await client.post(
            f"/sandboxes/{sid}/exec", json={"cmd": ["cat"], "input_base64": stdin}
        )
        assert r.status_code == 200 and r.json()["stdout"] == "y" * 5000, r.text
        # Other routes keep the body limit.
        big = await client.post("/sandboxes", json={"labels": {"k": "v" * 2000}})
        assert big.status_code == 413 and big.json()["error"] == "too_large"


async def test_auth_and_scoping_between_keys(sandbox_api: SandboxApi) -> None:
    async with sandbox_api() as (admin, _service):
        _a_id, a_key = await new_key(admin, "alice")
        b_id, b_key = await new_key(admin, "bob")
        async with as_key(admin, a_key) as alice, as_key(admin, b_key) as bob:
            sid = (await create(alice))["id"]
            await run(alice, sid, "echo", "mine")
            theirs = (await create(bob))["id"]
            for method, path in [
                ("GET", f"/sandboxes/{sid}"),
                ("DELETE", f"/sandboxes/{sid}"),
                ("POST", f"/sandboxes/{sid}/exec"),
                ("GET", f"/sandboxes/{sid}/execs"),
                ("GET", f"/sandboxes/{sid}/events"),
                ("GET", f"/sandboxes/{sid}/file?path=x"),
                ("PUT", f"/sandboxes/{sid}/file?path=x"),
                ("GET", f"/sandboxes/{sid}/execs/1/output/stdout"),
            ]:
                body = {"cmd": ["true"]} if path.endswith("/exec") else None
                r = await bob.request(method, path, json=body)
                assert r.status_code == 404, (method, path, r.text)
            assert [s["id"] for s in (await bob.get("/sandboxes")).json()["items"]] == [theirs]
            assert [s["id"] for s in (await alice.get("/sandboxes")).json()["items"]] == [sid]
            # A researcher's owner filter cannot widen the view.
            mine = (await alice.get("/sandboxes", params={"owner_key_id": b_id})).json()
            assert [s["id"] for s in mine["items"]] == [sid]
            assert (await alice.get(f"/sandboxes/{sid}")).json()["status"] == "running"
        everyone = (await admin.get("/sandboxes")).json()["items"]
        assert {s["id"] for s in everyone} == {sid, theirs}
        only_bob = (await admin.get("/sandboxes", params={"owner_key_id": b_id})).json()
        assert [s["id"] for s in only_bob["items"]] == [theirs]
        running = (await admin.get("/sandboxes", params={"status": "stopped"})).json()
        assert running["items"] == []
        async with as_key(admin, "") as anon:
            anon.headers.pop("Authorization")
            for method, path in [("GET", "/sandboxes"), ("POST", "/sandboxes")]:
                assert (await anon.request(method, path, json={})).status_code == 401


async def test_quota_max_sandboxes(sandbox_api: SandboxApi) -> None:
    async with sandbox_api(quota_max_sandboxes=2) as (admin, _service):
        key_id, key = await new_key(admin, "q")
        async with as_key(admin, key) as q:
            first = (await create(q))["id"]
            await create(q)
            over = await q.post("/sandboxes", json={})
            assert over.status_code == 429 and "max_sandboxes" in over.json()["detail"]
            assert "retry-after" not in over.headers
            # A stopped sandbox no longer counts.
            assert (await q.delete(f"/sandboxes/{first}")).status_code == 204
            await create(q)
            # The per-key override wins over the default.
            patched = await admin.patch(f"/keys/{key_id}", json={"max_sandboxes": 4})
            assert patched.json()["max_sandboxes"] == 4
            await create(q)
            await create(q)
            assert (await q.post("/sandboxes", json={})).status_code == 429
        # Limit ceilings of a key hold for sandboxes too.
        _c_id, c_key = await new_key(admin, "c", limit_ceilings={"memory_mb": 128})
        async with as_key(admin, c_key) as c:
            assert (await create(c))["limits"]["memory_mb"] == 128
            refused = await c.post("/sandboxes", json={"limits": {"memory_mb": 512}})
            assert refused.status_code == 403 and "ceiling" in refused.json()["detail"]


async def test_ttl_and_idle_timeout_stop_with_a_reason(sandbox_api: SandboxApi) -> None:
    async with sandbox_api(sandbox_reap_s=0.05) as (client, _service):
        ttl = (await create(client, ttl_s=0.5, idle_timeout_s=60))["id"]
        idle = (await create(client, ttl_s=60, idle_timeout_s=0.4))["id"]
        busy = (await create(client, ttl_s=60, idle_timeout_s=0.5))["id"]

        async def stopped(sid: str) -> bool:
            return (await client.get(f"/sandboxes/{sid}")).json()["status"] == "stopped"

        # An exec longer than the idle timeout keeps its sandbox alive while it runs.
        slow = asyncio.create_task(
            client.post(f"/sandboxes/{busy}/exec", json={"cmd": ["sleep", "1.2"]})
        )
        await aeventually(lambda: stopped(ttl), within=5, reason="the ttl sandbox to stop")
        await aeventually(lambda: stopped(idle), within=5, reason="the idle sandbox to stop")
        assert (await client.get(f"/sandboxes/{ttl}")).json()["stop_reason"] == "ttl"
        assert (await client.get(f"/sandboxes/{idle}")).json()["stop_reason"] == "idle_timeout"
        assert (await slow).json()["returncode"] == 0
        assert not await stopped(busy)
        # and idles out after it
        await aeventually(lambda: stopped(busy), within=5, reason="the busy sandbox to stop")
        assert (await client.get(f"/sandboxes/{busy}")).json()["stop_reason"] == "idle_timeout"


async def test_a_crashed_sandbox_is_stopped_and_says_so(
    sandbox_api: SandboxApi, engine: FakeSessions
) -> None:
    async with sandbox_api() as (client, _service):
        sid = (await create(client))["id"]
        engine.sessions[sid].crash()
        r = await client.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]})
        assert r.status_code == 409 and r.json()["error"] == "sandbox_stopped"
        box = (await client.get(f"/sandboxes/{sid}")).json()
        assert (box["status"], box["stop_reason"]) == ("stopped", "crashed")


async def test_the_reaper_leaves_a_sandbox_being_created_alone(
    sandbox_api: SandboxApi, engine: FakeSessions
) -> None:
    """The row is written before the engine makes the sandbox (the quota is counted
    there): a reaper tick in between used to stop it as ``crashed``."""
    engine.create_delay_s = 0.5
    async with sandbox_api(sandbox_reap_s=0.02) as (client, _service):
        sid = (await create(client))["id"]
        r = await client.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]})
        assert r.status_code == 200, r.text
        box = (await client.get(f"/sandboxes/{sid}")).json()
        assert (box["status"], box["stop_reason"]) == ("running", None)


async def test_a_deleted_sandbox_is_deleted_not_crashed(
    sandbox_api: SandboxApi, engine: FakeSessions
) -> None:
    """While a delete closes the sandbox, its init is already dead: a reaper tick then
    used to record the stop as ``crashed`` (seen in the browser test)."""
    engine.close_delay_s = 0.3
    async with sandbox_api(sandbox_reap_s=0.02) as (client, _service):
        sid = (await create(client))["id"]
        assert (await client.delete(f"/sandboxes/{sid}")).status_code == 204
        box = (await client.get(f"/sandboxes/{sid}")).json()
        assert (box["status"], box["stop_reason"]) == ("stopped", "deleted")


async def test_an_engine_failure_leaves_no_sandbox(settings: Settings) -> None:
    app = create_app(settings, dispatch=False, sessions=FakeSessions(fail_create=True))
    async with in_process(app) as client:
        r = await client.post("/sandboxes", json={})
        assert r.status_code == 503 and "fail" in r.json()["detail"]
        assert (await client.get("/sandboxes")).json()["items"] == []


async def test_start_up_sweep_marks_dead_processes_sandboxes_lost(
    sandbox_api: SandboxApi, settings: Settings
) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.sqlalchemy_url)
    store.migrate()
    boxes = SandboxStore(store)
    me = identity.this_process("embedded", 1)
    here = Owner("old@host:1", me.node, me.host, os.getpid(), "0")  # this pid, earlier start
    gone = Owner("dead@host:2", me.node, me.host, 2**22 + 7, "123")  # no such pid
    elsewhere = Owner("w@other:3", "other-boot/4026531836", "other-host", 1, "5")
    for sid, owner in (("sbx_prev", here), ("sbx_dead", gone), ("sbx_far", elsewhere)):
        boxes.create(
            NewSandbox(
                id=sid, runtime="runc", limits=LIMITS, ttl_s=60, idle_timeout_s=60, owner=owner
            )
        )
    store.dispose()
    async with sandbox_api() as (client, _service):
        for sid in ("sbx_prev", "sbx_dead"):
            box = (await client.get(f"/sandboxes/{sid}")).json()
            assert (box["status"], box["stop_reason"]) == ("lost", "lost"), box
        # A process on another host may be alive: its sandbox is left alone, and this
        # server says where it lives instead of pretending to run it.
        assert (await client.get("/sandboxes/sbx_far")).json()["status"] == "running"
        r = await client.post("/sandboxes/sbx_far/exec", json={"cmd": ["true"]})
        assert r.status_code == 503 and "other-host" in r.json()["detail"]


async def test_shutdown_stops_the_sandboxes_it_hosts(
    sandbox_api: SandboxApi, engine: FakeSessions
) -> None:
    async with sandbox_api() as (client, _service):
        sid = (await create(client))["id"]
    async with sandbox_api() as (client, _service):
        box = (await client.get(f"/sandboxes/{sid}")).json()
        assert (box["status"], box["stop_reason"]) == ("stopped", "shutdown")
        assert engine.sessions[sid].closed.is_set()
        # The new bus has no log of it: the stream is the record's final event alone.
        events = sse_events((await client.get(f"/sandboxes/{sid}/events")).text)
        assert [(e[1], e[2]["stop_reason"]) for e in events] == [("stopped", "shutdown")]


async def test_events_stream_the_transcript_then_stopped(sandbox_api: SandboxApi) -> None:
    async with sandbox_api() as (client, _service):
        sid = (await create(client))["id"]
        # Opened before anything happens: the stream follows live (the in-process
        # transport hands the body over when the stream ends, at "stopped").
        live = asyncio.create_task(client.get(f"/sandboxes/{sid}/events"))
        await run(client, sid, "echo", "hello")
        await run(client, sid, "sh", "-c", "exit 2")
        assert (await client.delete(f"/sandboxes/{sid}")).status_code == 204
        r = await asyncio.wait_for(live, 10)
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.text)
        # (A "status" event opens it when the stream had no events yet when it was
        # opened: whether it did depends on which request got there first.)
        events = [e for e in events if e[1] != "status"]
        assert [e[1] for e in events] == [
            "exec_started",
            "output",
            "exec_finished",
            "exec_started",
            "exec_finished",
            "stopped",
        ]
        ids = [e[0] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert events[0][2]["cmd"] == ["echo", "hello"] and events[0][2]["returncode"] is None
        assert events[1][2] == {"seq": 1, "stream": "stdout", "data": "hello\n"}
        assert events[2][2]["returncode"] == 0 and events[4][2]["returncode"] == 2
        assert events[-1][2]["stop_reason"] == "deleted"
        # Resume after the last exec_finished: only what came later.
        again = await client.get(
            f"/sandboxes/{sid}/events", headers={"Last-Event-ID": str(events[4][0])}
        )
        assert [e[1] for e in sse_events(again.text)] == ["stopped"]
        assert (await client.get("/sandboxes/sbx_nope/events")).status_code == 404


async def test_networks_are_per_key_and_services_start_detached(
    sandbox_api: SandboxApi, engine: FakeSessions
) -> None:
    """Two keys naming the same group get two networks: a key never joins another's."""
    network = {"group": "sample-1", "hostname": "web", "members": ["default", "web"]}
    async with sandbox_api() as (admin, _service):
        a_id, a_key = await new_key(admin, "alice")
        b_id, b_key = await new_key(admin, "bob")
        async with as_key(admin, a_key) as alice, as_key(admin, b_key) as bob:
            sid = (await create(alice, network=network))["id"]
            await create(bob, network=network)
            first, second = engine.created[-2:]
            assert first.network is not None and second.network is not None
            assert first.network.group == f"{a_id}/sample-1"
            assert second.network.group == f"{b_id}/sample-1"
            assert first.network.hostname == "web"
            assert first.network.members == ("default", "web")
            done = await run(alice, sid, "true", detach=True)
            assert done["returncode"] == 0
            assert engine.sessions[sid].detached == [["true"]]
            for bad in ({**network, "group": "a b"}, {**network, "members": []}):
                r = await alice.post("/sandboxes", json={"network": bad})
                assert r.status_code == 422, r.text


async def test_numbers_past_the_databases_integers_are_422_not_500(
    sandbox_api: SandboxApi,
) -> None:
    """Found by the schema fuzzer: an exec number or a cursor beyond a database integer
    reached SQLite, which raised (500)."""
    huge = str(2**130)
    async with sandbox_api() as (client, _service):
        sid = (await create(client))["id"]
        for path in (
            f"/sandboxes/{sid}/execs/{huge}/output/stdout",
            f"/sandboxes/{sid}/execs?cursor={huge}",
            f"/sandboxes?cursor={huge}",
            f"/evaluations?cursor={huge}",
            "/evaluations?cursor=-1",
        ):
            r = await client.get(path)
            assert r.status_code == 422, (path, r.status_code, r.text)


async def test_a_claimed_key_revoked_elsewhere_stops_at_the_next_exec(
    sandbox_api: SandboxApi,
) -> None:
    """POST …/exec takes the key as this process last verified it (no read), and
    begin_exec checks it again: a key revoked where this process cannot see it (the
    CLI writes the database directly) is refused by the very next exec, 401, and
    runs nothing; on the slow path (a stopped sandbox) as well."""
    async with sandbox_api() as (admin, service):
        key_id, key = await new_key(admin, "carol")
        async with as_key(admin, key) as carol:
            sid = (await create(carol))["id"]
            await run(carol, sid, "true")  # the key is now claimed in this process
            assert service.access.claim(key) is not None
            stopped = (await create(carol))["id"]
            assert (await carol.delete(f"/sandboxes/{stopped}")).status_code == 204
            await asyncio.to_thread(service.access.keys.revoke, key_id)  # as the CLI does
            assert service.access.claim(key) is not None  # still cached: checked anyway
            for target in (sid, stopped):
                r = await carol.post(f"/sandboxes/{target}/exec", json={"cmd": ["true"]})
                assert r.status_code == 401, r.text

            # Other routes read the key again once key_cache_s (1 s) has passed; the
            # bound is that second on a loaded machine.
            async def refused() -> bool:
                return (await carol.get(f"/sandboxes/{sid}")).status_code == 401

            await aeventually(refused, within=10, reason="the revoked key to be refused")
        execs = (await admin.get(f"/sandboxes/{sid}/execs")).json()["items"]
        assert [e["seq"] for e in execs] == [1]  # the refused exec was never recorded


async def test_every_api_route_authenticates(sandbox_api: SandboxApi) -> None:
    """The sandboxes' router has no router-wide authenticate (its routes name their
    principal, PrincipalDep or ClaimDep): every /api/v1 operation still answers 401
    without a key."""
    async with sandbox_api() as (admin, _service):
        paths = (await admin.get("/openapi.json")).json()["paths"]
        async with as_key(admin, "") as anon:
            anon.headers.pop("Authorization")
            checked = 0
            for path, operations in paths.items():
                if not path.startswith("/api/v1/") or path == "/api/v1/openapi.json":
                    continue
                url = path.removeprefix("/api/v1").replace("{", "x").replace("}", "")
                for method in operations:
                    r = await anon.request(method.upper(), url, json={})
                    assert r.status_code == 401, (method, path, r.status_code)
                    checked += 1
            assert checked > 20
