"""The Python clients (sync and async) and the CLI (``crucible sandbox …``, ``crucible
shell``) against the real app served over HTTP by uvicorn in this process, with the
in-memory engine of ``tests/support/fake_sessions.py``."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from crucible.api.app import create_app
from crucible.client import AsyncClient, Client
from crucible.client.errors import ApiError
from crucible.core.config import Settings
from crucible.core.errors import (
    SandboxFileNotFound,
    SandboxFileTooLarge,
    SandboxIsADirectory,
    SandboxPermissionDenied,
    SandboxStopped,
)
from support.api import serve_in_thread
from support.fake_sessions import FakeSessions
from support.servers import CRUCIBLE


@dataclass
class Live:
    url: str
    engine: FakeSessions


@pytest.fixture
def live(settings: Settings) -> Iterator[Live]:
    engine = FakeSessions()
    with serve_in_thread(create_app(settings, dispatch=False, sessions=engine)) as url:
        yield Live(url, engine)


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CRUCIBLE, *args], input=stdin, capture_output=True, text=True, timeout=60, env=os.environ
    )


def test_sync_client_round_trip_and_error_mapping(live: Live) -> None:
    with Client(live.url) as c:
        with c.sandboxes.create(limits={"memory_mb": 128}, ttl_s=300, labels={"a": "b"}) as sb:
            assert sb.id.startswith("sbx_") and sb.record.limits.memory_mb == 128
            r = sb.exec(["echo", "hi"])
            assert (r.returncode, r.stdout, r.seq) == (0, "hi\n", 1)
            assert sb.exec("exit 4").returncode == 4  # a string runs as bash -lc
            sb.write_file("a.bin", b"\x00\xff")
            sb.write_file("t.txt", "text")
            assert sb.read_file("a.bin") == b"\x00\xff"
            assert sb.exec(["cat", "a.bin"]).stdout_bytes == b"\x00\xff"
            assert sb.exec(["cat"], input=b"\xfe").stdout_bytes == b"\xfe"
            with pytest.raises(SandboxFileNotFound) as missing:
                sb.read_file("nope")
            assert missing.value.path == "nope"
            with pytest.raises(SandboxIsADirectory):
                sb.read_file("/workspace")
            with pytest.raises(SandboxPermissionDenied):
                sb.write_file("/etc/x", b"")
            assert [e.seq for e in sb.execs().items] == [1, 2, 3, 4]
            assert c.sandboxes.list().items[0].id == sb.id
        assert sb.refresh().stop_reason is not None and sb.record.status.value == "stopped"
        with pytest.raises(SandboxStopped):
            sb.exec(["true"])
        sb.close()  # idempotent
        with pytest.raises(ApiError) as nobox:
            c.sandboxes.get("sbx_nope")
        assert nobox.value.status == 404
        with pytest.raises(ApiError) as bad:
            c.sandboxes.create(limits={"memory_mb": 10**7})
        assert bad.value.status == 422 and bad.value.field == "limits.memory_mb"


def test_sync_client_follows_events(live: Live) -> None:
    with Client(live.url) as c:
        sb = c.sandboxes.create()
        sb.exec(["echo", "x"])
        sb.close()
        kinds = [e.type for e in sb.events()]
        assert kinds[-1] == "stopped" and "exec_finished" in kinds


def test_async_client(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with AsyncClient(live.url) as c:
            sb = await c.sandboxes.create(ttl_s=60)
            async with sb:
                r = await sb.exec(["sh", "-c", "echo a; exit 1"], timeout_s=5)
                assert (r.returncode, r.stdout) == (1, "a\n")
                await sb.write_file("f", "hello")
                assert await sb.read_file("f") == b"hello"
                with pytest.raises(SandboxFileNotFound):
                    await sb.read_file("g")
                assert (await sb.execs()).items[0].cmd == ["sh", "-c", "echo a; exit 1"]
                assert (await c.sandboxes.get(sb.id)).id == sb.id
                assert [b.id for b in (await c.sandboxes.list()).items] == [sb.id]
            assert (await sb.refresh()).stop_reason is not None
            with pytest.raises(SandboxStopped):
                await sb.exec(["true"])

    asyncio.run(main())


def test_too_large_maps_back(live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("crucible.services.sandboxes.MAX_FILE_BYTES", 8)
    with Client(live.url) as c, c.sandboxes.create() as sb, pytest.raises(SandboxFileTooLarge):
        sb.write_file("big", b"123456789")


def test_cli_create_exec_ls_rm(live: Live) -> None:
    server = ("--server", live.url)
    made = cli("sandbox", "create", *server, "--memory", "128", "--ttl", "300", "--label", "k=v")
    assert made.returncode == 0, made.stderr
    sid = made.stdout.strip()
    assert sid.startswith("sbx_")
    hello = cli("sandbox", "exec", sid, *server, "--", "echo", "hello")
    assert (hello.returncode, hello.stdout) == (0, "hello\n")
    failed = cli("sandbox", "exec", sid, *server, "--", "sh", "-c", "cat nofile; exit 5")
    assert failed.returncode == 5 and "nofile" in failed.stderr
    piped = cli("sandbox", "exec", sid, *server, "--stdin", "--", "cat", stdin="from stdin")
    assert piped.stdout == "from stdin"
    listed = cli("sandbox", "ls", *server)
    assert listed.returncode == 0 and sid in listed.stdout and "running" in listed.stdout
    assert cli("sandbox", "rm", sid, *server).returncode == 0
    gone = cli("sandbox", "exec", sid, *server, "--", "true")
    assert gone.returncode == 2 and "stopped" in gone.stderr
    assert "stopped" in cli("sandbox", "ls", *server, "--status", "stopped").stdout
    nope = cli("sandbox", "exec", "sbx_nope", *server, "--", "true")
    assert nope.returncode == 2 and "404" in nope.stderr
    bad = cli("sandbox", "create", *server, "--memory", "99999999")
    assert bad.returncode == 2 and "limits.memory_mb" in bad.stderr


def test_cli_shell_creates_runs_and_removes(live: Live) -> None:
    session = cli("shell", "--server", live.url, stdin="echo one\nexit 3\n\necho two\nexit\n")
    assert session.returncode == 0, session.stderr
    assert session.stdout == "one\ntwo\n" and "[exit 3]" in session.stderr
    (sid,) = live.engine.sessions
    assert live.engine.sessions[sid].execs == [
        ["bash", "-lc", "echo one"],
        ["bash", "-lc", "exit 3"],
        ["bash", "-lc", "echo two"],
    ]
    assert live.engine.sessions[sid].closed.is_set()  # created here: removed on exit
    # With an id it uses that sandbox and leaves it running.
    with Client(live.url) as c:
        sb = c.sandboxes.create()
        again = cli("shell", sb.id, "--server", live.url, stdin="pwd\n")
        assert again.stdout == "/workspace\n"
        assert sb.refresh().status.value == "running"
        r = httpx.get(f"{live.url}/api/v1/sandboxes/{sb.id}/execs", headers=c.http.headers)
        assert [e["cmd"] for e in r.json()["items"]] == [["bash", "-lc", "pwd"]]
