"""Environments from the command line: ``crucible env pull|import|build|ls|inspect|rm``.

An operator's commands: they act on the environment store of the configured data
directory (``--data-dir`` / ``CRUCIBLE_DATA_DIR``, or ``CRUCIBLE_ENVIRONMENTS_DIR``)
on this machine, not through a server; but for ``build --dockerfile/--context``, which
builds on the server when one is named (``--server`` / ``CRUCIBLE_SERVER``; an admin
key, ``CRUCIBLE_API_KEY``) unless ``--local``: the context goes there as a tar.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crucible.core.config import Settings
from crucible.core.errors import CrucibleError, InvalidSubmission, NotFound
from crucible.environments.store import EnvironmentStore, check_name

out = Console()
err = Console(stderr=True)

env_app = typer.Typer(
    help="Environments: named, read-only root file systems that runs and sandboxes use.",
    no_args_is_help=True,
)

DataDir = Annotated[Path | None, typer.Option(help="default ./data (or CRUCIBLE_DATA_DIR)")]
Name = Annotated[str, typer.Option("--name", help="the environment's name, e.g. python:3.12")]
FAILURES = (CrucibleError, OSError)


def _settings(data_dir: Path | None) -> Settings:
    return Settings(data_dir=data_dir) if data_dir is not None else Settings()


def _store(settings: Settings) -> EnvironmentStore:
    return EnvironmentStore.of(settings)


def _existing_store(settings: Settings, name: str | None = None) -> EnvironmentStore | None:
    """The store, if there is one: reading commands do not create it (the store makes
    its directories when opened). With ``name``, a missing store is NotFound."""
    if settings.environments_root.is_dir():
        return _store(settings)
    if name is not None:
        raise NotFound(f"no environment {name!r} (no environments in {settings.environments_root})")
    return None


def _fail(exc: Exception) -> typer.Exit:
    # One line: a tool's multi-line stderr is folded into it.
    message = " ".join(str(exc).split()) or type(exc).__name__
    err.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    return typer.Exit(2)


def environment_in_use(settings: Settings, name: str) -> bool:
    """Whether queued or running evaluations, or running sandboxes, name ``name`` (in
    the database of ``settings``): ``crucible env rm`` refuses to remove it while
    they do."""
    from crucible.store import Store
    from crucible.store.sandboxes import SandboxStore

    store = Store(settings.sqlalchemy_url)
    try:
        store.migrate()
        return bool(store.environment_in_use(name) or SandboxStore(store).environment_in_use(name))
    finally:
        store.dispose()


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value, unit = n / 1000, "KB"
    for bigger in ("MB", "GB", "TB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"


def _created(stamp: str) -> str:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return stamp


@env_app.command("import")
def import_(
    source: Annotated[
        str, typer.Argument(help="a docker save archive, an OCI layout (dir or tar), or -")
    ],
    name: Name,
    data_dir: DataDir = None,
) -> None:
    """Import an image: `docker save IMAGE | crucible env import - --name NAME`."""
    try:
        check_name(name)  # before the store is made
        store = _store(_settings(data_dir))
        env = store.import_image(sys.stdin.buffer if source == "-" else Path(source), name)
    except FAILURES as exc:
        raise _fail(exc) from None
    out.print(f"{env.name} · {env.digest[:19]} · {_size(env.size_bytes)}")


@env_app.command("pull")
def pull(
    ref: Annotated[
        str,
        typer.Argument(help="an image in a registry: [host[:port]/]name[:tag][@sha256:…]"),
    ],
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="the environment's name; default: the reference as Docker shows it"
        ),
    ] = None,
    timeout: Annotated[float, typer.Option(help="time limit of each skopeo step, s")] = 1800.0,
    data_dir: DataDir = None,
) -> None:
    """Pull an image from its registry: `crucible env pull python:3.12-slim`.

    skopeo reads the credentials (REGISTRY_AUTH_FILE, else containers' auth.json, else
    ~/.docker/config.json) and mirrors (/etc/containers/registries.conf, or
    CONTAINERS_REGISTRIES_CONF). Pinned by the digest of the manifest the reference
    names; every blob is checked against its digest, then the image as by `import`.
    """
    from crucible.environments.registry import default_name, parse_ref

    try:
        image = parse_ref(ref)  # before the store is made
        check_name(name if name is not None else default_name(image))
        store = _store(_settings(data_dir))
        env = store.pull_image(image, name, timeout=timeout)
    except FAILURES as exc:
        raise _fail(exc) from None
    pinned = f"{image.repository}@{env.manifest_digest}"
    # One line (soft_wrap): the pinned reference is what a script copies.
    out.print(
        f"{env.name} · {env.digest[:19]} · {_size(env.size_bytes)} · {pinned}",
        soft_wrap=True, highlight=False,
    )  # fmt: skip


def _packages(value: str | None) -> tuple[str, ...]:
    return tuple(p.strip() for p in (value or "").split(",") if p.strip())


@env_app.command("build")
def build(
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="the environment's name (needed for a package build; a Dockerfile build's"
            " default: build/<context dir>:<key>)",
        ),
    ] = None,
    debian: Annotated[
        str | None, typer.Option(help="Debian packages, comma-separated (e.g. python3-numpy)")
    ] = None,
    pip: Annotated[
        str | None, typer.Option(help="pip requirements, comma-separated (into /opt/venv)")
    ] = None,
    suite: Annotated[str, typer.Option(help="the Debian suite")] = "bookworm",
    mirror: Annotated[str | None, typer.Option(help="the Debian mirror")] = None,
    dockerfile: Annotated[
        Path | None,
        typer.Option(help="build this Dockerfile with buildah (default <context>/Dockerfile)"),
    ] = None,
    context: Annotated[
        Path | None, typer.Option(help="a Dockerfile build's context directory")
    ] = None,
    build_arg: Annotated[
        list[str] | None, typer.Option("--build-arg", help="KEY=VALUE, for the Dockerfile's ARG")
    ] = None,
    target: Annotated[str | None, typer.Option(help="the Dockerfile's stage to build")] = None,
    pull: Annotated[
        str,
        typer.Option(help="a FROM the store lacks: missing (pull it) | never (refuse)"),
    ] = "missing",
    timeout: Annotated[float, typer.Option(help="time limit of each build step, s")] = 1800.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no build output")] = False,
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="CRUCIBLE_SERVER",
            help="build a Dockerfile on this Crucible server (an admin key), not here",
        ),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="build here even when CRUCIBLE_SERVER is set")
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Build an environment: from Debian packages (mmdebstrap) and pip packages, or
    from a Dockerfile (buildah; --dockerfile and/or --context), here or, with
    --server (or CRUCIBLE_SERVER), on that server (the context is sent as a tar;
    the build's output stays there).

    pip and a Dockerfile's RUN steps run in build containers on the host's network;
    needs root. A run in the environment never reaches the network, and never runs
    a RUN step. A Dockerfile build is cached by its Dockerfile, context, bases, args
    and target: the same build again is found, not made.
    """
    from crucible.environments.build import DEFAULT_MIRROR, BuildSpec, build_environment
    from crucible.environments.dockerfile import DockerfileSpec, build_dockerfile

    def log(line: str) -> None:
        err.print(f"[dim]{escape(line)}[/dim]", highlight=False)

    try:
        if dockerfile is not None or context is not None:
            if debian or pip:
                raise InvalidSubmission(
                    "--dockerfile/--context and --debian/--pip exclude each other"
                )
            if pull not in ("missing", "never"):
                raise InvalidSubmission(f"--pull is missing or never, not {pull!r}", field="pull")
            args = []
            for item in build_arg or []:
                key, eq, value = item.partition("=")
                if not eq:
                    raise InvalidSubmission(f"--build-arg {item!r}: expected KEY=VALUE")
                args.append((key, value))
            ctx = context if context is not None else (dockerfile or Path(".")).parent
            dspec = DockerfileSpec(
                ctx.resolve(), dockerfile.resolve() if dockerfile else None, tuple(args), target
            )
            if name is not None:
                check_name(name)
            if server is not None and not local:
                public = _remote_build(server, dspec, name, pull)
                out.print(
                    f"{public.name} · {public.digest[:19]} · {_size(public.size_bytes)} · "
                    f"{', '.join(public.languages) or 'none'}",
                    soft_wrap=True, highlight=False,
                )  # fmt: skip
                return
            store = _store(_settings(data_dir))
            env = build_dockerfile(
                store, dspec, name, pull=pull,  # type: ignore[arg-type]
                timeout=timeout, log=None if quiet else log,
            )  # fmt: skip
        else:
            if server is not None and not local:
                raise InvalidSubmission(
                    "a package build runs on this machine only: drop --server (or"
                    " CRUCIBLE_SERVER), or pass --local"
                )
            if name is None:
                raise InvalidSubmission("a package build needs --name")
            spec = BuildSpec(
                debian=_packages(debian), pip=_packages(pip), suite=suite,
                mirror=mirror or DEFAULT_MIRROR,
            )  # fmt: skip
            check_name(name)  # before the store is made
            store = _store(_settings(data_dir))
            env = build_environment(store, name, spec, timeout=timeout, log=None if quiet else log)
    except FAILURES as exc:
        raise _fail(exc) from None
    languages = ", ".join(env.languages) or "none"
    out.print(
        f"{env.name} · {env.digest[:19]} · {_size(env.size_bytes)} · {languages}",
        soft_wrap=True, highlight=False,
    )  # fmt: skip


