"""What Dockerfile build tests share (a pytest plugin: ``-p support.dockerfile_fixtures``):
``userland``, a base image made of the host's own bash, coreutils and python
(support.oci_images), and :func:`context`, a build context with a Dockerfile."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from support.oci_images import Image, host_userland_layer


@pytest.fixture(scope="session")
def userland() -> Image:
    return Image([host_userland_layer()], env=["PATH=/usr/bin:/bin"])


def context(tmp_path: Path, dockerfile: str) -> Path:
    """A new context under ``tmp_path``: ``data/input.txt``, an executable
    ``data/run.sh`` and ``Dockerfile``."""
    ctx = tmp_path / f"ctx-{secrets.token_hex(3)}"
    (ctx / "data").mkdir(parents=True)
    (ctx / "data" / "input.txt").write_text("from the context\n")
    (ctx / "data" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (ctx / "data" / "run.sh").chmod(0o755)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx
