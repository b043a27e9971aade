"""Clean-up helpers for tests that kill servers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def unmount_leftovers(root: Path) -> None:
    """Unmount what a killed server left under ``root`` and remove the directory."""
    with open("/proc/mounts") as f:
        targets = [line.split()[1] for line in f if line.split()[1].startswith(str(root))]
    for target in sorted(targets, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
