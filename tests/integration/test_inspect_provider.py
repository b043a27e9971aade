"""Inspect AI's own sandbox conformance suite (``inspect_ai.util._sandbox.self_check``)
against the ``crucible`` provider, local mode, under runc and under gVisor; real
``inspect_ai.eval()`` runs; and what a task written for Inspect's default image calls."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.model import ChatMessage, ChatMessageTool, ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Scorer, Target, accuracy, includes, scorer
from inspect_ai.solver import TaskState, generate, use_tools
from inspect_ai.tool import bash, bash_session, text_editor
from inspect_ai.util import SandboxEnvironment
from inspect_ai.util import sandbox as sample_sandbox
from inspect_ai.util._sandbox.self_check import *  # noqa: F403

from crucible.core.config import Settings
from crucible.core.errors import InvalidSubmission
from crucible.engine import Sandbox
from crucible.engine.models import SessionLimits
from crucible.environments.store import EnvironmentStore
from crucible.integrations.inspect import provider as inspect_provider
from crucible.integrations.inspect.provider import CrucibleSandboxConfig, CrucibleSandboxEnvironment
from support import oci_images
from support.polling import eventually
from support.sandbox_fixtures import leftovers

pytestmark = [
    pytest.mark.timeout(120),
    # Inspect's retry set-up passes tenacity a deprecated argument (not ours to fix).
    pytest.mark.filterwarnings("ignore:The 'initial' parameter is deprecated:DeprecationWarning"),
]

# Upstream accepts these for a provider whose default user is root: root reads and
# writes files whatever their mode.
ROOT_XFAILS = {
    "test_read_file_not_allowed",
    "test_write_text_file_without_permissions",
    "test_write_binary_file_without_permissions",
}


@pytest.fixture(params=["runc", "gvisor"])
async def sandbox_env(
    request: pytest.FixtureRequest, sandbox: Sandbox
) -> AsyncIterator[SandboxEnvironment]:
    if request.node.originalname in ROOT_XFAILS:
        request.node.add_marker(pytest.mark.xfail(reason="root default user", strict=True))
    inspect_provider.use_engine(sandbox)
    config = CrucibleSandboxConfig(
        runtime=request.param,
        limits=SessionLimits(memory_mb=512, cpus=1, pids=256, disk_mb=512),
    )
    await CrucibleSandboxEnvironment.task_init("conformance", config)
    envs = await CrucibleSandboxEnvironment.sample_init("conformance", config, {})
    try:
        yield envs["default"]
    finally:
        await CrucibleSandboxEnvironment.sample_cleanup("conformance", config, envs, False)
        inspect_provider.use_engine(None)


# inspect_ai's eval leaves an anyio memory stream unclosed (a ResourceWarning at gc).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_eval_runs_an_agent_in_several_sandboxes_at_once(
    sandbox_settings: Settings, tmp_path: Path
) -> None:
    """A real ``inspect_ai.eval()``: a scripted agent (mockllm) calls the bash tool in
    each sample's sandbox and answers with what it read there. Offline: the bash tool
    is a plain exec, and every output carries ``usage`` (no tokenizer download)."""
    engine = Sandbox(sandbox_settings)
    inspect_provider.use_engine(engine)
    alive_at_once: list[int] = []
    usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)

    async def agent(
        messages: list[ChatMessage], tools: object, tool_choice: object, config: object
    ) -> ModelOutput:
        alive_at_once.append(len(engine.sessions.all()))
        last = messages[-1]
        if isinstance(last, ChatMessageTool):  # the tool ran: answer with what it saw
            output = ModelOutput.from_content("mockllm/model", f"I read: {last.text}")
        else:
            output = ModelOutput.for_tool_call(
                "mockllm/model", "bash", {"command": "sleep 0.5; cat secret.txt; id -u"}
            )
        output.usage = usage
        return output

    secrets_ = [f"secret-{i}-{os.urandom(4).hex()}" for i in range(4)]
    task = Task(
        dataset=[
            Sample(input="what is in secret.txt?", target=s, files={"secret.txt": s})
            for s in secrets_
        ],
        solver=[use_tools(bash(timeout=30)), generate()],
        scorer=includes(),
        sandbox=("crucible", CrucibleSandboxConfig(runtime="runc")),
    )
    try:
        [log] = inspect_eval(
            task,
            model=get_model("mockllm/model", custom_outputs=agent),
            log_dir=str(tmp_path),
            display="none",
            max_samples=4,
            max_sandboxes=4,
        )
    finally:
        inspect_provider.use_engine(None)
        asyncio.run(engine.close())
    assert log.status == "success", log.error
    assert log.samples is not None and len(log.samples) == 4
    for sample in log.samples:
        answer = sample.output.completion
        assert str(sample.target) in answer and answer.rstrip().endswith("0"), answer
        others = [s for s in secrets_ if s != sample.target]
        assert not any(o in answer for o in others)  # its own sandbox, nobody else's
        assert sample.scores is not None and sample.scores["includes"].value == "C"
    assert max(alive_at_once) >= 2, alive_at_once  # sandboxes were up side by side
    assert leftovers(sandbox_settings) == []


def test_the_provider_is_registered_under_the_inspect_ai_entry_point() -> None:
    from importlib.metadata import entry_points

    from inspect_ai.util._sandbox.registry import registry_find_sandboxenv

    names = {e.name: e.value for e in entry_points(group="inspect_ai")}
    assert names.get("crucible") == "crucible.integrations.inspect.provider", names
    assert registry_find_sandboxenv("crucible") is CrucibleSandboxEnvironment


def test_inspect_sandbox_cleanup_removes_a_dead_evals_sandboxes(
    sandbox_settings: Settings,
) -> None:
    """An eval process killed with -9 leaves its sandbox; the real
    ``inspect sandbox cleanup crucible`` command removes it."""
    import subprocess
    import sys

    state = str(sandbox_settings.state_dir)
    env = {**os.environ, "CRUCIBLE_STATE_DIR": state, "CRUCIBLE_PREFIX": sandbox_settings.prefix}
    script = (
        "import asyncio, time\n"
        "from crucible.integrations.inspect.provider import CrucibleSandboxEnvironment as E, CrucibleSandboxConfig\n"
        "async def main():\n"
        "    envs = await E.sample_init('t', CrucibleSandboxConfig(runtime='runc'), {})\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        finally:
            proc.kill()
    assert any(x.startswith("container") for x in leftovers(sandbox_settings))
    inspect_cli = str(Path(sys.executable).with_name("inspect"))
    done = subprocess.run(
        [inspect_cli, "sandbox", "cleanup", "crucible"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Bound: the sweep deletes the container before returning; mounts go lazily.
    eventually(
        lambda: not leftovers(sandbox_settings),
        within=10,
        reason="the sandbox's leftovers to go",
        interval=0.1,
    )


@pytest.mark.parametrize("runtime", ["runc", "gvisor"])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_text_editor_and_bash_session_work_offline(
    sandbox_settings: Settings, tmp_path: Path, runtime: str
) -> None:
    """Inspect's text_editor() and bash_session() inject its helper binary (bundled in
    the inspect-ai wheel, nothing downloaded) through write_file and run it; bash_session
    needs a terminal (the sandbox's own devpts)."""
    engine = Sandbox(sandbox_settings)
    inspect_provider.use_engine(engine)
    usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    steps = [
        ("text_editor", {"command": "create", "path": "/root/notes.txt", "file_text": "edited\n"}),
        ("text_editor", {"command": "view", "path": "/root/notes.txt"}),
        ("bash_session", {"action": "type_submit", "input": "tr a-z A-Z < /root/notes.txt; tty"}),
    ]

    async def agent(
        messages: list[ChatMessage], tools: object, tool_choice: object, config: object
    ) -> ModelOutput:
        done = [m for m in messages if isinstance(m, ChatMessageTool)]
        shell = "".join(m.text for m in done[len(steps) - 1 :])
        if len(done) < len(steps):
            output = ModelOutput.for_tool_call("mockllm/model", *steps[len(done)])
        elif "/dev/pts" not in shell and len(done) < len(steps) + 5:
            # type_submit returns once the terminal has been quiet for a moment; on a
            # busy machine (gVisor starts each process slowly) that can be after the
            # shell's first prompt and before the command's output. An agent reads
            # the rest, as Inspect's tool description tells it to (each read waits
            # for output, up to 30 s).
            output = ModelOutput.for_tool_call("mockllm/model", "bash_session", {"action": "read"})
        else:
            output = ModelOutput.from_content("mockllm/model", "\n".join(m.text for m in done))
        output.usage = usage
        return output

    task = Task(
        dataset=[Sample(input="edit, then look")],
        solver=[use_tools(text_editor(), bash_session()), generate()],
        sandbox=("crucible", CrucibleSandboxConfig(runtime=runtime)),  # type: ignore[arg-type]
    )
    try:
        [log] = inspect_eval(
            task,
            model=get_model("mockllm/model", custom_outputs=agent),
            log_dir=str(tmp_path),
            display="none",
        )
    finally:
        inspect_provider.use_engine(None)
        asyncio.run(engine.close())
        gc.collect()  # Inspect's unclosed stream warns here, not in a later test
    assert log.status == "success", log.error
    assert log.samples is not None
    transcript = log.samples[0].output.completion
    assert "File created successfully at: /root/notes.txt" in transcript, transcript
    assert "1\tedited" in transcript and "EDITED" in transcript, transcript
    assert "/dev/pts/0" in transcript, transcript  # its own terminal, the first of its devpts


@scorer(metrics=[accuracy()])
def python_in_the_sandbox() -> Scorer:
    """What inspect_evals' HumanEval scorer does: the answer run by `python -c` in the
    sample's sandbox (Inspect's default image has `python`; Debian only `python3`)."""

    async def score(state: TaskState, target: Target) -> Score:
        ran = await sample_sandbox().exec(
            ["python", "-c", "import sys; print(sys.version_info[0])"]
        )
        pip = await sample_sandbox().exec(["pip", "--version"])
        ok = ran.success and ran.stdout == target.text + "\n" and pip.success
        return Score(value=CORRECT if ok else INCORRECT, explanation=ran.stderr + pip.stderr)

    return score


@pytest.mark.parametrize("runtime", ["runc", "gvisor"])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_scorer_runs_python_in_a_sandbox_without_an_environment(
    sandbox_settings: Settings, tmp_path: Path, runtime: str
) -> None:
    """A real ``inspect_ai.eval()`` whose scorer calls ``sandbox().exec(["python", ...])``
    and ``pip`` in a sandbox of the default config (no environment)."""
    engine = Sandbox(sandbox_settings)
    inspect_provider.use_engine(engine)
    usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)

    async def model(*_: object) -> ModelOutput:
        output = ModelOutput.from_content("mockllm/model", "done")
        output.usage = usage
        return output

    task = Task(
        dataset=[Sample(input="which major version?", target="3")],
        solver=[generate()],
        scorer=python_in_the_sandbox(),
        sandbox=("crucible", CrucibleSandboxConfig(runtime=runtime)),  # type: ignore[arg-type]
    )
    try:
        [log] = inspect_eval(
            task,
            model=get_model("mockllm/model", custom_outputs=model),
            log_dir=str(tmp_path),
            display="none",
        )
    finally:
        inspect_provider.use_engine(None)
        asyncio.run(engine.close())
        gc.collect()  # Inspect's unclosed stream warns here, not in a later test
    assert log.status == "success", log.error
    assert log.samples is not None and log.samples[0].scores is not None
    score = log.samples[0].scores["python_in_the_sandbox"]
    assert score.value == CORRECT, score.explanation


