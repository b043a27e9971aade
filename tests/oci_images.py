"""OCI images made by the tests themselves: layers as tar files, written as an OCI
image layout (a directory, or a tar of one) or as a ``docker save`` archive.

No registry and no Docker engine exist here, and a real image would be a download;
so the tests build the images they import, byte by byte, including hostile ones
(a layer may hold anything a tar can: ``..``, absolute names, devices, links).
"""

from __future__ import annotations

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
        stored = [gzip.compress(t, mtime=0) if self.gzip_layers else t for t in self.layers]
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
