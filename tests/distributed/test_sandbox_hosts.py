"""Agent sandboxes on worker hosts (issue 19), with real processes: PostgreSQL, Redis,
two ``crucible serve --dispatcher celery`` and ``crucible worker --sandboxes N`` hosts,
each host on its own loopback address (127.0.0.2, 127.0.0.3), the real engine.

Bounds on waits are the cluster's heartbeat settings (tests/local_cluster.py: a 0.5 s
heartbeat, dead after 6 s); every wait polls for a state."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from crucible.client import Client
from crucible.core.errors import SandboxLost
from support.distributed import ADMIN_KEY, AUTH, Cluster, free_port, http, wait_for
from support.local_cluster import CLUSTER_TOKEN

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox engine needs root")


def start_hosts(cluster: Cluster, capacities: tuple[int, ...]) -> list[tuple[Any, str]]:
    """One host per capacity, the first on 127.0.0.2, the next on 127.0.0.3, …;
    returns (process, endpoint URL) and waits until each has heartbeated."""
    # Sandboxes with a user namespace need the state directory's parents searchable
    # (mkdtemp makes the test's root 0700).
    os.chmod(cluster.root, 0o711)
    hosts = []
    for i, capacity in enumerate(capacities):
        listen = f"127.0.0.{i + 2}:{free_port()}"
        proc = cluster.worker(1, sandboxes=capacity, listen=listen)
        hosts.append((proc, f"http://{listen}"))
    return hosts


def host_rows(api: httpx.Client) -> dict[str, dict[str, Any]]:
    rows = api.get("/workers").json()["items"]
    return {w["id"]: w for w in rows if w["sandbox_capacity"] > 0 and w["state"] == "alive"}


def create(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/sandboxes", json={"ttl_s": 600, "idle_timeout_s": 600, **body})


def events_until(url: str, sandbox_id: str, kind: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    with (
        httpx.Client(timeout=30, headers=AUTH) as client,
        connect_sse(client, "GET", f"{url}/api/v1/sandboxes/{sandbox_id}/events") as src,
    ):
        for sse in src.iter_sse():
            out.append((sse.event, sse.json()))
            if sse.event == kind:
                break
    return out


def test_sandboxes_spread_over_hosts_and_every_route_works_through_every_api(
    cluster: Cluster,
) -> None:
    _a, url_a = cluster.api()
    _b, url_b = cluster.api()
    start_hosts(cluster, (4, 4))
    with http(url_a) as a, http(url_b) as b:
        wait_for(lambda: len(host_rows(a)) == 2, 30, "two sandbox hosts")
        boxes = []
        for _ in range(4):
            r = create(a)
            assert r.status_code == 201, r.text
            boxes.append(r.json())
        # Least loaded first: four creates on two empty hosts land two and two.
        per_host = {w: sum(1 for x in boxes if x["worker_id"] == w) for w in host_rows(a)}
        assert sorted(per_host.values()) == [2, 2], per_host
        sid = boxes[0]["id"]
        # Through B: files, exec; through A: the transcript; events through B.
        r = b.put(f"/sandboxes/{sid}/file", params={"path": "/tmp/t.txt"}, content=b"hello\n")
        assert r.status_code == 204, r.text
        assert b.get(f"/sandboxes/{sid}/file", params={"path": "/tmp/t.txt"}).content == b"hello\n"
        r = b.post(f"/sandboxes/{sid}/exec", json={"cmd": ["bash", "-c", "cat /tmp/t.txt; exit 3"]})
        assert r.status_code == 200, r.text
        assert (r.json()["returncode"], r.json()["stdout"]) == (3, "hello\n")
        execs = a.get(f"/sandboxes/{sid}/execs").json()["items"]
        assert [e["returncode"] for e in execs] == [3]
        seen = events_until(url_b, sid, "exec_finished")
        assert seen[-1][1]["returncode"] == 3
        missing = b.get("/sandboxes/sbx_none/file", params={"path": "/x"})
        assert missing.status_code == 404
        # Delete through B, for each one; the records say stopped (deleted).
        for box in boxes:
            assert b.delete(f"/sandboxes/{box['id']}").status_code == 204
        for box in boxes:
            rec = a.get(f"/sandboxes/{box['id']}").json()
            assert (rec["status"], rec["stop_reason"]) == ("stopped", "deleted"), rec
        r = a.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]})
        assert r.status_code == 409 and r.json()["error"] == "sandbox_stopped"


def test_the_same_idempotency_key_through_two_apis_runs_once(cluster: Cluster) -> None:
    _a, url_a = cluster.api()
    _b, url_b = cluster.api()
    start_hosts(cluster, (2,))
    with http(url_a) as a, http(url_b) as b:
        wait_for(lambda: len(host_rows(a)) == 1, 30, "a sandbox host")
        sid = create(a).json()["id"]
        cmd = {"cmd": ["bash", "-c", "echo run >> /tmp/runs; sleep 1; wc -l < /tmp/runs"]}
        key = {"Idempotency-Key": "step-1"}
        answers: dict[str, httpx.Response] = {}

        def send(name: str, client: httpx.Client) -> None:
            answers[name] = client.post(f"/sandboxes/{sid}/exec", json=cmd, headers=key)

        threads = [threading.Thread(target=send, args=(n, c)) for n, c in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert {n: r.status_code for n, r in answers.items()} == {"a": 200, "b": 200}
        ra, rb = answers["a"].json(), answers["b"].json()
        assert ra["seq"] == rb["seq"] == 1 and ra["stdout"] == rb["stdout"] == "1\n"
        # A later retry (the answer lost) is answered from the transcript.
        again = b.post(f"/sandboxes/{sid}/exec", json=cmd, headers=key).json()
        assert (again["seq"], again["stdout"]) == (1, "1\n")
        other = a.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]}, headers=key)
        assert other.status_code == 409, other.text
        runs = a.post(f"/sandboxes/{sid}/exec", json={"cmd": ["cat", "/tmp/runs"]}).json()
        assert runs["stdout"] == "run\n"  # the command ran once
        assert len(a.get(f"/sandboxes/{sid}/execs").json()["items"]) == 2


def test_a_host_killed_mid_exec_loses_its_sandboxes_plainly(cluster: Cluster) -> None:
    _a, url_a = cluster.api()
    _b, url_b = cluster.api()
    (victim, _), (_survivor, _) = start_hosts(cluster, (1, 1))
    with http(url_a) as a, http(url_b) as b:
        wait_for(lambda: len(host_rows(a)) == 2, 30, "two sandbox hosts")
        first, second = create(a).json(), create(a).json()
        doomed = next(x for x in (first, second) if x["worker_id"].endswith(victim_id(a, victim)))
        kept = first if doomed is second else second
        sid = doomed["id"]
        key = {"Idempotency-Key": "long-step"}
        answer: dict[str, httpx.Response] = {}

        def run() -> None:
            body = {"cmd": ["bash", "-c", "echo started; sleep 60"], "timeout_s": 120}
            answer["r"] = a.post(f"/sandboxes/{sid}/exec", json=body, headers=key)

        t = threading.Thread(target=run)
        t.start()
        wait_for(lambda: a.get(f"/sandboxes/{sid}/execs").json()["items"], 30, "the exec to start")
        started = time.monotonic()
        victim.kill9()
        t.join(60)
        # Bound: the API waits at most worker_dead_after_s (6) + 3 heartbeats for the
        # database to decide; on this node the dead pid is seen at the next tick.
        assert time.monotonic() - started < 6 + 3 * 0.5 + 5
        r = answer["r"]
        assert r.status_code == 410 and r.json()["error"] == "sandbox_lost", r.text
        rec = b.get(f"/sandboxes/{sid}").json()
        assert (rec["status"], rec["stop_reason"]) == ("lost", "lost"), rec
        assert "stopped heartbeating" in rec["stop_detail"]
        # The retry does not run it again; exec, files answer 410 through either API.
        retry = b.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]}, headers=key)
        assert retry.status_code in (409, 410), retry.text
        assert b.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]}).status_code == 410
        r = b.get(f"/sandboxes/{sid}/file", params={"path": "/etc/hostname"})
        assert r.status_code == 410 and r.json()["error"] == "sandbox_lost"
        # The Python client raises the typed error (a SandboxStopped).
        with Client(url_b, api_key=ADMIN_KEY) as c, pytest.raises(SandboxLost):
            c.sandboxes.get(sid).exec(["true"])
        # The transcript is kept: one exec, cut short, saying why.
        execs = b.get(f"/sandboxes/{sid}/execs").json()["items"]
        assert len(execs) == 1 and execs[0]["returncode"] is None
        assert "stopped heartbeating" in execs[0]["error"]
        # The other host's sandbox is untouched.
        r = b.post(f"/sandboxes/{kept['id']}/exec", json={"cmd": ["echo", "alive"]})
        assert r.status_code == 200 and r.json()["stdout"] == "alive\n"


def victim_id(api: httpx.Client, proc: Any) -> str:
    """The worker id's tail (host:pid:token) of the host process ``proc``."""
    rows = api.get("/workers").json()["items"]
    match = next(w["id"] for w in rows if w["pid"] == proc.pid)
    return match.split("@", 1)[1]