def _remote_build(server: str, spec: Any, name: str | None, pull: str) -> Any:
    """``spec`` built on ``server`` (POST /environments/build); its record. Raises
    InvalidSubmission for a Dockerfile outside the context, and the client's errors."""
    from crucible.client import ApiError, Client

    try:
        dockerfile = spec.file.relative_to(spec.context).as_posix()
    except ValueError:
        raise InvalidSubmission(
            f"the Dockerfile {spec.file} is not inside the context {spec.context}: a"
            " server builds only what the context holds",
            field="dockerfile",
        ) from None
    try:
        with Client(server) as client:
            return client.environments.build(
                spec.context, name=name, dockerfile=dockerfile, build_args=dict(spec.args),
                target=spec.target, pull=pull,  # type: ignore[arg-type]  # checked above
            )  # fmt: skip
    except ApiError as exc:
        raise InvalidSubmission(f"{server} refused the build: {exc}") from None
    except httpx.HTTPError as exc:
        raise InvalidSubmission(f"cannot reach {server}: {exc}") from None


@env_app.command("ls")
def list_(
    data_dir: DataDir = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the environments (besides `host`, the host's own toolchain)."""
    try:
        store = _existing_store(_settings(data_dir))
        envs = store.all() if store is not None else []
    except FAILURES as exc:
        raise _fail(exc) from None
    if json_out:
        print(json.dumps([e.public() for e in envs], indent=2))
        return
    table = Table()
    table.add_column("name", no_wrap=True, overflow="fold")
    table.add_column("digest", no_wrap=True)
    table.add_column("size", justify="right")
    table.add_column("created", no_wrap=True)
    table.add_column("source", no_wrap=True)
    table.add_column("languages")
    for e in envs:
        table.add_row(
            e.name, e.digest.removeprefix("sha256:")[:12], _size(e.size_bytes),
            _created(e.created_at), e.source, ", ".join(e.languages) or "-",
        )  # fmt: skip
    out.print(table)


@env_app.command("inspect")
def inspect(
    name: Annotated[str, typer.Argument(help="the environment")], data_dir: DataDir = None
) -> None:
    """An environment's record as JSON: digest, size, Env, programs, languages, root."""
    try:
        store = _existing_store(_settings(data_dir), name)
        assert store is not None
        env = store.get(name)
    except FAILURES as exc:
        raise _fail(exc) from None
    doc: dict[str, Any] = {**env.public(), "root": str(env.root)}
    print(json.dumps(doc, indent=2))


@env_app.command("rm")
def remove(
    name: Annotated[str, typer.Argument(help="the environment")], data_dir: DataDir = None
) -> None:
    """Remove an environment (refused while queued or running work uses it).

    Its root goes once no other name shares it.
    """
    settings = _settings(data_dir)
    try:
        store = _existing_store(settings, name)
        assert store is not None
        store.get(name)  # an unknown name says so before anything else is asked
        store.remove(name, in_use=environment_in_use(settings, name))
    except FAILURES as exc:
        raise _fail(exc) from None
    out.print(f"{name} · removed")
