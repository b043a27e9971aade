"""OCI images made by the tests themselves: layers as tar files, written as an OCI
image layout (a directory, or a tar of one) or as a ``docker save`` archive.

No registry and no Docker engine exist here, and a real image would be a download;
so the tests build the images they import, byte by byte, including hostile ones
(a layer may hold anything a tar can: ``..``, absolute names, devices, links).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Entry:
    """One tar member: a file (``data``), dir, symlink/hardlink (``target``), or device."""

    name: str
    kind: str = "file"  # file | dir | symlink | hardlink | chr | blk | fifo
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def file(name: str, data: bytes | str, mode: int = 0o644, **kw: Any) -> Entry:
    return Entry(name, "file", data.encode() if isinstance(data, str) else data, mode=mode, **kw)


def directory(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, "dir", mode=mode)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", target=target, mode=0o777)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, "hardlink", target=target)


def whiteout(path: str) -> Entry:
    """Deletes ``path`` of a lower layer (OCI/AUFS whiteout ``.wh.<name>``)."""
    parent, _, name = path.rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")


def opaque(directory_path: str) -> Entry:
    """Hides everything lower layers had in ``directory_path``."""
    return file(f"{directory_path}/.wh..wh..opq", b"")


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chr": tarfile.CHRTYPE,
    "blk": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}


def layer_tar(entries: list[Entry]) -> bytes:
    """An uncompressed layer, members in the given order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = 1_700_000_000
            if e.kind in ("symlink", "hardlink"):
                info.linkname = e.target
            if e.kind in ("chr", "blk"):
                info.devmajor, info.devminor = 1, 3
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return out.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@functools.lru_cache(maxsize=8)
def _gzip(layer: bytes) -> bytes:
    """Fast and once per layer: gzip's default level takes 25 s for the host userland
    (65 MB), level 1 about 1 s, and the session's images are written many times."""
    return gzip.compress(layer, compresslevel=1, mtime=0)


@dataclass
class Image:
    layers: list[bytes]  # uncompressed tars
    env: list[str] = field(default_factory=lambda: ["PATH=/usr/local/bin:/usr/bin:/bin"])
    workdir: str = ""
    user: str = ""
    gzip_layers: bool = True

    def config(self) -> bytes:
        cfg: dict[str, Any] = {"Env": self.env}
        if self.workdir:
            cfg["WorkingDir"] = self.workdir
        if self.user:
            cfg["User"] = self.user
        doc = {
            "architecture": "amd64",
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [sha256(t) for t in self.layers]},
        }
        return json.dumps(doc).encode()

    def blobs(self) -> tuple[bytes, bytes, list[bytes]]:
        """(manifest, config, layer blobs as stored)."""
        stored = [_gzip(t) if self.gzip_layers else t for t in self.layers]
        config = self.config()
        media = "application/vnd.oci.image.layer.v1.tar" + ("+gzip" if self.gzip_layers else "")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": len(config),
            },
            "layers": [{"mediaType": media, "digest": sha256(b), "size": len(b)} for b in stored],
        }
        return json.dumps(manifest).encode(), config, stored


def write_oci_layout(image: Image, path: Path, tag: str = "latest") -> Path:
    """An OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``)."""
    manifest, config, stored = image.blobs()
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for blob in (manifest, config, *stored):
        (blobs / sha256(blob).removeprefix("sha256:")).write_bytes(blob)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha256(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index))
    return path


def write_docker_archive(image: Image, path: Path, repo_tag: str = "test:latest") -> Path:
    """A ``docker save`` archive (Docker's legacy layout: manifest.json, one directory
    per layer holding layer.tar, the config as <id>.json)."""
    config = image.config()
    config_name = sha256(config).removeprefix("sha256:") + ".json"
    members: list[tuple[str, bytes]] = [(config_name, config)]
    layer_paths = []
    for t in image.layers:
        name = f"{sha256(t).removeprefix('sha256:')}/layer.tar"
        layer_paths.append(name)
        members.append((name, t))
    manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_paths}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tar_directory(source: Path, path: Path) -> Path:
    """An OCI layout directory as one tar (what ``crucible env import`` also takes)."""
    with tarfile.open(path, "w") as tar:
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name)
    return path


# -- a userland taken from the host ---------------------------------------------------

