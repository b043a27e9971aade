"""The writable root of a long-lived sandbox: overlayfs over a Debian-looking base.

    merged root   overlay  lower = the session skeleton (a real directory tree:
                                   /etc with passwd, shadow, login.defs, skel ...)
    merged /usr   overlay  lower = the host's /usr (one layer per real toolchain
                                   directory; on a merged-/usr host only /usr)
    upper + work  one tmpfs of ``disk_mb`` mounted on the host: every write of the
                  sandbox, to any layer, is counted against that one size

Overlayfs does not follow mounts inside a lower layer, so /usr cannot be a bind inside
the skeleton: it gets an overlay of its own, mounted *inside* the merged root on the
host. runc binds the root recursively (``MS_BIND|MS_REC``), so the nested mount
comes along; so does runsc's gofer.

**Root inside, never root outside** (runc, crun): the container has a user namespace
mapping its uids 0-65535 to an unprivileged host range. Files of the skeleton and of
the host's /usr belong to host uid 0, which that namespace does not map: seen from
inside they would be owned by the overflow uid (nobody), and the sandbox's root could
not write /etc/passwd. So the lower layers are *idmapped mounts* (Linux 5.12+, ext4,
xfs, btrfs, tmpfs; overlayfs accepts idmapped lower layers since 5.19): host uid N
appears as ``base + N``, i.e. uid N inside. The upper tmpfs is owned by ``base``; what
the sandbox writes is stored under its host uids ``base + N``. runc 1.1 cannot make
idmapped mounts itself (1.2 can), so they are made here with ``open_tree`` +
``mount_setattr`` + ``move_mount``. gVisor needs none of this: its own kernel's root
is the sandbox's root and its gofer does the file I/O, so there the lower layers are
the plain directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import shutil
import stat
import subprocess
from pathlib import Path

from crucible.core.errors import SandboxUnavailable
from crucible.engine import spec, workspace

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

# x86-64 and arm64 share these numbers (the new mount API came after the split).
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE, _OPEN_TREE_CLOEXEC = 1, 0o2000000
_AT_FDCWD, _AT_EMPTY_PATH = -100, 0x1000
_MOVE_MOUNT_F_EMPTY_PATH = 4
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_MOUNT_ATTR_IDMAP = 0x100000
_MS_NOSUID, _MS_NODEV = 2, 4

ID_RANGE = 65536  # uids (and gids) 0..65535 inside
_ID_BASE = 1 << 30  # far above any login or subuid range on a normal host
_ID_SLOTS = 4096


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise SandboxUnavailable(f"{what}: {os.strerror(err)}")
    return rc


# -- uid ranges -----------------------------------------------------------------------


class IdRange:
    """A host uid/gid range of its own for one sandbox, held by an flock on a slot
    file: two sandboxes never share host uids (so none can signal, ptrace or fill the
    per-uid kernel limits of another), and the lock dies with its process, so a crashed
    supervisor's ranges come free by themselves."""

    def __init__(self, slots_dir: Path) -> None:
        slots_dir.mkdir(parents=True, exist_ok=True)
        for slot in range(_ID_SLOTS):
            fd = os.open(slots_dir / f"{slot}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._fd = fd
            self.base = _ID_BASE + slot * ID_RANGE
            return
        raise SandboxUnavailable(f"all {_ID_SLOTS} uid ranges are in use")

    def release(self) -> None:
        if self._fd != -1:
            os.close(self._fd)  # drops the flock
            self._fd = -1


async def user_namespace(base: int) -> int:
    """An fd of a user namespace mapping 0..65535 to ``base``.. (what an idmapped mount
    takes). A helper process unshares, we write its maps and keep the namespace by
    fd; the helper then exits."""
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--user", "--", "cat",
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None
    try:
        mine = os.readlink("/proc/self/ns/user")
        for _ in range(2000):  # until the helper has unshared (a few ms)
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{proc.pid}/ns/user") != mine:
                    break
            await asyncio.sleep(0.001)
        else:
            raise SandboxUnavailable("unshare --user did not start")
        _write_maps(proc.pid, base)
        return os.open(f"/proc/{proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        proc.stdin.close()
        await proc.wait()


def _write_maps(pid: int, base: int) -> None:
    Path(f"/proc/{pid}/uid_map").write_text(f"0 {base} {ID_RANGE}\n")
    Path(f"/proc/{pid}/setgroups").write_text("deny")
    Path(f"/proc/{pid}/gid_map").write_text(f"0 {base} {ID_RANGE}\n")


def bind_idmapped(source: Path, target: Path, userns_fd: int) -> None:
    """Bind ``source`` read-only at ``target`` with its ids shifted by ``userns_fd``."""
    target.mkdir(parents=True, exist_ok=True)
    flags = _OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC
    fd = _check(_libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, str(source).encode(), flags), "open_tree")
    try:
        attr = _MountAttr(
            _MOUNT_ATTR_IDMAP | _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV,
            0,
            0,
            userns_fd,
        )
        size = ctypes.sizeof(attr)
        rc = _libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr), size)
        _check(rc, f"idmapped mount of {source} (needs Linux 5.12+ and ext4/xfs/btrfs)")
        rc = _libc.syscall(
            _SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, str(target).encode(), _MOVE_MOUNT_F_EMPTY_PATH
        )
        _check(rc, f"move_mount to {target}")
    finally:
        os.close(fd)


