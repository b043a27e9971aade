"""The sandbox engine: run untrusted code under runc or gVisor.

It knows nothing of HTTP or databases: code in, :class:`Result` out.

:class:`Sandbox` is imported on first use: the command line imports the engine's
models and languages for every command, and most commands never start a container
(the engine's modules cost about a third of ``crucible --help``'s start-up).
"""

from typing import TYPE_CHECKING, Any

from crucible.engine.models import (
    Events,
    FileInfo,
    Limits,
    Result,
    RunRequest,
    RuntimeInfo,
    Termination,
)

if TYPE_CHECKING:
    from crucible.engine.sandbox import Sandbox

__all__ = [
    "Events",
    "FileInfo",
    "Limits",
    "Result",
    "RunRequest",
    "RuntimeInfo",
    "Sandbox",
    "Termination",
]


def __getattr__(name: str) -> Any:
    if name == "Sandbox":
        from crucible.engine.sandbox import Sandbox

        return Sandbox
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
