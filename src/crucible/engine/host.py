"""What long-lived sandboxes (:mod:`.session`) use of the engine that hosts them.

:class:`~crucible.engine.sandbox.Sandbox` is the one implementation: it owns the
runtimes, the prepared assets (init, seccomp filter, gVisor preload), the bundles
directory and the sweep, and hands itself to ``Sessions``. The Protocol lets
``session.py`` name that dependency without importing ``sandbox.py``, which imports
it (the two modules were an import cycle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from crucible.core.config import Settings
from crucible.engine.models import RuntimeName
from crucible.engine.runtime import Runtime


class SessionHost(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def bundles_dir(self) -> Path: ...

    @property
    def host_mounts(self) -> list[str]: ...

    @property
    def init_binary(self) -> Path: ...

    @property
    def seccomp_bpf(self) -> Path: ...

    @property
    def gvisor_preload(self) -> tuple[Path, Path] | None: ...

    def get_runtime(self, name: RuntimeName) -> Runtime: ...

    async def prepare(self) -> None:
        """Build the shared assets (idempotent)."""

    async def sweep(self) -> list[str]:
        """Remove leftovers of crashed supervisors."""
