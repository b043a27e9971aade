"""An Inspect task's compose.yaml on the ``crucible`` provider: two services of one
sample, one serving on a port, the other reaching it by name, neither reaching the
host; locally (through a real ``inspect_ai.eval()``) and through a ``crucible serve``.
An ``image:`` the store lacks is pulled from a registry on 127.0.0.1, once per task
(``pull: missing``), or fails the task (``pull: never``)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import secrets
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.model import ModelOutput, get_model
from inspect_ai.solver import Generate, Solver, TaskState, solver
from inspect_ai.util import sandbox
from inspect_ai.util._sandbox.environment import SandboxUnavailableError

from crucible.client import AsyncClient
from crucible.core.config import Settings
from crucible.core.errors import InvalidSubmission, NotFound
from crucible.engine import Sandbox
from crucible.environments.store import Environment, EnvironmentStore
from crucible.integrations.inspect import provider as inspect_provider
from crucible.integrations.inspect.compose import ComposeError
from crucible.integrations.inspect.provider import (
    CrucibleSandboxConfig,
    CrucibleSandboxEnvironment,
    PullRefused,
)
from support.auth_keys import ADMIN_KEY
from support.registry_fixtures import Registry, unique_image
from support.sandbox_fixtures import REACH, leftovers
from support.servers import ServerProcess

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore:The 'initial' parameter is deprecated:DeprecationWarning"),
    # inspect_ai's eval leaves an anyio memory stream unclosed, a ResourceWarning when
    # the garbage collector finds it (in whichever test runs then).
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

IMAGE = "test/features"  # tests/support/oci_images.py's feature image (sandbox_fixtures)


def compose_yaml(tmp_path: Path, *, extra: str = "", image: str = IMAGE) -> str:
    path = tmp_path / "compose.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            services:
              default:
                image: {image}
                working_dir: /data
                environment:
                  ROLE: agent
              web:
                image: {image}
                working_dir: /etc
                command: python3 -m http.server 8080
                mem_limit: 256m
                healthcheck:
                  test: ["CMD", "python3", "-c",
                         "import urllib.request; urllib.request.urlopen('http://localhost:8080/')"]
                  interval: 100ms
                  retries: 100
            """
        )
        + extra
    )
    return str(path)


def probe(host_ip: str, port: int) -> list[str]:
    code = (
        REACH
        + f"""
import json, os, urllib.request
print(json.dumps({{
    "me": socket.gethostname(), "cwd": os.getcwd(), "role": os.environ.get("ROLE"),
    "web": urllib.request.urlopen("http://web:8080/motd", timeout=5).read().decode(),
    "host": reach("{host_ip}", {port}), "internet": reach("1.1.1.1", 53),
}}))
"""
    )
    return ["python3", "-c", code]


def check(seen: dict[str, str]) -> None:
    assert seen["me"] == "default" and seen["cwd"] == "/data" and seen["role"] == "agent"
    assert seen["web"] == "layer three\n", seen  # served from the other service's /etc
    assert seen["host"] != "REACHED" and seen["internet"] != "REACHED", seen


async def test_two_services_local(
    sandbox: Sandbox,
    test_environment: Environment,
    tmp_path: Path,
    host_listener: tuple[str, int],
) -> None:
    inspect_provider.use_engine(sandbox)
    config = compose_yaml(tmp_path)
    try:
        await CrucibleSandboxEnvironment.task_init("compose", config)
        envs = await CrucibleSandboxEnvironment.sample_init("compose", config, {})
        try:
            assert list(envs) == ["default", "web"]  # the default first
            r = await envs["default"].exec(probe(*host_listener))
            assert r.success, r.stderr
            check(json.loads(r.stdout))
            # The other way round, and the service's own working_dir.
            r = await envs["web"].exec(["python3", "-c", "import os, socket; print(os.getcwd(), "
                                        "socket.gethostbyname('default'))"])  # fmt: skip
            assert r.stdout == "/etc 10.89.0.2\n", r
            await envs["web"].write_file("relative.txt", "in /etc")
            assert await envs["web"].read_file("/etc/relative.txt") == "in /etc"
        finally:
            await CrucibleSandboxEnvironment.sample_cleanup("compose", config, envs, False)
    finally:
        inspect_provider.use_engine(None)


