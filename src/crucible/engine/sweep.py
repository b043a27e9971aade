"""Start-up sweep: removes what a crashed supervisor left behind.

Only things carrying the platform's prefix are touched, and of those only the
ones whose owner (pid + start time, recorded in each bundle) is no longer alive, so
several supervisors can share one host and one state directory.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import shutil
import time
from pathlib import Path

from crucible.core.errors import RuntimeFailure, SandboxUnavailable
from crucible.engine import accounting, runtime, workspace

log = logging.getLogger(__name__)


def owner_token(pid: int | None = None) -> str:
    """``pid:starttime`` of a process: unique even when pids are reused."""
    if pid is None or pid == os.getpid():
        return _own_token(os.getpid())
    return _read_token(pid)


@functools.lru_cache(maxsize=4)
def _own_token(pid: int) -> str:
    # This process's token never changes (a forked child has another pid, so another
    # key): read /proc once, not for every bundle a one-shot run writes.
    return _read_token(pid)


def _read_token(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return f"{pid}:{fields[19]}"  # field 22 of stat: start time in clock ticks


# A bundle is created (mkdir) a moment before its owner file is written: one without an
# owner file younger than this is being set up by a live supervisor, not left behind.
_SETUP_GRACE_S = 60.0


def owner_alive(bundle: Path) -> bool:
    """Whether the process that made ``bundle`` (its ``owner`` file) still lives."""
    try:
        token = (bundle / "owner").read_text().strip()
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            return time.time() - bundle.stat().st_mtime < _SETUP_GRACE_S
        return False
    except OSError:
        return False
    try:
        return owner_token(int(token.split(":")[0])) == token
    except (OSError, ValueError, IndexError):
        return False


async def sweep_leftovers(
    state_dir: Path, prefix: str, runtimes: list[runtime.Runtime]
) -> list[str]:
    """Remove leftover containers, workspaces, bundles and cgroups; return what was removed."""
    removed: list[str] = []
    bundles = state_dir / "bundles"

    def orphaned(container_id: str) -> bool:
        # Container ids are <run id>-c (compile) or <run id>-r (run). Judged at the
        # moment of removal, never from an earlier snapshot: another supervisor sharing
        # this state directory keeps creating runs while this one sweeps.
        run_id = container_id.rsplit("-", 1)[0]
        return container_id.startswith(f"{prefix}-") and not owner_alive(bundles / run_id)

    for rt in runtimes:
        try:
            ids = await runtime.runtime_list(rt)
        except (RuntimeFailure, SandboxUnavailable, FileNotFoundError) as exc:
            log.warning("sweep: cannot list %s containers: %s", rt.name, exc)
            continue
        for cid in filter(orphaned, ids):
            with contextlib.suppress(RuntimeFailure):
                await runtime.runtime_delete(rt, cid)
                removed.append(f"container {rt.name}:{cid}")
    if bundles.exists():
        for bundle in bundles.iterdir():
            if bundle.name.startswith(f"{prefix}-") and not owner_alive(bundle):
                workspace.unmount_below(bundle)  # workspace, or a session's overlays
                shutil.rmtree(bundle, ignore_errors=True)
                removed.append(f"bundle {bundle.name}")
    for parent in _cgroup_parents(prefix):
        for child in parent.iterdir() if parent.is_dir() else []:
            if child.is_dir() and orphaned(child.name):
                accounting.remove_cgroup(f"/{prefix}/{child.name}")
                if not child.exists():
                    removed.append(f"cgroup {child.name}")
    return removed


# -- asset views --------------------------------------------------------------------
# A bind mount shows its source's path within its file system in the sandbox's
# /proc/self/mountinfo. The shared root, init and filter are therefore bound from a
# small tmpfs of their own, one per engine (``views/<pid>-<starttime>-<hex>``): inside,
# mountinfo says ``/rootfs``, not a host path. ``Sandbox.close()`` unmounts it (else a
# finalizer, in the owning process only); ``sweep_views`` removes those of processes
# that died first.


def mount_view(state_dir: Path) -> Path:
    """A fresh tmpfs for this engine's asset view, named after its owner."""
    pid, start = owner_token().split(":")
    view = state_dir / "views" / f"{pid}-{start}-{secrets.token_hex(4)}"
    workspace.mount_tmpfs(view, 16, options="nr_inodes=4096,mode=0755")
    return view


def drop_view(view: Path, *, owner: int | None = None) -> None:
    """Unmount and remove a view (lazily: running sandboxes keep their binds); with
    ``owner``, only in that process (a forked child exiting leaves its parent's)."""
    if owner is not None and owner != os.getpid():
        return
    with contextlib.suppress(OSError):
        workspace.unmount(view)
        view.rmdir()


def sweep_views(state_dir: Path) -> list[str]:
    """Remove the asset views of processes that are gone."""
    removed = []
    views = state_dir / "views"
    for view in views.iterdir() if views.is_dir() else []:
        pid, _, rest = view.name.partition("-")
        with contextlib.suppress(OSError, ValueError):
            if owner_token(int(pid)) == f"{pid}:{rest.partition('-')[0]}":
                continue  # its engine lives
        drop_view(view)
        removed.append(f"view {view.name}")
    return removed


def _cgroup_parents(prefix: str) -> list[Path]:
    root = accounting.CGROUP_ROOT
    if accounting.cgroup_v2_unified(root):
        return [root / prefix]
    return [d / prefix for d in root.iterdir() if (d / prefix).is_dir()]