def test_a_full_host_sends_creates_to_the_next_and_none_free_is_503(cluster: Cluster) -> None:
    _a, url_a = cluster.api()
    start_hosts(cluster, (1, 1))
    with http(url_a) as a:
        wait_for(lambda: len(host_rows(a)) == 2, 30, "two sandbox hosts")
        one, two = create(a).json(), create(a).json()
        assert one["worker_id"] != two["worker_id"]
        r = create(a)
        assert r.status_code == 503, r.text
        assert int(r.headers["Retry-After"]) > 0 and "full" in r.json()["detail"]
        a.delete(f"/sandboxes/{one['id']}")
        r = create(a)
        assert r.status_code == 201 and r.json()["worker_id"] == one["worker_id"]


def test_no_host_alive_is_503_with_retry_after(cluster: Cluster) -> None:
    _a, url_a = cluster.api()
    with http(url_a) as a:
        r = create(a)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert "no sandbox host" in r.json()["detail"]


def test_the_cluster_endpoint_takes_only_the_cluster_token(cluster: Cluster) -> None:
    cluster.api()
    [(_proc, endpoint)] = start_hosts(cluster, (1,))
    health = f"{endpoint}/cluster/v1/healthz"
    assert httpx.get(health, timeout=10).status_code == 401
    assert httpx.get(health, headers=AUTH, timeout=10).status_code == 401  # an admin key
    ok = httpx.get(health, headers={"Authorization": f"Bearer {CLUSTER_TOKEN}"}, timeout=10)
    assert ok.status_code == 200 and ok.json()["capacity"] == 1
    r = httpx.post(f"{endpoint}/cluster/v1/sandboxes", json={}, headers=AUTH, timeout=10)
    assert r.status_code == 401


