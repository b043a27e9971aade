"""Content-addressed blobs on disk: full outputs and produced files.

A blob's name is the SHA-256 of its content, so storing the same bytes twice costs
nothing and a blob, once written, never changes. Writes go to a temporary file that
is renamed into place, so a reader never sees a half-written blob.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from crucible.core.errors import NotFound
from crucible.core.files import write_atomic

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    """Blobs under ``root``/ab/cdef…; ``put`` returns the digest, ``path`` finds it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise NotFound(f"no blob {digest!r}")
        return self.root / digest[:2] / digest[2:]

    def put(self, data: bytes) -> str:
        """Store ``data``; returns its hex SHA-256."""
        digest = hashlib.sha256(data).hexdigest()
        target = self._path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(exist_ok=True)
        write_atomic(target, data, durable=True)
        return digest

    def put_file(self, source: Path) -> str:
        """Store the content of ``source`` (a regular file we wrote ourselves)."""
        return self.put(source.read_bytes())

    def path(self, digest: str) -> Path:
        """The file holding ``digest``; raises NotFound when absent."""
        target = self._path(digest)
        if not target.is_file():
            raise NotFound(f"no blob {digest}")
        return target

    def get(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()
