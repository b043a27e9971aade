"""The environment store: named, content-addressed, read-only root file systems.

An *environment* is the root file system a run or an agent sandbox sees instead of
the host's toolchain (``host``, the default). It comes from an OCI image (a
``docker save`` archive, an OCI image layout or a tar of one, or an image pulled from
a registry: :mod:`crucible.environments.registry`) or is built from Debian and Python
packages (:mod:`crucible.environments.build`). Layout under ``<data_dir>/environments``::

    sha256/<hex>/rootfs             the root, read-only from then on
    sha256/<hex>/environment.json   digest, size, created, image config, languages
    names/<name>.json               name -> digest, and where the name's image came from
                                    (source; a pull's reference and manifest digest)
    tmp/                            imports in progress (removed on failure)

An import is **checked before anything is unpacked**, by reading (never applying) the
image: ``skopeo copy`` brings it into a directory of the store as an OCI layout
(containers/image checks the digests of what it copies; a pull is pinned by digest
first), then every layer is read once
here: its compressed and uncompressed digests must be the manifest's and the config's
``diff_ids``; a member whose name is absolute or climbs with ``..``, a device node, a
write through a symlink an earlier member left (``a -> /etc``, then ``a/passwd``), a
hard link to a name outside the image, or more than ``max_bytes`` in all refuse the
image. Only then ``umoci unpack`` applies the layers (whiteouts, opaque directories,
ownership) into the store's ``tmp``, and the root moves into place with one rename.
A refused or failed import leaves nothing but an error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from crucible.core.config import Settings
from crucible.core.errors import (
    Conflict,
    ImageRejected,
    InvalidSubmission,
    NotFound,
    PayloadTooLarge,
)
from crucible.engine.languages import LANGUAGE_PROGRAMS
from crucible.engine.models import EnvironmentRoot
from crucible.environments.registry import (
    ImageRef,
    Resolved,
    default_name,
    parse_ref,
    resolve,
    skopeo_copy,
)
from crucible.environments.tools import run_tool

__all__ = ["HOST", "Environment", "EnvironmentStore", "ImageRejected", "check_name"]

HOST = "host"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A Docker reference's shape, so that an image's own name can name its environment
# (``python:3.12-slim``, ``127.0.0.1:5000/team/tool:1``, ``alpine@sha256:…``).
_NAME = re.compile(
    r"^(?:[a-z0-9][a-z0-9.-]*:[0-9]{1,5}/)?"  # a registry host with a port
    r"[a-z0-9][a-z0-9._/-]{0,127}"
    r"(?::[A-Za-z0-9._-]{1,128})?"  # a tag
    r"(?:@sha256:[0-9a-f]{64})?$"  # a digest
)
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class Environment:
    name: str
    # sha256:<hex> of the layers' diff_ids with Env, WorkingDir and User (imports), or
    # of what a build was made from (builds)
    digest: str
    size_bytes: int
    created_at: str
    source: str  # "docker-archive" | "oci" | "registry" | "build"
    env: list[str] = field(default_factory=list)  # the image config's Env
    workdir: str = ""
    user: str = ""
    # The image config's Entrypoint and Cmd: what a compose service that names no
    # command starts, as Docker would (crucible.integrations.inspect.compose).
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    # program name -> its path inside the root (what LANGUAGE_PROGRAMS resolve to)
    programs: dict[str, str] = field(default_factory=dict)
    # A pull's reference (normalised: docker.io/library/python:3.12-slim) and the
    # digest of the manifest it named: `crucible env pull <ref's repository>@<digest>`
    # brings the same image again.
    ref: str | None = None
    manifest_digest: str | None = None
    # A Dockerfile build's record (crucible.environments.dockerfile): its cache key,
    # the digests of the Dockerfile and its context, each base and its digest, the
    # build args and target.
    build: dict[str, Any] | None = None
    root: Path = Path()

    @property
    def languages(self) -> list[str]:
        return sorted(
            lang
            for lang, needs in LANGUAGE_PROGRAMS.items()
            if all(p in self.programs for p in needs)
        )

    def path_value(self) -> str:
        for item in self.env:
            if item.startswith("PATH="):
                return item.removeprefix("PATH=")
        return DEFAULT_PATH

    def root_spec(self) -> EnvironmentRoot:
        """What the engine takes to run in this environment."""
        env = dict(item.split("=", 1) for item in self.env if "=" in item)
        return EnvironmentRoot(
            name=self.name, digest=self.digest, path=self.root, env=env, workdir=self.workdir,
            user=self.user, programs=self.programs,
        )  # fmt: skip

    def public(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.pop("root")
        doc["languages"] = self.languages
        return doc


def check_name(name: str) -> str:
    if not _NAME.match(name) or ".." in name or name == HOST:
        raise InvalidSubmission(
            f"invalid environment name {name!r}: lowercase letters, digits, '.', '_', '-', "
            "'/', an optional ':tag' and '@sha256:<digest>', a registry host:port/ may "
            "lead, and not 'host'",
            field="name",
        )
    return name


# Where a name's image came from: kept with the name (names may share a root).
_ORIGIN = ("source", "ref", "manifest_digest", "build")


class EnvironmentStore:
    """The environments under ``root`` (``Settings.environments_root``)."""

    @classmethod
    def of(cls, settings: Settings) -> EnvironmentStore:
        return cls(settings.environments_root, max_bytes=settings.environment_max_bytes)

    def __init__(self, root: Path, *, max_bytes: int = 4 << 30) -> None:
        self.root = root
        self.max_bytes = max_bytes
        for d in ("sha256", "names", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)

    # -- reading ------------------------------------------------------------------------

    def _name_file(self, name: str) -> Path:
        return self.root / "names" / (name.replace("/", "%2F") + ".json")

    def get(self, name: str) -> Environment:
        try:
            doc = json.loads(self._name_file(check_name(name)).read_text())
        except (FileNotFoundError, InvalidSubmission):
            known = ", ".join(e.name for e in self.all()) or "none"
            raise NotFound(
                f"no environment {name!r} (known: {known}; add one with "
                f"`crucible env pull IMAGE`, `crucible env import FILE --name {name}` "
                "or `crucible env build`)"
            ) from None
        return self._load({**doc, "name": name})

    def _load(self, doc: dict[str, Any]) -> Environment:
        """The environment a name file ``doc`` names: the root's record, with the
        name's own origin (older name files have none: the root's source stands)."""
        home = self._home(doc["digest"])
        meta = json.loads((home / "environment.json").read_text())
        meta.update({k: doc[k] for k in _ORIGIN if doc.get(k) is not None})
        meta["name"] = doc["name"]
        return Environment(**meta, root=home / "rootfs")

    def _home(self, digest: str) -> Path:
        return self.root / "sha256" / digest.removeprefix("sha256:")

    def all(self) -> list[Environment]:
        out = []
        for f in sorted((self.root / "names").glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                out.append(self._load(json.loads(f.read_text())))
        return out

    # -- adding -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _workdir(self) -> Iterator[Path]:
        work = self.root / "tmp" / secrets.token_hex(8)
        work.mkdir()
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def receive(self, stream: IO[bytes], work: Path, *, limit: int | None = None) -> Path:
        """Copy an archive from ``stream`` (stdin, an upload) into ``work``, refusing it
        once it exceeds ``limit`` (default ``max_bytes``)."""
        target = work / "archive.tar"
        limit = self.max_bytes if limit is None else limit
        total = 0
        with open(target, "wb") as out:
            while chunk := stream.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise PayloadTooLarge(f"the archive is larger than the limit of {limit} bytes")
                out.write(chunk)
        return target

    def import_image(self, source: Path | IO[bytes], name: str) -> Environment:
        """Import a ``docker save`` archive, an OCI layout directory or a tar of one."""
        check_name(name)
        with self._workdir() as work:
            if not isinstance(source, Path):
                source = self.receive(source, work)
            kind, ref = _skopeo_source(source, self.max_bytes)
            layout = work / "oci"
            _tool(
                ["skopeo", "--insecure-policy", "copy", "--quiet", ref, f"oci:{layout}:image"],
                "skopeo could not read the image",
            )
            return self._unpack(work, layout, name, {"source": kind})

    def pull_image(
        self, ref: str | ImageRef, name: str | None = None, *, timeout: float = 1800.0
    ) -> Environment:
        """Pull ``ref`` from its registry as ``name`` (default: the reference as Docker
        shows it, :func:`crucible.environments.registry.default_name`), pinned by the
        digest of the manifest it names, then import it as :meth:`import_image` does.
        ``timeout`` bounds each skopeo command.

        Raises InvalidSubmission (a bad reference or name), PullFailed (the registry
        cannot be read: unreachable, credentials refused, no such image),
        ImageRejected (a digest that does not match, a blob that does not match its
        digest, or any refusal of an import), PayloadTooLarge (over ``max_bytes``,
        before anything is downloaded). Nothing is kept of a refused pull.
        """
        image = parse_ref(ref) if isinstance(ref, str) else ref
        name = check_name(name if name is not None else default_name(image))
        pinned = resolve(image, max_bytes=self.max_bytes, timeout=timeout)
        with self._workdir() as work:
            layout = work / "oci"
            self.fetch(pinned, layout, timeout=timeout)
            origin = {"source": "registry", "ref": str(image), "manifest_digest": pinned.digest}
            return self._unpack(work, layout, name, origin)

    def resolve(self, ref: ImageRef, *, timeout: float = 1800.0) -> Resolved:
        """Pin ``ref`` by digest, within this store's size limit (what a pull does
        first; :func:`crucible.environments.registry.resolve`)."""
        return resolve(ref, max_bytes=self.max_bytes, timeout=timeout)

    def fetch(self, pinned: Resolved, layout: Path, *, timeout: float = 1800.0) -> dict[str, Any]:
        """Copy the pinned image into the OCI layout ``layout`` (tag ``image``) and
        check it as an import is checked, without unpacking it: a Dockerfile's base.
        Returns :func:`check_layout`'s answer."""
        skopeo_copy(pinned.source, layout, "image", timeout=timeout)
        return check_layout(layout, "image", self.max_bytes)

    def import_layout(
        self, work: Path, layout: Path, name: str, origin: dict[str, Any]
    ) -> Environment:
        """Check, unpack and install the OCI layout ``layout`` (tag ``image``, in
        ``work``, a directory of this store's ``tmp``) as ``name`` with ``origin``
        (``source`` and what else the name records): a build's result."""
        return self._unpack(work, layout, check_name(name), origin)

    def named(self, name: str, digest: str, origin: dict[str, Any]) -> Environment:
        """Give the root ``digest`` (present) the name ``name`` with ``origin``: a
        cached build under a name of its own."""
        if not self._home(digest).is_dir():
            raise NotFound(f"no environment root {digest}")
        return self._install(
            check_name(name), digest, Path(), env=[], workdir="", user="", origin=origin
        )

    def built(self, key: str) -> Environment | None:
        """An environment a Dockerfile build with cache key ``key`` made, if one is
        still here."""
        for env in self.all():
            if env.build is not None and env.build.get("key") == key and env.root.is_dir():
                return env
        return None

    def _unpack(self, work: Path, layout: Path, name: str, origin: dict[str, Any]) -> Environment:
        """Check the OCI layout ``layout`` skopeo wrote in ``work``, unpack it and
        install its root as ``name``."""
        config = check_layout(layout, "image", self.max_bytes)
        bundle = work / "bundle"
        _tool(
            ["umoci", "unpack", "--image", f"{layout}:image", str(bundle)],
            "umoci could not unpack the image",
        )
        cfg = config["config"].get("config") or {}
        env = [str(e) for e in cfg.get("Env") or []]
        workdir, user = str(cfg.get("WorkingDir") or ""), str(cfg.get("User") or "")
        entrypoint = [str(a) for a in cfg.get("Entrypoint") or []]
        command = [str(a) for a in cfg.get("Cmd") or []]
        # The root and what a run takes from the config: the same image saved by
        # docker, as an OCI layout or pulled (whose configs differ in bytes) is one root.
        canonical: dict[str, Any] = {
            "diff_ids": config["config"]["rootfs"]["diff_ids"],
            "env": env,
            "workdir": workdir,
            "user": user,
        }
        # Only when there is one: an image without keeps the digest it had before
        # Entrypoint and Cmd were recorded.
        if entrypoint or command:
            canonical["entrypoint"], canonical["cmd"] = entrypoint, command
        digest = (
            "sha256:" + hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()
        )
        return self._install(
            name, digest, bundle / "rootfs", env=env, workdir=workdir, user=user, origin=origin,
            entrypoint=entrypoint, cmd=command,
        )  # fmt: skip

    def add_rootfs(
        self,
        name: str,
        rootfs: Path,
        *,
        digest: str,
        source: str = "build",
        env: list[str] | None = None,
        workdir: str = "",
        user: str = "",
    ) -> Environment:
        """Take a root file system made elsewhere in this store's ``tmp`` (a build)."""
        return self._install(
            check_name(name), digest, rootfs, env=env or [], workdir=workdir, user=user,
            origin={"source": source},
        )  # fmt: skip

    def _install(
        self,
        name: str,
        digest: str,
        rootfs: Path,
        *,
        env: list[str],
        workdir: str,
        user: str,
        origin: dict[str, Any],
        entrypoint: list[str] | None = None,
        cmd: list[str] | None = None,
    ) -> Environment:
        source = origin["source"]
        home = self._home(digest)
        if not home.exists():
            staged = rootfs.parent / "home"
            staged.mkdir()
            rootfs.rename(staged / "rootfs")
            os.chmod(staged / "rootfs", 0o755)
            probe = Environment(
                name, digest, 0, "", source, env, workdir, user, entrypoint or [], cmd or []
            )
            meta = asdict(probe)
            for key in ("root", "name", "ref", "manifest_digest", "build"):
                meta.pop(key)
            meta["size_bytes"] = _tree_size(staged / "rootfs")
            meta["created_at"] = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
            path = (meta["env"] and probe.path_value()) or DEFAULT_PATH
            meta["programs"] = find_programs(staged / "rootfs", path)
            (staged / "environment.json").write_text(json.dumps(meta, indent=1))
            try:
                staged.rename(home)
            except OSError:  # the same content arrived meanwhile
                shutil.rmtree(staged, ignore_errors=True)
        link = self._name_file(name)
        previous = None
        with contextlib.suppress(OSError, ValueError, KeyError):
            previous = json.loads(link.read_text())["digest"]
        tmp = link.with_suffix(f".{secrets.token_hex(4)}")
        tmp.write_text(json.dumps({"name": name, "digest": digest, **origin}))
        tmp.rename(link)
        if previous is not None and previous != digest:  # replaced: the old root may go
            self._drop_unnamed(previous)
        return self._load({"name": name, "digest": digest, **origin})

    def _drop_unnamed(self, digest: str) -> None:
        if any(e.digest == digest for e in self.all()):
            return
        home = self._home(digest)
        if home.exists():
            trash = self.root / "tmp" / f"rm-{secrets.token_hex(4)}"
            home.rename(trash)
            shutil.rmtree(trash, ignore_errors=True)

    # -- removing -----------------------------------------------------------------------

    def remove(self, name: str, *, in_use: bool = False) -> None:
        """Forget ``name``; its root goes once no other name shares it."""
        env = self.get(name)
        if in_use:
            raise Conflict(f"environment {name!r} is in use by queued or running work")
        self._name_file(name).unlink()
        self._drop_unnamed(env.digest)

    def sweep(self, older_than_s: float = 3600.0) -> None:
        """Remove what interrupted imports and builds left in ``tmp`` (only what is
        older than ``older_than_s``: an import may be running in another process)."""
        cutoff = time.time() - older_than_s
        for child in (self.root / "tmp").iterdir():
            with contextlib.suppress(OSError):
                if child.lstat().st_mtime < cutoff:
                    shutil.rmtree(child, ignore_errors=True)


