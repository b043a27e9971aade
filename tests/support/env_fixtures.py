"""Built environments for the tests, built once per machine (loaded with
``-p env_fixtures``).

A build takes half a minute and the network, so its result is cached across test
runs in an environment store of its own under ``/var/cache/crucible-test``
(``CRUCIBLE_TEST_CACHE``), named by :meth:`BuildSpec.key`: a digest of the spec and
of envbuild's source, so a change to either builds afresh. The store's own staging
(build in its ``tmp``, one rename into place, then the name) means an interrupted
or concurrent build never leaves half a cache; a lock makes concurrent sessions
wait for one build instead of making two.

Tests never run in the cache itself: :func:`install_numpy_environment` copies the
cached root into the test's own store. A copy and not hard links: a test's store
belongs to the test (root may chmod, write or delete in it, on purpose or by a bug),
and through a shared inode that change would land in the cache and in every later
run on the machine. ``cp --reflink=auto`` shares blocks copy-on-write where the
file system can; on ext4 it is a plain copy of ~250 MB, about a second.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from crucible.core.errors import NotFound
from crucible.environments.build import BuildSpec, build_environment, environment_digest
from crucible.environments.store import Environment, EnvironmentStore
from crucible.environments.treedigest import tree_digest

CACHE = Path(os.environ.get("CRUCIBLE_TEST_CACHE", "/var/cache/crucible-test"))
NUMPY_SPEC = BuildSpec(debian=("python3-numpy",))
# A first build on a machine downloads ~60 MB from deb.debian.org: tests that use a
# cached environment carry this timeout instead of the suite's 120 s.
BUILD_TIMEOUT_S = 900
_STALE = dt.timedelta(days=7)
_checked: dict[str, Environment] = {}


def _cache_store() -> EnvironmentStore:
    return EnvironmentStore(CACHE / "environments")


def cached_environment(spec: BuildSpec, label: str) -> Environment:
    """The cached build of ``spec`` (built now if the machine has none), checked
    once per session against its digest: a cache someone wrote into is rebuilt."""
    name = f"test-{label}:{spec.key()[:16]}"
    if name in _checked:
        return _checked[name]
    CACHE.mkdir(parents=True, exist_ok=True)
    store = _cache_store()
    with open(CACHE / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; the others wait
        env = None
        with contextlib.suppress(NotFound):
            env = store.get(name)
        if env is not None and not _intact(env):
            store.remove(name)
            env = None
        if env is None:
            store.sweep()  # what an interrupted build left; no build runs but ours
            env = build_environment(store, name, spec, timeout=BUILD_TIMEOUT_S - 60)
            _prune(store, label, keep=name)
    _checked[name] = env
    return env


def _intact(env: Environment) -> bool:
    digest = environment_digest(tree_digest(env.root), env.env, env.workdir, env.user)
    return digest == env.digest


def _prune(store: EnvironmentStore, label: str, keep: str) -> None:
    """Forget builds of older specs or envbuild versions a week after they were made
    (not at once: a session still running an older checkout may be using one)."""
    now = dt.datetime.now(dt.UTC)
    for env in store.all():
        if not env.name.startswith(f"test-{label}:") or env.name == keep:
            continue
        made = dt.datetime.fromisoformat(env.created_at.replace("Z", "+00:00"))
        if now - made > _STALE:
            store.remove(env.name)


def install_numpy_environment(store: EnvironmentStore, name: str = "numpy") -> Environment:
    """The cached ``--debian python3-numpy`` build, added to ``store`` as ``name``
    (a copy of its root: module docstring)."""
    cached = cached_environment(NUMPY_SPEC, "numpy")
    work = store.root / "tmp" / f"copy-{secrets.token_hex(6)}"
    work.mkdir()
    try:
        subprocess.run(
            ["cp", "-a", "--reflink=auto", str(cached.root), str(work / "rootfs")],
            check=True, capture_output=True, timeout=300,
        )  # fmt: skip
        return store.add_rootfs(
            name, work / "rootfs", digest=cached.digest, env=cached.env,
            workdir=cached.workdir, user=cached.user,
        )  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


def require_build_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("building an environment needs root")
    for tool in ("mmdebstrap", "unshare", "runc"):
        if shutil.which(tool) is None:
            pytest.skip(f"building an environment needs {tool}")


@pytest.fixture(scope="session")
def numpy_environment_root() -> Path:
    """The root of the cached ``crucible env build --debian python3-numpy``: read it,
    never write it (run in it through a copy: :func:`install_numpy_environment`).
    Tests using it should carry ``@pytest.mark.timeout(BUILD_TIMEOUT_S)``."""
    require_build_tools()
    return cached_environment(NUMPY_SPEC, "numpy").root