def mount_overlay(target: Path, lower: Path, upper: Path, work: Path) -> None:
    """Mount an overlay at ``target``. The layers are named through ``/proc/self/fd``:
    overlayfs shows its options as given in the container's /proc/self/mounts, and
    host paths (the data directory, the state directory) are none of its business."""
    target.mkdir(parents=True, exist_ok=True)
    fds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for d in (lower, upper, work)]
    try:
        low, up, wk = (f"/proc/self/fd/{fd}" for fd in fds)
        # userxattr is not needed: the overlay is mounted by the host's root.
        opts = f"lowerdir={low},upperdir={up},workdir={wk}"
        rc = _libc.mount(
            b"overlay", str(target).encode(), b"overlay", _MS_NOSUID | _MS_NODEV, opts.encode()
        )
        _check(rc, f"mount overlay on {target}")
    finally:
        for fd in fds:
            os.close(fd)


# -- the mounted root -----------------------------------------------------------------


def layers() -> list[str]:
    """Host toolchain directories that get an overlay of their own inside the root."""
    return [d for d in spec.TOOLCHAIN_DIRS if Path(d).is_dir() and not Path(d).is_symlink()]


async def mount_root(
    bundle: Path,
    skeleton: Path,
    disk_mb: int,
    *,
    id_base: int | None,
    userns_fd: int,
    host_toolchain: bool = True,
) -> Path:
    """Mount the writable root of a sandbox under ``bundle``; returns the merged root.

    ``skeleton``: the lower layer of ``/``: the session skeleton with the host's
    toolchain layered in (``host_toolchain``), or an environment's root, alone.
    ``id_base``: the host uid of the sandbox's root (runc, crun), or None (gVisor).
    Undo with :func:`crucible.engine.workspace.unmount_below` of ``bundle``.
    """
    upper = bundle / "upper"
    upper.mkdir(parents=True)
    owner = f",uid={id_base},gid={id_base}" if id_base is not None else ""
    workspace.mount_tmpfs(upper, disk_mb, options=f"nr_inodes=262144,mode=0755{owner}")
    merged = bundle / "rootfs"
    pairs = [("/", skeleton), *((d, Path(d)) for d in (layers() if host_toolchain else []))]
    for dest, source in pairs:
        name = dest.strip("/") or "root"
        diff, work = upper / name / "diff", upper / name / "work"
        for d in (upper / name, diff, work):
            d.mkdir()
            if id_base is not None:
                os.chown(d, id_base, id_base)
        # The upper root's attributes become the merged directory's: a real root's.
        st = os.stat(source)
        diff.chmod(st.st_mode & 0o7777)
        if id_base is not None:
            os.chown(diff, id_base + st.st_uid, id_base + st.st_gid)
        lower = source
        if id_base is not None:
            lower = bundle / "lower" / name
            bind_idmapped(source, lower, userns_fd)
        mount_overlay(merged / dest.lstrip("/") if dest != "/" else merged, lower, diff, work)
    if not host_toolchain:  # an image's root: whatever it has at /tmp
        sticky_tmp(merged, id_base or 0)
    return merged


