"""An Inspect task's compose.yaml on the ``crucible`` provider: two services of one
sample, one serving on a port, the other reaching it by name, neither reaching the
host; locally (through a real ``inspect_ai.eval()``) and through a ``crucible serve``."""

from __future__ import annotations

import asyncio
import gc
import json
import textwrap
from pathlib import Path

import pytest
from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.model import ModelOutput, get_model
from inspect_ai.solver import Generate, Solver, TaskState, solver
from inspect_ai.util import sandbox
from inspect_ai.util._sandbox.environment import SandboxUnavailableError
from service_helpers import ServerProcess

from auth_keys import ADMIN_KEY
from crucible.client import AsyncClient
from crucible.core.config import Settings
from crucible.engine import Sandbox
from crucible.environments.store import Environment
from crucible.integrations.inspect import provider as inspect_provider
from crucible.integrations.inspect.provider import CrucibleSandboxEnvironment
from sandbox_fixtures import REACH, leftovers

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore:The 'initial' parameter is deprecated:DeprecationWarning"),
    # inspect_ai's eval leaves an anyio memory stream unclosed, a ResourceWarning when
    # the garbage collector finds it (in whichever test runs then).
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

IMAGE = "test/features"  # tests/oci_images.py's feature image (sandbox_fixtures)


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


async def test_an_unknown_image_is_named_with_the_import_command(
    sandbox: Sandbox, test_environment: Environment, tmp_path: Path
) -> None:
    inspect_provider.use_engine(sandbox)
    try:
        with pytest.raises(ValueError, match=r"image 'nginx:1.25' is not a Crucible environment"):
            await CrucibleSandboxEnvironment.task_init(
                "compose", compose_yaml(tmp_path, image="nginx:1.25")
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
