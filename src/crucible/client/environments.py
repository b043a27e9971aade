"""Environments from Python: ``Client.environments`` and ``AsyncClient.environments``.

    with Client(server) as c:
        env = c.environments.upload("python-3.12.tar", "python:3.12-slim")  # admins
        print(env.digest, env.languages)
        c.environments.pull("python:3.12-slim")  # admins: from its registry, by the server
        c.environments.build("app/", name="app:1", build_args={"V": "2"})  # admins: buildah
        c.submit("print(1)", environment="python:3.12-slim", wait=30)

An upload is streamed from the file (never read whole): a path, or an open binary
file such as ``sys.stdin.buffer`` (``docker save IMAGE | python upload.py``).
A build sends its context directory as a tar archive (every entry as it is, symbolic
links as links, owners as root; nothing left out: buildah applies a ``.dockerignore``
on the server, after the upload), packed into a temporary file first so the server
learns its length before it is sent.
Refusals raise :class:`crucible.client.errors.ApiError` (404, 409, 413, 422 …).
"""

from __future__ import annotations

import asyncio
import builtins
import os
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Literal
from urllib.parse import quote

import httpx

from crucible.client.transport import AsyncTransport, Call, SyncTransport, model, models, nothing
from crucible.domain.models import EnvironmentPublic

# An import checks every layer and unpacks the image: minutes for a large one.
UPLOAD_TIMEOUT_S = 1800.0

Source = str | os.PathLike[str] | IO[bytes]


def _path(name: str) -> str:
    return "/environments/" + quote(name, safe="/:")


def _open(source: Source, stack: ExitStack) -> IO[bytes]:
    if isinstance(source, str | os.PathLike):
        return stack.enter_context(open(Path(source), "rb"))
    return source


def _headers(f: IO[bytes]) -> dict[str, str]:
    """Content-Length when the file is a regular one (the server refuses an
    oversized archive before it is sent); else the body goes chunked."""
    try:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode):
            return {
                "Content-Length": str(st.st_size - f.tell()),
                "Content-Type": "application/octet-stream",
            }
    except (OSError, ValueError):  # io.UnsupportedOperation: no file descriptor
        pass
    return {"Content-Type": "application/octet-stream"}


def _as_root(member: tarfile.TarInfo) -> tarfile.TarInfo:
    # The server makes every entry root's anyway (COPY's default); the same directory
    # sent by two users is then the same archive.
    member.uid = member.gid = 0
    member.uname = member.gname = "root"
    return member


def pack_context(context: str | os.PathLike[str], stack: ExitStack) -> IO[bytes]:
    """The directory ``context`` as a tar archive in a temporary file, at its start.
    Raises NotADirectoryError."""
    root = Path(context)
    if not root.is_dir():
        raise NotADirectoryError(f"the build context {root} is not a directory")
    f = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (the caller's stack)
    paths: list[Path] = []
    for top, dirs, files in os.walk(root):  # links to directories are not followed
        paths += [Path(top, n) for n in [*dirs, *files]]
    with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(paths):  # sorted: the same tree, the same bytes
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False,
                    filter=_as_root)  # fmt: skip
    f.seek(0)
    return f


# -- the calls: each route once ---------------------------------------------------


def list_call() -> Call[builtins.list[EnvironmentPublic]]:
    return Call("GET", "/environments", models(EnvironmentPublic))


def get_call(name: str) -> Call[EnvironmentPublic]:
    return Call("GET", _path(name), model(EnvironmentPublic))


def upload_call(f: IO[bytes], name: str, replace: bool) -> Call[EnvironmentPublic]:
    """POST /environments: the archive ``f``, streamed from where it stands."""
    return Call(
        "POST",
        "/environments",
        model(EnvironmentPublic),
        params={"name": name, **({"replace": "true"} if replace else {})},
        content=f,
        headers=_headers(f),
        timeout=UPLOAD_TIMEOUT_S,
    )


def pull_call(ref: str, name: str | None, replace: bool) -> Call[EnvironmentPublic]:
    return Call(
        "POST",
        "/environments/pull",
        model(EnvironmentPublic),
        json={"ref": ref, "name": name, "replace": replace},
        timeout=UPLOAD_TIMEOUT_S,
    )


