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
from pathlib import Path, PurePosixPath

from crucible.errors import InvalidSubmission, SandboxUnavailable
from crucible.sandbox.models import FileInfo
from crucible.sandbox.spec import SANDBOX_GID, SANDBOX_UID

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


def list_files(root: Path, *, exclude: set[str], max_files: int) -> list[FileInfo]:
    """Regular files under ``root`` (symlinks and devices skipped), sorted, capped."""
    found: list[FileInfo] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel in exclude:
                continue
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                found.append(FileInfo(path=rel, size=st.st_size))
                if len(found) >= max_files:
                    return found
    return found


def copy_files(root: Path, files: list[FileInfo], dest: Path, *, max_bytes: int) -> None:
    """Copy produced files no larger than ``max_bytes`` to ``dest``, never following links."""
    for info in files:
        if info.size > max_bytes:
            continue
        src = root / info.path
        target = dest / info.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                continue
            target.write_bytes(f.read(max_bytes + 1)[:max_bytes])