async def test_an_unknown_image_is_named_with_the_commands_that_add_it(
    sandbox: Sandbox, test_environment: Environment, tmp_path: Path
) -> None:
    """With ``pull: never`` (locked down), a missing image fails the task at task_init."""
    inspect_provider.use_engine(sandbox)
    try:
        with pytest.raises(
            ValueError, match=r"image 'nginx:1.25' is not a Crucible environment .*pull is never"
        ):
            await CrucibleSandboxEnvironment.task_init(
                "compose",
                compose_yaml(tmp_path, image="nginx:1.25", extra="x-crucible: {pull: never}\n"),
            )
    finally:
        inspect_provider.use_engine(None)


async def test_a_service_that_never_becomes_healthy_leaves_nothing(
    sandbox: Sandbox, test_environment: Environment, tmp_path: Path
) -> None:
    inspect_provider.use_engine(sandbox)
    path = tmp_path / "compose.yaml"
    path.write_text(
        f"services:\n  default:\n    image: {IMAGE}\n  web:\n    image: {IMAGE}\n"
        "    healthcheck:\n      test: ['CMD', 'false']\n      interval: 10ms\n      retries: 3\n"
    )
    try:
        with pytest.raises(SandboxUnavailableError, match="did not become healthy"):
            await CrucibleSandboxEnvironment.sample_init("compose", str(path), {})
    finally:
        inspect_provider.use_engine(None)
    assert sandbox.sessions.all() == []


def test_an_inspect_eval_with_a_compose_file(
    sandbox_settings: Settings,
    test_environment: Environment,
    tmp_path: Path,
    host_listener: tuple[str, int],
) -> None:
    """Inspect finds the provider docker compatible and hands it the compose file; the
    solver reaches the other service by name through ``sandbox()``."""
    engine = Sandbox(sandbox_settings)
    inspect_provider.use_engine(engine)

    @solver
    def reach_web() -> Solver:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            r = await sandbox().exec(probe(*host_listener))
            web = await sandbox("web").exec(["cat", "/etc/hostname"])
            state.output = ModelOutput.from_content("none", r.stdout + web.stdout)
            return state

        return solve

    task = Task(
        dataset=[Sample(input="reach web"), Sample(input="again")],
        solver=reach_web(),
        sandbox=("crucible", compose_yaml(tmp_path)),
    )
    try:
        [log] = inspect_eval(
            task, model=get_model("mockllm/model"), log_dir=str(tmp_path), display="none"
        )
    finally:
        inspect_provider.use_engine(None)
        asyncio.run(engine.close())
        gc.collect()  # Inspect's unclosed stream warns here, not in a later test
    assert log.status == "success", log.error
    assert log.samples is not None and len(log.samples) == 2
    for sample in log.samples:
        first, hostname = sample.output.completion.splitlines()
        check(json.loads(first))
        assert hostname == "web"
    assert leftovers(sandbox_settings) == []


async def test_two_services_through_a_server(
    server: ServerProcess,
    image_files: dict[str, Path],
    tmp_path: Path,
    host_listener: tuple[str, int],
) -> None:
    async with AsyncClient(server.url, api_key=ADMIN_KEY) as client:
        await client.environments.upload(image_files["docker-archive"], IMAGE, replace=True)
    extra = f"x-crucible:\n  server: {server.url}\n  api_key: {ADMIN_KEY}\n  runtime: crun\n"
    config = compose_yaml(tmp_path, extra=extra)
    await CrucibleSandboxEnvironment.task_init("compose", config)
    envs = await CrucibleSandboxEnvironment.sample_init("compose", config, {})
    try:
        r = await envs["default"].exec(probe(*host_listener))
        assert r.success, r.stderr
        check(json.loads(r.stdout))
    finally:
        await CrucibleSandboxEnvironment.sample_cleanup("compose", config, envs, False)


