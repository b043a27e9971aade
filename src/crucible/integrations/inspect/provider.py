"""Crucible as an Inspect AI sandbox provider: ``sandbox=("crucible", config)``.

Registered under the entry-point group ``inspect_ai`` (name ``crucible``, see
pyproject.toml): Inspect imports this module when a task names the ``crucible``
sandbox, and ``@sandboxenv`` registers the class. Each sample gets one long-lived
Crucible sandbox (``crucible.engine.session``), created in ``sample_init`` and closed
in ``sample_cleanup``; with a ``compose.yaml`` (the provider is docker compatible), one
per service on a private network of the sample (``crucible.integrations.inspect.compose``).

Config (a YAML file path, a dict, or :class:`CrucibleSandboxConfig`):

    server   URL of a Crucible server; absent: the engine runs in this process
    api_key  the server's API key (else CRUCIBLE_API_KEY)
    runtime  runc | crun | gvisor
    environment  the root file system under the sandbox's writable layer; locally
             from this machine's store (``crucible env ls``), else the server's (GET
             /api/v1/environments). Default: CRUCIBLE_DEFAULT_ENVIRONMENT (the
             server's, or locally this process's), else host: the host's toolchain,
             with ``python``, ``pip``, bash and coreutils as Inspect's default image
    limits   memory_mb, cpus, pids, disk_mb (the whole sandbox)
    ttl_s    lifetime of a sandbox on the server (local sandboxes live for the sample)
    pull     missing (default): an environment (or a compose ``image:``) that the store
             lacks is pulled from its registry under that name, once per task
             (``crucible env pull``; through a server, only an admin key may) | never:
             it fails the task, naming the command that adds it

A compose file carries these under its top-level ``x-crucible`` key.

Failures are Inspect's exceptions: ``TimeoutError``, ``PermissionError``,
``FileNotFoundError``, ``IsADirectoryError``, ``OutputLimitExceededError``,
``SandboxUnavailableError``. Inspect's output and read limits are read at call time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import secrets
import shlex
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, Union, overload

import httpx
import yaml  # type: ignore[import-untyped]  # (inspect_ai depends on PyYAML)
from inspect_ai.util import (
    ExecResult,
    OutputLimitExceededError,
    SandboxConnection,
    SandboxEnvironment,
    SandboxEnvironmentConfigType,
    SandboxEnvironmentLimits,
    sandboxenv,
)
from inspect_ai.util._sandbox.compose import ComposeConfig, is_compose_yaml, parse_compose_yaml
from inspect_ai.util._sandbox.environment import SandboxUnavailableError
from pydantic import BaseModel, ConfigDict, Field

from crucible.core.errors import (
    SandboxFileError,
    SandboxFileNotFound,
    SandboxFileTooLarge,
    SandboxIsADirectory,
    SandboxPermissionDenied,
    SandboxStopped,
    SandboxUnavailable,
)
from crucible.domain.execs import ExecRequest
from crucible.engine.models import (
    EnvironmentRoot,
    NetworkAttachment,
    RuntimeName,
    SessionLimits,
    SessionSpec,
)
from crucible.integrations.inspect.compose import ComposePlan, ImageCommand, ServicePlan, plan

if TYPE_CHECKING:  # the engine and the client are imported when first used
    from crucible.client import AsyncClient
    from crucible.client.sandboxes import AsyncRemoteSandbox
    from crucible.engine import Sandbox
    from crucible.environments.dockerfile import DockerfileSpec


class CrucibleSandboxConfig(BaseModel):
    """The provider's configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    server: str | None = Field(default=None, description="Crucible server URL; None: local")
    api_key: str | None = Field(default=None, description="else CRUCIBLE_API_KEY")
    runtime: RuntimeName = "runc"
    environment: str | None = Field(
        default=None,
        description="an environment's name; host: none; None: CRUCIBLE_DEFAULT_ENVIRONMENT"
        " (the server's, or this process's), else host",
    )
    limits: SessionLimits = SessionLimits(memory_mb=1024, cpus=1, pids=512, disk_mb=1024)
    ttl_s: float | None = Field(default=None, description="sandbox lifetime on the server")
    pull: Literal["missing", "never"] = Field(
        default="missing",
        description="missing: pull an environment the store lacks from its registry (once"
        " per task; through a server, an admin key only); never: fail the task instead",
    )