def test_hosting_refuses_to_start_without_a_cluster_token(cluster: Cluster) -> None:
    proc = cluster.worker(
        1, wait=False, sandboxes=1, listen=f"127.0.0.2:{free_port()}", CRUCIBLE_CLUSTER_TOKEN=""
    )
    wait_for(lambda: not proc.alive(), 60, "the worker to refuse")
    assert "CRUCIBLE_CLUSTER_TOKEN" in proc.tail()


def test_a_host_cut_off_and_healed_drops_what_the_database_took(cluster: Cluster) -> None:
    """SIGSTOP stands for a partition: the host stops heartbeating but lives. Its
    sandbox becomes lost; healed, the host sees its epoch moved and closes it, so
    there are never two live copies (nor a copy the database does not know)."""
    _a, url_a = cluster.api()
    [(host, _)] = start_hosts(cluster, (2,))
    with http(url_a) as a:
        wait_for(lambda: len(host_rows(a)) == 1, 30, "a sandbox host")
        sid = create(a).json()["id"]
        assert a.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]}).status_code == 200
        os.kill(host.pid, signal.SIGSTOP)
        try:
            # Bound: worker_dead_after_s (6) and a few maintenance ticks (0.5 s).
            wait_for(lambda: a.get(f"/sandboxes/{sid}").json()["status"] == "lost", 20, "lost")
            r = a.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]})
            assert r.status_code == 410 and r.json()["error"] == "sandbox_lost"
        finally:
            os.kill(host.pid, signal.SIGCONT)
        # Healed: its next heartbeats see the epoch moved; the reaper's tick (1 s) is
        # the fallback. Bound: a few heartbeats.
        wait_for(lambda: f"closing sandbox {sid}" in host.tail(200000), 15, "the orphan closed")
        wait_for(lambda: len(host_rows(a)) == 1, 15, "the host alive again")
        rec = a.get(f"/sandboxes/{sid}").json()
        assert rec["status"] == "lost"  # the database decided; nothing brings it back
        fresh = create(a)
        assert fresh.status_code == 201, fresh.text
        r = a.post(f"/sandboxes/{fresh.json()['id']}/exec", json={"cmd": ["echo", "ok"]})
        assert r.json()["stdout"] == "ok\n"


