"""Dockerfile builds through a server (``POST /environments/build``): the route, the
clients, ``crucible env build --server`` and the Inspect provider's compose ``build:`` in
server mode, with the real buildah, skopeo, umoci and runc. The base is ``local/base:1``
in the server's store (the host's own userland, support.dockerfile_fixtures), imported
once for the module; two real builds in all (the API's and the eval's): the CLI's is
the API's again, found in the cache. The refusals run on an app of their own with small
limits, and none of them reaches buildah."""

from __future__ import annotations

import asyncio
import io
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from crucible.api.app import create_app
from crucible.client import Client
from crucible.client.environments import pack_context
from crucible.core.config import Settings
from crucible.environments import dockerfile as dockerfile_module
from support.api import api_factory, serve_in_thread
from support.auth_keys import AUTH
from support.dockerfile_fixtures import context
from support.fake_sessions import FakeSessions
from support.oci_images import Image, write_oci_layout

pytestmark = [
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("buildah", "skopeo", "umoci", "runc")),
        reason="needs buildah, skopeo, umoci and runc (scripts/setup.sh)",
    ),
    pytest.mark.timeout(300),
]

APP = """\
FROM local/base:1
ARG WORD=none
WORKDIR /app
COPY data/ /app/data/
RUN echo "$WORD from RUN" > /app/word.txt
USER nobody
"""


@pytest.fixture
def buildah_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each ``buildah bud`` the server (in this process) runs."""
    runs: list[str] = []
    real = dockerfile_module.buildah_bud

    def counting(*args: Any, **kw: Any) -> None:
        runs.append("bud")
        real(*args, **kw)

    monkeypatch.setattr(dockerfile_module, "buildah_bud", counting)
    return runs


@pytest.fixture(scope="module")
def server(sandbox_settings: Settings, userland: Image, tmp_path_factory: Any) -> Iterator[str]:
    """The real app (real sandboxes) served over HTTP in this process, its store holding
    ``local/base:1``."""
    from crucible.environments.store import EnvironmentStore

    store = EnvironmentStore.of(sandbox_settings)
    layout = write_oci_layout(userland, tmp_path_factory.mktemp("layout") / "oci")
    store.import_image(layout, "local/base:1")
    with serve_in_thread(create_app(sandbox_settings, dispatch=False)) as url:
        yield url
    store.remove("local/base:1")


@pytest.fixture(scope="module")
def app_context(tmp_path_factory: Any) -> Path:
    return context(tmp_path_factory.mktemp("app"), APP)


def _researcher(url: str) -> str:
    r = httpx.post(f"{url}/api/v1/keys", json={"name": "bob", "role": "researcher"}, headers=AUTH)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


async def test_admins_build_through_the_api_once_per_key(
    server: str, app_context: Path, buildah_runs: list[str]
) -> None:
    """Two concurrent requests for a new build run buildah once; the same build again
    answers at once; a researcher key is refused before anything is read."""
    from crucible.client import AsyncClient

    name = f"api/app-{secrets.token_hex(3)}:1"
    async with AsyncClient(server) as client:
        first, second = await asyncio.gather(
            client.environments.build(app_context, name=name, build_args={"WORD": "api"},
                                      pull="never"),
            client.environments.build(app_context, name=name, build_args={"WORD": "api"},
                                      pull="never"),
        )  # fmt: skip
    assert buildah_runs == ["bud"]
    assert first.name == second.name == name and first.digest == second.digest
    assert first.source == "dockerfile" and first.build is not None
    assert first.build.args == {"WORD": "api"} and first.user == "nobody"
    with Client(server) as c:
        started = time.monotonic()
        again = c.environments.build(
            app_context, name=name, build_args={"WORD": "api"}, pull="never"
        )
        # No buildah: the key was found (a build of this one takes many seconds).
        assert time.monotonic() - started < 10 and buildah_runs == ["bud"]
        assert again.digest == first.digest and again.created_at == first.created_at
        # A sandbox runs in it.
        box = c.sandboxes.create(environment=name, runtime="runc")
        try:
            r = box.exec(["bash", "-c", "id -un; cat word.txt data/input.txt"])
            assert r.stdout == "nobody\napi from RUN\nfrom the context\n", r.stderr
        finally:
            box.close()
    with Client(server, api_key=_researcher(server)) as alice:
        from crucible.client import ApiError

        with pytest.raises(ApiError) as refused:
            alice.environments.build(app_context, name="alice:1", pull="never")
        assert refused.value.status == 403
    assert buildah_runs == ["bud"]


def test_crucible_env_build_through_a_server(
    server: str, app_context: Path, buildah_runs: list[str], tmp_path: Path
) -> None:
    """``--server`` (here CRUCIBLE_SERVER) sends the context; the API test's build is
    found in the server's cache under a name of its own."""
    from typer.testing import CliRunner

    from crucible.cli import app

    def build(*args: str) -> tuple[int, str]:
        argv = ["env", "build", "--context", str(app_context), "-q", *args]
        r = CliRunner().invoke(app, argv, env={"CRUCIBLE_SERVER": server})
        return r.exit_code, r.output

    code, output = build("--name", "cli/app:1", "--build-arg", "WORD=api", "--pull", "never",
                         "--data-dir", str(tmp_path / "unused"))  # fmt: skip
    assert code == 0, output
    assert output.startswith("cli/app:1 · sha256:") and buildah_runs == []
    assert not (tmp_path / "unused").exists()  # nothing was built here
    with Client(server) as c:
        assert c.environments.get("cli/app:1").build is not None
    elsewhere = tmp_path / "Dockerfile"
    elsewhere.write_text("FROM local/base:1\n")
    code, output = build("--dockerfile", str(elsewhere))
    assert code == 2 and "not inside the context" in output
    code, output = build("--debian", "bash", "--dockerfile", str(app_context / "Dockerfile"))
    assert code == 2 and "exclude each other" in output