def mount_run_root(bundle: Path, lower: Path, disk_mb: int) -> Path:
    """The root of a one-shot run in an environment: an overlay over the environment's
    read-only root (``lower``), with an upper layer of its own on a tmpfs of
    ``disk_mb`` (runc makes its mount points there; the container sees the root
    read-only). Returns the merged root; undo with ``workspace.unmount_below(bundle)``."""
    upper = bundle / "upper"
    upper.mkdir()
    workspace.mount_tmpfs(upper, disk_mb, options="nr_inodes=65536,mode=0755")
    diff, work = upper / "diff", upper / "work"
    diff.mkdir()
    work.mkdir()
    merged = bundle / "rootfs"
    mount_overlay(merged, lower, diff, work)
    sticky_tmp(merged)
    return merged


def sticky_tmp(root: Path, uid: int = 0) -> None:
    """Make ``root``'s /tmp a real directory of mode 1777, whatever the image had there
    (nothing, a file, a symlink to anywhere: it is replaced in the upper layer, never
    followed). runc 1.1 gives the /tmp tmpfs its mount point's mode."""
    tmp = root / "tmp"
    try:
        st = os.lstat(tmp)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(tmp)
        st = None
    if st is None:
        os.mkdir(tmp)
        os.chown(tmp, uid, uid, follow_symlinks=False)
    os.chmod(tmp, 0o1777)  # a directory (checked above), not a link to follow


# -- the skeleton ---------------------------------------------------------------------

_VERSION = "2"  # bump when the skeleton's contents change (2: spec.ensure_compat)

_USERS = [
    # name, uid, gid, home, shell (Debian 12's base-passwd)
    ("root", 0, 0, "/root", "/bin/bash"),
    ("daemon", 1, 1, "/usr/sbin", "/usr/sbin/nologin"),
    ("bin", 2, 2, "/bin", "/usr/sbin/nologin"),
    ("sys", 3, 3, "/dev", "/usr/sbin/nologin"),
    ("sync", 4, 65534, "/bin", "/bin/sync"),
    ("games", 5, 60, "/usr/games", "/usr/sbin/nologin"),
    ("man", 6, 12, "/var/cache/man", "/usr/sbin/nologin"),
    ("lp", 7, 7, "/var/spool/lpd", "/usr/sbin/nologin"),
    ("mail", 8, 8, "/var/mail", "/usr/sbin/nologin"),
    ("news", 9, 9, "/var/spool/news", "/usr/sbin/nologin"),
    ("uucp", 10, 10, "/var/spool/uucp", "/usr/sbin/nologin"),
    ("proxy", 13, 13, "/bin", "/usr/sbin/nologin"),
    ("www-data", 33, 33, "/var/www", "/usr/sbin/nologin"),
    ("backup", 34, 34, "/var/backups", "/usr/sbin/nologin"),
    ("list", 38, 38, "/var/list", "/usr/sbin/nologin"),
    ("irc", 39, 39, "/run/ircd", "/usr/sbin/nologin"),
    ("_apt", 42, 65534, "/nonexistent", "/usr/sbin/nologin"),
    ("nobody", 65534, 65534, "/nonexistent", "/usr/sbin/nologin"),
]
_GROUPS = [
    ("root", 0), ("daemon", 1), ("bin", 2), ("sys", 3), ("adm", 4), ("tty", 5),
    ("disk", 6), ("lp", 7), ("mail", 8), ("news", 9), ("uucp", 10), ("man", 12),
    ("proxy", 13), ("kmem", 15), ("dialout", 20), ("fax", 21), ("voice", 22),
    ("cdrom", 24), ("floppy", 25), ("tape", 26), ("sudo", 27), ("audio", 29),
    ("dip", 30), ("www-data", 33), ("backup", 34), ("operator", 37), ("list", 38),
    ("irc", 39), ("src", 40), ("shadow", 42), ("utmp", 43), ("video", 44), ("sasl", 45),
    ("plugdev", 46), ("staff", 50), ("games", 60), ("users", 100), ("nogroup", 65534),
]  # fmt: skip
_SHADOW_GID = 42
# Host /etc files a Debian userland reads, copied (never bound): none holds a secret.
_ETC_COPIED = (
    "adduser.conf", "deluser.conf", "login.defs", "default/useradd", "skel", "shells",
    "profile", "bash.bashrc", "inputrc", "debian_version", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "alternatives", "localtime", "timezone", "pam.conf", "pam.d",
    "security", "environment", "issue", "mime.types", "ssl/openssl.cnf",
)  # fmt: skip
_NSSWITCH = (
    "passwd: files\ngroup: files\nshadow: files\ngshadow: files\nhosts: files dns\n"
    "networks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n"
)


