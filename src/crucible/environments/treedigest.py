"""A content digest of a directory tree: what a root file system *is*, not when it was
made.

Every entry below the root counts, in sorted order, as a record of its path, type,
permission bits (setuid, setgid and sticky included), owner, group and extended
attributes (``security.capability`` grants privileges as surely as a setuid bit),
plus what the type holds: a file's SHA-256, a symlink's target, a device's numbers.
Times, inode numbers, link counts and sizes on disk do not count, so the same
packages unpacked twice, or a tree copied with ``cp -a``, digest alike; a hard link
counts as a second file with the same content (read-only roots cannot tell them
apart). The root directory's own mode and owner do not count either: the store
sets them when it takes a root in.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

# Bump when the record format changes: old and new digests must never be compared.
_FORMAT = b"crucible-tree-v1\n"
_TYPES = {
    stat.S_IFREG: b"f",
    stat.S_IFDIR: b"d",
    stat.S_IFLNK: b"l",
    stat.S_IFCHR: b"c",
    stat.S_IFBLK: b"b",
    stat.S_IFIFO: b"p",
    stat.S_IFSOCK: b"s",
}


def _field(data: bytes) -> bytes:
    # Length-prefixed: a path or a link target may hold any byte but NUL, newlines too.
    return str(len(data)).encode() + b":" + data


def _file_sha256(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest().encode()


def _xattrs(path: str) -> bytes:
    try:
        names = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:  # a file system without xattrs
        return b""
    out = []
    for name in names:
        value = os.getxattr(path, name, follow_symlinks=False)
        out.append(_field(name.encode()) + _field(hashlib.sha256(value).hexdigest().encode()))
    return b"".join(out)


def _record(rel: bytes, path: str, seen: dict[tuple[int, int], bytes]) -> bytes:
    st = os.lstat(path)
    kind = _TYPES[stat.S_IFMT(st.st_mode)]
    if kind == b"f":
        key = (st.st_dev, st.st_ino)  # hash the content of a hard-linked file once
        if key not in seen:
            seen[key] = _file_sha256(path)
        payload = seen[key]
    elif kind == b"l":
        payload = os.fsencode(os.readlink(path))
    elif kind in (b"c", b"b"):
        payload = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}".encode()
    else:
        payload = b""
    meta = f"{stat.S_IMODE(st.st_mode):o} {st.st_uid} {st.st_gid}".encode()
    fields = (rel, kind, meta, _xattrs(path), payload)
    return b"".join(_field(f) for f in fields) + b"\n"


def _entries(top: bytes) -> Iterator[bytes]:
    """Relative paths below ``top``, depth first, each directory's names sorted as
    bytes (so the order cannot depend on the locale); symlinks are not followed."""
    pending: list[Iterator[bytes]] = [iter(sorted(os.listdir(top)))]
    prefixes: list[bytes] = [b""]
    while pending:
        name = next(pending[-1], None)
        if name is None:
            pending.pop()
            prefixes.pop()
            continue
        rel = prefixes[-1] + name
        yield rel
        if stat.S_ISDIR(os.lstat(os.path.join(top, rel)).st_mode):
            pending.append(iter(sorted(os.listdir(os.path.join(top, rel)))))
            prefixes.append(rel + b"/")


def tree_digest(root: Path) -> str:
    """``sha256:<hex>`` of the tree under ``root`` (module docstring). Symlinks are
    recorded, never followed. Raises OSError when the tree cannot be read."""
    h = hashlib.sha256(_FORMAT)
    seen: dict[tuple[int, int], bytes] = {}
    top = os.fsencode(root)
    for rel in _entries(top):
        h.update(_record(rel, os.fsdecode(os.path.join(top, rel)), seen))
    return "sha256:" + h.hexdigest()
