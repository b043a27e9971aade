"""Environments built from a Dockerfile with buildah: ``crucible env build --dockerfile``
and a compose service's ``build:``.

A build, like a Debian build (:mod:`crucible.environments.build`), is an operator's
action whose code runs at build time only, in a directory of the store's ``tmp``:

1. The Dockerfile is read here first (:func:`parse`): an unknown instruction, no
   ``FROM``, a ``FROM`` whose variables no ``ARG`` gives, or a missing context or
   Dockerfile are refused before anything runs.
2. Every base a ``FROM`` (or ``COPY --from``) names that is not an earlier stage or
   ``scratch`` is resolved: an environment of the store under that name first (it
   is exported as a one-layer OCI layout), else, with ``pull="missing"``, the
   registry, exactly as a pull is (pinned by the manifest's digest, every blob
   checked, every layer scanned) but into the build's directory, not the store:
   a build that fails adds nothing. The Dockerfile buildah reads names each base
   by its local layout (``oci:<dir>:image``), so buildah itself never reaches a
   registry and never resolves a name differently from us.
3. The cache key (:func:`cache_key`): the digests of the Dockerfile, of the context
   (every file's name, type, mode, owner and content:
   :mod:`crucible.environments.treedigest`), of each base, the build args and the
   target. An environment built with that key already in the store is the answer
   (given the asked name too); nothing is built.
4. ``buildah bud`` (Debian's buildah, root, no daemon) builds with its storage in
   the build's directory (``--root``/``--runroot``; driver ``vfs``, which needs no
   kernel support and leaves no mounts behind; the storage is thrown away with the
   build, so it never grows and concurrent builds never share it). ``RUN`` steps run
   in runc containers (``--isolation oci``: their own pid, mount, ipc and uts
   namespaces, buildah's default capabilities and seccomp profile) on the **host's
   network** (``--network host``, as a Debian build's pip does): they can reach
   what the host reaches, loopback services included. They run at build time only;
   an evaluation sandbox runs in the result and never runs a ``RUN`` step.
5. ``buildah push`` writes the image as an OCI layout, and the store imports it
   the way it imports any image (:meth:`EnvironmentStore.import_layout`: digests
   checked, layers scanned, ``umoci unpack``), recording how it was built
   (``Environment.build``).

Any failure raises (:class:`BuildFailed` for buildah's, InvalidSubmission or NotFound
for what was asked, PullFailed/ImageRejected for a base) and leaves nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crucible.core.errors import BuildFailed, CrucibleError, InvalidSubmission, NotFound
from crucible.environments.build import Log, build_dir, build_tool
from crucible.environments.registry import default_name, host_architecture, parse_ref
from crucible.environments.store import Environment, EnvironmentStore, check_name
from crucible.environments.treedigest import tree_digest

__all__ = [
    "BuildFailed", "DockerfileSpec", "Planned", "build_dockerfile", "build_planned", "cache_key",
    "parse", "plan_build",
]  # fmt: skip

# Bump when what a key covers, or how a build is made from it, changes.
_KEY_FORMAT = "crucible-dockerfile-v1"
_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
    "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER",
}  # fmt: skip
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_ARG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_DOCKERFILE = 1 << 20
Pull = Literal["missing", "never"]


@dataclass(frozen=True)
class DockerfileSpec:
    """What to build: ``dockerfile`` (default ``<context>/Dockerfile``; relative to
    ``context``), the ``context`` directory, build ``args`` and a ``target`` stage."""

    context: Path
    dockerfile: Path | None = None
    args: tuple[tuple[str, str], ...] = ()
    target: str | None = None

    def __post_init__(self) -> None:
        for key, _ in self.args:
            if not _ARG_NAME.match(key):
                raise InvalidSubmission(f"not a build arg name: {key!r}", field="build_arg")
        if self.target is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.target):
            raise InvalidSubmission(f"not a build stage name: {self.target!r}", field="target")

    @property
    def file(self) -> Path:
        if self.dockerfile is None:
            return self.context / "Dockerfile"
        return self.dockerfile if self.dockerfile.is_absolute() else self.context / self.dockerfile

    def read(self) -> str:
        """The Dockerfile's text; NotFound when it or the context is missing."""
        if not self.context.is_dir():
            raise NotFound(f"the build context {self.context} is not a directory")
        if not self.file.is_file():
            raise NotFound(f"no Dockerfile at {self.file}")
        data = self.file.read_bytes()
        if len(data) > _MAX_DOCKERFILE:
            raise InvalidSubmission(
                f"{self.file} is over {_MAX_DOCKERFILE} bytes", field="dockerfile"
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidSubmission(f"{self.file} is not UTF-8 text", field="dockerfile") from None


# -- reading a Dockerfile ---------------------------------------------------------------


@dataclass
class Instruction:
    line: int  # where it starts, 1-based
    keyword: str  # upper case
    rest: str  # the arguments, continuation lines joined


@dataclass
class Stage:
    line: int
    base: str  # as written, variables expanded
    alias: str | None
    external: bool  # a base to resolve (not scratch, not an earlier stage)
    copies_from: list[str] = field(default_factory=list)  # external COPY --from images


def instructions(text: str) -> list[Instruction]:
    """The instructions of ``text``: comments and blank lines dropped, lines ending in
    ``\\`` joined. Raises InvalidSubmission for an unknown instruction."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):  # comments inside a continuation
            continue
        if not pending:
            start = n
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        pending.append(line)
        joined = " ".join(p.strip() for p in pending).strip()
        pending = []
        keyword, _, rest = joined.partition(" ")
        if keyword.upper() not in _INSTRUCTIONS:
            raise InvalidSubmission(
                f"Dockerfile line {start}: unknown instruction {keyword!r}", field="dockerfile"
            )
        if "<<" in rest and keyword.upper() in ("RUN", "COPY", "ADD"):
            raise InvalidSubmission(
                f"Dockerfile line {start}: heredocs are not supported", field="dockerfile"
            )
        out.append(Instruction(start, keyword.upper(), rest.strip()))
    if pending:
        raise InvalidSubmission("the Dockerfile ends inside a continued line", field="dockerfile")
    return out


def _expand(text: str, values: dict[str, str], line: int) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise InvalidSubmission(
                f"Dockerfile line {line}: ${name} in FROM is not given by an ARG before"
                " the first FROM or a build arg",
                field="dockerfile",
            )
        return values[name]

    return _VAR.sub(one, text)


def parse(text: str, args: dict[str, str] | None = None) -> list[Stage]:
    """The stages of a Dockerfile (module docstring, step 1). Raises InvalidSubmission."""
    given = dict(args or {})
    steps = instructions(text)
    globals_: dict[str, str] = {}
    stages: list[Stage] = []
    aliases: set[str] = set()
    for ins in steps:
        if ins.keyword == "ARG" and not stages:
            name, eq, default = ins.rest.partition("=")
            if name in given:
                globals_[name] = given[name]
            elif eq:
                globals_[name] = default.strip().strip('"')
            continue
        if ins.keyword == "FROM":
            words = [w for w in ins.rest.split() if not w.startswith("--platform")]
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].upper() != "AS"):
                raise InvalidSubmission(
                    f"Dockerfile line {ins.line}: FROM takes an image and an optional AS name",
                    field="dockerfile",
                )
            base = _expand(words[0], globals_, ins.line)
            alias = words[2].lower() if len(words) == 3 else None
            external = base != "scratch" and base.lower() not in aliases
            stages.append(Stage(ins.line, base, alias, external))
            if alias:
                aliases.add(alias)
            continue
        if not stages:
            raise InvalidSubmission(
                f"Dockerfile line {ins.line}: {ins.keyword} before the first FROM",
                field="dockerfile",
            )
        if ins.keyword in ("COPY", "ADD"):
            for word in ins.rest.split():
                if word.startswith("--from="):
                    source = word.removeprefix("--from=")
                    if source.lower() not in aliases and not source.isdigit():
                        stages[-1].copies_from.append(source)
    if not stages:
        raise InvalidSubmission("the Dockerfile has no FROM", field="dockerfile")
    return stages


def bases(stages: list[Stage]) -> list[str]:
    """The external images the stages name, each once, in order."""
    found = [s.base for s in stages if s.external]
    found += [c for s in stages for c in s.copies_from]
    return list(dict.fromkeys(found))


def rewrite(text: str, args: dict[str, str], layouts: dict[str, str]) -> str:
    """``text`` with each external image of a FROM or COPY --from replaced by its local
    layout (``layouts``: image -> ``oci:<dir>:image``). Continuations are joined."""
    aliases: set[str] = set()
    globals_: dict[str, str] = {}
    out: list[str] = []
    seen_from = False
    for ins in instructions(text):
        rest = ins.rest
        if ins.keyword == "ARG" and not seen_from:
            name, eq, default = rest.partition("=")
            if name in args:
                globals_[name] = args[name]
            elif eq:
                globals_[name] = default.strip().strip('"')
        if ins.keyword == "FROM":
            seen_from = True
            words = rest.split()
            flags = [w for w in words if w.startswith("--platform")]
            words = [w for w in words if not w.startswith("--platform")]
            base = _expand(words[0], globals_, ins.line)
            if base in layouts and base.lower() not in aliases:
                words[0] = layouts[base]
            if len(words) == 3:
                aliases.add(words[2].lower())
            rest = " ".join([*flags, *words])
        elif ins.keyword in ("COPY", "ADD"):
            words = rest.split(" ")
            for i, word in enumerate(words):
                source = word.removeprefix("--from=")
                if (
                    word.startswith("--from=")
                    and source in layouts
                    and source.lower() not in aliases
                ):
                    words[i] = f"--from={layouts[source]}"
            rest = " ".join(words)
        out.append(f"{ins.keyword} {rest}")
    return "\n".join(out) + "\n"


# -- resolving the bases ----------------------------------------------------------------


@dataclass(frozen=True)
class Base:
    image: str  # as the Dockerfile names it
    digest: str  # the store's digest of the environment, or the pinned manifest digest
    environment: Environment | None = None  # from the store
    source: str | None = None  # from the registry: repository@digest
    ref: Any = None


def resolve_base(store: EnvironmentStore, image: str, *, pull: Pull, timeout: float) -> Base:
    """The base ``image``: the store's environment of that name (or of the name a pull
    of it would give), else the registry's image pinned by digest (``pull``
    ``missing``). Raises NotFound (not in the store, ``pull`` ``never``),
    InvalidSubmission (not a reference), PullFailed, ImageRejected."""
    names = [image]
    with contextlib.suppress(InvalidSubmission):
        names.append(default_name(parse_ref(image)))
    for name in dict.fromkeys(names):
        with contextlib.suppress(NotFound, InvalidSubmission):
            env = store.get(name)
            return Base(image, env.digest, environment=env)
    if pull == "never":
        raise NotFound(
            f"FROM {image}: no environment of that name and pull is never (add it with "
            f"`crucible env pull {image}`)"
        )
    try:
        ref = parse_ref(image)
    except InvalidSubmission as exc:
        raise InvalidSubmission(f"FROM {image}: {exc}", field="dockerfile") from None
    try:
        pinned = store.resolve(ref, timeout=timeout)
    except CrucibleError as exc:
        raise type(exc)(f"FROM {image}: not an environment, and {exc}") from None
    return Base(image, pinned.digest, source=pinned.source, ref=pinned)


def export_layout(env: Environment, layout: Path) -> None:
    """An environment of the store as a one-layer OCI layout (tag ``image``) with its
    Env, WorkingDir and User: a base buildah can read."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    tar = layout / "layer.tar"
    # GNU tar keeps owners by number, modes, hard links, xattrs (file capabilities).
    build_tool(
        ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(env.root),
         "-cf", str(tar), "."],
        timeout=1800.0, what=f"cannot export {env.name}", log=None,
    )  # fmt: skip
    h = hashlib.sha256()
    with open(tar, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    layer = h.hexdigest()
    size = tar.stat().st_size
    tar.rename(blobs / layer)
    config = {
        "architecture": host_architecture(), "os": "linux",
        "config": {"Env": env.env, "WorkingDir": env.workdir, "User": env.user},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer}"]},
    }  # fmt: skip
    config_raw = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _put(blobs, config_raw), "size": len(config_raw)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer}", "size": size}],
    }  # fmt: skip
    manifest_raw = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": manifest["mediaType"], "digest": _put(blobs, manifest_raw),
                       "size": len(manifest_raw),
                       "annotations": {"org.opencontainers.image.ref.name": "image"}}],
    }  # fmt: skip
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