def _from_environment(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with what the process's environment gives and they leave out:
    ``CRUCIBLE_SERVER``, ``CRUCIBLE_RUNTIME`` (a task's own compose file, or
    ``--sandbox crucible`` without a config, has no place to name them)."""
    out = dict(settings)
    for key, var in (("server", "CRUCIBLE_SERVER"), ("runtime", "CRUCIBLE_RUNTIME")):
        if key not in out and os.environ.get(var):
            out[key] = os.environ[var]
    return out


def load_config(config: SandboxEnvironmentConfigType | None) -> CrucibleSandboxConfig:
    if config is None:
        # `--sandbox crucible` alone: the runtime may come from CRUCIBLE_RUNTIME.
        runtime = os.environ.get("CRUCIBLE_RUNTIME")
        return CrucibleSandboxConfig.model_validate({"runtime": runtime} if runtime else {})
    if isinstance(config, CrucibleSandboxConfig):
        return config
    if isinstance(config, str):
        data = yaml.safe_load(Path(config).read_text()) or {}
        return CrucibleSandboxConfig.model_validate(data)
    if isinstance(config, BaseModel):
        return CrucibleSandboxConfig.model_validate(config.model_dump())
    return CrucibleSandboxConfig.model_validate(config)


# -- backends: the local engine, or a server ---------------------------------------------


@dataclass(frozen=True)
class ExecOutcome:
    """What the provider needs of one exec's end, whichever backend ran it."""

    returncode: int
    stdout: bytes
    stderr: bytes
    timed_out: bool
    truncated: bool  # a stream passed ``output_cap`` (or the server's own cap)


class Backend(Protocol):
    """One sandbox, local or remote: what the provider needs of it."""

    id: str

    async def exec(self, request: ExecRequest, *, output_cap: int) -> ExecOutcome:
        """The command's end (``request.detach``: started as a service); ``output_cap``
        bounds each stream (the tail kept)."""
        ...

    async def write_file(self, path: str, data: bytes) -> None: ...

    async def read_file(self, path: str, max_bytes: int) -> bytes: ...

    async def close(self) -> None: ...


_engine: Sandbox | None = None


def use_engine(engine: Sandbox | None) -> None:
    """Run local sandboxes on ``engine`` (tests, embedding) instead of a default one."""
    global _engine
    _engine = engine


def local_engine() -> Sandbox:
    global _engine
    if _engine is None:
        from crucible.engine import Sandbox

        _engine = Sandbox()
    return _engine


class LocalBackend:
    """A sandbox of the engine in this process."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.id: str = session.id

    async def exec(self, request: ExecRequest, *, output_cap: int) -> ExecOutcome:
        r = await self._session.exec(
            request.argv, input=request.stdin(), cwd=request.cwd, env=request.env,
            user=request.user, timeout_s=request.timeout_s, output_cap=output_cap,
            detach=request.detach,
        )  # fmt: skip
        truncated = r.stdout_truncated or r.stderr_truncated
        return ExecOutcome(r.returncode, r.stdout, r.stderr, r.timed_out, truncated)

    async def write_file(self, path: str, data: bytes) -> None:
        await self._session.write_file(path, data)

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        data: bytes = await self._session.read_file(path, max_bytes=max_bytes)
        return data

    async def close(self) -> None:
        await self._session.close()


class RemoteBackend:
    """A sandbox on a Crucible server, through ``crucible.client.AsyncClient.sandboxes``.

    Output comes back exact (``ExecPublic.stdout_bytes``: base64 when not UTF-8); the
    server keeps the tail of each stream past its own cap (``*_truncated``), and a
    smaller Inspect limit is applied here. File and stop errors arrive as the
    ``crucible.core.errors`` exceptions (``crucible.client.errors``); the server being
    unreachable, the sandbox gone (404) or hosted elsewhere (503) raise
    :class:`SandboxUnavailable`; one lost with its host (410) ``SandboxLost``, a
    SandboxStopped: both become Inspect's ``SandboxUnavailableError``. Each exec
    carries an Idempotency-Key that the client reuses when it retries a lost answer,
    so a retry never runs the command twice (unlike a provider that admits a command
    "may run again on retry").
    """

    def __init__(self, client: AsyncClient, remote: AsyncRemoteSandbox) -> None:
        self._client = client
        self._remote = remote
        self.id: str = remote.id

    @classmethod
    async def create(
        cls, config: CrucibleSandboxConfig, network: NetworkAttachment | None = None
    ) -> RemoteBackend:
        from crucible.client import AsyncClient

        assert config.server is not None
        key = config.api_key or os.environ.get("CRUCIBLE_API_KEY")
        client = AsyncClient(config.server, api_key=key)
        try:
            remote = await client.sandboxes.create(
                runtime=config.runtime,
                limits=config.limits.model_dump(),
                ttl_s=config.ttl_s,
                environment=config.environment,
                network=network.model_dump(mode="json") if network else None,
            )
        except BaseException:
            await client.close()
            raise
        return cls(client, remote)

    async def exec(self, request: ExecRequest, *, output_cap: int) -> ExecOutcome:
        async with _reachable(self.id):
            r = await self._remote.run(request)
        out, err = r.stdout_bytes, r.stderr_bytes
        truncated = r.stdout_truncated or r.stderr_truncated
        if len(out) > output_cap or len(err) > output_cap:
            out, err, truncated = out[-output_cap:], err[-output_cap:], True
        code = r.returncode if r.returncode is not None else 1
        return ExecOutcome(code, out, err, r.timed_out, truncated)

    async def write_file(self, path: str, data: bytes) -> None:
        async with _reachable(self.id):
            await self._remote.write_file(path, data)

    async def read_file(self, path: str, max_bytes: int) -> bytes:
        async with _reachable(self.id):
            data: bytes = await self._remote.read_file(path)
        if len(data) > max_bytes:
            raise SandboxFileTooLarge(path)
        return data

    async def close(self) -> None:
        try:
            async with _reachable(self.id):
                await self._remote.close()
        finally:
            await self._client.close()


@contextlib.asynccontextmanager
async def _reachable(sandbox_id: str) -> AsyncIterator[None]:
    """The server not answering, the sandbox gone or elsewhere: SandboxUnavailable."""
    from crucible.client.errors import ApiError

    try:
        yield
    except httpx.TransportError as exc:
        raise SandboxUnavailable(f"the Crucible server is unreachable: {exc!r}") from exc
    except ApiError as exc:
        if exc.status in (404, 503):
            raise SandboxUnavailable(f"sandbox {sandbox_id}: {exc}") from exc
        raise


def _local_root(name: str | None) -> EnvironmentRoot | None:
    """The root of environment ``name`` in this machine's store (None: this process's
    CRUCIBLE_DEFAULT_ENVIRONMENT, else host; a result of None: host); raises
    InvalidSubmission naming the known ones and the import command."""
    from crucible.environments.store import EnvironmentStore
    from crucible.services.submissions import resolve_environment

    settings = local_engine().settings
    default = settings.default_environment
    if (name if name is not None else default) in (None, "host"):
        return None  # the store is not opened (it makes its directories)
    env = resolve_environment(name, EnvironmentStore.of(settings), default=default)
    return env.root_spec() if env else None


async def _create(
    config: CrucibleSandboxConfig, network: NetworkAttachment | None = None
) -> Backend:
    if config.server is not None:
        return await RemoteBackend.create(config, network)
    engine = local_engine()
    spec = SessionSpec(
        runtime=config.runtime,
        limits=config.limits,
        environment=_local_root(config.environment),
        network=network,
    )
    session = await engine.sessions.create(spec, session_id=f"sb_{secrets.token_hex(10)}")
    return LocalBackend(session)


# -- the provider -------------------------------------------------------------------------


def _file_error(exc: SandboxFileError, file: str) -> Exception:
    if isinstance(exc, SandboxFileNotFound):
        return FileNotFoundError(errno.ENOENT, f"File not found: {file}", file)
    if isinstance(exc, SandboxPermissionDenied):
        return PermissionError(errno.EACCES, f"Permission denied: {file}", file)
    if isinstance(exc, SandboxIsADirectory):
        return IsADirectoryError(errno.EISDIR, f"{file} is a directory", file)
    if isinstance(exc, SandboxFileTooLarge):
        return OutputLimitExceededError(
            limit_str=SandboxEnvironmentLimits.MAX_READ_FILE_SIZE_STR, truncated_output=None
        )
    return RuntimeError(str(exc))


@dataclass(frozen=True)
class ServiceDefaults:
    """A compose service's working_dir, environment and user: the defaults of every
    exec (and the base of relative file paths) in its sandbox."""

    workdir: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None

    def path(self, path: str) -> str:
        return posixpath.join(self.workdir, path) if self.workdir else path

    def apply(self, request: ExecRequest) -> ExecRequest:
        """``request`` with these defaults where it leaves them unset (its env over
        the service's)."""
        return replace(
            request,
            cwd=self.path(request.cwd) if request.cwd else self.workdir,
            env={**self.env, **(request.env or {})} or None,
            user=request.user or self.user,
        )


def compose_of(config: SandboxEnvironmentConfigType | None) -> ComposeConfig | None:
    """The compose file ``config`` names or is (None: a Crucible config). A service's
    ``build:`` ``args`` and ``target`` are kept as ``x-args`` and ``x-target``:
    Inspect's model of ``build:`` refuses both (it knows context, dockerfile,
    no_cache and pull), and its parser would refuse the file."""
    if isinstance(config, ComposeConfig):
        return config
    if isinstance(config, str) and is_compose_yaml(config):
        raw = yaml.safe_load(Path(config).read_text())
        if not isinstance(raw, dict) or "services" not in raw:
            return parse_compose_yaml(config)  # Inspect's own error
        for service in (raw.get("services") or {}).values():
            build = service.get("build") if isinstance(service, dict) else None
            if isinstance(build, dict):
                for key in ("args", "target"):
                    if key in build:
                        build[f"x-{key}"] = build.pop(key)
        return ComposeConfig.model_validate(raw)
    return None


def compose_dir(config: SandboxEnvironmentConfigType | None) -> Path:
    """Where a compose file's relative build contexts start: its directory."""
    return Path(config).resolve().parent if isinstance(config, str) else Path.cwd()


def compose_base(compose: ComposeConfig) -> CrucibleSandboxConfig:
    """The provider's own settings for a compose file: its ``x-crucible`` mapping, the
    server from CRUCIBLE_SERVER and the runtime from CRUCIBLE_RUNTIME when it names
    none."""
    settings = _from_environment(dict(compose.extensions.get("x-crucible") or {}))
    return CrucibleSandboxConfig.model_validate(settings)


async def known_environments(config: CrucibleSandboxConfig) -> list[str]:
    if config.server is None:
        from crucible.environments.store import EnvironmentStore

        return [e.name for e in EnvironmentStore.of(local_engine().settings).all()]
    from crucible.client import AsyncClient

    key = config.api_key or os.environ.get("CRUCIBLE_API_KEY")
    async with AsyncClient(config.server, api_key=key) as client:
        return [e.name for e in await client.environments.list()]


async def image_commands(config: CrucibleSandboxConfig) -> dict[str, ImageCommand]:
    """Each known environment's image Entrypoint and Cmd (what a service naming no
    command starts)."""
    if config.server is None:
        from crucible.environments.store import EnvironmentStore

        envs: list[Any] = EnvironmentStore.of(local_engine().settings).all()
    else:
        from crucible.client import AsyncClient

        key = config.api_key or os.environ.get("CRUCIBLE_API_KEY")
        async with AsyncClient(config.server, api_key=key) as client:
            envs = await client.environments.list()
    return {e.name: ImageCommand(tuple(e.entrypoint), tuple(e.cmd)) for e in envs}


class PullRefused(RuntimeError):
    """An environment the task names is missing and could not be pulled."""


# One pull of an image at a time per event loop (Inspect runs a task's samples on one):
# the samples that find it missing together wait for the first one's pull.
_pull_locks: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str | None, str], asyncio.Lock]
] = weakref.WeakKeyDictionary()