# -- images the store lacks: pulled from a registry (tests/support/registry_fixtures.py) --------


@pytest.fixture(scope="module")
def userland() -> bytes:
    from support import oci_images

    return oci_images.host_userland_layer(python=False)


def pushed(registry: Registry, userland: bytes, work: Path) -> str:
    """A runnable image of its own in ``registry``; its reference."""
    path = f"test/compose-{secrets.token_hex(4)}:1"
    registry.push(unique_image("compose", base=userland), path, work)
    return f"{registry.host}/{path}"


def one_service(tmp_path: Path, image: str, extra: str = "") -> str:
    path = tmp_path / secrets.token_hex(2) / "compose.yaml"  # Inspect knows it by name
    path.parent.mkdir()
    path.write_text(f"services:\n  default:\n    image: {image}\n" + extra)
    return str(path)


@pytest.fixture
def pulls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pulls this process makes (each still the real one)."""
    made: list[str] = []
    real = EnvironmentStore.pull_image

    def counted(
        self: EnvironmentStore, ref: Any, name: str | None = None, **kw: Any
    ) -> Environment:
        made.append(str(ref))
        return real(self, ref, name, **kw)

    monkeypatch.setattr(EnvironmentStore, "pull_image", counted)
    return made


def test_an_inspect_eval_pulls_a_missing_image_once(
    sandbox_settings: Settings,
    environments: EnvironmentStore,
    registry: Registry,
    registry_env: dict[str, str],
    userland: bytes,
    pulls: list[str],
    tmp_path: Path,
) -> None:
    """Three samples of a compose file whose image only the registry has: task_init
    pulls it once, under the image's name, and every sample runs in it."""
    image = pushed(registry, userland, tmp_path)
    engine = Sandbox(sandbox_settings)
    inspect_provider.use_engine(engine)

    @solver
    def read_marker() -> Solver:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            r = await sandbox().exec(["cat", "/etc/pulled"])
            state.output = ModelOutput.from_content("none", r.stdout)
            return state

        return solve

    task = Task(
        dataset=[Sample(input=str(n)) for n in range(3)],
        solver=read_marker(),
        sandbox=("crucible", one_service(tmp_path, image)),
    )
    try:
        [log] = inspect_eval(
            task, model=get_model("mockllm/model"), log_dir=str(tmp_path), display="none"
        )
    finally:
        inspect_provider.use_engine(None)
        asyncio.run(engine.close())
        gc.collect()
    try:
        assert log.status == "success", log.error
        assert log.samples is not None and len(log.samples) == 3
        assert all(s.output.completion.startswith("compose ") for s in log.samples)
        assert pulls == [image]
        pulled = environments.get(image)
        assert pulled.source == "registry" and pulled.ref == image
    finally:
        environments.remove(image)


async def test_concurrent_samples_share_one_pull(
    sandbox: Sandbox,
    environments: EnvironmentStore,
    registry: Registry,
    registry_env: dict[str, str],
    userland: bytes,
    pulls: list[str],
    tmp_path: Path,
) -> None:
    """Samples that find the image missing together (here without task_init) wait for
    one pull."""
    image = pushed(registry, userland, tmp_path)
    config = one_service(tmp_path, image)
    inspect_provider.use_engine(sandbox)
    try:
        made = await asyncio.gather(
            *(CrucibleSandboxEnvironment.sample_init("compose", config, {}) for _ in range(3))
        )
        try:
            assert pulls == [image]
            for envs in made:
                r = await envs["default"].exec(["cat", "/etc/pulled"])
                assert r.success and r.stdout.startswith("compose "), r
        finally:
            for envs in made:
                await CrucibleSandboxEnvironment.sample_cleanup("compose", config, envs, False)
    finally:
        inspect_provider.use_engine(None)
        environments.remove(image)