def _put(blobs: Path, data: bytes) -> str:
    hexd = hashlib.sha256(data).hexdigest()
    (blobs / hexd).write_bytes(data)
    return f"sha256:{hexd}"


# -- the key ----------------------------------------------------------------------------


def cache_key(spec: DockerfileSpec, text: str, found: list[Base]) -> dict[str, Any]:
    """What a build is made from (module docstring, step 3), with its ``key``."""
    record: dict[str, Any] = {
        "format": _KEY_FORMAT,
        "dockerfile": "sha256:" + hashlib.sha256(text.encode()).hexdigest(),
        "context": tree_digest(spec.context),
        "bases": {b.image: b.digest for b in found},
        "args": dict(sorted(spec.args)),
        "target": spec.target,
    }
    record["key"] = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return record


def build_name(spec: DockerfileSpec, key: str) -> str:
    """A built environment's name when none is given: ``build/<context dir>:<key>``."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", spec.context.resolve().name.lower()).strip("-._")
    return f"build/{stem or 'context'}:{key[:16]}"


# -- buildah ----------------------------------------------------------------------------


def _policy(work: Path) -> Path:
    # Every base is a local layout whose digests the store checked (or wrote); an
    # operator's policy.json governs registries, which buildah is never sent to.
    path = work / "policy.json"
    path.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    return path


def _buildah(work: Path, *args: str) -> list[str]:
    return [
        "buildah", "--root", str(work / "storage"), "--runroot", str(work / "run"),
        "--storage-driver", "vfs", *args,
    ]  # fmt: skip


def buildah_bud(
    work: Path, dockerfile: Path, spec: DockerfileSpec, tag: str, *, runc: str, timeout: float,
    log: Log | None,
) -> None:  # fmt: skip
    argv = _buildah(
        work, "bud", "--signature-policy", str(_policy(work)), "--isolation", "oci",
        "--runtime", shutil.which(runc) or runc, "--network", "host", "--format", "oci",
        "--file", str(dockerfile), "--tag", tag,
    )  # fmt: skip
    for key, value in spec.args:
        argv += ["--build-arg", f"{key}={value}"]
    if spec.target:
        argv += ["--target", spec.target]
    build_tool([*argv, str(spec.context)], timeout=timeout, what="buildah could not build", log=log)


def buildah_push(work: Path, tag: str, layout: Path, *, timeout: float) -> None:
    argv = _buildah(
        work, "push", "--signature-policy", str(_policy(work)), tag, f"oci:{layout}:image"
    )
    build_tool(argv, timeout=timeout, what="buildah could not write the image", log=None)


def _buildah_cleanup(work: Path) -> None:
    """Whatever buildah left mounted or running in its storage goes with ``work``."""
    if (work / "storage").exists() and shutil.which("buildah"):
        subprocess.run(_buildah(work, "rm", "--all"), capture_output=True, timeout=120, check=False)


# -- a build ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """A build with its bases resolved and its key known (:func:`plan_build`)."""

    spec: DockerfileSpec
    text: str
    found: list[Base]
    record: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.record["key"])


def plan_build(
    store: EnvironmentStore, spec: DockerfileSpec, *, pull: Pull = "missing",
    timeout: float = 1800.0,
) -> Planned:  # fmt: skip
    """Steps 1 to 3 of the module docstring: the Dockerfile read and checked, its bases
    resolved, the key. Nothing is built. Raises as :func:`build_dockerfile`."""
    text = spec.read()
    stages = parse(text, dict(spec.args))
    if spec.target is not None and spec.target.lower() not in {s.alias for s in stages}:
        raise InvalidSubmission(f"the Dockerfile has no stage {spec.target!r}", field="target")
    found = [resolve_base(store, image, pull=pull, timeout=timeout) for image in bases(stages)]
    return Planned(spec, text, found, cache_key(spec, text, found))


# One build of a key at a time in this process: callers that ask for the same build
# together (a server's concurrent uploads, threads of one eval) wait for the first
# and find its result in the cache. One small lock per key ever built here.
_key_locks: dict[str, threading.Lock] = {}
_key_locks_guard = threading.Lock()


def _key_lock(key: str) -> threading.Lock:
    with _key_locks_guard:
        return _key_locks.setdefault(key, threading.Lock())


def build_dockerfile(
    store: EnvironmentStore,
    spec: DockerfileSpec,
    name: str | None = None,
    *,
    pull: Pull = "missing",
    timeout: float = 1800.0,
    runc: str = "runc",
    log: Log | None = None,
) -> Environment:
    """Build ``spec`` (module docstring) as ``name`` (default :func:`build_name`), or
    find its build in the cache. Raises InvalidSubmission (a bad Dockerfile, name or
    arg), NotFound (no context, no Dockerfile, a base missing with ``pull`` never),
    PullFailed, ImageRejected (a base), BuildFailed (buildah), SandboxUnavailable
    (buildah missing). Nothing of a failed build is left."""
    if name is not None:
        check_name(name)
    planned = plan_build(store, spec, pull=pull, timeout=timeout)
    return build_planned(store, planned, name, timeout=timeout, runc=runc, log=log)


def build_planned(
    store: EnvironmentStore,
    planned: Planned,
    name: str | None = None,
    *,
    timeout: float = 1800.0,
    runc: str = "runc",
    log: Log | None = None,
) -> Environment:
    """Steps 4 and 5 for what :func:`plan_build` planned, or its build found in the
    cache; concurrent builds of one key in this process build once."""
    spec, key = planned.spec, planned.key
    name = name or build_name(spec, key)
    origin = {"source": "dockerfile", "build": planned.record}
    with _key_lock(key):
        cached = store.built(key)
        if cached is not None:
            return cached if cached.name == name else store.named(name, cached.digest, origin)
        return _build(store, planned, name, origin, timeout=timeout, runc=runc, log=log)


def _build(
    store: EnvironmentStore, planned: Planned, name: str, origin: dict[str, Any], *,
    timeout: float, runc: str, log: Log | None,
) -> Environment:  # fmt: skip
    spec, text, found, key = planned.spec, planned.text, planned.found, planned.key
    args = dict(spec.args)
    if shutil.which("buildah") is None:
        from crucible.core.errors import SandboxUnavailable

        raise SandboxUnavailable("buildah is not installed (Debian package buildah)")
    with build_dir(store) as work:
        try:
            layouts: dict[str, str] = {}
            for n, base in enumerate(found):
                layout = work / f"base-{n}"
                if base.environment is not None:
                    export_layout(base.environment, layout)
                else:
                    store.fetch(base.ref, layout, timeout=timeout)
                layouts[base.image] = f"oci:{layout}:image"
            dockerfile = work / "Dockerfile"
            dockerfile.write_text(rewrite(text, args, layouts))
            tag = f"localhost/crucible-build:{key[:16]}"
            buildah_bud(work, dockerfile, spec, tag, runc=runc, timeout=timeout, log=log)
            out = work / "out"
            buildah_push(work, tag, out, timeout=timeout)
            for n in range(len(found)):  # the bases' copies are not needed any more
                shutil.rmtree(work / f"base-{n}", ignore_errors=True)
            return store.import_layout(work, out, name, origin)
        finally:
            _buildah_cleanup(work)
