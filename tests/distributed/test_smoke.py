"""First light: one API, one worker, one evaluation with live events, the workers list."""

from __future__ import annotations

import httpx
from httpx_sse import connect_sse

from support.distributed import AUTH, http, wait_final

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
    ids = [e[0] for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # one epoch: consecutive
    assert events[0][1] == "status" and events[0][2]["status"] == "queued"
    assert "".join(e[2]["data"] for e in events if e[1] == "stdout") == "0\n1\n2\n"
    assert len(workers) == 1 and workers[0]["state"] == "alive" and workers[0]["capacity"] == 2
    assert workers[0]["queues"] == ["crucible"]


def test_worker_serves_its_own_metrics(cluster) -> None:
    """Sandbox run durations are observed where the sandbox runs: the worker."""
    from prometheus_client.parser import text_string_to_metric_families

    from support.distributed import free_port

    port = free_port()
    _api, url = cluster.api()
    cluster.worker(concurrency=1, CRUCIBLE_WORKER_METRICS_PORT=str(port))
    with http(url) as api:
        ev = api.post("/evaluations", json={"code": "print(1)", "language": "python"}).json()
        assert wait_final(api, ev["id"], 60)["status"] == "completed"
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    counts = {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "crucible_sandbox_run_seconds"
        for s in family.samples
        if s.name.endswith("_count")
    }
    assert counts.get((("language", "python"), ("termination", "exited")), 0) >= 1, counts


def test_readyz_fails_while_the_broker_is_unreachable(cluster) -> None:
    """The event bus (Redis) answers but the broker (a RabbitMQ URL on a closed port)
    does not: the API is alive but not ready, and says which part is missing."""
    from support.distributed import CRUCIBLE, Proc, free_port, wait_for

    port = free_port()
    env = {
        **cluster.env,
        "CRUCIBLE_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//",
        "CRUCIBLE_REDIS_URL": cluster.redis.url,
    }
    proc = Proc(
        "api-no-broker",
        [CRUCIBLE, "serve", "--dispatcher", "celery", "--port", str(port)],
        env,
        cluster.root / "api-no-broker.log",
    ).start()
    cluster.apis.append(proc)  # stopped at teardown
    url = f"http://127.0.0.1:{port}"

    def alive() -> bool:
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(alive, 60, "the API")
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 503, ready.text
    assert "broker" in ready.text