def _pull_lock(server: str | None, image: str) -> asyncio.Lock:
    locks = _pull_locks.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault((server, image), asyncio.Lock())


async def pull_environment(config: CrucibleSandboxConfig, image: str) -> None:
    """Pull ``image`` from its registry as the environment ``image``: into this
    machine's store, or the server's (``POST /environments/pull``: admin keys only)."""
    if config.server is None:
        from crucible.environments.store import EnvironmentStore

        store = EnvironmentStore.of(local_engine().settings)
        await asyncio.to_thread(store.pull_image, image, image)
        return
    from crucible.client import AsyncClient
    from crucible.client.errors import ApiError

    key = config.api_key or os.environ.get("CRUCIBLE_API_KEY")
    async with AsyncClient(config.server, api_key=key) as client:
        try:
            await client.environments.pull(image, image)
        except ApiError as exc:
            if exc.status == 403:
                raise PullRefused(
                    f"pulling {image!r} on {config.server} needs an admin key ({exc.detail});"
                    f" have an admin run `crucible env pull {image}` there, or import it"
                ) from None
            raise


async def ensure_environments(config: CrucibleSandboxConfig, images: Iterable[str]) -> list[str]:
    """The known environments, once those of ``images`` that are missing are pulled
    (``config.pull`` ``missing``; ``never``: as they are). Each missing image is pulled
    once: concurrent callers wait for the first pull and find it done. Raises
    PullRefused when a pull fails."""
    known = await known_environments(config)
    missing = [i for i in dict.fromkeys(images) if i not in known and i != "host"]
    if config.pull == "never" or not missing:
        return known
    for image in missing:
        async with _pull_lock(config.server, image):
            if image in await known_environments(config):
                continue  # another sample (or task) pulled it meanwhile
            try:
                await pull_environment(config, image)
            except PullRefused:
                raise
            except Exception as exc:
                raise PullRefused(
                    f"{image!r} is not a Crucible environment and pulling it failed: {exc}"
                    " (set pull: never to only use what the store has)"
                ) from exc
    return await known_environments(config)


