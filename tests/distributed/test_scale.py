"""Two API instances and three workers run 500 evaluations: none lost, none run into
two results, every event stream complete (read live, and replayed afterwards).

The same at 2,000 and 10,000, with every component killed along the way, is
``bench/soak.py`` (minutes, not part of ``make test``)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from httpx_sse import connect_sse

from support.distributed import AUTH, http, wait_for

N = 500


def stream(url: str, evaluation_id: str) -> list[tuple[int, str, dict]]:
    out = []
    with (
        httpx.Client(timeout=300, headers=AUTH) as client,
        connect_sse(client, "GET", f"{url}/api/v1/evaluations/{evaluation_id}/events") as src,
    ):
        assert src.response.status_code == 200, src.response.read()
        for sse in src.iter_sse():
            if not sse.data:  # httpx-sse turns a keep-alive comment into an empty event
                continue
            out.append((int(sse.id), sse.event, sse.json()))
            if sse.event == "result":
                break
    return out


def complete(events: list[tuple[int, str, dict]], text: str, *, queued_event: bool) -> None:
    """No gaps, no repeats, one result; one run per attempt (a platform fault, such as
    runc failing to set up a cgroup, is retried, and its output is not the result's)."""
    ids = [e[0] for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids  # no gaps, no repeats (one epoch)
    kinds = [e[1] for e in events]
    assert kinds.count("result") == 1 and kinds[-1] == "result"
    statuses = [e[2]["status"] for e in events if e[1] == "status"]
    final = events[-1][2]
    summary = [(i, k, d.get("status")) for i, k, d in events]
    assert statuses.count("running") == final["attempts"], summary
    if queued_event:
        assert statuses[0] == "queued", summary
    if final["attempts"] == 1:
        assert "".join(e[2]["data"] for e in events if e[1] == "stdout") == text
    assert final["status"] == "completed" and final["result"]["stdout"] == text


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_two_apis_three_workers_five_hundred_evaluations(cluster) -> None:
    _a, url_a = cluster.api()
    _b, url_b = cluster.api()
    for _ in range(3):
        cluster.worker(concurrency=2)
    urls = [url_a, url_b]
    singles: list[str] = []
    number: dict[str, int] = {}
    lock = threading.Lock()
    with http(url_a, 120) as a, http(url_b, 120) as b:
        apis = [a, b]
        # Half as two batches (one per instance), half as single submissions to both.
        batch_ids = []
        for k, api in enumerate(apis):
            items = [{"code": f"print('hello {k}-{i}')"} for i in range(N // 4)]
            r = api.post("/batches", json={"items": items})
            assert r.status_code == 202, r.text
            batch_ids.append(r.json()["id"])

        live: dict[str, list] = {}

        def submit(i: int) -> None:
            with httpx.Client(base_url=f"{urls[i % 2]}/api/v1", headers=AUTH, timeout=120) as c:
                r = c.post("/evaluations", json={"code": f"print('hello s-{i}')"})
                assert r.status_code == 202, r.text
                with lock:
                    singles.append(r.json()["id"])
                    number[r.json()["id"]] = i

        # A few dozen streams followed live, on the *other* instance than the submitter.
        def follow(evaluation_id: str, url: str) -> None:
            live[evaluation_id] = stream(url, evaluation_id)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(submit, range(N // 2)))
        followers = [
            threading.Thread(target=follow, args=(singles[-1 - j], urls[j % 2])) for j in range(40)
        ]
        for t in followers:
            t.start()

        def drained() -> bool:
            q = a.get("/queue").json()
            return q["queued"] == 0 and q["running"] == 0

        wait_for(drained, 300, "the queue to drain", 1.0)
        for t in followers:
            t.join(120)
        records = []
        for batch_id in batch_ids:
            cursor = None
            while True:
                params = {
                    "batch_id": batch_id,
                    "limit": 500,
                    **({"cursor": cursor} if cursor else {}),
                }
                page = b.get("/evaluations", params=params).json()
                records += page["items"]
                cursor = page["next_cursor"]
                if not cursor:
                    break
        with ThreadPoolExecutor(8) as pool:
            records += list(pool.map(lambda i: b.get(f"/evaluations/{i}").json(), singles))
        letters = a.get("/dead-letters").json()["items"]

    assert len(records) == N and len({r["id"] for r in records}) == N  # zero lost
    assert {r["status"] for r in records} == {"completed"}
    # Zero duplicates: a second claim only follows a recorded platform fault.
    retried = [r for r in records if r["attempts"] > 1]
    assert len(retried) <= N // 100, retried[:3]
    assert all(r["result"]["stdout"].startswith("hello ") for r in records)
    assert letters == []
    assert len(live) == 40
    for evaluation_id, events in live.items():
        complete(events, f"hello s-{number[evaluation_id]}\n", queued_event=True)

    # Every stream, replayed from either instance, is complete.
    def replay(pair: tuple[int, dict]) -> None:
        n, record = pair
        events = stream(urls[n % 2], record["id"])
        complete(events, record["result"]["stdout"], queued_event=record["batch_id"] is None)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(replay, enumerate(records)))
