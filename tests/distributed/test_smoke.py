"""First light: one API, one worker, one evaluation with live events, the workers list."""

from __future__ import annotations

import httpx
from dist_helpers import AUTH, http, wait_final
from httpx_sse import connect_sse

PRINTS = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.1)\n"


def read_events(
    url: str, evaluation_id: str, last: int | None = None
) -> list[tuple[int, str, dict]]:
    headers = dict(AUTH)
    if last is not None:
        headers["Last-Event-ID"] = str(last)
    out = []
    with (
        httpx.Client(timeout=60, headers=headers) as client,
        connect_sse(client, "GET", f"{url}/api/v1/evaluations/{evaluation_id}/events") as src,
    ):
        for sse in src.iter_sse():
            out.append((int(sse.id), sse.event, sse.json()))
            if sse.event == "result":
                break
    return out


def test_one_evaluation_runs_on_a_worker(cluster) -> None:
    _api, url = cluster.api()
    cluster.worker(concurrency=2)
    with http(url) as api:
        ev = api.post("/evaluations", json={"code": PRINTS}).json()
        final = wait_final(api, ev["id"], 60)
        workers = api.get("/workers").json()["items"]
    assert final["status"] == "completed", final
    assert final["result"]["stdout"] == "0\n1\n2\n"
    assert final["worker_id"].startswith("celery@")
    events = read_events(url, ev["id"])
    assert [e[0] for e in events] == list(range(1, len(events) + 1))
    assert events[0][1] == "status" and events[0][2]["status"] == "queued"
    assert "".join(e[2]["data"] for e in events if e[1] == "stdout") == "0\n1\n2\n"
    assert len(workers) == 1 and workers[0]["state"] == "alive" and workers[0]["capacity"] == 2
    assert workers[0]["queues"] == ["high", "normal", "low"]