def _images(compose: ComposeConfig) -> list[str]:
    return [s.image for s in compose.services.values() if s.image and s.build is None]


# Builds made on an event loop (a task's): spec -> the environment's name. Samples
# find their service's build here; the first one's build is under _pull_lock.
_builds: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, str]] = (
    weakref.WeakKeyDictionary()
)


async def ensure_builds(
    config: CrucibleSandboxConfig, compose: ComposeConfig, base_dir: Path
) -> dict[str, str]:
    """service -> the environment its ``build:`` made (built with buildah into this
    machine's store, or with a server on it: the context sent as a tar to ``POST
    /environments/build``, admin keys only; found in the cache either way; once per
    task: concurrent samples wait for the first build). Raises ComposeError (a bad
    build: section), PullRefused (the build failed or was refused)."""
    from crucible.integrations.inspect.compose import build_spec

    specs = {n: build_spec(n, s, base_dir) for n, s in compose.services.items()}
    wanted = {n: s for n, s in specs.items() if s is not None}
    if not wanted:
        return {}
    done = _builds.setdefault(asyncio.get_running_loop(), {})
    out: dict[str, str] = {}
    for name, spec in wanted.items():
        image = compose.services[name].image
        key = (config.server, spec, image, config.pull)
        async with _pull_lock(config.server, f"build:{key!r}"):
            if key not in done:
                try:
                    done[key] = await _build(config, spec, image)
                except PullRefused:
                    raise
                except Exception as exc:
                    raise PullRefused(f"service {name!r}: the build failed: {exc}") from exc
        out[name] = done[key]
    return out