# -- checking an image ----------------------------------------------------------------


def _tool(argv: list[str], what: str) -> None:
    run_tool(argv, what, failure=ImageRejected)


def _skopeo_source(source: Path, max_bytes: int) -> tuple[str, str]:
    """(kind, skopeo transport reference) of an archive or a layout directory."""
    if source.is_dir():
        if not (source / "oci-layout").is_file():
            raise ImageRejected(f"{source} is not an OCI image layout (no oci-layout file)")
        return "oci", f"oci:{source}"
    if not source.is_file():
        raise NotFound(f"no such file: {source}")
    if source.stat().st_size > max_bytes:
        raise PayloadTooLarge(f"the archive is larger than the limit of {max_bytes} bytes")
    try:
        with tarfile.open(source) as tar:
            names = {m.name.removeprefix("./") for m in tar.getmembers()}
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ImageRejected(f"not a readable tar archive: {exc}") from None
    if "manifest.json" in names:
        return "docker-archive", f"docker-archive:{source}"
    if "oci-layout" in names:
        return "oci", f"oci-archive:{source}"
    raise ImageRejected("neither a docker save archive (manifest.json) nor an OCI layout")


def _blob(layout: Path, digest: str) -> Path:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
        raise ImageRejected(f"unsupported digest {digest!r}")
    return layout / "blobs" / "sha256" / hexd


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_layout(layout: Path, tag: str, max_bytes: int) -> dict[str, Any]:
    """Verify an OCI layout written by skopeo and scan its layers (module docstring).

    Returns ``{"digest": config digest, "config": the image config}``.
    """
    index = json.loads((layout / "index.json").read_text())
    manifests = [
        m
        for m in index.get("manifests", [])
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag
    ]
    if len(manifests) != 1:
        raise ImageRejected("the image has no single manifest")
    manifest_path = _blob(layout, manifests[0]["digest"])
    if _file_digest(manifest_path) != manifests[0]["digest"]:
        raise ImageRejected("the manifest does not match its digest")
    manifest = json.loads(manifest_path.read_text())
    config_path = _blob(layout, manifest["config"]["digest"])
    if _file_digest(config_path) != manifest["config"]["digest"]:
        raise ImageRejected("the image config does not match its digest")
    config = json.loads(config_path.read_text())
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    layers = manifest.get("layers") or []
    if len(diff_ids) != len(layers):
        raise ImageRejected(f"{len(layers)} layers but {len(diff_ids)} diff_ids in the config")
    scan = _Scan(max_bytes)
    for n, (desc, diff_id) in enumerate(zip(layers, diff_ids, strict=True), 1):
        path = _blob(layout, desc["digest"])
        if not path.is_file():
            raise ImageRejected(f"layer {n} is missing")
        if _file_digest(path) != desc["digest"]:
            raise ImageRejected(f"layer {n} does not match its digest {desc['digest']}")
        uncompressed = scan.layer(n, path)
        if uncompressed != diff_id:
            raise ImageRejected(f"layer {n}: its content does not match the config's diff_id")
    return {"digest": manifest["config"]["digest"], "config": config}


