"""A run's /workspace: a size-limited tmpfs mounted on the host, bound into the container.

Mounted on the host (not inside the container) so that it survives from the compile
step to the run step and so the supervisor can list what the program left behind.
Everything in it was written by the untrusted program: it is read with lstat and
O_NOFOLLOW only, so a symlink planted there can never make the supervisor (root) read
or copy a host file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from crucible.core.errors import InvalidSubmission, SandboxUnavailable
from crucible.engine.models import FileInfo
from crucible.engine.spec import SANDBOX_GID, SANDBOX_UID

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_MS_NOSUID, _MS_NODEV = 2, 4
_MNT_DETACH = 2


def mount_tmpfs(target: Path, size_mb: int, *, options: str | None = None) -> None:
    """Mount a tmpfs of ``size_mb`` MiB at ``target``: by default owned by the sandbox
    user, mode 0700; ``options`` replaces those (e.g. ``mode=0755,uid=...``)."""
    target.mkdir(parents=True, exist_ok=True)
    rest = options or f"nr_inodes=65536,uid={SANDBOX_UID},gid={SANDBOX_GID},mode=0700"
    opts = f"size={size_mb}m,{rest}"
    rc = _libc.mount(
        b"tmpfs", str(target).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, opts.encode()
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise SandboxUnavailable(f"mount tmpfs on {target}: {os.strerror(err)} (root required)")


def unmount(target: Path) -> None:
    """Lazily unmount ``target``; a no-op when nothing is mounted there."""
    if _libc.umount2(str(target).encode(), _MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, os.strerror(err), str(target))


def unmount_below(root: Path) -> None:
    """Lazily unmount everything mounted at or below ``root``, deepest first: a
    session's bundle holds overlays over host directories, which must be gone before
    anything under ``root`` is removed (``rmtree`` crosses mount points)."""
    prefix = str(root).rstrip("/")
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    # mountinfo escapes blanks as octal (\040); our bundle paths have none.
    mine = [p for p in points if p == prefix or p.startswith(prefix + "/")]
    for point in sorted(mine, key=lambda p: p.count("/"), reverse=True):
        unmount(Path(point))


def safe_relative(path: str) -> PurePosixPath:
    """Validate a submitted file name: relative, normalised, inside /workspace."""
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\x00" in path or p.parts[:1] == (".",):
        raise InvalidSubmission(
            f"file path {path!r} must be relative and stay inside /workspace", field="files"
        )
    if len(path) > 255:
        raise InvalidSubmission(f"file path {path[:40]!r}... is too long", field="files")
    return p


def write_files(root: Path, files: dict[str, str]) -> None:
    """Write the submitted files into a fresh workspace, owned by the sandbox user."""
    for name, content in files.items():
        rel = safe_relative(name)
        target = root.joinpath(*rel.parts)
        for parent in reversed(target.relative_to(root).parents[:-1]):
            d = root / parent
            d.mkdir(exist_ok=True)
            os.chown(d, SANDBOX_UID, SANDBOX_GID)
        target.write_bytes(content.encode("utf-8", "surrogateescape"))
        os.chown(target, SANDBOX_UID, SANDBOX_GID)


@dataclass
class Listing:
    """What a program left in its workspace: regular files (sorted), what was left out
    by reason (see ``Result.files_omitted``), and each listed file's exact name."""

    files: list[FileInfo] = field(default_factory=list)
    omitted: dict[str, int] = field(default_factory=dict)
    raw: dict[str, bytes] = field(default_factory=dict)  # FileInfo.path -> exact bytes

    def skip(self, reason: str, n: int = 1) -> None:
        self.omitted[reason] = self.omitted.get(reason, 0) + n


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_Entry = tuple[bytes, os.stat_result | None]


def _entries(fd: int) -> list[_Entry]:
    """A directory's entries (name, lstat), sorted by name; ``fd`` stays open."""
    found: list[_Entry] = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                st: os.stat_result | None = entry.stat(follow_symlinks=False)
            except OSError:
                st = None
            found.append((os.fsencode(entry.name), st))
    found.sort(key=lambda item: item[0])
    return found


def list_files(
    root: Path,
    *,
    exclude: set[str],
    max_files: int,
    max_depth: int = 64,
    max_entries: int = 100_000,
    budget_s: float = 2.0,
) -> Listing:
    """Regular files under ``root``, bounded in files, entries seen, depth and time.

    Everything here is hostile input: the walk never follows a link (each directory is
    opened relative to its parent's descriptor with O_NOFOLLOW, so no path is resolved
    twice and no depth meets PATH_MAX), never opens a file (a FIFO cannot block it), is
    iterative (no recursion limit), holds at most ``max_depth`` descriptors, and takes
    names as bytes (any encoding)."""
    listing = Listing()
    deadline = time.monotonic() + budget_s
    seen = 0
    # Depth first, one frame per open directory: (fd, its path + b"/", depth, entries).
    stack: list[tuple[int, bytes, int, Iterator[_Entry]]] = []
    try:
        top = os.open(root, _DIR_FLAGS)
    except OSError:
        listing.skip("unreadable")
        return listing
    try:
        stack.append((top, b"", 0, iter(_entries(top))))
    except OSError:
        os.close(top)
        listing.skip("unreadable")
        return listing
    try:
        while stack:
            fd, rel, depth, entries = stack[-1]
            item = next(entries, None)
            if item is None:
                os.close(fd)
                stack.pop()
                continue
            seen += 1
            if seen > max_entries or time.monotonic() > deadline:
                listing.skip("entries" if seen > max_entries else "time")
                break
            name, st = item
            path = rel + name
            if st is None:
                listing.skip("unreadable")
            elif stat.S_ISDIR(st.st_mode):
                if depth + 1 > max_depth:
                    listing.skip("deep")
                    continue
                try:
                    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    listing.skip("unreadable")
                    continue
                try:
                    stack.append((sub, path + b"/", depth + 1, iter(_entries(sub))))
                except OSError:
                    os.close(sub)
                    listing.skip("unreadable")
            elif not stat.S_ISREG(st.st_mode):
                listing.skip("special")
            else:
                info = FileInfo.of(path, st.st_size)
                if info.path in exclude:
                    continue
                if len(listing.files) >= max_files:
                    listing.skip("entries")
                    continue
                listing.files.append(info)
                listing.raw[info.path] = path
    finally:
        for fd, *_ in stack:
            os.close(fd)
    return listing


def _open_below(root: Path, raw: bytes) -> int:
    """Open the regular file at ``raw`` (relative, bytes) under ``root`` read-only, every
    component with O_NOFOLLOW, relative to its parent's descriptor; raises OSError."""
    parts = raw.split(b"/")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
        return os.open(parts[-1], flags, dir_fd=fd)
    finally:
        os.close(fd)


def copy_files(listing: Listing, root: Path, dest: Path, *, max_bytes: int) -> None:
    """Copy the listed files no larger than ``max_bytes`` to ``dest`` (under their
    display names), never following a link, never blocking on a FIFO."""
    for info in listing.files:
        if info.size > max_bytes:
            continue
        try:
            fd = _open_below(root, listing.raw.get(info.path, info.path.encode()))
        except OSError:
            continue
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                continue
            target = dest / info.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read(max_bytes + 1)[:max_bytes])