def test_an_api_killed_during_an_exec_is_resumed_through_the_other(cluster: Cluster) -> None:
    """The exec runs on the host, which records it: the caller retries its key through
    the other API instance and gets the one run's whole output."""
    api_a, url_a = cluster.api()
    _b, url_b = cluster.api()
    start_hosts(cluster, (1,))
    with http(url_a) as a, http(url_b) as b:
        wait_for(lambda: len(host_rows(b)) == 1, 30, "a sandbox host")
        sid = create(b).json()["id"]
        script = "echo run >> /tmp/runs; for i in 1 2 3; do echo line $i; sleep 1; done"
        body = {"cmd": ["bash", "-c", script]}
        key = {"Idempotency-Key": "resume-me"}
        lost: dict[str, BaseException] = {}

        def first() -> None:
            try:
                a.post(f"/sandboxes/{sid}/exec", json=body, headers=key)
            except httpx.HTTPError as exc:
                lost["exc"] = exc

        t = threading.Thread(target=first)
        t.start()
        wait_for(lambda: b.get(f"/sandboxes/{sid}/execs").json()["items"], 30, "the exec")
        api_a.kill9()
        t.join(30)
        assert "exc" in lost  # its answer was lost with API A
        r = b.post(f"/sandboxes/{sid}/exec", json=body, headers=key)
        assert r.status_code == 200, r.text
        assert r.json()["seq"] == 1 and r.json()["stdout"] == "line 1\nline 2\nline 3\n"
        runs = b.post(f"/sandboxes/{sid}/exec", json={"cmd": ["cat", "/tmp/runs"]}).json()
        assert runs["stdout"] == "run\n"


def test_routing_works_from_the_database_while_redis_is_down(cluster: Cluster) -> None:
    """Redis carries only the live events (and Celery's wake-ups): placement, routing,
    exec and the transcript come from the database and the hosts."""
    _a, url_a = cluster.api()
    _b, url_b = cluster.api()
    start_hosts(cluster, (2,))
    with http(url_a) as a, http(url_b) as b:
        wait_for(lambda: len(host_rows(a)) == 1, 30, "a sandbox host")
        before = create(a).json()["id"]
        cluster.redis.stop()
        try:
            made = create(b)
            assert made.status_code == 201, made.text
            for sid in (before, made.json()["id"]):
                r = b.post(f"/sandboxes/{sid}/exec", json={"cmd": ["echo", sid]})
                assert r.status_code == 200 and r.json()["stdout"] == f"{sid}\n", r.text
                assert len(a.get(f"/sandboxes/{sid}/execs").json()["items"]) == 1
                assert b.delete(f"/sandboxes/{sid}").status_code == 204
        finally:
            cluster.redis.start()