def ensure_skeleton(path: Path, mount_points: list[str]) -> Path:
    """The lower layer of every sandbox's root (built once per version, atomically).

    ``mount_points``: the languages' host /etc paths (e.g. /etc/java-17-openjdk),
    copied in so every toolchain finds its configuration.
    """
    path = path.with_name(f"{path.name}-v{_VERSION}")
    if path.exists():
        return path
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _build_skeleton(tmp, mount_points)
    try:
        tmp.rename(path)
    except OSError:  # a concurrent builder won
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _build_skeleton(root: Path, mount_points: list[str]) -> None:
    modes = {"root": 0o700, "tmp": 0o1777, "var/tmp": 0o1777, "run/lock": 0o1777}
    dirs = [
        "boot", "dev", "etc/default", "etc/ssl", "home", "media", "mnt", "opt", "proc",
        "root", "run/lock", "srv", "sys", "tmp", "usr", "var/backups", "var/cache",
        "var/lib/dpkg", "var/local", "var/log", "var/mail", "var/opt", "var/spool",
        "var/tmp", ".crucible",
    ]  # fmt: skip
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d).chmod(modes.get(d, 0o755))
    os.chown(root / "var/mail", 0, 8)
    (root / "var/mail").chmod(0o2775)
    for top in spec.TOOLCHAIN_DIRS[1:]:
        host = Path(top)
        if host.is_symlink():
            (root / top.lstrip("/")).symlink_to(os.readlink(host))
        elif host.is_dir():
            (root / top.lstrip("/")).mkdir()
    (root / "var/run").symlink_to("/run")
    (root / "var/lock").symlink_to("/run/lock")
    etc = root / "etc"
    for name in (*_ETC_COPIED, *(m.removeprefix("/etc/") for m in mount_points)):
        source, target = Path("/etc") / name, etc / name
        if target.exists() or not (source.exists() or source.is_symlink()):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        elif source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
    if not (etc / "os-release").exists():
        (etc / "os-release").symlink_to("../usr/lib/os-release")
    (etc / "mtab").symlink_to("../proc/self/mounts")
    (etc / "passwd").write_text("".join(f"{n}:x:{u}:{g}:{n}:{h}:{s}\n" for n, u, g, h, s in _USERS))
    (etc / "group").write_text("".join(f"{n}:x:{g}:\n" for n, g in _GROUPS))
    (etc / "shadow").write_text("".join(f"{n}:*:19000:0:99999:7:::\n" for n, *_ in _USERS))
    (etc / "gshadow").write_text("".join(f"{n}:*::\n" for n, _ in _GROUPS))
    for secret in ("shadow", "gshadow"):
        os.chown(etc / secret, 0, _SHADOW_GID)
        (etc / secret).chmod(0o640)
    for name, text in {
        "hostname": "sandbox\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost ip6-localhost ip6-loopback\n",
        "resolv.conf": "",
        "nsswitch.conf": _NSSWITCH,
        "subuid": "",
        "subgid": "",
    }.items():
        (etc / name).write_text(text)
    (root / spec.INIT_PATH.lstrip("/")).touch()
    (root / spec.SECCOMP_PATH.lstrip("/")).touch()
    spec.ensure_compat(root)  # python and pip, as Inspect's default image has them
