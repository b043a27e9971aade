"""Inspect AI's own sandbox conformance suite (``inspect_ai.util._sandbox.self_check``)
against the ``crucible`` provider, local mode, under runc and under gVisor."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from inspect_ai.util import SandboxEnvironment
from inspect_ai.util._sandbox.self_check import *  # noqa: F403

from crucible import inspect_provider
from crucible.inspect_provider import CrucibleSandboxConfig, CrucibleSandboxEnvironment
from crucible.sandbox import Sandbox
from crucible.sandbox.models import SessionLimits

pytestmark = pytest.mark.timeout(120)

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
