"""An Inspect task's ``compose.yaml``, read as Crucible sandboxes (the provider's plan).

Inspect parses the file (``inspect_ai.util._sandbox.compose``); this module decides what
each service becomes: one agent sandbox in the Crucible environment its ``image:``
names, with the service's limits, working directory, environment and user, its
``command`` started as a service, and a place on the sample's private network (every
service but those with ``network_mode: none``; see ``crucible.engine.network``).

What would give a sandbox a view of the host, or more power than a sandbox has, is
refused with the reason, never silently dropped: ``privileged``, ``cap_add``,
``devices``, ``volumes``, ``ports`` (nothing is published on the host),
``network_mode`` other than ``none``, ``security_opt``, ``runtime``. A ``build:``
(``context``, ``dockerfile``, ``args``, ``target``; :func:`build_spec`) is built by the
provider once per task with buildah (:mod:`crucible.environments.dockerfile`) into an
environment named by its ``image:``, else by the build's key. Settings of the
provider itself go under a top-level ``x-crucible`` key (``server``, ``api_key``,
``runtime``, ``ttl_s``, ``pull``) or come from the environment (``CRUCIBLE_SERVER``).
An ``image:`` the store lacks is pulled by the provider before it plans (``pull:
missing``, the default), so an unknown one here means ``pull: never``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inspect_ai.util._sandbox.compose import ComposeConfig, ComposeService

from crucible.engine.models import SessionLimits
from crucible.environments.dockerfile import DockerfileSpec

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30}  # fmt: skip
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_REFUSED = {
    "privileged": "a sandbox is never privileged",
    "cap_add": "a sandbox has Docker's default capabilities and no others",
    "devices": "a sandbox sees no host devices",
    "volumes": "a sandbox sees nothing of the host's file system",
    "ports": "nothing is published on the host; services reach each other by name",
    "security_opt": "the seccomp profile and no_new_privileges are not negotiable",
    "runtime": "name the runtime under x-crucible (runc, crun or gvisor)",
}


class ComposeError(ValueError):
    """A compose file Crucible cannot run as written; the message says why."""


_BUILD_KEYS = {"context", "dockerfile", "x-args", "x-target"}


def build_spec(name: str, service: ComposeService, base_dir: Path) -> DockerfileSpec | None:
    """What a service's ``build:`` builds (None: it has none); ``context`` relative to
    the compose file's directory ``base_dir``, ``dockerfile`` to the context."""
    build = service.build
    if build is None:
        return None
    if isinstance(build, str):
        return DockerfileSpec((base_dir / build).resolve())
    given = {k for k, v in build.model_dump(exclude_none=True).items() if v is not None}
    extra = sorted(given - _BUILD_KEYS)
    if extra:
        raise ComposeError(
            f"service {name!r}: build {', '.join(extra)} is not supported (only context,"
            " dockerfile, args and target; the pull policy is x-crucible's pull)"
        )
    extra_fields = build.model_extra or {}
    # args and target arrive as x-args and x-target (provider.compose_of: Inspect's
    # model of build: knows only context, dockerfile, no_cache and pull).
    raw_args = extra_fields.get("x-args") or {}
    if isinstance(raw_args, list):
        raw_args = dict(str(a).partition("=")[::2] for a in raw_args)
    if not isinstance(raw_args, dict):
        raise ComposeError(f"service {name!r}: build args must be a mapping or a list")
    target = extra_fields.get("x-target")
    dockerfile = Path(build.dockerfile) if build.dockerfile else None
    try:
        return DockerfileSpec(
            (base_dir / (build.context or ".")).resolve(),
            dockerfile,
            tuple(sorted((str(k), "" if v is None else str(v)) for k, v in raw_args.items())),
            str(target) if target is not None else None,
        )
    except ValueError as exc:  # InvalidSubmission
        raise ComposeError(f"service {name!r}: {exc}") from None


def memory_mb(text: str | int) -> int:
    """``512m``, ``1g``, ``1.5gb``, or bytes → MiB (rounded up)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ComposeError(f"cannot read the memory size {text!r}")
    return max(1, -(-int(float(match.group(1)) * _UNITS[unit]) // (1 << 20)))


def seconds(text: str | None, default: float) -> float:
    """A compose duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    if not text:
        return default
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        raise ComposeError(f"cannot read the duration {text!r}")
    return sum(float(n) * _SECONDS[u] for n, u in parts)