@pytest.mark.filterwarnings("ignore:The 'initial' parameter is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_inspect_eval_with_a_compose_build_in_server_mode(
    server: str, buildah_runs: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four samples of a compose file with a build:, the server named by
    CRUCIBLE_SERVER: the context is sent once for the task, built once on the server,
    and every sample's sandbox (on the server) runs in what it returned."""
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.model import ModelOutput, get_model
    from inspect_ai.solver import Generate, Solver, TaskState, solver
    from inspect_ai.util import sandbox

    from crucible.services.environments import EnvironmentService

    requests: list[str] = []
    real = EnvironmentService.build

    async def counting(self: EnvironmentService, *args: Any, **kw: Any) -> Any:
        requests.append(str(kw.get("name")))
        return await real(self, *args, **kw)

    monkeypatch.setattr(EnvironmentService, "build", counting)
    monkeypatch.setenv("CRUCIBLE_SERVER", server)
    task_dir = tmp_path / "task"
    app = context(task_dir, APP)
    (app / "Dockerfile").rename(app / "Dockerfile.task")
    image = f"built/remote-{secrets.token_hex(3)}:1"
    compose = task_dir / "compose.yaml"
    compose.write_text(
        f"services:\n  default:\n    image: {image}\n    build:\n"
        f"      context: {app.name}\n      dockerfile: Dockerfile.task\n"
        "      args:\n        WORD: compose\n"
        "x-crucible:\n  runtime: runc\n  pull: never\n"
    )

    @solver
    def read_word() -> Solver:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            r = await sandbox().exec(["bash", "-c", "id -un; cat word.txt"])
            state.output = ModelOutput.from_content("none", r.stdout + r.stderr)
            return state

        return solve

    task = Task(
        dataset=[Sample(input=str(n)) for n in range(4)],
        solver=read_word(),
        sandbox=("crucible", str(compose)),
    )
    [log] = inspect_eval(
        task, model=get_model("mockllm/model"), log_dir=str(tmp_path / "logs"), display="none"
    )
    assert log.status == "success", log.error
    assert log.samples is not None and len(log.samples) == 4
    assert all(s.output.completion == "nobody\ncompose from RUN\n" for s in log.samples), [
        s.output.completion for s in log.samples
    ]
    # task_init builds; each sample's plan finds the task's build (no request).
    assert requests == [image] and buildah_runs == ["bud"]
    with Client(server) as c:
        env = c.environments.get(image)
        assert env.source == "dockerfile" and env.build is not None
        assert env.build.args == {"WORD": "compose"}
        c.environments.delete(image)


# -- refusals -----------------------------------------------------------------------


def _tar(*members: tarfile.TarInfo | tuple[str, bytes], gz: bool = False) -> bytes:
    """A tar of ``members`` (a (name, content) pair is a regular file), a valid
    Dockerfile first so that only the hostile entry can be the reason."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for m in [("Dockerfile", b"FROM local/base:1\n"), *members]:
            if isinstance(m, tuple):
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
            else:
                tar.addfile(m)
    return buf.getvalue()


def _entry(name: str, kind: bytes, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


HOSTILE = {
    "absolute path": (_tar(("/etc/evil", b"x")), "absolute path"),
    "dot-dot": (_tar(("../evil", b"x")), "'..'"),
    "symlink to an absolute path": (_tar(_entry("etc", tarfile.SYMTYPE, "/etc")), "out of it"),
    "symlink out by dot-dot": (
        _tar(_entry("a", tarfile.DIRTYPE), _entry("a/up", tarfile.SYMTYPE, "../../etc")),
        "out of it",
    ),
    "a write through a symlink": (
        _tar(_entry("d", tarfile.SYMTYPE, "."), ("d/x", b"x")),
        "through the symbolic link",
    ),
    "hard link out": (_tar(_entry("pw", tarfile.LNKTYPE, "../etc/passwd")), "hard link"),
    "device node": (_tar(_entry("null", tarfile.CHRTYPE)), "device node"),
    "fifo": (_tar(_entry("pipe", tarfile.FIFOTYPE)), "FIFO"),
    "not a tar": (b"not a tar archive, " * 50, "not a readable tar"),
}


async def _post(api: httpx.AsyncClient, body: bytes, **params: Any) -> httpx.Response:
    return await api.post(
        "/environments/build",
        params={"name": "hostile:1", **params},
        content=body,
        headers={"content-type": "application/x-tar"},
    )


async def test_hostile_archives_and_bad_requests_are_refused_and_change_nothing(
    settings: Settings, buildah_runs: list[str], tmp_path: Path
) -> None:
    make = api_factory(settings, dispatch=False, sessions=FakeSessions())
    limit = 64 << 10
    async with make(build_context_max_bytes=limit, build_context_max_entries=50) as (
        api,
        service,
    ):
        root = service.environments.store.root

        def leftovers() -> list[Path]:
            return [*(root / "tmp").iterdir(), *(root / "names").iterdir()]

        for case, (body, says) in HOSTILE.items():
            r = await _post(api, body)
            assert r.status_code == 422, (case, r.text)
            assert says in r.json()["detail"] and r.json()["field"] == "context", (case, r.text)
            assert leftovers() == [], case
        # Too big as sent (Content-Length), as unpacked (a gzip bomb), too many entries.
        big = await _post(api, _tar(("big", b"x" * (limit + 1))))
        assert big.status_code == 413, big.text
        bomb = _tar(("zeros", bytes(limit * 4)), gz=True)
        assert len(bomb) < limit
        unpacked = await _post(api, bomb)
        assert unpacked.status_code == 413 and "unpacks to more" in unpacked.json()["detail"]
        many = await _post(api, _tar(*[(f"f{n}", b"") for n in range(60)]))
        assert many.status_code == 413 and "entries" in many.json()["detail"]
        # A bad Dockerfile, a Dockerfile out of the context, a missing one, a bad arg.
        bad = await _post(api, _tar(("Build.df", b"FROBNICATE now\n")), dockerfile="Build.df")
        assert bad.status_code == 422 and "unknown instruction" in bad.json()["detail"]
        out = await _post(api, _tar(), dockerfile="../Dockerfile")
        assert out.status_code == 422 and out.json()["field"] == "dockerfile"
        absent = await _post(api, _tar(), dockerfile="Nope")
        assert absent.status_code == 422 and "no Dockerfile" in absent.json()["detail"]
        arg = await _post(api, _tar(), build_arg="NOEQUALS")
        assert arg.status_code == 422 and arg.json()["field"] == "build_arg"
        never = await _post(api, _tar(), pull="never")  # local/base:1 is not in this store
        assert never.status_code == 404 and "pull is never" in never.json()["detail"]
        assert leftovers() == [] and buildah_runs == []
        # The client packs a directory that has a symlink out of it: the server refuses.
        ctx = context(tmp_path, "FROM local/base:1\n")
        (ctx / "escape").symlink_to("/etc")
        with ExitStack() as stack:
            packed = pack_context(ctx, stack).read()
        r = await _post(api, packed)
        assert r.status_code == 422 and "out of it" in r.json()["detail"]
        assert leftovers() == [] and buildah_runs == []
