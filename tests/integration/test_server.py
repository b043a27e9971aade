"""Against a real ``crucible serve`` subprocess: SSE with resume, kill -9, CLI, volume."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from httpx_sse import connect_sse

from crucible.client import Client
from support.auth_keys import AUTH
from support.mounts import unmount_leftovers
from support.polling import eventually
from support.servers import CRUCIBLE, ServerProcess
from support.sse_stream import EventStream, stdout_events

PRINTS = "import time\nfor i in range(6):\n    print('line', i, flush=True)\n    time.sleep(0.1)\n"


def read_events(url: str, last_event_id: int | None = None, stop_after: int | None = None):
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    headers.update(AUTH)
    events = []
    with httpx.Client(timeout=60) as http, connect_sse(http, "GET", url, headers=headers) as src:
        assert src.response.headers["content-type"].startswith("text/event-stream")
        for sse in src.iter_sse():
            events.append((int(sse.id), sse.event, sse.json()))
            if sse.event == "result" or (stop_after is not None and len(events) >= stop_after):
                break
    return events


def test_sse_streams_output_and_resumes_without_gaps(server: ServerProcess) -> None:
    with Client(server.url) as client:
        ev = client.submit(PRINTS)
    url = f"{server.url}/api/v1/evaluations/{ev.id}/events"
    first = read_events(url, stop_after=3)  # disconnect mid-run
    rest = read_events(url, last_event_id=first[-1][0])
    events = first + rest
    ids = [e[0] for e in events]
    # One epoch of the bus: consecutive from its base (increasing, no gaps, no repeats).
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    assert events[-1][1] == "result" and events[-1][2]["status"] == "completed"
    statuses = [e[2]["status"] for e in events if e[1] == "status"]
    assert statuses[0] == "queued" and "running" in statuses
    stdout = "".join(e[2]["data"] for e in events if e[1] == "stdout")
    assert stdout == "".join(f"line {i}\n" for i in range(6))
    # A late reader replays the same log; resuming at the end yields nothing new.
    assert [e[0] for e in read_events(url)] == ids
    assert read_events(url, last_event_id=ids[-1]) == []
    bad = httpx.get(f"{server.url}/api/v1/evaluations/ev_nope/events", headers=AUTH)
    assert bad.status_code == 404


def test_batch_events_and_client(server: ServerProcess) -> None:
    with Client(server.url) as client:
        created = client.batch(
            [{"code": f"print({i})"} for i in range(5)], {"expected_output": "1"}
        )
        states = list(client.batch_events(created.id))
        assert states[-1].finished and states[-1].done == 5
        assert [s.done for s in states] == sorted({s.done for s in states})
        assert states[-1].by_verdict == {"passed": 1, "failed": 4}
        ev = client.submit("print('x' * 10)", wait=30)
        assert ev.result is not None and ev.result.stdout == "x" * 10 + "\n"
        assert client.logs(ev.id) == "x" * 10 + "\n"
        assert client.wait(ev.id).id == ev.id


def test_cli_against_the_server(server: ServerProcess, tmp_path: Path) -> None:
    program = tmp_path / "p.py"
    program.write_text("print('from the cli')\n")
    env = {**os.environ, "CRUCIBLE_SERVER": server.url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [CRUCIBLE, *args], env=env, capture_output=True, text=True, timeout=60
        )

    done = cli("submit", str(program), "--wait", "--expected-output", "from the cli")
    assert done.returncode == 0, done.stderr
    assert "from the cli" in done.stdout and "passed" in done.stderr
    followed = cli("submit", str(program), "--follow")
    assert followed.returncode == 0 and "from the cli" in followed.stdout
    ev_id = cli("submit", str(program)).stdout.strip()
    assert ev_id.startswith("ev_")
    assert cli("logs", ev_id, "--follow").stdout == "from the cli\n"
    assert ev_id in cli("status", ev_id).stdout
    assert cli("cancel", ev_id).returncode == 2  # already finished: 409
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"code": "print(1)", "expected_output": "1"}\n{"code": "1/0"}\n')
    batch = cli("batch", str(jsonl))
    assert batch.returncode == 0, batch.stderr
    assert "passed" in batch.stdout and "2/2 done" in batch.stdout
    assert cli("list", "--limit", "3").returncode == 0
    assert cli("status", "ev_nope").returncode == 2


@pytest.fixture
def own_state_dir():
    # kill -9 leaves this server's mounts and containers behind: keep them apart.
    path = Path(tempfile.mkdtemp(prefix="crucible-test-kill-", dir="/tmp"))
    yield path
    unmount_leftovers(path)


def test_kill9_then_restart_loses_nothing(
    make_server: Callable[..., ServerProcess], own_state_dir: Path
) -> None:
    server = make_server(CRUCIBLE_MAX_CONCURRENCY="2", CRUCIBLE_MAX_ATTEMPTS="3")
    server.state_dir = own_state_dir
    server.env["CRUCIBLE_STATE_DIR"] = str(own_state_dir)
    server.start()
    slow = "import time\nprint('start', flush=True)\ntime.sleep(2)\nprint('end')\n"
    with Client(server.url) as client:
        ids = [client.submit(slow).id for _ in range(5)]
        eventually(lambda: client.queue().running >= 2, within=60, reason="two runs claimed")
        running = {e.id for e in client.iter(status="running")}
    assert len(running) >= 2  # claimed (the dispatcher claims ahead of free sandboxes)
    server.kill9()
    server.start()  # same data dir: migrations, recovery, dispatch
    with Client(server.url) as client:
        finals = {i: client.wait(i, timeout=120) for i in ids}
        listed = {e.id for e in client.iter()}
    assert listed == set(ids)  # none lost, none duplicated
    for i, ev in finals.items():
        assert ev.status == "completed", ev
        assert ev.result is not None and ev.result.stdout == "start\nend\n"
        assert ev.attempts == (2 if i in running else 1)


# Twenty lines, 0.2 s apart: long enough to kill the server in the middle.
SLOW_PRINTS = (
    "import time\nfor i in range(20):\n    print('line', i, flush=True)\n    time.sleep(0.2)\n"
)
SLOW_STDOUT = "".join(f"line {i}\n" for i in range(20))


# Two server start-ups, a run killed halfway and a full second run: well under a minute
# on an idle machine; the margin is for a loaded 2-core one.
@pytest.mark.timeout(240)
def test_sse_resumes_across_a_server_restart_without_repeats(
    make_server: Callable[..., ServerProcess], own_state_dir: Path
) -> None:
    """kill -9 mid-stream, restart (the in-process bus starts empty; the evaluation is
    recovered and re-run), resume with Last-Event-ID: ids keep increasing, nothing is
    sent twice, the new attempt streams in full and one final result ends it."""
    server = make_server(CRUCIBLE_MAX_CONCURRENCY="1")
    server.env["CRUCIBLE_STATE_DIR"] = str(own_state_dir)
    server.start()
    with Client(server.url) as client:
        ev = client.submit(SLOW_PRINTS)
    url = f"{server.url}/api/v1/evaluations/{ev.id}/events"

    with EventStream(url, AUTH) as first:
        first.read(until=stdout_events(5))
        assert not first.ended, first.events  # the run is still going
        server.kill9()  # with the stream open
        first.read()  # whatever was in flight, then the broken connection
    before = first.events
    assert first.ended and not any(e[1] == "result" for e in before)
    server.start()  # same data dir: recovery re-queues the run, the dispatcher re-runs it
    with EventStream(url, AUTH, last_event_id=before[-1][0]) as second:
        second.read()  # to the end: the server closes the stream after its final event
    after = second.events

    events = before + after
    ids = [e[0] for e in events]
    assert ids == sorted(set(ids)), ids  # strictly increasing across the restart
    assert [e[1] for e in events].count("result") == 1 and events[-1][1] == "result"
    final = events[-1][2]
    assert final["status"] == "completed" and final["attempts"] == 2, final
    assert final["result"]["stdout"] == SLOW_STDOUT
    # The re-run is announced (a running status with attempt 2) and streamed in full.
    reruns = [i for i, e in enumerate(after) if e[1] == "status" and e[2].get("attempt") == 2]
    assert reruns, after
    rerun = reruns[0]
    assert "".join(e[2]["data"] for e in after[rerun:] if e[1] == "stdout") == SLOW_STDOUT
    assert not any(e[1] == "stdout" for e in after[:rerun])  # no output of attempt 1 again


def test_interrupted_too_often_becomes_error(
    make_server: Callable[..., ServerProcess], own_state_dir: Path
) -> None:
    server = make_server(CRUCIBLE_MAX_CONCURRENCY="1", CRUCIBLE_MAX_ATTEMPTS="1")
    server.env["CRUCIBLE_STATE_DIR"] = str(own_state_dir)
    server.start()
    with Client(server.url) as client:
        ev = client.submit("import time\ntime.sleep(3)\n")
        eventually(
            lambda: client.get(ev.id).status == "running", within=60, reason="the run to start"
        )
    server.kill9()
    server.start()
    with Client(server.url) as client:
        final = client.get(ev.id)
    assert final.status == "error" and final.attempts == 1
    assert final.error is not None and "interrupted" in final.error


@pytest.mark.timeout(600)
def test_thousand_queued_evaluations_drain(server: ServerProcess) -> None:
    items = [
        {"language": "bash", "code": f"echo {i}", "expected_output": str(i)} for i in range(1000)
    ]
    with Client(server.url, timeout=120) as client:
        created = client.batch(items)
        assert created.count == 1000
        final = None
        for state in client.batch_events(created.id):
            final = state
        assert final is not None and final.finished
        assert final.by_status == {"completed": 1000}
        assert final.by_verdict == {"passed": 1000}
        results = list(client.iter(batch_id=created.id))
    assert len({e.id for e in results}) == 1000
    assert all(e.attempts == 1 for e in results)