async def test_pull_never_and_a_failed_pull_fail_the_task(
    sandbox: Sandbox,
    environments: EnvironmentStore,
    registry: Registry,
    registry_env: dict[str, str],
    userland: bytes,
    pulls: list[str],
    tmp_path: Path,
) -> None:
    image = pushed(registry, userland, tmp_path)
    inspect_provider.use_engine(sandbox)
    try:
        never = one_service(tmp_path, image, "x-crucible:\n  pull: never\n")
        with pytest.raises(
            ComposeError,
            match=rf"image '{image}' is not a Crucible .*pull is never.*crucible env pull {image}",
        ):
            await CrucibleSandboxEnvironment.task_init("compose", never)
        # The same without a compose file: the provider's environment.
        plain = CrucibleSandboxConfig(environment=image, pull="never")
        with pytest.raises(InvalidSubmission, match=f"no environment '{image}'"):
            await CrucibleSandboxEnvironment.task_init("plain", plain)
        assert pulls == []
        missing = f"{registry.host}/test/nothing-{secrets.token_hex(4)}:1"
        with pytest.raises(
            PullRefused,
            match=f"'{missing}' is not a Crucible environment and pulling it failed: .*manifest unknown",
        ):
            await CrucibleSandboxEnvironment.task_init("compose", one_service(tmp_path, missing))
        # A file the provider refuses pulls nothing.
        refused = one_service(tmp_path, image, "    privileged: true\n")
        with pytest.raises(ComposeError, match="privileged is not supported"):
            await CrucibleSandboxEnvironment.task_init("compose", refused)
        assert pulls == [missing]
        assert image not in [e.name for e in environments.all()]
        # pull: missing (the default) without a compose file pulls the environment too.
        await CrucibleSandboxEnvironment.task_init(
            "plain", CrucibleSandboxConfig(environment=image)
        )
        assert pulls == [missing, image] and environments.get(image).source == "registry"
    finally:
        inspect_provider.use_engine(None)
        with contextlib.suppress(NotFound):
            environments.remove(image)


async def test_through_a_server_only_an_admin_key_pulls(
    make_server: Callable[..., ServerProcess],
    registry: Registry,
    registry_env: dict[str, str],
    userland: bytes,
    tmp_path: Path,
) -> None:
    server = make_server(**registry_env)
    server.start()
    image = pushed(registry, userland, tmp_path)
    async with AsyncClient(server.url, api_key=ADMIN_KEY) as admin:
        r = await admin.http.post("/keys", json={"name": "bob", "role": "researcher"})
        assert r.status_code == 201, r.text
        researcher = r.json()["key"]
    as_researcher = one_service(
        tmp_path, image, f"x-crucible:\n  server: {server.url}\n  api_key: {researcher}\n"
    )
    with pytest.raises(PullRefused, match=f"pulling '{image}' on {server.url} needs an admin key"):
        await CrucibleSandboxEnvironment.task_init("compose", as_researcher)
    as_admin = one_service(
        tmp_path, image, f"x-crucible:\n  server: {server.url}\n  api_key: {ADMIN_KEY}\n"
    )
    await CrucibleSandboxEnvironment.task_init("compose", as_admin)
    async with AsyncClient(server.url, api_key=ADMIN_KEY) as admin:
        env = await admin.environments.get(image)
        assert env.source == "registry" and env.ref == image
    # Pulled once, the researcher's samples run in it.
    envs = await CrucibleSandboxEnvironment.sample_init("compose", as_researcher, {})
    try:
        r = await envs["default"].exec(["cat", "/etc/pulled"])
        assert r.success and r.stdout.startswith("compose "), r
    finally:
        await CrucibleSandboxEnvironment.sample_cleanup("compose", as_researcher, envs, False)
