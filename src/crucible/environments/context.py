"""A Dockerfile build's context sent as a tar archive (``POST /environments/build``):
hostile input, checked whole before anything is written, then unpacked.

The checks (:func:`check_members`) are those an image layer gets on import
(``store._Scan``), with the refusals a context needs on top, each naming the entry:

* a name that is absolute or has a ``..`` part;
* anything but a regular file, a directory, a symbolic or a hard link (device nodes,
  FIFOs, sparse or unknown types);
* a symbolic link whose target is absolute or leads out of the context from where it
  is; a hard link to anything but an entry inside the context;
* an entry written through a symbolic link an earlier entry made;
* more than ``max_entries`` entries or ``max_bytes`` of content (PayloadTooLarge).

Then Python's own ``data`` extraction filter (PEP 706) unpacks it, a second guard
that resolves every link against what is really on disk; it also clears set-uid,
set-gid and sticky bits and group/other write bits. Owners are not taken from the
archive: every entry is root's (``COPY`` makes files root's unless ``--chown``), so
the same directory sent by two users is the same context, and the same cache key.
"""

from __future__ import annotations

import posixpath
import tarfile
from pathlib import Path, PurePosixPath

from crucible.core.errors import InvalidSubmission, PayloadTooLarge

__all__ = ["check_members", "dockerfile_path", "unpack_context"]

_FIELD = "context"


def _refuse(message: str) -> InvalidSubmission:
    return InvalidSubmission(f"the build context {message}; nothing was built", field=_FIELD)


def _parts(name: str) -> list[str]:
    return [p for p in PurePosixPath(name).parts if p not in (".", "")]


def check_members(tar: tarfile.TarFile, *, max_bytes: int, max_entries: int) -> None:
    """Refuse the archive (module docstring) before anything of it is written. Raises
    InvalidSubmission, PayloadTooLarge."""
    kinds: dict[str, str] = {}  # path -> "dir" | "file" | "symlink"
    total = entries = 0
    for m in tar:
        name = m.name
        if name.startswith("/"):
            raise _refuse(f"has an absolute path {name!r}")
        parts = _parts(name)
        if ".." in parts:
            raise _refuse(f"has a path with '..': {name!r}")
        entries += 1
        total += max(m.size, 0)
        if entries > max_entries:
            raise PayloadTooLarge(f"the build context has more than {max_entries} entries")
        if total > max_bytes:
            raise PayloadTooLarge(f"the build context unpacks to more than {max_bytes} bytes")
        if not parts:
            if not m.isdir():
                raise _refuse(f"has an entry {name!r} that is not a directory")
            continue
        if m.ischr() or m.isblk():
            raise _refuse(f"has a device node {name!r}")
        if m.isfifo():
            raise _refuse(f"has a FIFO {name!r}")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise _refuse(f"has {name!r}, which is not a file, a directory or a link")
        for i in range(1, len(parts)):
            if kinds.get("/".join(parts[:i])) == "symlink":
                raise _refuse(f"writes {name!r} through the symbolic link {'/'.join(parts[:i])!r}")
        path = "/".join(parts)
        if m.issym():
            target = m.linkname
            inside = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
            if target.startswith("/") or inside == ".." or inside.startswith("../"):
                raise _refuse(f"has a symbolic link {name!r} -> {target!r} out of it")
        if m.islnk():
            target_parts = _parts(m.linkname)
            if m.linkname.startswith("/") or ".." in target_parts or not target_parts:
                raise _refuse(f"has a hard link {name!r} -> {m.linkname!r} out of it")
        for i in range(1, len(parts)):
            kinds.setdefault("/".join(parts[:i]), "dir")
        kinds[path] = "symlink" if m.issym() else "dir" if m.isdir() else "file"


def _root_owned(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    checked = tarfile.data_filter(member, dest)
    return checked.replace(uid=0, gid=0, uname="root", gname="root", deep=False)


def unpack_context(archive: Path, dest: Path, *, max_bytes: int, max_entries: int) -> None:
    """Unpack the tar (or compressed tar) ``archive`` into the new directory ``dest``
    once :func:`check_members` accepts it. Raises InvalidSubmission (not a tar, a
    hostile entry), PayloadTooLarge."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            check_members(tar, max_bytes=max_bytes, max_entries=max_entries)
            dest.mkdir()
            tar.extractall(dest, filter=_root_owned)
    except (tarfile.TarError, EOFError, OSError) as exc:
        # FilterError is a TarError: the second guard's refusals land here too.
        raise _refuse(f"is not a readable tar archive ({exc})") from None


def dockerfile_path(context: Path, dockerfile: str) -> Path:
    """``dockerfile`` (a path inside ``context``, as sent) as a path relative to it.
    Raises InvalidSubmission when it is absolute, leaves the context (``..`` or a link
    out of it) or is no regular file."""
    parts = _parts(dockerfile)
    if dockerfile.startswith("/") or ".." in parts or not parts:
        raise InvalidSubmission(
            f"dockerfile {dockerfile!r} is not a path inside the context", field="dockerfile"
        )
    rel = Path(*parts)
    real = (context / rel).resolve()
    if not real.is_relative_to(context.resolve()):
        raise InvalidSubmission(
            f"dockerfile {dockerfile!r} leads out of the context", field="dockerfile"
        )
    if not real.is_file():
        raise InvalidSubmission(
            f"the context has no Dockerfile at {dockerfile!r}", field="dockerfile"
        )
    return rel
