"""Builds environments from Debian's and PyPI's packages: ``crucible env build``.

A build is an operator's action, and the only time an environment reaches the
network. It runs in a directory of the store's ``tmp`` and, in order:

1. ``mmdebstrap`` makes a Debian root (variant ``essential`` plus the packages asked
   for, docs and man pages left out) in mode ``root``, inside private mount and
   pid namespaces (``unshare``) so that the /proc, /sys and /dev it mounts into the
   root, and every process it starts, die with it when a time limit kills it.
2. ``pip install``, when asked, runs *in* that root, in a **build container** under
   runc: root inside with Docker's capabilities and seccomp profile, the root
   writable, the host's network (PyPI) and its /etc/resolv.conf read-only, a pids
   and memory limit and a time limit.
3. The root is tidied (apt's lists and caches, the host's resolv.conf and hostname
   that mmdebstrap copies in, device nodes, which imports refuse too and every run
   gets from its own /dev), digested (:mod:`crucible.environments.treedigest`) and handed to
   :meth:`EnvironmentStore.add_rootfs`, which moves it into place with a rename.

Any failure raises :class:`BuildFailed` with the tail of the tool's output and leaves
nothing: neither a directory in ``tmp`` nor a name.

Bookworm's Python is "externally managed" (PEP 668: pip refuses to install into
/usr). The pip packages go into a virtual environment, ``/opt/venv``, made with
``--system-site-packages`` and first on the environment's PATH: PEP 668's own advice,
dpkg's files under /usr stay as Debian shipped them (``--break-system-packages``
would let pip upgrade or shadow them: a numpy from PyPI over the python3-numpy a
Debian package was built against), and Debian's Python packages (``--debian
python3-numpy``) stay importable and satisfy pip's requirements.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crucible.core.errors import BuildFailed, InvalidSubmission, SandboxUnavailable
from crucible.environments.store import DEFAULT_PATH, Environment, EnvironmentStore, check_name
from crucible.environments.treedigest import tree_digest

DEFAULT_MIRROR = "http://deb.debian.org/debian"
VENV = "/opt/venv"
BUILD_CA = "/tmp/.crucible-host-ca.crt"  # the host's CA bundle, in a build container
# Passed from the operator's environment into a build container (it is on the
# host's network, so it takes the host's way out).
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
# Fixed, so that the same packages built twice give the same bytes where a package's
# scripts write the date (mmdebstrap's SOURCE_DATE_EPOCH; 2024-01-01): two builds of
# `--debian python3-numpy` gave one digest, hence one root. With it set, Debian's
# py3compile writes checked-hash .pyc files (py_compile's default then); `import
# numpy` measured 86-88 ms in such a root and 88-92 ms with timestamp .pyc files.
SOURCE_DATE_EPOCH = "1704067200"
# Debian package names (Policy 5.6.1), optionally =version.
_DEBIAN = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
# A requirement as pip takes it (name, extras, version specifiers); never an option.
_PIP = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?([<>=!~]=?[A-Za-z0-9.*+!,<>=~-]+)?$"
)
_SUITE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_MAX_BUILDS = threading.BoundedSemaphore(2)  # tool processes at once, per process
Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildSpec:
    """What an environment is built from; its JSON is what a cache is keyed by."""

    debian: tuple[str, ...]
    pip: tuple[str, ...] = ()
    suite: str = "bookworm"
    mirror: str = DEFAULT_MIRROR

    def __post_init__(self) -> None:
        if not self.debian and not self.pip:
            raise InvalidSubmission("a build needs --debian or --pip packages", field="debian")
        for pkg in self.debian:
            if not _DEBIAN.match(pkg):
                raise InvalidSubmission(f"not a Debian package name: {pkg!r}", field="debian")
        for req in self.pip:
            if not _PIP.match(req):
                raise InvalidSubmission(f"not a pip requirement: {req!r}", field="pip")
        if not _SUITE.match(self.suite):
            raise InvalidSubmission(f"not a Debian suite: {self.suite!r}", field="suite")
        if not re.match(r"^(https?|file)://[^\s]+$", self.mirror):
            raise InvalidSubmission(f"not a mirror URL: {self.mirror!r}", field="mirror")

    def packages(self) -> list[str]:
        """The Debian packages to install: python3 and its venv module come with pip."""
        extra = ["python3", "python3-venv"] if self.pip else []
        return sorted({*self.debian, *extra})

    def env(self) -> list[str]:
        """The environment's variables (the image config's ``Env`` of a build)."""
        if self.pip:
            return [f"PATH={VENV}/bin:{DEFAULT_PATH}", "LANG=C.UTF-8", f"VIRTUAL_ENV={VENV}"]
        return [f"PATH={DEFAULT_PATH}", "LANG=C.UTF-8"]

    def key(self) -> str:
        """A digest of this spec and of this module's source: a cached build is reused
        only while both are unchanged."""
        source = Path(__file__).read_bytes()
        doc = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(doc + b"\0" + hashlib.sha256(source).digest()).hexdigest()


@dataclass(frozen=True)
class BuiltRoot:
    path: Path
    digest: str  # of the tree with its Env (environment_digest)
    env: list[str] = field(default_factory=list)


def environment_digest(tree: str, env: list[str], workdir: str = "", user: str = "") -> str:
    """The store's key for a built root: its tree digest *and* what a run takes with it,
    as an import's digest covers its Env, WorkingDir and User. The store keeps one
    environment.json per digest, so two builds of one tree with different variables
    must not share one."""
    doc = {"tree": tree, "env": env, "workdir": workdir, "user": user}
    return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


# -- running the tools ------------------------------------------------------------------


def build_tool(
    argv: list[str], *, timeout: float, what: str, log: Log | None,
    on_kill: Callable[[], None] | None = None,
) -> None:  # fmt: skip
    """Run a build tool: output line by line to ``log``, the last 40 lines kept for
    the error; at ``timeout`` its process group is killed (then ``on_kill`` runs) and
    its output no longer waited for (a container's processes may still hold it).

    Not :func:`crucible.engine.process.run_tool`: that one is async, for runtime
    verbs of seconds, and keeps the *head* of the output; a build runs for minutes
    from a command line and its diagnosis is at the tail.
    """
    if shutil.which(argv[0]) is None:
        raise SandboxUnavailable(f"{argv[0]} is not installed (Debian package {argv[0]})")
    tail: deque[str] = deque(maxlen=40)
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "LC_ALL": "C.UTF-8"}
    deadline = time.monotonic() + timeout
    timed_out, ended = False, False

    def take(raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        if log is not None:
            log(line)

    with _MAX_BUILDS:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                pending = b""
                while not ended:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        timed_out = True
                        break
                    if not sel.select(left):
                        continue
                    chunk = os.read(proc.stdout.fileno(), 1 << 16)
                    ended = not chunk
                    *lines, pending = (pending + chunk).split(b"\n")
                    for raw in lines:
                        take(raw)
                if ended and pending:
                    take(pending)
        finally:
            if not ended:  # the time limit, or an exception (KeyboardInterrupt)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                if on_kill is not None:
                    on_kill()
            code = proc.wait()
            proc.stdout.close()
    if timed_out:
        raise BuildFailed(f"{what}: time limit of {timeout:g} s reached")
    if code != 0:
        errors = [ln for ln in tail if ln.startswith(("E:", "ERROR", "error"))]
        raise BuildFailed(f"{what} (exit {code}): " + " | ".join(errors or list(tail)[-8:])[-1500:])


def mmdebstrap(spec: BuildSpec, target: Path, *, timeout: float, log: Log | None) -> None:
    """Debian ``spec.suite`` with ``spec.packages()`` into ``target`` (must not exist)."""
    if shutil.which("mmdebstrap") is None:
        raise SandboxUnavailable("mmdebstrap is not installed (Debian package mmdebstrap)")
    argv = [
        # A private mount namespace and pid namespace: killing unshare (--kill-child)
        # kills mmdebstrap, the end of the pid namespace's init kills everything it
        # started, and the mounts it made into the root go with the namespace.
        "unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child",
        "--",
        "mmdebstrap", "--mode=root", "--variant=essential", "--format=directory",
        f"--include={','.join(spec.packages())}",
        # What a read-only root never reads (docs, man pages); copyright files stay.
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        spec.suite, str(target), spec.mirror,
    ]  # fmt: skip
    build_tool(argv, timeout=timeout, what="mmdebstrap failed", log=log)


def host_ca_bundle() -> Path | None:
    """The host's CA bundle (``SSL_CERT_FILE``, else Debian's), if it has one."""
    for candidate in (os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def container_config(
    rootfs: Path,
    args: list[str],
    env: list[str],
    *,
    network: bool,
    readonly: bool,
    memory_bytes: int = 8 << 30,
    pids: int = 4096,
) -> dict[str, Any]:
    """The OCI config of a build container (``network``: the host's, for the build)
    or of a check run in a built root (``readonly``, no network): pure, for tests."""
    from crucible.engine.spec import (
        MASKED_PATHS,
        READONLY_PATHS,
        SESSION_CAPABILITIES,
        seccomp_profile,
    )

    caps = list(SESSION_CAPABILITIES)
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        # pip's build directories: in memory, not left in the root.
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777", "size=4g"]},
    ]  # fmt: skip
    # No network namespace for a build: the host's network, loopback included. What
    # pip runs (a package's setup.py) runs as root here and can reach services
    # listening on the host's 127.0.0.1: a build is for packages the operator trusts.
    namespaces = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if network:
        ro = ["bind", "nosuid", "nodev", "noexec", "ro"]
        mounts.append(
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf",
             "options": ro}
        )  # fmt: skip
        # The host's network comes with the host's trust: where egress passes a TLS
        # proxy with a CA of its own, only the host's bundle knows that CA. Bound into
        # the build's /tmp (a tmpfs), so nothing of it stays in the environment.
        ca = host_ca_bundle()
        if ca is not None:
            mounts.append({"destination": BUILD_CA, "type": "bind", "source": str(ca),
                           "options": ro})  # fmt: skip
    else:
        namespaces.append({"type": "network"})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": env,
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": readonly},
        "hostname": "crucible-build",
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "resources": {"memory": {"limit": memory_bytes}, "pids": {"limit": pids}},
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
            "seccomp": seccomp_profile(),
        },
    }


def runc_run(
    rootfs: Path,
    args: list[str],
    env: list[str],
    *,
    work: Path,
    network: bool,
    readonly: bool,
    timeout: float,
    what: str,
    runc: str = "runc",
    log: Log | None = None,
) -> None:
    """``runc run`` one container over ``rootfs``, bundle and runc state in ``work``;
    always deleted, killed at ``timeout``. Raises BuildFailed when it fails."""
    cid = f"crucible-build-{secrets.token_hex(6)}"
    bundle, state = work / f"bundle-{cid}", work / f"runc-{cid}"
    bundle.mkdir()
    state.mkdir()
    config = container_config(rootfs, args, env, network=network, readonly=readonly)
    config["linux"]["cgroupsPath"] = f"/{cid}"
    (bundle / "config.json").write_text(json.dumps(config))
    resolv = rootfs / "etc" / "resolv.conf"
    had_resolv = resolv.exists() or resolv.is_symlink()

    def delete() -> None:
        # After a time limit the container outlives the killed runc; delete --force
        # kills it and removes its cgroup. Harmless when runc already removed it.
        subprocess.run(
            [runc, "--root", str(state), "delete", "--force", cid],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip

    try:
        build_tool(
            [runc, "--root", str(state), "run", "--bundle", str(bundle), cid],
            timeout=timeout, what=what, log=log, on_kill=delete,
        )  # fmt: skip
    finally:
        delete()
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        if network and not had_resolv:  # the mount point runc made for the bind
            with contextlib.suppress(OSError):
                resolv.unlink()


def pip_install(
    rootfs: Path, requirements: tuple[str, ...], *, work: Path, timeout: float,
    runc: str = "runc", log: Log | None = None,
) -> None:  # fmt: skip
    """Make /opt/venv in ``rootfs`` and pip-install ``requirements`` into it, in a
    build container (module docstring: why a venv)."""
    script = (
        f"set -e; python3 -m venv --system-site-packages {VENV}; "
        f'exec {VENV}/bin/pip install --no-cache-dir --no-input --progress-bar off -- "$@"'
    )
    env = [
        f"PATH={VENV}/bin:{DEFAULT_PATH}", "HOME=/root", "LANG=C.UTF-8",
        "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_ROOT_USER_ACTION=ignore",
        *(f"{k}={os.environ[k]}" for k in _PROXY_VARS if k in os.environ),
    ]  # fmt: skip
    if host_ca_bundle() is not None:
        env += [f"PIP_CERT={BUILD_CA}", f"SSL_CERT_FILE={BUILD_CA}"]
    runc_run(
        rootfs, ["/bin/sh", "-c", script, "sh", *requirements], env, work=work, network=True,
        readonly=False, timeout=timeout, what="pip install failed", runc=runc, log=log,
    )  # fmt: skip


def tidy(rootfs: Path) -> None:
    """Remove what a build leaves that a read-only root must not carry (module
    docstring, step 3)."""
    for rel in ("var/lib/apt/lists", "var/cache/apt", "root/.cache", "tmp"):
        directory = rootfs / rel
        if directory.is_dir() and not directory.is_symlink():
            for child in directory.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    for rel in ("etc/resolv.conf", "etc/hostname"):
        with contextlib.suppress(FileNotFoundError):
            (rootfs / rel).unlink()
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                os.unlink(path)


# -- a build ------------------------------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [ln.split()[1] for ln in f if ln.split()[1].startswith(f"{path}/")]


@contextlib.contextmanager
def build_dir(store: EnvironmentStore) -> Iterator[Path]:
    work = store.root / "tmp" / f"build-{secrets.token_hex(8)}"
    work.mkdir()
    try:
        yield work
    finally:
        # Never rmtree through a mount (a host /dev bound into the root): mmdebstrap's
        # mounts live in its own namespace, but check rather than trust.
        for target in sorted(_mounts_under(work), reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        if _mounts_under(work):
            raise BuildFailed(f"{work} still has mounts; left in place") from None
        # A killed build's processes die asynchronously (SIGKILL through the pid
        # namespace); one still finishing a write may add a file behind rmtree.
        for _ in range(5):
            shutil.rmtree(work, ignore_errors=True)
            if not work.exists():
                break
            time.sleep(0.5)


def build_rootfs(
    spec: BuildSpec, work: Path, *, timeout: float = 1800.0, runc: str = "runc",
    log: Log | None = None,
) -> BuiltRoot:  # fmt: skip
    """Build ``spec`` into ``work/rootfs`` (steps 1-3 of the module docstring) and
    digest it. ``work`` must be an existing directory the caller removes. Raises
    BuildFailed, SandboxUnavailable (a tool missing)."""
    rootfs = work / "rootfs"
    mmdebstrap(spec, rootfs, timeout=timeout, log=log)
    if spec.pip:
        pip_install(rootfs, spec.pip, work=work, timeout=timeout, runc=runc, log=log)
    tidy(rootfs)
    env = spec.env()
    return BuiltRoot(rootfs, environment_digest(tree_digest(rootfs), env), env)


def build_environment(
    store: EnvironmentStore, name: str, spec: BuildSpec, *, timeout: float = 1800.0,
    runc: str = "runc", log: Log | None = None,
) -> Environment:  # fmt: skip
    """Build ``spec`` in ``store``'s tmp and add it as ``name``; identical trees share
    one root. Raises InvalidSubmission (a bad name), BuildFailed, SandboxUnavailable;
    on any failure nothing of the build is left."""
    check_name(name)
    with build_dir(store) as work:
        built = build_rootfs(spec, work, timeout=timeout, runc=runc, log=log)
        return store.add_rootfs(name, built.path, digest=built.digest, env=built.env)
