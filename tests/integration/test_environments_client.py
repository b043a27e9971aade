"""``client.environments`` (sync and async: streamed uploads), ``environment=`` on
submit, batch and sandboxes, and the CLI's ``--environment``, against the real app
served over HTTP by uvicorn in this process (nothing is dispatched; sandboxes run on
the in-memory engine of ``tests/support/fake_sessions.py``)."""

from __future__ import annotations

import asyncio
import io
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible.api.app import create_app
from crucible.client import AsyncClient, Client
from crucible.client.errors import ApiError
from crucible.core.config import Settings
from support.api import serve_in_thread
from support.fake_sessions import FakeSessions
from support.oci_images import Image, directory, file, layer_tar, write_docker_archive
from support.registry_fixtures import Registry
from support.servers import CRUCIBLE

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="needs skopeo and umoci"
)


def archive(path: Path, *programs: str) -> Path:
    entries = [directory("usr"), directory("usr/bin")]
    entries += [file(f"usr/bin/{p}", "#!/bin/sh\n", mode=0o755) for p in programs]
    return write_docker_archive(Image([layer_tar(entries)]), path)


@pytest.fixture
def live(settings: Settings) -> Iterator[tuple[str, FakeSessions]]:
    engine = FakeSessions()
    with serve_in_thread(create_app(settings, dispatch=False, sessions=engine)) as url:
        yield url, engine


def test_sync_client(live: tuple[str, FakeSessions], tmp_path: Path) -> None:
    url, engine = live
    with Client(url) as c:
        env = c.environments.upload(archive(tmp_path / "a.tar", "python3"), "lab/py:3")
        assert env.name == "lab/py:3" and env.languages == ["python"]
        assert [e.name for e in c.environments.list()] == ["lab/py:3"]
        assert c.environments.get("lab/py:3").digest == env.digest
        with pytest.raises(ApiError) as taken:
            c.environments.upload(tmp_path / "a.tar", "lab/py:3")
        assert taken.value.status == 409
        ev = c.submit("print(1)", environment="lab/py:3")
        assert ev.request.environment == "lab/py:3"
        assert ev.request.environment_digest == env.digest
        batch = c.batch([{"code": "print(2)"}], environment="lab/py:3")
        (item,) = c.list(batch_id=batch.id).items
        assert item.request.environment == "lab/py:3"
        with pytest.raises(ApiError) as unknown:
            c.submit("print(1)", environment="nope")
        assert unknown.value.status == 422 and unknown.value.field == "environment"
        box = c.sandboxes.create(environment="lab/py:3")
        assert box.record.environment == "lab/py:3"
        assert engine.sessions[box.id].spec.environment is not None
        box.close()
        c.cancel(ev.id)
        c.cancel_batch(batch.id)
        c.environments.delete("lab/py:3")
        assert c.environments.list() == []


async def test_async_client_streams_a_file_object(
    live: tuple[str, FakeSessions], tmp_path: Path
) -> None:
    url, _ = live
    data = archive(tmp_path / "b.tar", "bash").read_bytes()
    async with AsyncClient(url) as c:
        # A BytesIO has no file descriptor: the body goes chunked, no Content-Length.
        env = await c.environments.upload(io.BytesIO(data), "shell")
        assert env.languages == ["bash"]
        assert (await c.environments.get("shell")).digest == env.digest
        assert [e.name for e in await c.environments.list()] == ["shell"]
        box = await c.sandboxes.create(environment="shell")
        assert box.record.environment_digest == env.digest
        await box.close()
        await c.environments.delete("shell")
        with pytest.raises(ApiError) as gone:
            await c.environments.get("shell")
        assert gone.value.status == 404


def test_clients_pull(
    live: tuple[str, FakeSessions],
    registry: Registry,
    registry_env: dict[str, str],
    tmp_path: Path,
) -> None:
    url, _ = live
    path = f"lab/pulled-{secrets.token_hex(4)}"
    image = Image([layer_tar([directory("usr"), directory("usr/bin"),
                              file("usr/bin/bash", "#!/bin/sh\n", mode=0o755)])])  # fmt: skip
    digest = registry.push(image, f"{path}:1", tmp_path)
    with Client(url) as c:
        env = c.environments.pull(f"{registry.host}/{path}:1", "lab/pulled")
        assert (env.name, env.source, env.manifest_digest) == ("lab/pulled", "registry", digest)
        assert env.ref == f"{registry.host}/{path}:1" and env.languages == ["bash"]
        with pytest.raises(ApiError) as taken:
            c.environments.pull(f"{registry.host}/{path}:1", "lab/pulled")
        assert taken.value.status == 409
        with pytest.raises(ApiError) as missing:
            c.environments.pull(f"{registry.host}/{path}:nope")
        assert missing.value.status == 502 and "manifest unknown" in missing.value.detail

    async def pull_async() -> None:
        async with AsyncClient(url) as c:
            env = await c.environments.pull(f"{registry.host}/{path}@{digest}")
            assert env.name == f"{registry.host}/{path}@{digest}"
            again = await c.environments.pull(env.name, "lab/pulled", replace=True)
            assert again.digest == env.digest

    asyncio.run(pull_async())


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CRUCIBLE_SERVER": url}
    return subprocess.run([CRUCIBLE, *args], capture_output=True, text=True, timeout=60, env=env)


def test_cli_environment_options(live: tuple[str, FakeSessions], tmp_path: Path) -> None:
    url, engine = live
    with Client(url) as c:
        c.environments.upload(archive(tmp_path / "c.tar", "python3"), "py")
        program = tmp_path / "p.py"
        program.write_text("print(1)\n")
        submitted = cli(url, "submit", str(program), "-e", "py")
        assert submitted.returncode == 0, submitted.stderr
        ev = c.get(submitted.stdout.strip())
        assert ev.request.environment == "py"
        refused = cli(url, "submit", str(program), "--environment", "nope")
        assert refused.returncode == 2 and "crucible env import" in refused.stderr
        created = cli(url, "sandbox", "create", "--environment", "py")
        assert created.returncode == 0, created.stderr
        box = created.stdout.strip()
        assert engine.sessions[box].spec.environment is not None
        assert c.sandboxes.get(box).record.environment == "py"
        c.sandboxes.get(box).close()
        c.cancel(ev.id)


async def test_inspect_provider_passes_the_environment(
    live: tuple[str, FakeSessions], tmp_path: Path
) -> None:
    pytest.importorskip("inspect_ai")
    from crucible.integrations.inspect.provider import RemoteBackend, load_config

    url, engine = live
    async with AsyncClient(url) as c:
        env = await c.environments.upload(archive(tmp_path / "d.tar", "bash"), "agent")
    assert load_config(None).environment is None  # the server's default, else host
    config = load_config({"server": url, "environment": "agent", "runtime": "runc"})
    backend = await RemoteBackend.create(config)
    try:
        spec = engine.sessions[backend.id].spec
        assert spec.environment is not None and spec.environment.digest == env.digest
    finally:
        await backend.close()