async def test_local_sandboxes_take_the_default_environment(
    sandbox_settings: Settings, tmp_path: Path
) -> None:
    """Locally, CRUCIBLE_DEFAULT_ENVIRONMENT is this process's setting: a sample's
    sandbox without an ``environment`` runs over it; one the store lacks fails the
    task at task_init, naming the setting."""
    settings = sandbox_settings.model_copy(
        update={"environments_dir": tmp_path / "envs", "default_environment": "no-python"}
    )
    store = EnvironmentStore.of(settings)
    image = oci_images.Image([oci_images.host_userland_layer(python=False)])
    archive = oci_images.write_docker_archive(image, tmp_path / "userland.tar")
    await asyncio.to_thread(store.import_image, archive, "no-python")
    config = CrucibleSandboxConfig(runtime="runc")
    engine = Sandbox(settings)
    inspect_provider.use_engine(engine)
    try:
        await CrucibleSandboxEnvironment.task_init("default-env", config)
        envs = await CrucibleSandboxEnvironment.sample_init("default-env", config, {})
        try:
            ran = await envs["default"].exec(
                ["bash", "-c", "test -e /usr/bin/python3 || echo none"]
            )
            assert (ran.returncode, ran.stdout) == (0, "none\n"), ran
        finally:
            await CrucibleSandboxEnvironment.sample_cleanup("default-env", config, envs, False)
        await asyncio.to_thread(store.remove, "no-python")
        with pytest.raises(InvalidSubmission, match="CRUCIBLE_DEFAULT_ENVIRONMENT"):
            await CrucibleSandboxEnvironment.task_init("default-env", config)
    finally:
        inspect_provider.use_engine(None)
        await engine.close()
