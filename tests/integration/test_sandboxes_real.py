"""/api/v1/sandboxes through the real app on the real engine (runc): what the fake
engine of ``test_sandboxes_api.py`` cannot show — real processes, real files, paths
resolved by the sandbox's own kernel, the quota counted against real sandboxes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from crucible.domain.models import ExecPublic
from support.api import ApiFactory
from support.sandbox_fixtures import leftovers

pytestmark = pytest.mark.timeout(120)


async def create(client: httpx.AsyncClient, **body: Any) -> str:
    body = {"runtime": "runc", "limits": {"memory_mb": 256, "pids": 128, "disk_mb": 256}, **body}
    r = await client.post("/sandboxes", json=body)
    assert r.status_code == 201, r.text
    sid: str = r.json()["id"]
    return sid


async def run(client: httpx.AsyncClient, sid: str, *cmd: str) -> ExecPublic:
    r = await client.post(f"/sandboxes/{sid}/exec", json={"cmd": list(cmd)})
    assert r.status_code == 200, r.text
    return ExecPublic.model_validate(r.json())


async def test_a_sandbox_through_the_api_on_the_real_engine(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False) as (client, service):
        sid = await create(client)
        r = await run(client, sid, "sh", "-c", "echo hi; echo err >&2; exit 3")
        assert (r.returncode, r.stdout, r.stderr, r.timed_out) == (3, "hi\n", "err\n", False)

        # Binary files both ways, and bytes that are not UTF-8 on stdout.
        blob = bytes(range(256)) * 1000
        put = await client.put(f"/sandboxes/{sid}/file", params={"path": "b.bin"}, content=blob)
        assert put.status_code == 204, put.text
        got = await client.get(f"/sandboxes/{sid}/file", params={"path": "/root/b.bin"})
        assert got.status_code == 200 and got.content == blob
        out = await run(client, sid, "tail", "-c", "4", "/root/b.bin")
        assert out.stdout_base64 is not None and out.stdout_bytes == b"\xfc\xfd\xfe\xff"

        # Hostile paths resolve inside the sandbox: its own shadow, its own hostname.
        assert (await run(client, sid, "ln", "-s", "/etc/shadow", "/root/x")).returncode == 0
        link = await run(client, sid, "ln", "-s", "/proc/1/root/etc/hostname", "/root/h")
        assert link.returncode == 0
        own_shadow = (await run(client, sid, "cat", "/etc/shadow")).stdout_bytes
        shadow = await client.get(f"/sandboxes/{sid}/file", params={"path": "/root/x"})
        assert shadow.status_code == 200 and shadow.content == own_shadow
        assert shadow.content != Path("/etc/shadow").read_bytes()
        # /proc/1 is the sandbox's own init; the kernel refuses its root to the file
        # helper (ptrace access mode), which is a refusal, never the host's file.
        hostname = await client.get(f"/sandboxes/{sid}/file", params={"path": "/root/h"})
        assert hostname.status_code in (200, 403), hostname.text
        if hostname.status_code == 200:
            inside = await run(client, sid, "cat", "/etc/hostname")
            assert hostname.content == inside.stdout_bytes
        else:
            assert hostname.json()["error"] == "permission_denied"
        assert Path("/etc/hostname").read_bytes() not in hostname.content

        # The transcript names every exec in order, with its outcome.
        execs = (await client.get(f"/sandboxes/{sid}/execs")).json()["items"]
        assert execs[0]["cmd"] == ["sh", "-c", "echo hi; echo err >&2; exit 3"]
        assert (execs[0]["returncode"], execs[0]["stdout"], execs[0]["stderr"]) == (
            3,
            "hi\n",
            "err\n",
        )
        assert [e["seq"] for e in execs] == list(range(1, len(execs) + 1))
        n = 5 + (hostname.status_code == 200)
        assert len(execs) == n

        assert (await client.delete(f"/sandboxes/{sid}")).status_code == 204
        box = (await client.get(f"/sandboxes/{sid}")).json()
        assert (box["status"], box["stop_reason"]) == ("stopped", "deleted")
        assert box["resources"]["exec_count"] == n
        gone = await client.post(f"/sandboxes/{sid}/exec", json={"cmd": ["true"]})
        assert gone.status_code == 409 and gone.json()["error"] == "sandbox_stopped"
    assert leftovers(service.settings) == []  # the engine closed with the app


async def test_an_exec_at_the_memory_limit_says_so_in_its_record(make_api: ApiFactory) -> None:
    """The exec's memory verdict reaches the API answer and the stored transcript."""
    async with make_api(dispatch=False) as (client, _service):
        sid = await create(client)
        hog = await run(client, sid, "python3", "-c", "x = bytearray(1 << 30)")
        assert hog.returncode == 137 and hog.memory_limit and not hog.timed_out, hog
        calm = await run(client, sid, "echo", "still")
        assert calm.stdout == "still\n" and not calm.memory_limit
        execs = (await client.get(f"/sandboxes/{sid}/execs")).json()["items"]
        assert [e["memory_limit"] for e in execs] == [True, False]


async def test_quota_max_sandboxes_on_the_real_engine(make_api: ApiFactory) -> None:
    async with make_api(dispatch=False, quota_max_sandboxes=2) as (admin, service):
        r = await admin.post("/keys", json={"name": "q", "role": "researcher"})
        key = r.json()["key"]
        async with httpx.AsyncClient(
            transport=admin._transport,
            base_url=str(admin.base_url),
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        ) as q:
            first = await create(q)
            second = await create(q)
            over = await q.post("/sandboxes", json={"runtime": "runc"})
            assert over.status_code == 429 and "max_sandboxes" in over.json()["detail"]
            assert service.sandboxes.engine.get(first) is not None  # both really up
            assert (await run(q, second, "true")).returncode == 0
            assert (await q.delete(f"/sandboxes/{first}")).status_code == 204
            third = await create(q)  # a stopped one no longer counts
            assert (await run(q, third, "true")).returncode == 0
            for sid in (second, third):
                assert (await q.delete(f"/sandboxes/{sid}")).status_code == 204
    assert leftovers(service.settings) == []
