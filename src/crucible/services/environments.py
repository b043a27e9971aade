"""Environments as the service offers them: listed, imported, pulled and removed
(admins) through the API, and resolved for submissions and sandboxes.

The store (:class:`crucible.environments.store.EnvironmentStore`) does the work: imports
and pulls run skopeo and umoci and remove walks a tree, so every call goes through a
thread. A pull uses the server's own registry set-up (its registries.conf, auth file
and policy): credentials never travel through the API.
An upload is read from the request as it arrives and written to the store's ``tmp``
(:meth:`EnvironmentStore.receive`, which refuses it past ``environment_max_bytes``);
it is never held in memory. "In use" means queued or running evaluations, or running
sandboxes, naming the environment: such an environment is neither removed nor
replaced (409), so what was pinned at submission is still there when it runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
from collections.abc import AsyncIterator
from typing import IO, cast

from crucible.core.errors import Conflict, InvalidSubmission, NotFound, PayloadTooLarge
from crucible.domain.models import EnvironmentPublic
from crucible.environments.build import build_dir
from crucible.environments.context import dockerfile_path, unpack_context
from crucible.environments.dockerfile import DockerfileSpec, Pull, build_planned, plan_build
from crucible.environments.registry import default_name, parse_ref
from crucible.environments.store import HOST, Environment, EnvironmentStore, check_name
from crucible.services.submissions import resolve_environment
from crucible.store import Store
from crucible.store.sandboxes import SandboxStore

# An upload that sends nothing for this long is abandoned (its thread must not wait
# forever on a client that went away without closing).
STALL_S = 300.0


def environment_public(env: Environment) -> EnvironmentPublic:
    return EnvironmentPublic.model_validate(env.public())


class _Body(io.RawIOBase):
    """A blocking file over an async request body, for the store's thread to read:
    each read waits, on the event loop, for the next chunk the client sends."""

    def __init__(self, chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._chunks = chunks
        self._loop = loop
        self._pending = b""
        self._done = False

    def readable(self) -> bool:
        return True

    async def _next(self) -> bytes | None:
        try:
            return await anext(self._chunks)
        except StopAsyncIteration:
            return None

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._done:
            future = asyncio.run_coroutine_threadsafe(self._next(), self._loop)
            try:
                chunk = future.result(timeout=STALL_S)
            except concurrent.futures.TimeoutError:
                future.cancel()
                raise InvalidSubmission("the upload stopped arriving", field="body") from None
            if chunk is None:
                self._done = True
            else:
                self._pending = chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class EnvironmentService:
    """The environment store, with what the API adds: in-use checks, threads."""

    def __init__(
        self,
        store: EnvironmentStore,
        evaluations: Store,
        sandboxes: SandboxStore,
        *,
        context_max_bytes: int = 1 << 30,
        context_max_entries: int = 200_000,
        build_timeout_s: float = 1800.0,
        runc: str = "runc",
    ):
        self.store = store
        self.evaluations = evaluations
        self.sandboxes = sandboxes
        self.context_max_bytes = context_max_bytes
        self.context_max_entries = context_max_entries
        self.build_timeout_s = build_timeout_s
        self.runc = runc

    async def list(self) -> list[EnvironmentPublic]:
        envs = await asyncio.to_thread(self.store.all)
        return [environment_public(e) for e in envs]

    async def get(self, name: str) -> EnvironmentPublic:
        """Raises NotFound (naming the known ones)."""
        return environment_public(await asyncio.to_thread(self.store.get, name))

    async def resolve(self, name: str | None, *, default: str | None = None) -> Environment | None:
        """What a request's ``environment`` names (None: ``default``, else host);
        InvalidSubmission (422, naming the known ones and the import command) when
        unknown."""
        wanted = name if name is not None else default
        if wanted is None or wanted == HOST:
            return None  # no thread for the common case
        return await asyncio.to_thread(resolve_environment, name, self.store, default=default)

    async def in_use(self, name: str) -> tuple[int, int]:
        """(queued or running evaluations, running sandboxes) naming ``name``."""
        evaluations = await asyncio.to_thread(self.evaluations.environment_in_use, name)
        sandboxes = await asyncio.to_thread(self.sandboxes.environment_in_use, name)
        return evaluations, sandboxes

    async def _refuse_if_in_use(self, name: str, doing: str) -> None:
        evaluations, sandboxes = await self.in_use(name)
        if evaluations or sandboxes:
            raise Conflict(
                f"cannot {doing} environment {name!r}: {evaluations} queued or running"
                f" evaluations and {sandboxes} running sandboxes use it"
            )

    async def _exists(self, name: str) -> bool:
        try:
            await asyncio.to_thread(self.store.get, name)
        except NotFound:
            return False
        return True

    async def upload(
        self,
        chunks: AsyncIterator[bytes],
        name: str,
        *,
        replace: bool = False,
        length: int | None = None,
    ) -> EnvironmentPublic:
        """Import the archive arriving in ``chunks`` (a ``docker save`` tar or a tar
        of an OCI layout) as ``name``.

        Raises InvalidSubmission (a bad name), Conflict (the name exists and not
        ``replace``, or it is in use), PayloadTooLarge (over the store's limit, by
        ``length`` before reading or as it arrives), ImageRejected (422: malformed or
        hostile; nothing of it is kept).
        """
        check_name(name)
        if length is not None and length > self.store.max_bytes:
            raise PayloadTooLarge(
                f"the archive is larger than the limit of {self.store.max_bytes} bytes"
            )
        await self._may_take(name, replace)
        body = _Body(chunks, asyncio.get_running_loop())
        env = await asyncio.to_thread(self.store.import_image, cast(IO[bytes], body), name)
        return environment_public(env)

    async def _may_take(self, name: str, replace: bool) -> None:
        """Conflict when ``name`` exists and not ``replace``, or it is in use."""
        if await self._exists(name):
            if not replace:
                raise Conflict(f"environment {name!r} exists; send replace=true to replace it")
            await self._refuse_if_in_use(name, "replace")

    async def pull(
        self, ref: str, name: str | None = None, *, replace: bool = False
    ) -> EnvironmentPublic:
        """Pull ``ref`` from its registry as ``name`` (default: the reference as Docker
        shows it), pinned by its manifest digest.

        Raises InvalidSubmission (a bad reference or name), Conflict (as
        :meth:`upload`), PullFailed (502: the registry unreachable, the server's
        credentials refused, no such image), ImageRejected (422: a digest that does not
        match, or any refusal of an import; nothing is kept), PayloadTooLarge (413:
        over the store's limit as the manifest declares, before the download).
        """
        image = parse_ref(ref)
        name = check_name(name if name is not None else default_name(image))
        await self._may_take(name, replace)
        env = await asyncio.to_thread(self.store.pull_image, image, name)
        return environment_public(env)

    async def build(
        self,
        chunks: AsyncIterator[bytes],
        *,
        name: str | None = None,
        dockerfile: str = "Dockerfile",
        build_args: dict[str, str] | None = None,
        target: str | None = None,
        pull: Pull = "missing",
        replace: bool = False,
        length: int | None = None,
    ) -> EnvironmentPublic:
        """Build the Dockerfile ``dockerfile`` of the context arriving in ``chunks`` (a
        tar or compressed tar, checked and unpacked by
        :func:`crucible.environments.context.unpack_context`) with buildah, as
        ``name`` (default ``build/context:<key>``); a build of the same key in the
        store is the answer, with nothing built. The build runs in a thread, each
        step bounded by ``build_timeout_s``; one build per key at a time.

        Raises InvalidSubmission (a bad name, arg, archive or Dockerfile; nothing
        kept), PayloadTooLarge (over ``context_max_bytes`` as declared, sent or
        unpacked), Conflict (``name`` holds another build and not ``replace``, or is
        in use), NotFound (a base missing with ``pull`` never), PullFailed and
        ImageRejected (a base), BuildFailed (buildah: its output's tail).
        """
        if name is not None:
            check_name(name)
        limit = self.context_max_bytes
        if length is not None and length > limit:
            raise PayloadTooLarge(f"the build context is larger than the limit of {limit} bytes")
        args = tuple(sorted((build_args or {}).items()))
        body = cast(IO[bytes], _Body(chunks, asyncio.get_running_loop()))
        env = await asyncio.to_thread(
            self._build, body, name, dockerfile, args, target, pull, replace
        )
        return environment_public(env)

    def _build(
        self, body: IO[bytes], name: str | None, dockerfile: str,
        args: tuple[tuple[str, str], ...], target: str | None, pull: Pull, replace: bool,
    ) -> Environment:  # fmt: skip
        """:meth:`build`'s thread: receive, unpack, plan, then build or find."""
        with build_dir(self.store) as work:
            archive = self.store.receive(body, work, limit=self.context_max_bytes)
            context = work / "context"
            unpack_context(
                archive, context, max_bytes=self.context_max_bytes,
                max_entries=self.context_max_entries,
            )  # fmt: skip
            archive.unlink()
            spec = DockerfileSpec(context, dockerfile_path(context, dockerfile), args, target)
            planned = plan_build(self.store, spec, pull=pull, timeout=self.build_timeout_s)
            if name is not None:
                self._may_rebuild(name, planned.key, replace)
            return build_planned(
                self.store, planned, name, timeout=self.build_timeout_s, runc=self.runc
            )

    def _may_rebuild(self, name: str, key: str, replace: bool) -> None:
        """Conflict when ``name`` holds anything but the build of ``key`` and not
        ``replace``, or it is in use (the same build again is no change)."""
        try:
            current = self.store.get(name)
        except NotFound:
            return
        if current.build is not None and current.build.get("key") == key:
            return
        if not replace:
            raise Conflict(f"environment {name!r} exists; send replace=true to replace it")
        evaluations = self.evaluations.environment_in_use(name)
        sandboxes = self.sandboxes.environment_in_use(name)
        if evaluations or sandboxes:
            raise Conflict(
                f"cannot replace environment {name!r}: {evaluations} queued or running"
                f" evaluations and {sandboxes} running sandboxes use it"
            )

    async def delete(self, name: str) -> None:
        """Forget ``name`` (its root goes when no other name shares it). Raises
        NotFound, Conflict while queued or running work names it."""
        await asyncio.to_thread(self.store.get, name)  # NotFound first
        await self._refuse_if_in_use(name, "remove")
        await asyncio.to_thread(self.store.remove, name)
