"""The API in process (httpx ASGITransport) with real runc sandboxes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from crucible.core.lifecycle import Status
from crucible.services.events import Event, InProcessBus
from crucible.services.executor import stream_of
from support.api import ApiFactory
from support.polling import aeventually

HELLO = {"code": "print('hello')"}


async def finished(client: httpx.AsyncClient, evaluation_id: str, within: float = 60) -> Any:
    async def final() -> Any:
        body = (await client.get(f"/evaluations/{evaluation_id}")).json()
        return body if body["status"] in ("completed", "cancelled", "error") else None

    return await aeventually(
        final, within=within, reason=f"{evaluation_id} to finish", interval=0.05
    )


async def test_submit_then_get(api: httpx.AsyncClient) -> None:
    r = await api.post("/evaluations", json={**HELLO, "labels": {"suite": "smoke"}})
    assert r.status_code == 202
    body = r.json()
    assert body["status"] in ("queued", "running", "completed") and body["id"].startswith("ev_")
    done = await finished(api, body["id"])
    assert done["status"] == "completed"
    assert done["result"]["stdout"] == "hello\n"
    assert done["result"]["termination"] == "exited" and done["result"]["verdict"] is None
    assert done["attempts"] == 1 and done["queue_wait_ms"] >= 0
    assert done["request"]["labels"] == {"suite": "smoke"}
    assert done["request"]["limits"]["timeout_s"] == 10.0


async def test_wait_answers_200_with_the_result(api: httpx.AsyncClient) -> None:
    r = await api.post("/evaluations?wait=30", json=HELLO)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"


async def test_wait_over_60_is_rejected(api: httpx.AsyncClient) -> None:
    r = await api.post("/evaluations?wait=61", json=HELLO)
    assert r.status_code == 422 and r.json()["field"] == "wait"


async def test_judging_expected_output(api: httpx.AsyncClient) -> None:
    ok = await api.post("/evaluations?wait=30", json={**HELLO, "expected_output": "hello  \n\n"})
    bad = await api.post("/evaluations?wait=30", json={**HELLO, "expected_output": "goodbye"})
    assert ok.json()["result"]["verdict"] == "passed"
    assert bad.json()["result"]["verdict"] == "failed"


async def test_judging_test_code(api: httpx.AsyncClient) -> None:
    code = "def add(a, b):\n    return a + b\n"
    ok = await api.post(
        "/evaluations?wait=30", json={"code": code, "test_code": "assert add(2, 2) == 4"}
    )
    bad = await api.post(
        "/evaluations?wait=30", json={"code": code, "test_code": "assert add(2, 2) == 5"}
    )
    assert ok.json()["result"]["verdict"] == "passed"
    assert bad.json()["result"]["verdict"] == "failed"
    assert "AssertionError" in bad.json()["result"]["stderr"]


async def test_program_failures_are_data(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/evaluations?wait=30",
        json={"code": "while True: pass", "limits": {"timeout_s": 0.5, "cpu_s": 5}},
    )
    body = r.json()
    assert body["status"] == "completed" and body["result"]["termination"] == "timeout"


async def test_idempotency_key(api: httpx.AsyncClient) -> None:
    headers = {"Idempotency-Key": "abc-1"}
    first = await api.post("/evaluations", json=HELLO, headers=headers)
    again = await api.post("/evaluations", json=HELLO, headers=headers)
    other = await api.post("/evaluations", json={"code": "print(2)"}, headers=headers)
    assert first.status_code == 202
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 409


async def test_batch_idempotency_key(make_api: ApiFactory) -> None:
    """A retried POST /batches (its answer lost) finds the batch it made: nothing is
    queued twice; the same key with another body is a 409."""
    async with make_api(dispatch=False) as (api, _):
        headers = {"Idempotency-Key": "batch-7"}
        body = {"items": [HELLO] * 3, "labels": {"run": "r1"}}
        first = await api.post("/batches", json=body, headers=headers)
        again = await api.post("/batches", json=body, headers=headers)
        assert first.status_code == 202 and again.status_code == 200, again.text
        assert again.json() == first.json() == {"id": first.json()["id"], "count": 3}
        other = await api.post("/batches", json={"items": [HELLO]}, headers=headers)
        assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
        unkeyed = [await api.post("/batches", json=body) for _ in range(2)]
        assert unkeyed[0].json()["id"] != unkeyed[1].json()["id"]
        assert (await api.get("/queue")).json()["queued"] == 3 + 3 + 3


async def test_errors_404_413_422(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False, max_code_bytes=1000) as (api, _):
        assert (await api.get("/evaluations/ev_missing")).status_code == 404
        assert (await api.post("/evaluations/ev_missing/cancel")).status_code == 404
        assert (await api.get("/batches/bt_missing")).status_code == 404
        big = await api.post("/evaluations", json={"code": "#" * 2000})
        assert big.status_code == 413 and big.json()["field"] == "code"
        lang = await api.post("/evaluations", json={"code": "x", "language": "cobol"})
        assert lang.status_code == 422 and "python" in lang.json()["detail"]
        limit = await api.post("/evaluations", json={"code": "x", "limits": {"memory_mb": 1e6}})
        assert limit.status_code == 422 and limit.json()["field"] == "limits.memory_mb"
        assert "between 16 and 4096" in limit.json()["detail"]
        broken = await api.post(
            "/evaluations", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422
        typo = await api.post("/evaluations", json={"code": "x", "runtim": "runc"})
        assert typo.status_code == 422 and typo.json()["field"] == "runtim"
        neither = await api.post("/evaluations", json={"language": "python"})
        assert neither.status_code == 422
        batch = await api.post("/batches", json={"items": [HELLO, {"code": "x", "language": "?"}]})
        assert batch.status_code == 422 and batch.json()["field"] == "items.1.language"


async def test_queue_full_is_503_with_retry_after(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False, max_queue=2) as (api, _):
        for _ in range(2):
            assert (await api.post("/evaluations", json=HELLO)).status_code == 202
        full = await api.post("/evaluations", json=HELLO)
        assert full.status_code == 503 and int(full.headers["Retry-After"]) >= 1
        batch = await api.post("/batches", json={"items": [HELLO]})
        assert batch.status_code == 503
        queue = (await api.get("/queue")).json()
        assert queue["depth"]["normal"] == 2 and queue["max_queue"] == 2


async def test_cancel_queued_never_runs(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False) as (api, service):
        ev = (await api.post("/evaluations", json=HELLO)).json()
        r = await api.post(f"/evaluations/{ev['id']}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        service.dispatcher.start()
        await asyncio.sleep(0.5)
        body = (await api.get(f"/evaluations/{ev['id']}")).json()
        assert body["status"] == "cancelled" and body["attempts"] == 0 and body["result"] is None
        assert (await api.post(f"/evaluations/{ev['id']}/cancel")).status_code == 409


async def test_cancel_running_kills_it(api: httpx.AsyncClient) -> None:
    code = "import time\nprint('started', flush=True)\ntime.sleep(30)\n"
    ev = (await api.post("/evaluations", json={"code": code})).json()

    async def running() -> bool:
        return bool((await api.get(f"/evaluations/{ev['id']}")).json()["status"] == "running")

    await aeventually(running, within=30, reason="the run to start", interval=0.05)
    r = await api.post(f"/evaluations/{ev['id']}/cancel")
    assert r.status_code == 200
    done = await finished(api, ev["id"], within=20)
    assert done["status"] == "cancelled"
    assert done["result"]["termination"] == "cancelled"
    assert done["result"]["wall_ms"] < 25_000  # not the full 30 s sleep


async def test_priority_order(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False, max_concurrency=1) as (api, service):
        ids = {}
        for name in ("low", "normal", "high", "normal"):
            body = {**HELLO, "priority": name}
            ids.setdefault(name, []).append(
                (await api.post("/evaluations", json=body)).json()["id"]
            )
        service.dispatcher.start()
        done = [await finished(api, i) for group in ids.values() for i in group]
        order = [d["id"] for d in sorted(done, key=lambda d: d["started_at"])]
        assert order == [ids["high"][0], ids["normal"][0], ids["normal"][1], ids["low"][0]]


async def test_list_filters_and_pagination(api: httpx.AsyncClient) -> None:
    made = []
    for i in range(5):
        body = {**HELLO, "labels": {"n": str(i % 2)}, "expected_output": "hello" if i else "x"}
        made.append((await api.post("/evaluations?wait=30", json=body)).json()["id"])
    page = (await api.get("/evaluations?limit=2")).json()
    assert [e["id"] for e in page["items"]] == made[::-1][:2] and page["next_cursor"]
    seen = [e["id"] for e in page["items"]]
    while page["next_cursor"]:
        page = (await api.get(f"/evaluations?limit=2&cursor={page['next_cursor']}")).json()
        seen += [e["id"] for e in page["items"]]
    assert seen == made[::-1]
    odd = (await api.get("/evaluations?label=n:1")).json()["items"]
    assert {e["id"] for e in odd} == {made[1], made[3]}
    failed = (await api.get("/evaluations?verdict=failed&status=completed")).json()["items"]
    assert [e["id"] for e in failed] == [made[0]]
    exited = (await api.get("/evaluations?termination=exited&language=python")).json()["items"]
    assert len(exited) == 5
    assert (await api.get("/evaluations?label=nocolon")).status_code == 422
    assert (await api.get("/evaluations?status=bogus")).status_code == 422


async def test_finished_records_are_served_as_first_rendered(make_api: ApiFactory) -> None:
    """The run renders its final record into the server's cache; reads serve it from
    there, the same as a server that keeps nothing renders it from the database."""
    body = {**HELLO, "labels": {"k": "v"}, "expected_output": "hello"}
    async with make_api() as (api, service):
        done = (await api.post("/evaluations?wait=30", json=body)).json()
        queued = (await api.post("/evaluations", json={**HELLO, "stdin": "x"})).json()
        assert service.records.get(done["id"]) is not None  # put there by the executor
        got = (await api.get(f"/evaluations/{done['id']}")).json()
        listed = (await api.get("/evaluations?limit=5")).json()["items"]
        assert got == done and done in listed
        assert {e["id"] for e in listed} >= {done["id"], queued["id"]}
    async with make_api(record_cache_mb=0) as (bare, off):
        again = (await bare.post("/evaluations?wait=30", json=body)).json()
        fresh = (await bare.get(f"/evaluations/{again['id']}")).json()
        assert off.records.size == (0, 0)
        assert fresh == again and fresh["result"]["verdict"] == "passed"
        assert set(fresh) == set(got) and set(fresh["result"]) == set(got["result"])


async def test_full_output_beyond_the_inline_preview(make_api: ApiFactory) -> None:
    async with make_api(inline_output_bytes=1000) as (api, _):
        code = "import sys\nsys.stdout.write('é' * 5000)\nsys.stderr.write('err')\n"
        body = (await api.post("/evaluations?wait=30", json={"code": code})).json()
        result = body["result"]
        assert result["stdout_inline_truncated"] and len(result["stdout"].encode()) <= 1000
        full = await api.get(f"/evaluations/{body['id']}/output/stdout")
        assert full.status_code == 200 and full.text == "é" * 5000
        assert (await api.get(f"/evaluations/{body['id']}/output/stderr")).text == "err"
        assert (await api.get(f"/evaluations/{body['id']}/output/other")).status_code == 422


async def test_produced_files_download(api: httpx.AsyncClient) -> None:
    code = (
        "import os\nos.makedirs('out', exist_ok=True)\n"
        "open('out/r.bin','wb').write(bytes(range(256)))\n"
    )
    body = (await api.post("/evaluations?wait=30", json={"code": code})).json()
    assert body["result"]["files"] == [{"path": "out/r.bin", "size": 256, "path_b64": None}]
    r = await api.get(f"/evaluations/{body['id']}/files/out/r.bin")
    assert r.status_code == 200 and r.content == bytes(range(256))
    assert (await api.get(f"/evaluations/{body['id']}/files/main.py")).status_code == 404
    assert (await api.get(f"/evaluations/{body['id']}/files/../x")).status_code == 404


async def test_files_and_entrypoint(api: httpx.AsyncClient) -> None:
    files = {"lib.py": "def f():\n    return 41\n", "app.py": "import lib\nprint(lib.f() + 1)\n"}
    body = {"files": files, "entrypoint": "app.py", "expected_output": "42"}
    r = await api.post("/evaluations?wait=30", json=body)
    assert r.json()["result"]["verdict"] == "passed", r.json()


async def test_batch(api: httpx.AsyncClient) -> None:
    items: list[dict[str, Any]] = [{"code": "print(1)"}, {"code": "print(2)"}, {"code": "1/0"}]
    r = await api.post("/batches", json={"items": items, "defaults": {"expected_output": "1"}})
    assert r.status_code == 202 and r.json()["count"] == 3
    batch_id = r.json()["id"]

    async def finished_batch() -> Any:
        batch = (await api.get(f"/batches/{batch_id}")).json()
        return batch if batch["finished"] else None

    batch = await aeventually(
        finished_batch, within=30, reason="the batch to finish", interval=0.05
    )
    assert batch["by_status"] == {"completed": 3}
    assert batch["by_verdict"] == {"passed": 1, "failed": 2}
    assert batch["by_termination"] == {"exited": 3}
    assert abs(batch["pass_rate"] - 1 / 3) < 1e-9 and batch["progress"] == 1.0
    listed = (await api.get(f"/evaluations?batch_id={batch_id}")).json()["items"]
    assert len(listed) == 3


async def test_batch_cancel(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False) as (api, _):
        r = await api.post("/batches", json={"items": [HELLO] * 5})
        batch = (await api.post(f"/batches/{r.json()['id']}/cancel")).json()
        assert batch["by_status"] == {"cancelled": 5} and batch["finished"]


async def test_probes_and_queue(api: httpx.AsyncClient) -> None:
    base = str(api.base_url).removesuffix("/api/v1/")
    assert (await api.get(f"{base}/healthz")).json() == {"status": "ok"}
    assert (await api.get(f"{base}/readyz")).status_code == 200
    queue = (await api.get("/queue")).json()
    assert queue["capacity"] == 2 and set(queue["depth"]) == {"high", "normal", "low"}


async def test_platform_failure_retries_then_errors(make_api: ApiFactory) -> None:
    async with make_api(
        runc_path="/nonexistent/runc", crun_path="/nonexistent/crun", max_attempts=2
    ) as (api, _):
        ev = (await api.post("/evaluations", json=HELLO)).json()
        done = await finished(api, ev["id"])
        assert done["status"] == Status.error.value and done["attempts"] == 2
        assert done["error"] and done["result"] is None


async def test_events_of_a_stream_the_bus_lost_start_from_the_record(
    make_api: ApiFactory,
) -> None:
    """A bus that lost a stream (restarted) while a client holds an id of it: the
    stream opens with the record's state just above that id, then follows the bus's
    new log (numbered higher); a finished evaluation gets its result alone."""
    async with make_api(dispatch=False) as (api, service):
        ev = (await api.post("/evaluations", json=HELLO)).json()
        seen = await service.bus.history(stream_of(ev["id"])) or []
        assert [e.data["status"] for e in seen] == ["queued"]
        service.bus = InProcessBus()  # the restart (no executor runs: dispatch=False)
        events = service.events(ev["id"], after=seen[-1].id)
        first = await asyncio.wait_for(anext(events), 10)
        assert first == Event(seen[-1].id + 1, "status", {"status": "queued"})
        live = await service.bus.publish(stream_of(ev["id"]), "status", {"status": "running"})
        assert await asyncio.wait_for(anext(events), 10) == live and live.id > first.id
        await events.aclose()

        await api.post(f"/evaluations/{ev['id']}/cancel")
        service.bus = InProcessBus()  # lost again, now that it is finished
        replay = [e async for e in service.events(ev["id"], after=first.id)]
        assert [(e.id, e.type) for e in replay] == [(first.id + 1, "result")]
        assert replay[0].data["status"] == "cancelled"


# What a program leaves behind must never break its owner's records (it made the
# record and the owner's list answer 500, and `crucible run --json` crash).
LEFTOVERS = (
    "import os\n"
    "open(b'bad\\xff.txt', 'wb').write(b'x')\n"
    "fd = os.open('.', os.O_RDONLY)\n"
    "for i in range(1500):\n"
    "    os.mkdir('dd', dir_fd=fd); nxt = os.open('dd', os.O_RDONLY, dir_fd=fd)\n"
    "    os.close(fd); fd = nxt\n"
    "print('left')\n"
)


async def test_hostile_leftovers_keep_the_records_valid(api: httpx.AsyncClient) -> None:
    r = await api.post(
        "/evaluations?wait=60", json={"code": LEFTOVERS, "limits": {"timeout_s": 30}}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "completed" and body["result"]["termination"] == "exited", body
    files = {f["path"]: f for f in body["result"]["files"]}
    assert files["bad\\xff.txt"]["path_b64"] == "YmFk/y50eHQ="
    assert body["result"]["files_omitted"].get("deep", 0) >= 1
    got = await api.get(f"/evaluations/{body['id']}")
    assert got.status_code == 200 and got.json()["result"]["files"] == body["result"]["files"]
    listed = await api.get("/evaluations?limit=50")
    assert listed.status_code == 200, listed.text
    assert body["id"] in [item["id"] for item in listed.json()["items"]]
    blob = await api.get(f"/evaluations/{body['id']}/files/bad%5Cxff.txt")
    assert blob.status_code == 200 and blob.content == b"x"