_USERLAND_PROGRAMS = (
    "/bin/bash", "/usr/bin/dash", "/usr/bin/ls", "/usr/bin/cat", "/usr/bin/stat",
    "/usr/bin/id", "/usr/bin/sleep",
)  # fmt: skip


def _libraries(binaries: list[str]) -> set[str]:
    """The shared libraries ``binaries`` load (ldd), host paths."""
    import subprocess

    found: set[str] = set()
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            for word in line.split():
                if word.startswith("/"):
                    found.add(word)
    return found


def host_userland_layer(*, python: bool = True) -> bytes:
    """A base layer made of the host's own files: bash, a few coreutils, the C library
    and (``python``) the host's python3 with its standard library; a merged-/usr
    layout with ``bin``, ``lib``, ``lib64`` and ``sbin`` as symlinks into ``usr``. Only
    what those programs load, nothing else of the host."""
    import glob
    import os
    import sys

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    programs = list(_USERLAND_PROGRAMS)
    trees: list[str] = []
    if python:
        programs.append(f"/usr/bin/{version}")
        trees.append(f"/usr/lib/{version}")
    libs = _libraries(programs + sorted(glob.glob(f"/usr/lib/{version}/lib-dynload/*.so")))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode
            tar.addfile(info)

        def add_link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
            tar.addfile(info)

        for d in ("usr", "usr/bin", "usr/lib", "usr/lib64", "usr/sbin", "etc", "workspace"):
            add_dir(d)
        add_dir("tmp", 0o1777)
        for top in ("bin", "lib", "lib64", "sbin"):
            add_link(top, f"usr/{top}")
        made: set[str] = set()
        for path in sorted({*programs, *libs}):
            real = os.path.realpath(path)
            name = "usr/" + path.removeprefix("/usr/").lstrip("/")
            if path.startswith(("/lib/", "/lib64/", "/bin/")):
                name = "usr" + path
            parent = name.rsplit("/", 1)[0]
            parts = parent.split("/")
            for i in range(2, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in made and d not in ("usr/bin", "usr/lib", "usr/lib64", "usr/sbin"):
                    add_dir(d)
                    made.add(d)
            tar.add(real, arcname=name, recursive=False)
        add_link("usr/bin/sh", "dash")
        if python:
            add_link("usr/bin/python3", version)
            for tree in trees:
                tar.add(tree, arcname=tree.lstrip("/"), filter=_no_caches)
        passwd = FEATURE_PASSWD.encode()
        for name, data in (("etc/passwd", passwd), ("etc/group", b"root:x:0:\nnogroup:x:65534:\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _no_caches(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    skip = ("__pycache__", "/test/", "/idlelib", "/tkinter", "/ensurepip", "/lib2to3")
    return None if any(s in f"/{info.name}/" for s in skip) else info


# -- the image the environment tests run in -------------------------------------------

FEATURE_PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/bin/false\n"


def feature_image() -> Image:
    """The host's userland plus two layers exercising what an import must get right:
    a whiteout (``/data/gone``), an opaque directory (``/opq``: ``old`` hidden, ``new``
    shown), a file replaced (``/etc/motd``), a hard link (``/data/hard`` = ``keep``), a
    setuid-root copy of ``id`` (``/usr/local/bin/su-probe``), symlinks pointing out of
    the image (``/host-etc`` -> ``/etc``, ``/up`` -> ``../../../..``), a world-writable
    directory (``/scratch``), and Env, WorkingDir and User in the config."""
    with open("/usr/bin/id", "rb") as f:
        id_binary = f.read()
    two = layer_tar(
        [
            directory("data"),
            file("data/keep", "kept\n"),
            file("data/gone", "gone\n"),
            directory("opq"),
            file("opq/old", "old\n"),
            file("etc/motd", "layer two\n"),
            directory("usr/local"),
            directory("usr/local/bin"),
            file("usr/local/bin/su-probe", id_binary, mode=0o4755),
            symlink("host-etc", "/etc"),
            symlink("up", "../../../.."),
            hardlink("data/hard", "data/keep"),
            directory("scratch", mode=0o777),
        ]
    )
    three = layer_tar(
        [
            whiteout("data/gone"),
            opaque("opq"),
            file("opq/new", "new\n"),
            file("etc/motd", "layer three\n"),
        ]
    )
    return Image(
        [host_userland_layer(), two, three],
        env=["PATH=/usr/local/bin:/usr/bin:/bin", "FOO=from-image"],
        workdir="/data",
        user="nobody",
    )
