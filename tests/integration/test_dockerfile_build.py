"""Dockerfile builds (``crucible.environments.dockerfile``) with the real buildah, skopeo,
umoci and runc: bases from a registry on 127.0.0.1 (tests/support/registry_fixtures.py) or from
the store, made of the host's own bash, coreutils and python (tests/support/oci_images.py);
nothing leaves the machine (the fixture's proxy refuses what is not on loopback)."""

from __future__ import annotations

import secrets
import shutil
import time
from pathlib import Path

import pytest

from crucible.core.config import Settings
from crucible.core.errors import InvalidSubmission, NotFound, PullFailed
from crucible.engine import Sandbox
from crucible.engine.models import SessionSpec
from crucible.environments.dockerfile import BuildFailed, DockerfileSpec, build_dockerfile
from crucible.environments.store import EnvironmentStore
from crucible.services.environments import environment_public
from support.dockerfile_fixtures import context as make_context
from support.oci_images import Image, write_oci_layout
from support.registry_fixtures import Registry
from support.sandbox_fixtures import SESSION_LIMITS

pytestmark = [
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("buildah", "skopeo", "umoci", "runc")),
        reason="needs buildah, skopeo, umoci and runc (scripts/setup.sh)",
    ),
    pytest.mark.timeout(300),
]

DOCKERFILE = """\
# A global ARG names the base; stages, COPY --from, and every instruction a task uses.
ARG BASE
FROM ${BASE} AS first
RUN echo "from the first stage" > /built.txt

FROM $BASE
ARG GREETING=hello
ENV GREETING=$GREETING \\
    MODE=built
WORKDIR /app
COPY data/ /app/data/
COPY --from=first /built.txt /app/
RUN echo "$GREETING from RUN" > /app/greeting.txt && \\
    id -un > /app/built-by.txt
USER nobody
CMD ["python3", "-m", "http.server", "8080"]
"""