async def _build(config: CrucibleSandboxConfig, spec: DockerfileSpec, image: str | None) -> str:
    """The name of the environment ``spec`` builds as ``image``: here, or on the server
    (which replaces an older build of that name, as a local build does)."""
    if config.server is None:
        from crucible.environments.dockerfile import build_dockerfile
        from crucible.environments.store import EnvironmentStore

        store = EnvironmentStore.of(local_engine().settings)
        env = await asyncio.to_thread(build_dockerfile, store, spec, image, pull=config.pull)
        return env.name
    from crucible.client import AsyncClient
    from crucible.client.errors import ApiError

    try:
        dockerfile = spec.file.relative_to(spec.context).as_posix()
    except ValueError:
        raise PullRefused(
            f"the Dockerfile {spec.file} is outside its context {spec.context}: a server"
            " builds only what the context holds"
        ) from None
    key = config.api_key or os.environ.get("CRUCIBLE_API_KEY")
    async with AsyncClient(config.server, api_key=key) as client:
        try:
            public = await client.environments.build(
                spec.context, name=image, dockerfile=dockerfile, build_args=dict(spec.args),
                target=spec.target, pull=config.pull, replace=True,
            )  # fmt: skip
        except ApiError as exc:
            if exc.status == 403:
                raise PullRefused(
                    f"building {image or spec.context.name!r} on {config.server} needs an"
                    f" admin key ({exc.detail}); have an admin run `crucible env build"
                    " --dockerfile` there and name the image"
                ) from None
            raise
    return public.name


