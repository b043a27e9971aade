"""Clean-up of mounts under a test's directories: what a failed test or a killed server
left mounted would make the directory unremovable (and leak into later tests)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def unmount_below(root: Path) -> None:
    """Lazily unmount whatever is mounted under ``root``, deepest first."""
    with open("/proc/mounts") as f:
        targets = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
    for target in sorted(targets, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)


def unmount_leftovers(root: Path) -> None:
    """Unmount what a killed server left under ``root`` and remove the directory."""
    unmount_below(root)
    shutil.rmtree(root, ignore_errors=True)