def _argv(value: list[str] | str | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


@dataclass(frozen=True)
class Healthcheck:
    argv: list[str]
    interval_s: float
    timeout_s: float
    retries: int
    start_period_s: float

    @classmethod
    def of(cls, service: ComposeService) -> Healthcheck | None:
        check = service.healthcheck
        if check is None or check.test is None:
            return None
        test = _argv(check.test) if isinstance(check.test, list) else ["CMD-SHELL", check.test]
        if not test or test[0] == "NONE":
            return None
        if test[0] == "CMD":
            argv = test[1:]
        elif test[0] == "CMD-SHELL":
            argv = ["/bin/sh", "-c", " ".join(test[1:])]
        else:
            raise ComposeError(f"healthcheck test must start with CMD or CMD-SHELL: {test}")
        return cls(
            argv=argv,
            interval_s=seconds(check.interval, 1.0),
            timeout_s=seconds(check.timeout, 30.0),
            retries=check.retries if check.retries is not None else 30,
            start_period_s=seconds(check.start_period, 0.0),
        )


@dataclass(frozen=True)
class ServicePlan:
    """What one service becomes."""

    name: str
    environment: str  # the Crucible environment its image names
    limits: SessionLimits
    workdir: str | None
    env: dict[str, str]
    user: str | None
    command: list[str]  # started as a service; empty: nothing to start
    healthcheck: Healthcheck | None
    networked: bool


@dataclass(frozen=True)
class ComposePlan:
    services: list[ServicePlan]  # the default service first
    settings: dict[str, Any]  # x-crucible

    @property
    def members(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.services if s.networked)


@dataclass(frozen=True)
class ImageCommand:
    """An image config's Entrypoint and Cmd."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()


def service_command(service: ComposeService, image: ImageCommand | None) -> list[str]:
    """What a service starts, as Docker decides it: the compose ``entrypoint`` else the
    image's, followed by the compose ``command``, else (no compose ``entrypoint``) the
    image's Cmd. A service of an image with a server as its Cmd and no ``command:``
    (most victims of CTF tasks) starts that server."""
    image = image or ImageCommand()
    if service.entrypoint is not None:
        return _argv(service.entrypoint) + _argv(service.command)
    command = _argv(service.command) if service.command is not None else list(image.cmd)
    return [*image.entrypoint, *command]


def _env(value: list[str] | dict[str, str | None] | None) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {k: "" if v is None else str(v) for k, v in value.items()}
    pairs = (item.partition("=") for item in value)
    return {key: val for key, _, val in pairs}


def _limits(service: ComposeService, defaults: SessionLimits) -> SessionLimits:
    memory, cpus = service.mem_limit, service.cpus
    resources = service.deploy.resources if service.deploy else None
    if resources is not None and resources.limits is not None:
        memory = memory or resources.limits.memory
        if cpus is None and resources.limits.cpus is not None:
            cpus = float(resources.limits.cpus)
    pids = defaults.pids
    if service.pids_limit is not None and int(service.pids_limit) > 0:
        pids = int(service.pids_limit)
    return SessionLimits(
        memory_mb=memory_mb(memory) if memory else defaults.memory_mb,
        cpus=cpus if cpus is not None else defaults.cpus,
        pids=pids,
        disk_mb=defaults.disk_mb,
    )


def plan(
    compose: ComposeConfig,
    *,
    known: Iterable[str],
    defaults: SessionLimits,
    built: Mapping[str, str] | None = None,
    images: Mapping[str, ImageCommand] | None = None,
) -> ComposePlan:
    """The sandboxes of one sample; raises ComposeError naming what cannot run.
    ``built``: service -> the environment its ``build:`` made; ``images``:
    environment -> its image's Entrypoint and Cmd (:func:`service_command`)."""
    names = set(known)
    built = built or {}
    images = images or {}
    plans = []
    for name, service in compose.services.items():
        for field_name, why in _REFUSED.items():
            if getattr(service, field_name, None):
                raise ComposeError(f"service {name!r}: {field_name} is not supported: {why}")
        mode = service.network_mode
        if mode not in (None, "none", "bridge", "default"):
            raise ComposeError(
                f"service {name!r}: network_mode {mode!r} is not supported (only 'none'; "
                "by default services share a private network of their sample)"
            )
        if service.build is not None:
            build_spec(name, service, Path("."))  # what it cannot build, refused first
        environment = built.get(name) if service.build is not None else service.image
        if service.build is not None and environment is None:
            raise ComposeError(f"service {name!r}: its build was not made")
        if environment is None:
            raise ComposeError(f"service {name!r} names no image")
        if service.build is None and environment not in names:
            listed = ", ".join(sorted(names)) or "none yet"
            raise ComposeError(
                f"service {name!r}: image {service.image!r} is not a Crucible environment "
                f"(known: {listed}) and x-crucible's pull is never; add it with `crucible "
                f"env pull {service.image}` or `docker save {service.image} | crucible env "
                f"import - --name {service.image}`"
            )
        plans.append(
            ServicePlan(
                name=name,
                environment=environment,
                limits=_limits(service, defaults),
                workdir=service.working_dir,
                env=_env(service.environment),
                user=service.user,
                command=service_command(service, images.get(environment)),
                healthcheck=Healthcheck.of(service),
                networked=mode != "none",
            )
        )
    if not plans:
        raise ComposeError("the compose file has no services")
    for p in plans:
        if p.networked and not re.fullmatch(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?", p.name):
            raise ComposeError(
                f"service {p.name!r}: a service on the network needs a host name for a "
                "name (lowercase letters, digits, '-' and '_')"
            )
    # Inspect's convention: the service marked x-default, else the one named "default",
    # else the first, is the sample's default sandbox.
    marked = [p for p in plans if compose.services[p.name].x_default]
    first = marked[0] if marked else next((p for p in plans if p.name == "default"), plans[0])
    plans.remove(first)
    settings = compose.extensions.get("x-crucible") or {}
    if not isinstance(settings, dict):
        raise ComposeError("x-crucible must be a mapping (server, api_key, runtime, ttl_s, pull)")
    return ComposePlan([first, *plans], settings)