async def compose_plan(
    compose: ComposeConfig, base_dir: Path | None = None
) -> tuple[CrucibleSandboxConfig, ComposePlan]:
    """The provider's settings and the sandboxes of one sample; what is missing is
    pulled first (``pull``), and what is built is built, once the file is known to be
    runnable."""
    base = compose_base(compose)
    # What the file refuses is refused before anything is pulled or built for it.
    planned = {n: "build" for n, s in compose.services.items() if s.build is not None}
    plan(compose, known=_images(compose), defaults=base.limits, built=planned)
    built = await ensure_builds(base, compose, base_dir or Path.cwd())
    known = await ensure_environments(base, _images(compose))
    images = await image_commands(base)
    return base, plan(compose, known=known, defaults=base.limits, built=built, images=images)


@sandboxenv(name="crucible")
class CrucibleSandboxEnvironment(SandboxEnvironment):
    """One Crucible sandbox per sample, or per service of a compose file (see the
    module docstring)."""

    def __init__(
        self,
        backend: Backend,
        config: CrucibleSandboxConfig,
        defaults: ServiceDefaults | None = None,
    ) -> None:
        super().__init__()
        self.backend = backend
        self.config = config
        self.defaults = defaults or ServiceDefaults()

    @classmethod
    def config_deserialize(cls, config: dict[str, Any]) -> BaseModel:
        return CrucibleSandboxConfig.model_validate(config)

    @classmethod
    def config_files(cls) -> list[str]:
        # Docker compatible: a task's compose.yaml is found and handed to us.
        return ["compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml"]

    @classmethod
    def is_docker_compatible(cls) -> bool:
        return True

    @classmethod
    def default_concurrency(cls) -> int | None:
        # Idle sandboxes cost little (bench/sandboxes.py: memory per idle sandbox);
        # execs are bounded by the machine's cores.
        return 4 * (os.cpu_count() or 1)

    @classmethod
    async def task_init(cls, task_name: str, config: SandboxEnvironmentConfigType | None) -> None:
        compose = compose_of(config)
        if compose is not None:
            # ComposeError (or a missing image pulled, or PullRefused) now, not per sample.
            base, _ = await compose_plan(compose, compose_dir(config))
        else:
            base = load_config(config)
            if base.environment not in (None, "host"):
                await ensure_environments(base, [base.environment])
        if base.server is None:
            await local_engine().prepare()
            if compose is None:  # an unknown environment (or default) fails the task now
                await asyncio.to_thread(_local_root, base.environment)

    @classmethod
    async def sample_init(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, metadata: dict[str, str]
    ) -> dict[str, SandboxEnvironment]:
        compose = compose_of(config)
        if compose is not None:
            return await cls._compose_init(compose, compose_dir(config))
        cfg = load_config(config)
        try:
            backend = await _create(cfg)
        except Exception as exc:
            raise SandboxUnavailableError(f"cannot create a Crucible sandbox: {exc}") from exc
        return {"default": cls(backend, cfg)}

    @classmethod
    async def _compose_init(
        cls, compose: ComposeConfig, base_dir: Path
    ) -> dict[str, SandboxEnvironment]:
        """One sandbox per service, the default first, on a private network of the
        sample; then each service's command, dependencies (the others) before the
        default, each waited for by its healthcheck."""
        base, services = await compose_plan(compose, base_dir)
        group = f"sample-{secrets.token_hex(8)}"
        members = services.members
        made: dict[str, CrucibleSandboxEnvironment] = {}
        try:
            for svc in services.services:
                cfg = base.model_copy(update={"environment": svc.environment, "limits": svc.limits})
                network = None
                if svc.networked and len(members) > 1:
                    network = NetworkAttachment(group=group, hostname=svc.name, members=members)
                backend = await _create(cfg, network)
                made[svc.name] = cls(backend, cfg, ServiceDefaults(svc.workdir, svc.env, svc.user))
            for svc in reversed(services.services):
                await made[svc.name]._start(svc)
        except BaseException as exc:
            for env in made.values():
                with contextlib.suppress(Exception):
                    await env.backend.close()
            if isinstance(exc, Exception):
                raise SandboxUnavailableError(f"cannot start the compose sample: {exc}") from exc
            raise
        return dict(made)

    async def _start(self, svc: ServicePlan) -> None:
        if svc.command:
            r = await self._exec(ExecRequest(svc.command, detach=True))
            if r.returncode != 0:
                raise RuntimeError(
                    f"service {svc.name!r}: {shlex.join(svc.command)} did not start "
                    f"({r.returncode}): {r.stderr.decode(errors='replace').strip()[:500]}"
                )
        check = svc.healthcheck
        if check is None:
            return
        await asyncio.sleep(check.start_period_s)
        for _ in range(max(1, check.retries)):
            r = await self._exec(ExecRequest(check.argv, timeout_s=check.timeout_s))
            if r.returncode == 0 and not r.timed_out:
                return
            await asyncio.sleep(check.interval_s)
        raise RuntimeError(f"service {svc.name!r} did not become healthy ({check.argv})")

    async def _exec(self, request: ExecRequest, output_cap: int = 1 << 20) -> ExecOutcome:
        """``backend.exec`` with the service's defaults."""
        return await self.backend.exec(self.defaults.apply(request), output_cap=output_cap)

    @classmethod
    async def sample_cleanup(
        cls,
        task_name: str,
        config: SandboxEnvironmentConfigType | None,
        environments: dict[str, SandboxEnvironment],
        interrupted: bool,
    ) -> None:
        for env in environments.values():
            if isinstance(env, CrucibleSandboxEnvironment):
                await env.backend.close()

    @classmethod
    async def task_cleanup(
        cls, task_name: str, config: SandboxEnvironmentConfigType | None, cleanup: bool
    ) -> None:
        # Samples close their own sandboxes; what an interrupted run leaked is the
        # sweep's (cli_cleanup) once this process is gone.
        pass

    @classmethod
    async def cli_cleanup(cls, id: str | None) -> None:
        """``inspect sandbox cleanup crucible [id]``: remove local sandboxes whose
        owner process died (all of them, or the one named ``id``)."""
        engine = local_engine()
        removed = await engine.sessions.sweep()
        if id is not None and id not in removed:
            await engine.sessions.remove(id)

    async def exec(
        self,
        cmd: list[str],
        input: str | bytes | None = None,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        user: str | None = None,
        timeout: int | None = None,
        timeout_retry: bool = True,
        concurrency: bool = True,
    ) -> ExecResult[str]:
        # timeout_retry: retries are for transports that fail transiently; here a
        # timeout is the command's own, and a retry would run it again.
        data = input.encode("utf-8") if isinstance(input, str) else input
        try:
            request = ExecRequest(
                cmd, data, cwd, env, user, float(timeout) if timeout is not None else None
            )
            r = await self._exec(request, SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE)
        except (SandboxStopped, SandboxUnavailable) as exc:
            raise SandboxUnavailableError(str(exc)) from exc
        if r.timed_out:
            raise TimeoutError(f"command timed out after {timeout} seconds")
        stderr = r.stderr.decode("utf-8", "replace")
        if r.returncode == 126 and "Permission denied" in stderr:
            raise PermissionError(errno.EACCES, stderr.strip(), cmd[0] if cmd else "")
        result = ExecResult(
            success=r.returncode == 0,
            returncode=r.returncode,
            stdout=r.stdout.decode("utf-8", "replace"),
            stderr=stderr,
        )
        if r.truncated:  # Inspect's contract: the limit raises, with the tail kept
            raise OutputLimitExceededError(
                limit_str=SandboxEnvironmentLimits.MAX_EXEC_OUTPUT_SIZE_STR,
                truncated_output=result.stdout,
            )
        return result

    async def write_file(self, file: str, contents: str | bytes) -> None:
        data = contents.encode("utf-8") if isinstance(contents, str) else contents
        try:
            await self.backend.write_file(self.defaults.path(file), data)
        except (SandboxStopped, SandboxUnavailable) as exc:
            raise SandboxUnavailableError(str(exc)) from exc
        except SandboxFileError as exc:
            raise _file_error(exc, file) from exc

    @overload
    async def read_file(self, file: str, text: Literal[True] = True) -> str: ...

    @overload
    async def read_file(self, file: str, text: Literal[False]) -> bytes: ...

    async def read_file(self, file: str, text: bool = True) -> Union[str | bytes]:  # noqa: UP007
        try:
            data = await self.backend.read_file(
                self.defaults.path(file), SandboxEnvironmentLimits.MAX_READ_FILE_SIZE
            )
        except (SandboxStopped, SandboxUnavailable) as exc:
            raise SandboxUnavailableError(str(exc)) from exc
        except SandboxFileError as exc:
            raise _file_error(exc, file) from exc
        if not text:
            return data
        # newline="" semantics: bytes decoded as they are, CRLF kept.
        return data.decode("utf-8")

    async def connection(self, *, user: str | None = None) -> SandboxConnection:
        command = f"crucible shell {self.backend.id}"
        if user:
            command += f" --user {user}"
        if self.config.server:
            command += f" --server {self.config.server}"
        return SandboxConnection(type="crucible", command=command, container=self.backend.id)
