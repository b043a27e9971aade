"""/api/v1/environments and the ``environment`` of evaluations, batches and sandboxes,
through the real app (auth, audit, store, SQLite and PostgreSQL) and the real
environment store: images built by ``tests/support/oci_images.py``, imported with the real
skopeo and umoci. Sandboxes run on the in-memory engine of ``tests/support/fake_sessions.py``
(what it is handed is checked); the last test runs a program in an environment on
the real engine, end to end."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from crucible.api.schemas import EvaluationRequest
from crucible.core.config import Settings
from crucible.core.errors import EnvironmentUnavailable, SandboxUnavailable
from crucible.core.lifecycle import Status
from crucible.environments.store import EnvironmentStore
from crucible.services.evaluations import Service
from crucible.services.submissions import pinned_root
from support.api import api_factory
from support.fake_sessions import FakeSessions
from support.oci_images import (
    Image,
    directory,
    file,
    layer_tar,
    tar_directory,
    write_docker_archive,
    write_oci_layout,
)
from support.registry_fixtures import Registry

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="needs skopeo and umoci"
)

Api = Callable[..., AbstractAsyncContextManager[tuple[httpx.AsyncClient, Service]]]
HELLO = {"code": "print('hello')"}


def image(*programs: str, note: str = "") -> Image:
    """A one-layer image with fake executables in /usr/bin (enough for the language
    lookup, which checks for an executable file on the image's PATH)."""
    entries = [directory("usr"), directory("usr/bin"), directory("etc")]
    entries += [file(f"usr/bin/{p}", "#!/bin/sh\n", mode=0o755) for p in programs]
    entries.append(file("etc/note", note or "x"))
    return Image([layer_tar(entries)])


def docker_archive(tmp_path: Path, img: Image, name: str = "img.tar") -> bytes:
    return write_docker_archive(img, tmp_path / name).read_bytes()


def oci_tar(tmp_path: Path, img: Image) -> bytes:
    layout = write_oci_layout(img, tmp_path / "layout")
    return tar_directory(layout, tmp_path / "layout.tar").read_bytes()


@pytest.fixture
def engine() -> FakeSessions:
    return FakeSessions()


@pytest.fixture
def make_env_api(settings: Settings, engine: FakeSessions) -> Api:
    """``async with make_env_api(**overrides) as (client, service)``: nothing runs."""
    return api_factory(settings, dispatch=False, sessions=engine)


async def upload(
    client: httpx.AsyncClient, name: str, data: bytes, **params: Any
) -> httpx.Response:
    return await client.post(
        "/environments",
        params={"name": name, **params},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )


async def researcher(admin: httpx.AsyncClient) -> httpx.AsyncClient:
    r = await admin.post("/keys", json={"name": "alice", "role": "researcher"})
    assert r.status_code == 201, r.text
    return httpx.AsyncClient(
        transport=admin._transport,
        base_url=str(admin.base_url),
        headers={"Authorization": f"Bearer {r.json()['key']}"},
        timeout=30,
    )


def leftovers(service: Service) -> list[Path]:
    root = service.environments.store.root
    return [*(root / "tmp").iterdir(), *(root / "names").iterdir(), *(root / "sha256").iterdir()]


async def test_upload_list_get_delete(make_env_api: Api, tmp_path: Path) -> None:
    async with make_env_api() as (api, service):
        assert (await api.get("/environments")).json() == []
        r = await upload(api, "team/tools:1.0", docker_archive(tmp_path, image("bash", "python3")))
        assert r.status_code == 201, r.text
        env = r.json()
        assert env["name"] == "team/tools:1.0" and env["digest"].startswith("sha256:")
        assert env["source"] == "docker-archive" and env["size_bytes"] > 0
        assert env["languages"] == ["bash", "python"]
        assert env["programs"]["python3"] == "/usr/bin/python3"
        assert env["env"] == ["PATH=/usr/local/bin:/usr/bin:/bin"]
        listed = (await api.get("/environments")).json()
        assert [e["name"] for e in listed] == ["team/tools:1.0"]
        got = await api.get("/environments/team/tools:1.0")
        assert got.status_code == 200 and got.json() == env
        missing = await api.get("/environments/nope")
        assert missing.status_code == 404 and "team/tools:1.0" in missing.json()["detail"]
        assert (await api.delete("/environments/team/tools:1.0")).status_code == 204
        assert (await api.get("/environments/team/tools:1.0")).status_code == 404
        assert (await api.delete("/environments/team/tools:1.0")).status_code == 404
        assert leftovers(service) == []
        audit = (await api.get("/audit", params={"target": "team/tools:1.0"})).json()["items"]
        assert {(a["action"], a["outcome"]) for a in audit} >= {
            ("upload_environment", 201),
            ("delete_environment", 204),
        }


async def test_upload_oci_layout_and_replace(make_env_api: Api, tmp_path: Path) -> None:
    async with make_env_api() as (api, _):
        first = await upload(api, "base", oci_tar(tmp_path, image("bash", note="one")))
        assert first.status_code == 201, first.text
        assert first.json()["source"] == "oci" and first.json()["languages"] == ["bash"]
        again = docker_archive(tmp_path, image("bash", "python3", note="two"))
        taken = await upload(api, "base", again)
        assert taken.status_code == 409 and "replace=true" in taken.json()["detail"]
        replaced = await upload(api, "base", again, replace="true")
        assert replaced.status_code == 201, replaced.text
        assert replaced.json()["digest"] != first.json()["digest"]
        assert (await api.get("/environments/base")).json()["languages"] == ["bash", "python"]


async def test_upload_over_the_limit_is_413_and_leaves_nothing(
    make_env_api: Api, tmp_path: Path
) -> None:
    data = docker_archive(tmp_path, image("bash"))
    async with make_env_api(environment_max_bytes=len(data) // 2) as (api, service):
        declared = await upload(api, "big", data)
        assert declared.status_code == 413, declared.text

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        streamed = await api.post("/environments", params={"name": "big"}, content=chunked())
        assert streamed.status_code == 413, streamed.text
        assert "limit" in streamed.json()["detail"]
        assert leftovers(service) == []


async def test_hostile_upload_is_422_and_leaves_nothing(make_env_api: Api, tmp_path: Path) -> None:
    escape = tmp_path / "escape"
    hostile = Image([layer_tar([file("../escape", "pwned"), file("etc/x", "x")])])
    async with make_env_api() as (api, service):
        r = await upload(api, "evil", docker_archive(tmp_path, hostile))
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == "layer 1: path traversal in '../escape'"
        garbage = await upload(api, "evil", b"not a tar at all" * 100)
        assert garbage.status_code == 422
        bad_name = await upload(api, "Bad Name!", docker_archive(tmp_path, image("bash")))
        assert bad_name.status_code == 422 and bad_name.json()["field"] == "name"
        assert leftovers(service) == []
        assert (await api.get("/environments")).json() == []
    assert not escape.exists() and not (tmp_path.parent / "escape").exists()


async def test_only_admins_upload_and_delete(make_env_api: Api, tmp_path: Path) -> None:
    async with make_env_api() as (api, _):
        assert (await upload(api, "base", docker_archive(tmp_path, image("bash")))).is_success
        async with await researcher(api) as alice:
            assert (await alice.get("/environments")).status_code == 200
            assert (await alice.get("/environments/base")).status_code == 200
            r = await upload(alice, "mine", docker_archive(tmp_path, image("bash"), "b.tar"))
            assert r.status_code == 403
            assert (await alice.delete("/environments/base")).status_code == 403
        assert [e["name"] for e in (await api.get("/environments")).json()] == ["base"]


async def test_delete_is_409_while_an_evaluation_is_queued(
    make_env_api: Api, tmp_path: Path, database_url: str | None
) -> None:
    async with make_env_api(database_url=database_url) as (api, _):
        env = (await upload(api, "py", docker_archive(tmp_path, image("python3")))).json()
        r = await api.post("/evaluations", json={**HELLO, "environment": "py"})
        assert r.status_code == 202, r.text
        record = r.json()
        assert record["request"]["environment"] == "py"
        assert record["request"]["environment_digest"] == env["digest"]
        busy = await api.delete("/environments/py")
        assert busy.status_code == 409 and "1 queued or running" in busy.json()["detail"]
        replace = await upload(
            api, "py", docker_archive(tmp_path, image("python3", note="2")), replace="true"
        )
        assert replace.status_code == 409
        assert (await api.post(f"/evaluations/{record['id']}/cancel")).status_code == 200
        assert (await api.delete("/environments/py")).status_code == 204


async def test_batches_name_environments(make_env_api: Api, tmp_path: Path) -> None:
    async with make_env_api() as (api, _):
        env = (await upload(api, "py", docker_archive(tmp_path, image("python3")))).json()
        r = await api.post(
            "/batches",
            json={
                "items": [HELLO, {**HELLO, "environment": "host"}],
                "defaults": {"environment": "py"},
            },
        )
        assert r.status_code == 202, r.text
        items = (await api.get("/evaluations", params={"batch_id": r.json()["id"]})).json()
        got = sorted(
            (e["request"]["environment"], e["request"]["environment_digest"])
            for e in items["items"]
        )
        assert got == [("host", None), ("py", env["digest"])]
        bad = await api.post("/batches", json={"items": [HELLO, {**HELLO, "environment": "nope"}]})
        assert bad.status_code == 422 and bad.json()["field"] == "items.1.environment"
        assert "py" in bad.json()["detail"] and "crucible env import" in bad.json()["detail"]
        bad_default = await api.post(
            "/batches", json={"items": [HELLO], "defaults": {"environment": "nope"}}
        )
        assert bad_default.status_code == 422
        assert bad_default.json()["field"] == "items.0.environment"


async def test_unknown_environment_and_missing_language_are_422(
    make_env_api: Api, tmp_path: Path
) -> None:
    async with make_env_api() as (api, service):
        await upload(api, "shell-only", docker_archive(tmp_path, image("bash")))
        unknown = await api.post("/evaluations", json={**HELLO, "environment": "python:9"})
        assert unknown.status_code == 422 and unknown.json()["field"] == "environment"
        detail = unknown.json()["detail"]
        assert "shell-only" in detail and "crucible env import" in detail
        no_python = await api.post("/evaluations", json={**HELLO, "environment": "shell-only"})
        assert no_python.status_code == 422 and no_python.json()["field"] == "language"
        assert "bash" in no_python.json()["detail"]
        ok = await api.post(
            "/evaluations",
            json={"code": "echo hi", "language": "bash", "environment": "shell-only"},
        )
        assert ok.status_code == 202, ok.text
        sandbox = await api.post("/sandboxes", json={"environment": "python:9"})
        assert sandbox.status_code == 422 and sandbox.json()["field"] == "environment"
        assert "shell-only" in sandbox.json()["detail"]
        host = (await api.post("/evaluations", json=HELLO)).json()
        assert host["request"]["environment"] == "host"
        assert host["request"]["environment_digest"] is None
        assert await asyncio.to_thread(service.store.queued_count) == 2


async def test_sandboxes_run_over_an_environment(
    make_env_api: Api, tmp_path: Path, engine: FakeSessions, database_url: str | None
) -> None:
    async with make_env_api(database_url=database_url) as (api, _):
        env = (await upload(api, "tools", docker_archive(tmp_path, image("bash")))).json()
        r = await api.post("/sandboxes", json={"environment": "tools"})
        assert r.status_code == 201, r.text
        box = r.json()
        assert box["environment"] == "tools" and box["environment_digest"] == env["digest"]
        spec = engine.sessions[box["id"]].spec
        assert spec.environment is not None and spec.environment.digest == env["digest"]
        assert (spec.environment.path / "usr/bin/bash").is_file()
        plain = (await api.post("/sandboxes", json={})).json()
        assert plain["environment"] == "host" and plain["environment_digest"] is None
        assert engine.sessions[plain["id"]].spec.environment is None
        busy = await api.delete("/environments/tools")
        assert busy.status_code == 409 and "1 running sandboxes" in busy.json()["detail"]
        assert (await api.delete(f"/sandboxes/{box['id']}")).status_code == 204
        assert (await api.delete("/environments/tools")).status_code == 204


async def test_an_environment_gone_before_the_run_ends_in_error(
    make_env_api: Api, tmp_path: Path
) -> None:
    """The executor resolves the name again at run time: removed (behind the API's
    back, as `crucible env rm` on another host could) or replaced means error, once."""
    async with make_env_api() as (api, service):
        await upload(api, "gone", docker_archive(tmp_path, image("python3")))
        ev = (await api.post("/evaluations", json={**HELLO, "environment": "gone"})).json()
        store = service.environments.store
        await asyncio.to_thread(store.remove, "gone")
        assert service.executor is not None
        await service.executor.execute(ev["id"])
        done = (await api.get(f"/evaluations/{ev['id']}")).json()
        assert done["status"] == Status.error and done["attempts"] == 1
        assert "'gone' was removed" in done["error"]


def test_pinned_root_refuses_a_changed_environment(tmp_path: Path, settings: Settings) -> None:
    store = EnvironmentStore.of(settings)
    first = store.import_image(write_docker_archive(image("python3"), tmp_path / "a.tar"), "py")
    request = EvaluationRequest.model_validate(
        {
            "language": "python",
            "code": "print(1)",
            "files": None,
            "entrypoint": None,
            "stdin": "",
            "args": [],
            "limits": {
                "timeout_s": 1,
                "cpu_s": 1,
                "memory_mb": 64,
                "pids": 16,
                "cpus": 1,
                "output_bytes": 1000,
                "disk_mb": 16,
            },
            "runtime": "runc",
            "environment": "py",
            "environment_digest": first.digest,
            "priority": "normal",
            "labels": {},
            "expected_output": None,
            "test_code": None,
        }
    )
    root = pinned_root(request, store)
    assert root is not None and root.digest == first.digest and root.path == first.root
    store.import_image(write_docker_archive(image("python3", note="2"), tmp_path / "b.tar"), "py")
    with pytest.raises(EnvironmentUnavailable, match="changed since"):
        pinned_root(request, store)
    store.remove("py")
    with pytest.raises(EnvironmentUnavailable, match="was removed"):
        pinned_root(request, store)
    host = request.model_copy(update={"environment": "host", "environment_digest": None})
    assert pinned_root(host, store) is None


def bash_image() -> Image:
    """The host's bash and the libraries it links, as a one-layer image."""
    out = subprocess.run(["ldd", "/usr/bin/bash"], capture_output=True, text=True, check=True)
    paths = {"/usr/bin/bash"}
    for line in out.stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            paths.add(str(Path(path).resolve()) if Path(path).is_symlink() else path)
            paths.add(path)
    entries, dirs = [], set()
    for p in sorted(paths):
        real = Path(p).resolve()
        rel = p.lstrip("/")
        for i in range(1, len(rel.split("/"))):
            d = "/".join(rel.split("/")[:i])
            if d not in dirs:
                dirs.add(d)
                entries.append(directory(d))
        entries.append(file(rel, real.read_bytes(), mode=0o755))
    return Image([layer_tar(entries)])


async def test_a_program_runs_in_its_environment(
    settings: Settings, tmp_path: Path, make_api: Any
) -> None:
    async with make_api() as (api, _):
        r = await upload(api, "bash-only", docker_archive(tmp_path, bash_image()))
        assert r.status_code == 201, r.text
        assert "bash" in r.json()["languages"]
        done = await api.post(
            "/evaluations?wait=30",
            json={
                "language": "bash",
                "environment": "bash-only",
                "code": "cd /usr/bin && echo *; test -e /usr/bin/python3 || echo no-python",
            },
        )
        body = done.json()
        assert body["status"] == "completed", body
        assert body["result"]["stdout"].split() == ["bash", "no-python"], body["result"]


async def test_default_environment_for_sandboxes_that_name_none(
    settings: Settings, tmp_path: Path, make_api: Any
) -> None:
    """CRUCIBLE_DEFAULT_ENVIRONMENT on the real engine (runc): a sandbox created without
    an ``environment`` runs over it, looked up like a named one; ``host`` still gives
    the host; one-shot evaluations keep host. A name the store lacks stops the start;
    one removed while the server runs makes creates a 422 naming the setting."""
    store = EnvironmentStore.of(settings)
    archive = write_docker_archive(bash_image(), tmp_path / "bash.tar")
    env = await asyncio.to_thread(store.import_image, archive, "bash-only")
    with pytest.raises(SandboxUnavailable, match=r"CRUCIBLE_DEFAULT_ENVIRONMENT='nope'.*bash-only"):
        async with make_api(dispatch=False, default_environment="nope"):
            pass

    async with make_api(dispatch=False, default_environment="bash-only") as (api, service):
        probe = {"cmd": ["bash", "-c", "echo /usr/bin/*; test -e /usr/bin/python3 || echo none"]}
        r = await api.post("/sandboxes", json={"runtime": "runc"})
        assert r.status_code == 201, r.text
        box = r.json()
        assert (box["environment"], box["environment_digest"]) == ("bash-only", env.digest)
        ran = (await api.post(f"/sandboxes/{box['id']}/exec", json=probe)).json()
        assert ran["stdout"].split() == ["/usr/bin/bash", "none"], ran

        host = (
            await api.post("/sandboxes", json={"runtime": "runc", "environment": "host"})
        ).json()
        assert (host["environment"], host["environment_digest"]) == ("host", None)
        ran = (await api.post(f"/sandboxes/{host['id']}/exec", json=probe)).json()
        assert "/usr/bin/python3" in ran["stdout"].split(), ran

        evaluation = (await api.post("/evaluations", json=HELLO)).json()
        assert evaluation["request"]["environment"] == "host"

        for sid in (box["id"], host["id"]):
            assert (await api.delete(f"/sandboxes/{sid}")).status_code == 204
        await asyncio.to_thread(store.remove, "bash-only")  # behind the server's back
        gone = await api.post("/sandboxes", json={"runtime": "runc"})
        assert gone.status_code == 422 and gone.json()["field"] == "environment"
        assert "CRUCIBLE_DEFAULT_ENVIRONMENT" in gone.json()["detail"], gone.text
        assert await asyncio.to_thread(service.sandboxes.store.running) == []


async def pull(client: httpx.AsyncClient, ref: str, **body: Any) -> httpx.Response:
    return await client.post("/environments/pull", json={"ref": ref, **body})


async def test_pull(
    make_env_api: Api, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    """Admins pull; the record has the reference and the manifest digest; a name is
    taken as uploads take one (409 without replace)."""
    path = f"team/pulled-{secrets.token_hex(4)}"
    digest = registry.push(image("bash", "python3", note="pulled"), f"{path}:1", tmp_path)
    ref = f"{registry.host}/{path}:1"
    async with make_env_api() as (api, service):
        r = await pull(api, ref)
        assert r.status_code == 201, r.text
        env = r.json()
        assert env["name"] == ref and env["source"] == "registry"
        assert env["ref"] == ref and env["manifest_digest"] == digest
        assert env["languages"] == ["bash", "python"]
        assert (await api.get(f"/environments/{ref}")).json() == env
        named = await pull(api, f"{registry.host}/{path}@{digest}", name="team/tools")
        assert named.status_code == 201 and named.json()["digest"] == env["digest"]
        taken = await pull(api, ref, name="team/tools")
        assert taken.status_code == 409 and "replace=true" in taken.json()["detail"]
        assert (await pull(api, ref, name="team/tools", replace=True)).status_code == 201
        audit = (await api.get("/audit", params={"target": "team/tools"})).json()["items"]
        assert ("pull_environment", 201) in {(a["action"], a["outcome"]) for a in audit}
        # A sandbox runs in it like any other environment.
        sandbox = await api.post("/sandboxes", json={"environment": "team/tools"})
        assert sandbox.status_code == 201, sandbox.text
        assert sandbox.json()["environment_digest"] == env["digest"]
        assert (await api.delete(f"/sandboxes/{sandbox.json()['id']}")).status_code == 204
        assert not list((service.environments.store.root / "tmp").iterdir())


async def test_pull_refusals_change_nothing(
    make_env_api: Api,
    registry: Registry,
    auth_registry: Registry,
    registry_env: dict[str, str],
    tmp_path: Path,
) -> None:
    path = f"team/refused-{secrets.token_hex(4)}"
    digest = registry.push(image("bash", note="refused"), f"{path}:1", tmp_path)
    async with make_env_api() as (api, service):
        bad = await pull(api, "not a reference")
        assert bad.status_code == 422 and bad.json()["field"] == "ref", bad.text
        bad_name = await pull(api, f"{registry.host}/{path}:1", name="Bad Name")
        assert bad_name.status_code == 422 and bad_name.json()["field"] == "name"
        unknown = await pull(api, f"{registry.host}/{path}:nope")
        assert unknown.status_code == 502 and "manifest unknown" in unknown.json()["detail"]
        private = await pull(api, f"{auth_registry.host}/private/x:1")
        assert private.status_code == 502 and "unauthorized" in private.json()["detail"]
        other = "sha256:" + "0" * 64
        wrong = await pull(api, f"{registry.host}/{path}@{other}")
        assert wrong.status_code == 502, wrong.text
        blob = registry.blob(digest)
        blob.write_bytes(blob.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":2'))
        tampered = await pull(api, f"{registry.host}/{path}@{digest}")
        assert tampered.status_code == 422 and f"not {digest}" in tampered.json()["detail"]
        async with await researcher(api) as alice:
            refused = await pull(alice, f"{registry.host}/{path}:1")
            assert refused.status_code == 403, refused.text
        assert leftovers(service) == []
    async with make_env_api(environment_max_bytes=10) as (api, service):
        big = await pull(api, f"{registry.host}/{path}:1")
        assert big.status_code == 413 and "limit" in big.json()["detail"]
        assert leftovers(service) == []
