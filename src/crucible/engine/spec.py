"""Builds a run's OCI bundle: the shared read-only root file system and config.json.

The root is a skeleton directory (empty mount points, a two-line /etc/passwd,
symlinks for a merged /usr, the ``python`` and ``pip`` links of ``COMPAT_BIN``)
shared by every run and mounted read-only. The toolchain comes in through read-only
binds of host paths: /usr, and on hosts without a merged /usr also /bin, /lib, /lib64
and /sbin; plus the few /etc files a toolchain reads. Nothing else of the host is
visible.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from crucible.engine.models import Limits

SANDBOX_UID = 65534
SANDBOX_GID = 65534
INIT_PATH = "/.crucible/init"
SECCOMP_PATH = "/.crucible/seccomp.bpf"  # read by the init (init.c)
# gVisor only: a statx() that drops AT_NO_AUTOMOUNT (gvisor_statx.c), preloaded into
# every dynamically linked program through /etc/ld.so.preload.
GVISOR_STATX_PATH = "/.crucible/gvisor-statx.so"
LD_SO_PRELOAD = "/etc/ld.so.preload"
WORKSPACE = "/workspace"
GVISOR_PIDS_OVERHEAD = 2048
PATH = "/usr/local/bin:/usr/bin:/bin"
# Names a sandbox without an environment has besides the host's /usr: tasks written for
# Inspect AI's default image (aisiuk/inspect-tool-support, a Python image) run `python`
# and `pip`, while Debian's python3 and python3-pip install `python3` and `pip3` (and,
# since bookworm, `pip`). The bound /usr cannot take a file, so these links live in a
# directory of the skeleton, *last* on the PATH: whatever the host has wins (a
# python-is-python3 host's /usr/bin/python, what an agent installs in /usr/local/bin).
COMPAT_BIN = "/.crucible/bin"
COMPAT_LINKS = {"python": "/usr/bin/python3", "pip": "/usr/bin/pip3"}
HOST_PATH = f"{PATH}:{COMPAT_BIN}"
# PEP 668 keeps pip off a system's own Python (Debian's EXTERNALLY-MANAGED). In a
# sandbox that Python is the sandbox's: what pip installs lands in the sandbox's own
# layer (or its HOME), as in Inspect's image, where `pip install` just works.
PIP_CONF = "[global]\nbreak-system-packages = true\n"

# Top-level host directories a toolchain lives in. On a merged-/usr host the
# last four are symlinks into /usr and are recreated as symlinks in the skeleton.
TOOLCHAIN_DIRS = ("/usr", "/bin", "/lib", "/lib64", "/sbin")
# The only host files from /etc a toolchain reads: the dynamic loader's cache,
# Debian's alternatives (/usr/bin/java -> /etc/alternatives/java), the time zone.
ETC_FILES = ("/etc/ld.so.cache", "/etc/alternatives", "/etc/localtime")

_PASSWD = (
    "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n"
    "sandbox:x:65534:65534:sandbox:/workspace:/bin/sh\n"
)
_GROUP = "root:x:0:\nsandbox:x:65534:\n"

# OCI defaults (runc spec): host information under /proc the program must not see
# or change.
MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
]


def ensure_rootfs(path: Path, mount_points: list[str] = ()) -> Path:  # type: ignore[assignment]
    """Create (idempotently) the skeleton root file system shared by all runs.

    ``mount_points`` are the host paths languages bind (e.g. /etc/java-17-openjdk):
    the root is mounted read-only, so their mount points must exist beforehand.
    """
    for d in ("proc", "dev", "tmp", "workspace", "etc", ".crucible", "usr"):
        (path / d).mkdir(parents=True, exist_ok=True)
    # runc 1.1 gives a tmpfs the mode of the directory it is mounted on, ignoring the
    # mount's own mode=1777; make the mount point itself what /tmp must be.
    (path / "tmp").chmod(0o1777)
    for top in TOOLCHAIN_DIRS[1:]:
        host, target = Path(top), path / top.lstrip("/")
        if target.exists() or target.is_symlink():
            continue
        if host.is_symlink():
            target.symlink_to(os.readlink(host))
        elif host.is_dir():
            target.mkdir()
    (path / "etc" / "passwd").write_text(_PASSWD)
    (path / "etc" / "group").write_text(_GROUP)
    (path / "etc" / "hostname").write_text("sandbox\n")
    (path / "etc" / "hosts").write_text("127.0.0.1 localhost sandbox\n")
    for etc in ETC_FILES:
        target = path / etc.lstrip("/")
        if Path(etc).is_dir():
            target.mkdir(exist_ok=True)
        elif Path(etc).exists() and not target.exists():
            target.touch()
    for source in mount_points:
        point = path / source.lstrip("/")
        if Path(source).is_dir():
            point.mkdir(parents=True, exist_ok=True)
        elif not point.exists():
            point.parent.mkdir(parents=True, exist_ok=True)
            point.touch()
    for mount_point in (INIT_PATH, SECCOMP_PATH, GVISOR_STATX_PATH, LD_SO_PRELOAD):
        (path / mount_point.lstrip("/")).touch()  # mount points in the read-only root
    ensure_compat(path)
    return path


def ensure_compat(root: Path) -> None:
    """Put ``COMPAT_LINKS`` in ``root``'s ``COMPAT_BIN`` and ``PIP_CONF`` in its
    /etc/pip.conf (idempotent). The links name paths inside the sandbox; one whose
    target the host lacks fails as the bare name would ("No such file")."""
    bin_dir = root / COMPAT_BIN.lstrip("/")
    bin_dir.mkdir(parents=True, exist_ok=True)
    bin_dir.chmod(0o755)
    for name, target in COMPAT_LINKS.items():
        link = bin_dir / name
        if link.is_symlink() and os.readlink(link) == target:
            continue
        # Made aside and renamed over: engines sharing a state directory race harmlessly.
        tmp = bin_dir / f".{name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(link)
    conf = root / "etc" / "pip.conf"
    if not conf.exists() or conf.read_text() != PIP_CONF:
        conf.write_text(PIP_CONF)


def preload_binds(gvisor_preload: tuple[Path, Path] | None) -> list[dict[str, Any]]:
    """The statx shim and the /etc/ld.so.preload naming it (gVisor; see
    gvisor_statx.c)."""
    if gvisor_preload is None:
        return []
    shim, preload = gvisor_preload
    return [_bind(GVISOR_STATX_PATH, str(shim)), _bind(LD_SO_PRELOAD, str(preload))]


@cache
def seccomp_profile() -> dict[str, Any]:
    """The shipped seccomp profile: Docker's default, resolved for a container
    with no capabilities (see scripts/gen_seccomp.py)."""
    text = resources.files("crucible.engine").joinpath("seccomp.json").read_text()
    profile: dict[str, Any] = json.loads(text)
    return profile


def _bind(dest: str, source: str, *, readonly: bool = True) -> dict[str, Any]:
    options = ["bind", "nosuid", "nodev", "ro" if readonly else "rw"]
    return {"destination": dest, "type": "bind", "source": source, "options": options}


def _host_binds(rootfs: Path, extra: list[str]) -> list[dict[str, Any]]:
    mounts = []
    for top in TOOLCHAIN_DIRS:
        host = Path(top)
        if host.is_dir() and not host.is_symlink():
            mounts.append(_bind(top, top))
    for etc in (*ETC_FILES, *extra):
        if Path(etc).exists():
            if not (rootfs / etc.lstrip("/")).exists():
                continue  # no mount point in the read-only skeleton
            mounts.append(_bind(etc, etc))
    return mounts


def build_config(
    *,
    args: list[str],
    env: dict[str, str],
    limits: Limits,
    rootfs: Path,
    workspace: Path,
    init_binary: Path,
    seccomp_bpf: Path,
    cgroups_path: str,
    extra_mounts: list[str] = (),  # type: ignore[assignment]
    gvisor: bool = False,
    host_toolchain: bool = True,
    gvisor_preload: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """The OCI runtime configuration (config.json) of one container.

    Under gVisor the host pids cgroup counts the sentry's own threads and ptrace
    stubs, not the program's processes (with 64 pids the sentry itself fails with
    "error initializing first thread: resource temporarily unavailable"). There the
    cgroup gets ``GVISOR_PIDS_OVERHEAD`` more, and the program's own count is
    bounded by RLIMIT_NPROC, which gVisor's kernel enforces per sandbox (under runc
    RLIMIT_NPROC would count every sandbox's uid-65534 processes host-wide).

    ``host_toolchain``: bind the host's /usr (and /etc files) into ``rootfs``, the
    shared skeleton; False for an environment's root, which has its own.
    ``gvisor_preload``: (shim, ld.so.preload file) bound in under gVisor.
    """
    memory = limits.memory_mb << 20
    pids = limits.pids + GVISOR_PIDS_OVERHEAD if gvisor else limits.pids
    nproc = [{"type": "RLIMIT_NPROC", "hard": limits.pids, "soft": limits.pids}] if gvisor else []
    disk = f"size={limits.disk_mb}m"
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": SANDBOX_UID, "gid": SANDBOX_GID, "additionalGids": []},
            "args": [INIT_PATH, *args],
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": WORKSPACE,
            "capabilities": {
                "bounding": [],
                "effective": [],
                "inheritable": [],
                "permitted": [],
                "ambient": [],
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024},
                {
                    "type": "RLIMIT_FSIZE",
                    "hard": limits.disk_mb << 20,
                    "soft": limits.disk_mb << 20,
                },
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
                *nproc,
            ],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": "sandbox",
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", disk],
            },
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", disk],
            },
            *(_host_binds(rootfs, list(extra_mounts)) if host_toolchain else []),
            _bind(INIT_PATH, str(init_binary)),
            _bind(SECCOMP_PATH, str(seccomp_bpf)),
            *(preload_binds(gvisor_preload) if gvisor else []),
            _bind(WORKSPACE, str(workspace), readonly=False),
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "network"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "cgroup"},
            ],
            "cgroupsPath": cgroups_path,
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                # swap == limit: memory+swap capped at the same value, i.e. no swap.
                "memory": {"limit": memory, "swap": memory},
                "pids": {"limit": pids},
                "cpu": {"quota": max(1000, int(limits.cpus * 100_000)), "period": 100_000},
            },
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            # No "seccomp" here: the init installs the precompiled filter (SECCOMP_PATH)
            # in the program's process; see seccomp.py for why.
        },
    }


# -- long-lived sandboxes (session.py) -------------------------------------------------

# Docker's default capability set: what "root in a container" can do. No CAP_SYS_ADMIN
# (no mount, no namespaces), no CAP_SYS_PTRACE, no CAP_NET_ADMIN.
SESSION_CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
]  # fmt: skip


def session_process(
    args: list[str], env: dict[str, str], *, disk_mb: int, pids: int, gvisor: bool
) -> dict[str, Any]:
    """The OCI process of a long-lived sandbox's init and of each of its execs: root
    (of the sandbox's user namespace, or of gVisor's kernel) with Docker's capabilities,
    no new privileges, the same rlimits as one-shot runs."""
    caps = list(SESSION_CAPABILITIES)
    nproc = [{"type": "RLIMIT_NPROC", "hard": pids, "soft": pids}] if gvisor else []
    return {
        "terminal": False,
        "user": {"uid": 0, "gid": 0, "additionalGids": []},
        "args": args,
        "env": [f"{k}={v}" for k, v in env.items()],
        "cwd": "/",
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
            "inheritable": [],
            "ambient": [],
        },
        "rlimits": [
            {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096},
            {"type": "RLIMIT_FSIZE", "hard": disk_mb << 20, "soft": disk_mb << 20},
            {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            *nproc,
        ],
        "noNewPrivileges": True,
    }


def build_session_config(
    *,
    limits: Limits,
    rootfs: Path,
    init_binary: Path,
    seccomp_bpf: Path,
    cgroups_path: str,
    id_base: int | None,
    gvisor: bool = False,
    gvisor_preload: tuple[Path, Path] | None = None,
    agent: bool = False,
) -> dict[str, Any]:
    """The config.json of a long-lived sandbox: a writable ``rootfs`` (the overlay of
    ``overlay.mount_root``), the init waiting in ``--session`` mode (``agent``: also
    serving execs on its stdin, see agent.py), no network, and under runc/crun a user
    namespace mapping 0..65535 inside to ``id_base``.. outside (``id_base`` None:
    gVisor, whose own kernel is the boundary)."""
    config = build_config(
        args=["--session"],
        env={"PATH": PATH},
        limits=limits,
        rootfs=rootfs,
        workspace=rootfs,  # unused: replaced below
        init_binary=init_binary,
        seccomp_bpf=seccomp_bpf,
        cgroups_path=cgroups_path,
        gvisor=gvisor,
    )
    init_args = [INIT_PATH, "--session", *(["--agent"] if agent else [])]
    config["process"] = session_process(
        init_args, {"PATH": PATH}, disk_mb=limits.disk_mb, pids=limits.pids,
        gvisor=gvisor,
    )  # fmt: skip
    config["root"] = {"path": str(rootfs), "readonly": False}
    keep = {"/proc", "/dev", "/dev/shm"}
    config["mounts"] = [
        *(m for m in config["mounts"] if m["destination"] in keep),
        # Terminals of its own (a new devpts instance, as Docker gives): what
        # interactive tools open (Inspect's bash_session, `crucible shell`).
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        _bind(INIT_PATH, str(init_binary)),
        _bind(SECCOMP_PATH, str(seccomp_bpf)),
        *(preload_binds(gvisor_preload) if gvisor else []),
    ]
    linux = config["linux"]
    if id_base is not None:
        linux["namespaces"].append({"type": "user"})
        mapping = [{"containerID": 0, "hostID": id_base, "size": 65536}]
        linux["uidMappings"] = mapping
        linux["gidMappings"] = mapping
    return config
