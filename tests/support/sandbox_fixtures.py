"""Fixtures shared by the sandbox engine's tests (loaded with ``-p sandbox_fixtures``)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.core.config import Settings
from crucible.domain.limits import resolve_limits
from crucible.engine import Limits, Result, RunRequest, Sandbox
from crucible.engine.models import SessionLimits, SessionSpec
from crucible.engine.session import Session
from crucible.environments.store import Environment, EnvironmentStore
from support.mounts import unmount_below

RUNTIMES = ["runc", "crun", "gvisor"]
BINARY = {"runc": "runc", "crun": "crun", "gvisor": "runsc"}
HAVE = {name: shutil.which(binary) is not None for name, binary in BINARY.items()}


@pytest.fixture(scope="session")
def sandbox_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings with a private state directory, so test runs never touch /run/crucible."""
    # Not under pytest's basetemp: sandboxes with a user namespace (agent sessions)
    # resolve their bundle as an unprivileged host uid, so every directory above it
    # must be searchable, and any pytest starting on this host resets
    # /tmp/pytest-of-<user> to 0700.
    state = Path(tempfile.mkdtemp(prefix="crucible-state-"))
    state.chmod(0o711)
    # A prefix of its own, so the cgroup check below sees only this session's runs.
    yield Settings(
        state_dir=state,
        data_dir=tmp_path_factory.mktemp("data"),
        max_concurrency=8,
        prefix=f"crucible-t{secrets.token_hex(3)}",
    )
    # Whatever a failed test left mounted would make the temp dir unremovable.
    unmount_below(state)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
async def sandbox(sandbox_settings: Settings) -> AsyncIterator[Sandbox]:
    """The engine as servers run it: with its warm pool on (sandbox_settings leaves
    ``pool_size`` at its default), so every engine suite also tests warm sandboxes."""
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root")
    engine = Sandbox(sandbox_settings)
    yield engine
    await engine.close()


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if not HAVE[name]:
        pytest.fail(f"{name} is not installed; `make test` installs it")
    return name


@pytest.fixture
async def session(sandbox: Sandbox, runtime: str) -> AsyncIterator[Session]:
    """A long-lived sandbox of ``runtime`` with small limits, closed afterwards."""
    made = await sandbox.sessions.create(
        SessionSpec(runtime=runtime, limits=SESSION_LIMITS),  # type: ignore[arg-type]
        session_id=f"sb_test{secrets.token_hex(4)}",
    )
    yield made
    await made.close()


SESSION_LIMITS = SessionLimits(memory_mb=256, cpus=1, pids=128, disk_mb=256)


def limits(settings: Settings, **overrides: Any) -> Limits:
    return resolve_limits(overrides, settings)


async def run_code(
    sandbox: Sandbox,
    runtime: str,
    code: str,
    *,
    language: str = "python",
    stdin: str = "",
    environment: Environment | None = None,
    **limit_overrides: Any,
) -> Result:
    request = RunRequest(
        language=language,
        code=code,
        stdin=stdin,
        limits=limits(sandbox.settings, **limit_overrides),
        runtime=runtime,  # type: ignore[arg-type]
        environment=environment.root_spec() if environment else None,
    )
    return await sandbox.run(request)


def leftovers(settings: Settings) -> list[str]:
    """Everything of ours still on the host: containers, bundles, mounts, cgroups."""
    found: list[str] = []
    state = settings.state_dir.resolve()
    for name, binary in BINARY.items():
        root = state / f"{name}-root"
        if root.exists() and HAVE[name]:
            out = subprocess.run(
                [binary, "--root", str(root), "list", "--quiet"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            found += [f"container {c}" for c in out]
    bundles = state / "bundles"
    if bundles.exists():
        found += [f"bundle {b.name}" for b in bundles.iterdir()]
    # This process's engines keep their asset views until they are collected (sweep.py).
    own_views = f"{state}/views/{os.getpid()}-"
    with open("/proc/mounts") as f:
        mounts = [line.split()[1] for line in f]
    found += [f"mount {m}" for m in mounts if str(state) in m and not m.startswith(own_views)]
    cgroups = Path("/sys/fs/cgroup")
    parents = [cgroups / settings.prefix] + [d / settings.prefix for d in cgroups.iterdir()]
    for parent in parents:
        if parent.is_dir():
            found += [f"cgroup {c}" for c in parent.iterdir() if c.is_dir()]
    return found


async def settled_leftovers(sandbox: Sandbox) -> list[str]:
    """``leftovers`` once the engine is closed: its idle warm sandboxes removed and its
    background tear-downs done (runs return before their containers are deleted)."""
    await sandbox.close()
    return leftovers(sandbox.settings)


@pytest.fixture
async def host_unharmed(
    sandbox_settings: Settings, sandbox: Sandbox, tmp_path: Path
) -> AsyncIterator[Path]:
    """A canary file and process on the host; after the test, both are intact and
    nothing of the sandbox is left behind once the engine is closed (its warm
    sandboxes removed, its background tear-downs finished)."""
    canary = tmp_path / "canary"
    canary.write_text("intact")
    proc = subprocess.Popen(["sleep", "600"])
    yield canary
    await sandbox.close()
    try:
        assert proc.poll() is None, "a host process was killed"
        assert canary.read_text() == "intact", "a host file was changed"
        assert leftovers(sandbox_settings) == [], "sandbox resources left behind"
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``oci_images.feature_image()`` written once per session in the three forms
    ``crucible env import`` takes: a docker save archive, an OCI layout, a tar of one."""
    from support import oci_images

    root = tmp_path_factory.mktemp("images")
    image = oci_images.feature_image()
    layout = oci_images.write_oci_layout(image, root / "layout")
    return {
        "docker-archive": oci_images.write_docker_archive(image, root / "docker.tar"),
        "oci-layout": layout,
        "oci-archive": oci_images.tar_directory(layout, root / "oci.tar"),
    }


@pytest.fixture(scope="session")
def environments(sandbox_settings: Settings) -> EnvironmentStore:
    return EnvironmentStore.of(sandbox_settings)


@pytest.fixture(scope="session")
def test_environment(environments: EnvironmentStore, image_files: dict[str, Path]) -> Environment:
    """The feature image, imported (from its docker save archive) as ``test/features``."""
    return environments.import_image(image_files["docker-archive"], "test/features")


@pytest.fixture
def host_listener() -> Iterator[tuple[str, int]]:
    """A TCP server on every address of the host, reachable from the host itself:
    (host address, port), what a sandbox must not reach."""
    import socket

    server = socket.create_server(("0.0.0.0", 0))
    host_ip = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()[0]
    with socket.create_connection((host_ip, server.getsockname()[1]), timeout=2):
        pass
    yield host_ip, server.getsockname()[1]
    server.close()


# Python run inside a sandbox: reach(host, port) is "REACHED" or the error's name.
REACH = """
import socket
def reach(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        return "REACHED"
    except OSError as exc:
        return type(exc).__name__
"""
