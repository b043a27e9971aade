"""Keys and the audit trail from the command line, against a real ``crucible serve``:
the first-start banner, ``crucible keys create|list|revoke``, ``--api-key``, JSON logs
and ``crucible audit verify`` on a tampered database."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from support.polling import eventually
from support.servers import CRUCIBLE, ServerProcess


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CRUCIBLE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_first_start_prints_one_admin_key_once(
    make_server: Callable[..., ServerProcess],
) -> None:
    # No bootstrap key configured: the first start creates one and prints it.
    server = make_server(CRUCIBLE_BOOTSTRAP_ADMIN_KEY="", CRUCIBLE_API_KEY="")
    server.start()
    banner = re.findall(r"/#key=(crk_[A-Za-z0-9_-]+)", server.log.read_text())
    assert len(banner) == 1, server.log.read_text()[-2000:]
    key = banner[0]
    me = httpx.get(f"{server.url}/api/v1/keys/me", headers={"Authorization": f"Bearer {key}"})
    assert me.json()["role"] == "admin"
    server.stop()
    server.start()  # never again
    assert server.log.read_text().count("#key=") == 1
    assert key in server.log.read_text()  # from the first start only
    server.stop()


def test_keys_commands_and_api_key_option(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = make_server(CRUCIBLE_MAX_CONCURRENCY="1")
    data = str(server.data_dir)
    created = cli("keys", "create", "--name", "ci", "--role", "researcher", "--data-dir", data)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n" and key.startswith("crk_")  # the key alone
    server.start()
    prog = tmp_path / "p.py"
    prog.write_text("print(7)\n")
    env = {"CRUCIBLE_SERVER": server.url, "CRUCIBLE_API_KEY": ""}
    anon = cli("submit", str(prog), env=env)
    assert anon.returncode == 2 and "401" in anon.stderr
    ran = cli("--api-key", key, "submit", str(prog), "--wait", env=env)
    assert ran.returncode == 0 and ran.stdout == "7\n", ran.stderr
    by_env = cli("list", env={**env, "CRUCIBLE_API_KEY": key})
    assert by_env.returncode == 0
    listed = cli("keys", "list", "--json", "--data-dir", data)
    keys = {k["name"]: k for k in json.loads(listed.stdout)}
    assert keys["ci"]["role"] == "researcher" and key not in listed.stdout
    key_id = keys["ci"]["id"]
    assert cli("keys", "revoke", key_id, "--data-dir", data).returncode == 0
    # Revoked in the database, by another process: the server, which verified the key
    # for the list above, refuses it once its key_cache_s (1 s) has passed since then.
    # Bound: that second, and scheduling on a loaded machine.
    auth = {"Authorization": f"Bearer {key}"}
    eventually(
        lambda: httpx.get(f"{server.url}/api/v1/evaluations", headers=auth).status_code == 401,
        within=10,
        reason="the revoked key to be refused",
    )
    revoked = cli("--api-key", key, "list", env=env)
    assert revoked.returncode == 2 and "401" in revoked.stderr
    assert cli("keys", "create", "--name", "x", "--role", "root", "--data-dir", data).returncode
    server.stop()

    # The chain holds; then an edited and a deleted entry are each named.
    ok = cli("audit", "verify", "--data-dir", data)
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stderr
    db = sqlite3.connect(Path(data) / "crucible.db")
    db.execute("UPDATE audit_log SET actor_name = 'mallory' WHERE seq = 2")
    db.commit()
    edited = cli("audit", "verify", "--data-dir", data)
    assert edited.returncode == 1 and "entry 2" in edited.stderr, edited.stderr
    db.execute("DELETE FROM audit_log WHERE seq = 2")
    db.commit()
    db.close()
    deleted = cli("audit", "verify", "--data-dir", data)
    assert deleted.returncode == 1 and "entry 3" in deleted.stderr and "missing" in deleted.stderr


def test_json_logs_carry_request_ids(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server(CRUCIBLE_LOG_FORMAT="json")
    server.start()
    r = httpx.get(
        f"{server.url}/api/v1/queue",
        headers={
            "X-Request-ID": "req-abc-123",
            "Authorization": f"Bearer {os.environ['CRUCIBLE_API_KEY']}",
        },
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-abc-123"
    server.stop()
    lines = [
        json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")
    ]
    assert lines, server.log.read_text()[-2000:]
    access = [x for x in lines if x.get("request_id") == "req-abc-123"]
    assert access and all({"time", "level", "logger", "message"} <= set(x) for x in access)
