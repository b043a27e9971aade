"""Long-lived sandboxes an agent drives step by step: exec, write_file, read_file.

INTERFACE SKELETON (being implemented): the signatures below are the contract between
the engine (this module) and the service/API layer (``crucible.sandboxes``). Keep them.

A :class:`Session` is one container that stays up until closed: a writable root over
the read-only base (an overlay with a size-limited upper layer), root inside mapped
to an unprivileged host uid range (runc) or gVisor's own root, no network, limits for
the whole sandbox. It is built on the same container lifecycle as one-shot runs
(``crucible.sandbox.container``).
"""

from __future__ import annotations

from crucible.sandbox.accounting import Usage
from crucible.sandbox.models import ExecResult, SessionSpec
from crucible.sandbox.output import OutputCallback

MAX_EXEC_OUTPUT = 10 << 20  # per stream; the tail is kept past it
MAX_FILE_BYTES = 100 << 20


class Session:
    """One long-lived sandbox. Obtain with :meth:`Sessions.create`; ``close`` when done."""

    id: str
    spec: SessionSpec

    @property
    def alive(self) -> bool:
        """False once the sandbox's init has ended (killed, crashed) or it was closed."""
        raise NotImplementedError

    async def exec(
        self,
        cmd: list[str],
        *,
        input: bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout_s: float | None = None,
        on_output: OutputCallback | None = None,
        output_cap: int = MAX_EXEC_OUTPUT,
    ) -> ExecResult:
        """Run ``cmd`` in the sandbox and report what it did.

        ``on_output(stream, chunk)`` receives output as it is produced. A timeout
        kills the exec's whole process tree (not the sandbox): ``timed_out`` is set.
        An unknown ``user`` gives a failed result (returncode != 0) naming the user.
        Raises :class:`~crucible.errors.SandboxStopped` when the sandbox is gone.
        """
        raise NotImplementedError

    async def write_file(self, path: str, data: bytes) -> None:
        """Write ``data`` at ``path`` (absolute, or relative to the working directory),
        creating parents. Never reaches outside the sandbox's own root, whatever
        symlinks the program planted. Raises ``SandboxPermissionDenied``,
        ``SandboxIsADirectory``, ``SandboxFileTooLarge`` (over ``MAX_FILE_BYTES``),
        ``SandboxStopped``."""
        raise NotImplementedError

    async def read_file(self, path: str, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
        """The bytes at ``path``. Raises ``SandboxFileNotFound``,
        ``SandboxPermissionDenied``, ``SandboxIsADirectory``, ``SandboxFileTooLarge``
        (over ``max_bytes``), ``SandboxStopped``."""
        raise NotImplementedError

    def usage(self) -> Usage:
        """The sandbox's cgroup counters so far (CPU, peak memory, OOM kills)."""
        raise NotImplementedError

    async def close(self) -> Usage:
        """Stop and remove the sandbox (idempotent); returns its final counters."""
        raise NotImplementedError


class Sessions:
    """Creates and tracks this process's long-lived sandboxes (one per engine)."""

    async def create(self, spec: SessionSpec, *, session_id: str) -> Session:
        """Create and start a sandbox named ``session_id`` (the API's sandbox id).
        Raises ``SandboxUnavailable`` / ``RuntimeFailure`` on platform failures."""
        raise NotImplementedError

    def get(self, session_id: str) -> Session | None:
        raise NotImplementedError

    async def sweep(self) -> list[str]:
        """Remove sandboxes left by a dead owner process; returns their ids."""
        raise NotImplementedError

    async def close_all(self) -> None:
        raise NotImplementedError
