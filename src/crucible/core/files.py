"""Files written whole or not at all.

Several processes may share a state or data directory: a file another may read is
written under a name of its own beside the target and renamed over it, so a reader
sees the old content or the new, never a part, and writers racing to make the same
file race harmlessly.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename;
    ``durable``: fsync it first (content that must survive a power loss)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