class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data


class _Scan:
    """The tree the layers build so far (kind by path), checked member by member."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total = 0
        self.members = 0
        self.kinds: dict[str, str] = {}  # path -> "dir" | "file" | "symlink"

    def layer(self, n: int, path: Path) -> str:
        """Check one layer; returns the digest of its uncompressed tar."""
        with open(path, "rb") as f:
            magic = f.read(2)
        with open(path, "rb") as raw:
            stream: Any = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw
            hashing = _Hashing(stream)
            try:
                with tarfile.open(fileobj=hashing, mode="r|") as tar:  # type: ignore[call-overload]
                    for member in tar:
                        self._member(n, member)
                while hashing.read(1 << 20):  # the tar's padding counts in the digest
                    pass
            except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
                raise ImageRejected(f"layer {n} is not a readable tar: {exc}") from None
        return "sha256:" + hashing.hash.hexdigest()

    def _member(self, n: int, m: tarfile.TarInfo) -> None:
        name = m.name
        if name.startswith("/"):
            raise ImageRejected(f"layer {n}: absolute path {name!r}")
        parts = [p for p in PurePosixPath(name).parts if p not in (".", "")]
        if ".." in parts:
            raise ImageRejected(f"layer {n}: path traversal in {name!r}")
        if not parts:
            return
        self.members += 1
        self.total += max(m.size, 0) + 512
        if self.total > self.max_bytes or self.members > 2_000_000:
            raise PayloadTooLarge(f"the image unpacks to more than {self.max_bytes} bytes")
        if m.ischr() or m.isblk():
            raise ImageRejected(f"layer {n}: device node {name!r}")
        for i in range(1, len(parts)):
            if self.kinds.get("/".join(parts[:i])) == "symlink":
                raise ImageRejected(
                    f"layer {n}: {name!r} writes through the symlink {'/'.join(parts[:i])!r}"
                )
        path = "/".join(parts)
        base = parts[-1]
        if base == _OPAQUE:
            parent = "/".join(parts[:-1])
            for p in [p for p in self.kinds if p.startswith(parent + "/")]:
                del self.kinds[p]
            return
        if base.startswith(_WHITEOUT):
            gone = "/".join([*parts[:-1], base.removeprefix(_WHITEOUT)])
            for p in [p for p in self.kinds if p == gone or p.startswith(gone + "/")]:
                del self.kinds[p]
            return
        if m.islnk():
            target = [p for p in PurePosixPath(m.linkname).parts if p not in (".", "", "/")]
            if m.linkname.startswith("/") or ".." in target:
                raise ImageRejected(f"layer {n}: hard link {name!r} points outside the image")
        for i in range(1, len(parts)):
            self.kinds.setdefault("/".join(parts[:i]), "dir")
        self.kinds[path] = "symlink" if m.issym() else "dir" if m.isdir() else "file"


# -- looking inside a root ------------------------------------------------------------


def resolve_in_root(root: Path, path: str, *, hops: int = 40) -> Path | None:
    """The host path of ``path`` as the container would resolve it inside ``root``
    (symlinks followed, absolute targets and ``..`` kept inside ``root``); None when
    it does not exist. Never follows a link to the host."""
    todo = [p for p in PurePosixPath(path).parts if p != "/"]
    done: list[str] = []
    while todo:
        part = todo.pop(0)
        if part in (".", ""):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        try:
            st = os.lstat(candidate)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            hops -= 1
            if hops < 0:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in PurePosixPath(target).parts if p != "/"] + todo
            continue
        done.append(part)
    return root.joinpath(*done)


def find_programs(root: Path, path: str) -> dict[str, str]:
    """program name -> its path inside ``root``, for every program languages need."""
    found: dict[str, str] = {}
    wanted = {p for needs in LANGUAGE_PROGRAMS.values() for p in needs}
    for directory in path.split(":"):
        if not directory.startswith("/"):
            continue
        for program in sorted(wanted - found.keys()):
            inside = f"{directory.rstrip('/')}/{program}"
            host = resolve_in_root(root, inside)
            if host is not None and host.is_file() and os.stat(host).st_mode & 0o111:
                found[program] = inside
    return found


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total
