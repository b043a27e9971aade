from pathlib import Path

import pytest

from crucible.core.errors import NotFound
from crucible.store import BlobStore


def test_content_addressed_and_deduplicated(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    d1 = blobs.put(b"hello")
    d2 = blobs.put(b"hello")
    assert d1 == d2 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert blobs.get(d1) == b"hello"
    assert len(list((tmp_path / "blobs").rglob("*"))) == 2  # one dir, one file


def test_unknown_or_malformed_digest_is_not_found(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    with pytest.raises(NotFound):
        blobs.get("0" * 64)
    with pytest.raises(NotFound):
        blobs.get("../../etc/passwd")