def waiting_on_locks(db: Any) -> int:
    """Backends of this database waiting for a lock in a sandbox insert: the insert
    itself, the network group's advisory lock, or the key's row (the quota)."""
    row = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' AND ("
        " query ILIKE 'INSERT INTO sandboxes%%' OR query ILIKE '%%pg_advisory_xact_lock%%'"
        " OR query ILIKE '%%FROM api_keys%%FOR UPDATE%%')"
    ).fetchone()
    return int(row[0])


def test_a_network_group_created_at_once_through_two_apis_gets_one_host(
    cluster: Cluster, database: str
) -> None:
    """Two services of one compose sample created at the same moment through two API
    instances. Placement's lookup of the group's host sees neither (neither row is
    committed), so only the host's insert can keep them together.

    Made deterministic with locks the test holds, no timing: the sandboxes table
    (LOCK … EXCLUSIVE: reads pass, inserts wait) holds every insert until both members
    are placed, and a FOR KEY SHARE on a second key's row holds two fillers of that key
    (its quota's FOR UPDATE waits), which keep host A busy so that B is where the second
    member is placed: A (capacity 3) refuses a create while three are being made on it.
    Host B holds two sandboxes already, so A is where the first member goes. On the old
    code the members ended on A and B; now B's insert waits for the group's lock, sees
    the first member on A, refuses, and API 2 places it again, on A."""
    psycopg = pytest.importorskip("psycopg")
    _a, url_a = cluster.api()
    _b, url_b = cluster.api()
    os.chmod(cluster.root, 0o711)  # see start_hosts
    cluster.worker(1, sandboxes=3, listen=f"127.0.0.3:{free_port()}")  # B
    with http(url_a) as a, http(url_b) as b:
        wait_for(lambda: len(host_rows(a)) == 1, 30, "host B")
        [host_b] = host_rows(a)
        made = a.post("/keys", json={"name": "fill", "role": "researcher", "max_sandboxes": 2})
        key2 = made.json()
        fill = {"Authorization": f"Bearer {key2['key']}"}
        for _ in range(2):
            r = b.post("/sandboxes", json={"ttl_s": 600, "idle_timeout_s": 600}, headers=fill)
            assert r.status_code == 201 and r.json()["worker_id"] == host_b, r.text
        cluster.worker(1, sandboxes=3, listen=f"127.0.0.2:{free_port()}")  # A
        wait_for(lambda: len(host_rows(a)) == 2, 30, "host A")
        [host_a] = set(host_rows(a)) - {host_b}

        answers: dict[str, httpx.Response] = {}

        def send(name: str, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
            with httpx.Client(base_url=f"{url}/api/v1", timeout=60, headers=headers) as c:
                answers[name] = create(c, **body)

        def member(hostname: str) -> dict[str, Any]:
            net = {"group": "sample-1", "hostname": hostname, "members": ["default", "web"]}
            return {"network": net}

        threads: list[threading.Thread] = []

        def start(*args: Any, waiting: int) -> None:
            t = threading.Thread(target=send, args=args)
            t.start()
            threads.append(t)
            # Bound: one HTTP hop and a database call each, on a loaded machine.
            wait_for(lambda: waiting_on_locks(watch) == waiting, 30, f"{args[0]} waiting")

        with (
            psycopg.connect(database) as table_lock,
            psycopg.connect(database) as key_lock,
            psycopg.connect(database, autocommit=True) as watch,
        ):
            table_lock.execute("LOCK TABLE sandboxes IN EXCLUSIVE MODE")
            key_lock.execute("SELECT 1 FROM api_keys WHERE id = %s FOR KEY SHARE", (key2["id"],))
            start("first", url_a, member("default"), AUTH, waiting=1)  # A: B has two
            start("fill-1", url_b, {}, fill, waiting=2)  # A: the least loaded
            start("fill-2", url_b, {}, fill, waiting=3)  # A: B has two, A one in flight
            start("second", url_b, member("web"), AUTH, waiting=4)  # A full: B
            key_lock.commit()  # the fillers find their key's two running: 429
            for t in threads[1:3]:
                t.join(60)
            assert [answers[f].status_code for f in ("fill-1", "fill-2")] == [429, 429]
            table_lock.commit()
            for t in threads:
                t.join(60)
        first, second = answers["first"], answers["second"]
        assert (first.status_code, second.status_code) == (201, 201), (first.text, second.text)
        assert first.json()["worker_id"] == host_a
        assert second.json()["worker_id"] == host_a, "the group's members were split"


def test_an_exec_streamed_through_an_api_killed_mid_way_resumes_through_the_other(
    cluster: Cluster,
) -> None:
    """The client follows an exec's live output on API A's events stream; A is
    SIGKILLed after the first line. It resumes through B with Last-Event-ID: the rest
    of the output, nothing twice, and its retry of the exec's key answers the one run."""
    api_a, url_a = cluster.api()
    _b, url_b = cluster.api()
    start_hosts(cluster, (1,))
    with http(url_a) as a, http(url_b) as b:
        wait_for(lambda: len(host_rows(b)) == 1, 30, "a sandbox host")
        sid = create(b).json()["id"]
        script = "echo run >> /tmp/runs; for i in 1 2 3; do echo line $i; sleep 1; done"
        body = {"cmd": ["bash", "-c", script]}
        key = {"Idempotency-Key": "streamed"}
        seen: list[str] = []
        last_id: dict[str, str] = {}
        first_line = threading.Event()

        def exec_through_a() -> None:
            with contextlib.suppress(httpx.HTTPError):  # its answer is lost with API A
                a.post(f"/sandboxes/{sid}/exec", json=body, headers=key)

        def follow(url: str, headers: dict[str, str]) -> None:
            with (
                httpx.Client(timeout=30, headers={**AUTH, **headers}) as client,
                connect_sse(client, "GET", f"{url}/api/v1/sandboxes/{sid}/events") as src,
            ):
                for sse in src.iter_sse():
                    if sse.event == "output" and sse.json()["stream"] == "stdout":
                        seen.append(sse.json()["data"])
                        last_id["id"] = sse.id
                        first_line.set()
                    if sse.event == "exec_finished":
                        return

        def follow_until_killed() -> None:
            with contextlib.suppress(httpx.HTTPError):  # A dies under the stream
                follow(url_a, {})

        follower = threading.Thread(target=follow_until_killed)
        follower.start()
        runner = threading.Thread(target=exec_through_a)
        runner.start()
        # Bound: a create of the exec and its first output line, on a loaded machine.
        assert first_line.wait(30), "no output through API A"
        api_a.kill9()
        follower.join(30)
        runner.join(30)
        assert "line 3\n" not in seen, "the exec ended before A was killed"
        follow(url_b, {"Last-Event-ID": last_id["id"]})
        assert "".join(seen) == "line 1\nline 2\nline 3\n", seen
        r = b.post(f"/sandboxes/{sid}/exec", json=body, headers=key)
        assert r.status_code == 200 and r.json()["seq"] == 1, r.text
        assert r.json()["stdout"] == "line 1\nline 2\nline 3\n"
        runs = b.post(f"/sandboxes/{sid}/exec", json={"cmd": ["cat", "/tmp/runs"]}).json()
        assert runs["stdout"] == "run\n"