def build_call(
    f: IO[bytes], name: str | None, dockerfile: str, build_args: Mapping[str, str] | None,
    target: str | None, pull: str, replace: bool,
) -> Call[EnvironmentPublic]:  # fmt: skip
    """POST /environments/build: the packed context ``f`` (:func:`pack_context`)."""
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("dockerfile", dockerfile),
        ("pull", pull),
    ]
    params += [("build_arg", f"{k}={v}") for k, v in (build_args or {}).items()]
    if name is not None:
        params.append(("name", name))
    if target is not None:
        params.append(("target", target))
    if replace:
        params.append(("replace", "true"))
    return Call(
        "POST",
        "/environments/build",
        model(EnvironmentPublic),
        params=httpx.QueryParams(params),
        content=f,
        headers=_headers(f),
        timeout=UPLOAD_TIMEOUT_S,
    )


def delete_call(name: str) -> Call[None]:
    return Call("DELETE", _path(name), nothing)


# -- the sync and async faces -----------------------------------------------------


class Environments:
    """``Client.environments``: list, get, upload, pull, build and delete (the last
    four admins only)."""

    def __init__(self, send: SyncTransport) -> None:
        self.send = send

    def list(self) -> builtins.list[EnvironmentPublic]:
        return self.send(list_call())

    def get(self, name: str) -> EnvironmentPublic:
        return self.send(get_call(name))

    def upload(self, source: Source, name: str, *, replace: bool = False) -> EnvironmentPublic:
        """Import ``source`` (a ``docker save`` archive or a tar of an OCI layout)
        as ``name``; ``replace`` an environment of that name (not one in use)."""
        with ExitStack() as stack:
            return self.send(upload_call(_open(source, stack), name, replace))

    def pull(
        self, ref: str, name: str | None = None, *, replace: bool = False
    ) -> EnvironmentPublic:
        """Have the server pull ``ref`` from its registry as ``name`` (default: the
        reference as Docker shows it), with the server's own registry credentials and
        mirrors; pinned by its manifest digest (``.manifest_digest``)."""
        return self.send(pull_call(ref, name, replace))

    def build(
        self,
        context: str | os.PathLike[str],
        *,
        name: str | None = None,
        dockerfile: str = "Dockerfile",
        build_args: Mapping[str, str] | None = None,
        target: str | None = None,
        pull: Literal["missing", "never"] = "missing",
        replace: bool = False,
    ) -> EnvironmentPublic:
        """Have the server build ``dockerfile`` (a path inside ``context``) of the
        directory ``context`` with buildah as ``name`` (default ``build/context:<key>``);
        the same build again answers at once (``.build.key``). ``replace``: an
        environment of that name that another build (or import) made."""
        with ExitStack() as stack:
            f = pack_context(context, stack)
            return self.send(build_call(f, name, dockerfile, build_args, target, pull, replace))

    def delete(self, name: str) -> None:
        """Remove ``name`` (409 while queued or running work names it)."""
        self.send(delete_call(name))


class AsyncEnvironments:
    """``AsyncClient.environments``: :class:`Environments`, awaited."""

    def __init__(self, send: AsyncTransport) -> None:
        self.send = send

    async def list(self) -> builtins.list[EnvironmentPublic]:
        return await self.send(list_call())

    async def get(self, name: str) -> EnvironmentPublic:
        return await self.send(get_call(name))

    async def upload(
        self, source: Source, name: str, *, replace: bool = False
    ) -> EnvironmentPublic:
        with ExitStack() as stack:
            return await self.send(upload_call(_open(source, stack), name, replace))

    async def pull(
        self, ref: str, name: str | None = None, *, replace: bool = False
    ) -> EnvironmentPublic:
        return await self.send(pull_call(ref, name, replace))

    async def build(
        self,
        context: str | os.PathLike[str],
        *,
        name: str | None = None,
        dockerfile: str = "Dockerfile",
        build_args: Mapping[str, str] | None = None,
        target: str | None = None,
        pull: Literal["missing", "never"] = "missing",
        replace: bool = False,
    ) -> EnvironmentPublic:
        with ExitStack() as stack:
            f = await asyncio.to_thread(pack_context, context, stack)
            call = build_call(f, name, dockerfile, build_args, target, pull, replace)
            return await self.send(call)

    async def delete(self, name: str) -> None:
        await self.send(delete_call(name))
