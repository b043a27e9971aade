"""The sandbox engine: run untrusted code under runc or gVisor.

It knows nothing of HTTP or databases: code in, :class:`Result` out.
"""

from crucible.engine.models import (
    Events,
    FileInfo,
    Limits,
    Result,
    RunRequest,
    RuntimeInfo,
    Termination,
)
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
