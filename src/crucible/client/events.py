"""One event of a server's stream (Server-Sent Events), as the clients yield it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerEvent:
    """``id`` is the stream's sequence number (resume with it as Last-Event-ID)."""

    id: int
    type: str
    data: dict[str, Any]