@pytest.fixture(scope="session")
def base_ref(registry: Registry, userland: Image, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The userland as ``<registry>/base/userland:1``."""
    registry.push(userland, "base/userland:1", tmp_path_factory.mktemp("push"))
    return f"{registry.host}/base/userland:1"


@pytest.fixture
def store(tmp_path: Path) -> EnvironmentStore:
    return EnvironmentStore(tmp_path / "environments")


@pytest.fixture(scope="module")
def based_store(userland: Image, tmp_path_factory: pytest.TempPathFactory) -> EnvironmentStore:
    """One store holding ``local/base:1``, for the refusals: each compares the store
    with itself before and after, so they can share it, and the import (the host's
    userland, unpacked) is paid once instead of once per case."""
    root = tmp_path_factory.mktemp("based")
    store = EnvironmentStore(root / "environments")
    store.import_image(write_oci_layout(userland, root / "layout"), "local/base:1")
    return store


def context(tmp_path: Path, dockerfile: str = DOCKERFILE) -> Path:
    return make_context(tmp_path, dockerfile)


def clean_tmp(store: EnvironmentStore) -> None:
    assert not list((store.root / "tmp").iterdir())


async def test_a_build_from_a_registry_base_runs_under_runc(
    store: EnvironmentStore,
    registry_env: dict[str, str],
    base_ref: str,
    tmp_path: Path,
    sandbox: Sandbox,
) -> None:
    ctx = context(tmp_path)
    spec = DockerfileSpec(ctx, args=(("BASE", base_ref), ("GREETING", "hi")))
    env = build_dockerfile(store, spec, "built/app:1")
    assert env.name == "built/app:1" and env.source == "dockerfile"
    assert env.user == "nobody" and env.workdir == "/app"
    assert "GREETING=hi" in env.env and "MODE=built" in env.env
    assert env.build is not None
    assert env.build["bases"] == {base_ref: env.build["bases"][base_ref]}
    assert env.build["bases"][base_ref].startswith("sha256:")
    assert env.build["args"] == {"BASE": base_ref, "GREETING": "hi"}
    root = env.root
    assert (root / "app/data/input.txt").read_text() == "from the context\n"
    assert (root / "app/data/run.sh").stat().st_mode & 0o777 == 0o755
    assert (root / "app/built.txt").read_text() == "from the first stage\n"
    assert (root / "app/greeting.txt").read_text() == "hi from RUN\n"
    assert (root / "app/built-by.txt").read_text() == "root\n"
    # The base went into the build only: the store holds the result and nothing else.
    assert [e.name for e in store.all()] == ["built/app:1"]
    clean_tmp(store)
    # The record survives a fresh look.
    assert EnvironmentStore(store.root).get("built/app:1").build == env.build
    # The API's record of it (GET /environments/{name}) carries the build record, and
    # the image's Cmd (what a compose service naming no command starts).
    public = environment_public(EnvironmentStore(store.root).get("built/app:1"))
    assert public.source == "dockerfile" and public.build is not None
    assert public.build.model_dump() == env.build
    assert public.build.bases == {base_ref: env.build["bases"][base_ref]}
    assert public.build.dockerfile.startswith("sha256:") and public.build.target is None
    assert public.cmd == ["python3", "-m", "http.server", "8080"] and public.entrypoint == []

    session = await sandbox.sessions.create(
        SessionSpec(runtime="runc", limits=SESSION_LIMITS, environment=env.root_spec()),
        session_id=f"sb_df{secrets.token_hex(4)}",
    )
    try:
        r = await session.exec(["bash", "-c", 'id -un; pwd; echo "$GREETING $MODE"; cat built.txt'])
        assert r.stdout == b"nobody\n/app\nhi built\nfrom the first stage\n", r.stderr
    finally:
        await session.close()


def test_the_cache_builds_once_and_a_changed_context_builds_again(
    store: EnvironmentStore, registry_env: dict[str, str], base_ref: str, tmp_path: Path
) -> None:
    ctx = context(tmp_path)
    spec = DockerfileSpec(ctx, args=(("BASE", base_ref),))
    first = build_dockerfile(store, spec)
    assert first.name.startswith(f"build/{ctx.name}:")
    started = time.monotonic()
    again = build_dockerfile(store, spec)
    assert time.monotonic() - started < 5  # no buildah: the key was found
    assert (again.name, again.digest, again.created_at) == (
        first.name, first.digest, first.created_at,
    )  # fmt: skip
    # A name of its own for the same build: the same root, named twice.
    mine = build_dockerfile(store, spec, "mine:1")
    assert mine.digest == first.digest and mine.build == first.build
    # One changed byte of the context, or its mode, is another build.
    (ctx / "data" / "input.txt").write_text("changed\n")
    changed = build_dockerfile(store, spec)
    assert changed.build is not None and first.build is not None
    assert changed.build["key"] != first.build["key"] and changed.digest != first.digest
    assert (changed.root / "app/data/input.txt").read_text() == "changed\n"
    (ctx / "data" / "input.txt").chmod(0o600)
    moded = build_dockerfile(store, spec)
    assert moded.build is not None and moded.build["key"] != changed.build["key"]
    # Another build arg is another build too.
    other = build_dockerfile(
        store, DockerfileSpec(ctx, args=(("BASE", base_ref), ("GREETING", "x")))
    )
    assert other.build is not None and other.build["key"] != moded.build["key"]
    clean_tmp(store)


def test_a_base_from_the_store_with_pull_never_and_a_target(
    store: EnvironmentStore, userland: Image, tmp_path: Path
) -> None:
    base = store.import_image(write_oci_layout(userland, tmp_path / "layout"), "local/base:1")
    dockerfile = """\
FROM local/base:1 AS tools
RUN echo tools > /tools.txt
FROM tools AS final
RUN echo final > /final.txt
"""
    ctx = context(tmp_path, dockerfile)
    env = build_dockerfile(store, DockerfileSpec(ctx, target="tools"), "t:1", pull="never")
    assert env.build is not None and env.build["bases"] == {"local/base:1": base.digest}
    assert env.build["target"] == "tools"
    assert (env.root / "tools.txt").read_text() == "tools\n"
    assert not (env.root / "final.txt").exists()
    clean_tmp(store)


@pytest.mark.parametrize(
    ("dockerfile", "error", "says"),
    [
        ("FROM local/base:1\nFROBNICATE now\n", InvalidSubmission, "unknown instruction"),
        ("RUN echo no base\n", InvalidSubmission, "before the first FROM"),
        ("# nothing\n", InvalidSubmission, "no FROM"),
        ("FROM $NOPE\n", InvalidSubmission, "$NOPE"),
        ("FROM local/absent:1\n", NotFound, "pull is never"),
        ("FROM local/base:1\nRUN exit 3\n", BuildFailed, "buildah could not build"),
        ("FROM local/base:1\nCOPY missing.txt /\n", BuildFailed, "buildah could not build"),
    ],
)
def test_bad_dockerfiles_are_refused_and_change_nothing(
    based_store: EnvironmentStore,
    tmp_path: Path,
    dockerfile: str,
    error: type[Exception],
    says: str,
) -> None:
    store = based_store
    before = [(e.name, e.digest) for e in store.all()]
    homes = sorted((store.root / "sha256").iterdir())
    ctx = context(tmp_path, dockerfile)
    with pytest.raises(error) as caught:
        build_dockerfile(store, DockerfileSpec(ctx), "bad:1", pull="never")
    assert says in str(caught.value)
    assert [(e.name, e.digest) for e in store.all()] == before
    assert sorted((store.root / "sha256").iterdir()) == homes
    clean_tmp(store)


def test_a_missing_context_and_an_unresolvable_from(
    store: EnvironmentStore, registry: Registry, registry_env: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(NotFound, match="not a directory"):
        build_dockerfile(store, DockerfileSpec(tmp_path / "nowhere"))
    with pytest.raises(NotFound, match="no Dockerfile"):
        build_dockerfile(store, DockerfileSpec(tmp_path, dockerfile=Path("Nope")))
    ctx = context(tmp_path, f"FROM {registry.host}/no/such-image:1\n")
    with pytest.raises(PullFailed, match=r"FROM .*no/such-image"):
        build_dockerfile(store, DockerfileSpec(ctx))
    assert store.all() == []
    clean_tmp(store)


def test_crucible_env_build_dockerfile(
    userland: Image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from crucible.cli import app

    data_dir = tmp_path / "data"
    store = EnvironmentStore(data_dir / "environments")
    store.import_image(write_oci_layout(userland, tmp_path / "layout"), "local/base:1")
    ctx = context(tmp_path, "ARG BASE\nFROM $BASE\nARG WORD\nRUN echo $WORD > /word\n")
    (ctx / "Dockerfile").rename(ctx / "Build.df")

    def build(*args: str) -> tuple[int, str]:
        argv = ["env", "build", "--dockerfile", str(ctx / "Build.df"), "--context", str(ctx)]
        r = CliRunner().invoke(app, [*argv, *args, "--data-dir", str(data_dir), "-q"])
        return r.exit_code, r.output

    code, output = build("--name", "cli/app:1", "--build-arg", "BASE=local/base:1",
                         "--build-arg", "WORD=cli", "--pull", "never")  # fmt: skip
    assert code == 0, output
    assert output.startswith("cli/app:1 · sha256:")
    env = EnvironmentStore(data_dir / "environments").get("cli/app:1")
    assert (env.root / "word").read_text() == "cli\n" and env.source == "dockerfile"
    code, output = build("--build-arg", "WORD")
    assert code == 2 and "KEY=VALUE" in output
    code, output = build("--build-arg", "BASE=local/none:1", "--pull", "never")
    assert code == 2 and "pull is never" in output
    code, output = build("--debian", "bash")
    assert code == 2 and "exclude each other" in output


@pytest.mark.filterwarnings("ignore:The 'initial' parameter is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_inspect_eval_with_a_compose_build_builds_once(
    sandbox_settings: Settings,
    environments: EnvironmentStore,
    registry_env: dict[str, str],
    base_ref: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four samples of a compose file whose service has a build: (context, dockerfile,
    args, target): task_init builds it once with buildah, every sample runs in it."""
    import asyncio
    import gc

    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import Sample
    from inspect_ai.model import ModelOutput, get_model
    from inspect_ai.solver import Generate, Solver, TaskState, solver
    from inspect_ai.util import sandbox

    from crucible.environments import dockerfile as dockerfile_module
    from crucible.integrations.inspect import provider as inspect_provider

    builds: list[str] = []
    real = dockerfile_module.buildah_bud

    def counting(*args: object, **kw: object) -> None:
        builds.append("bud")
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(dockerfile_module, "buildah_bud", counting)
    task_dir = tmp_path / "task"
    app = context(task_dir)
    (app / "Dockerfile").rename(app / "Dockerfile.task")
    image = f"built/compose-{secrets.token_hex(3)}:1"
    compose = task_dir / "compose.yaml"
    compose.write_text(
        f"services:\n  default:\n    image: {image}\n    build:\n"
        f"      context: {app.name}\n      dockerfile: Dockerfile.task\n"
        f"      args:\n        BASE: {base_ref}\n        GREETING: compose\n"
        "x-crucible:\n  runtime: runc\n"
    )
    engine = Sandbox(sandbox_settings)
    inspect_provider.use_engine(engine)

    @solver
    def read_greeting() -> Solver:
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            r = await sandbox().exec(["bash", "-c", "id -un; cat greeting.txt"])
            state.output = ModelOutput.from_content("none", r.stdout + r.stderr)
            return state

        return solve

    task = Task(
        dataset=[Sample(input=str(n)) for n in range(4)],
        solver=read_greeting(),
        sandbox=("crucible", str(compose)),
    )
    try:
        [log] = inspect_eval(
            task, model=get_model("mockllm/model"), log_dir=str(tmp_path / "logs"),
            display="none",
        )  # fmt: skip
    finally:
        inspect_provider.use_engine(None)
        asyncio.run(engine.close())
        gc.collect()
    try:
        assert log.status == "success", log.error
        assert log.samples is not None and len(log.samples) == 4
        assert all(s.output.completion == "nobody\ncompose from RUN\n" for s in log.samples), [
            s.output.completion for s in log.samples
        ]
        assert builds == ["bud"]
        env = environments.get(image)
        assert env.source == "dockerfile" and env.build is not None
        assert env.build["args"] == {"BASE": base_ref, "GREETING": "compose"}
    finally:
        environments.remove(image)
