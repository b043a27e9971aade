"""The ``crucible`` command line (Typer + Rich)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Annotated, cast, get_args

import typer
from rich.console import Console

from crucible.cli.languages import guess_language
from crucible.core.config import Settings, get_settings
from crucible.core.errors import CrucibleError
from crucible.engine.languages import LANGUAGES
from crucible.engine.models import Limits, Result, RunRequest, RuntimeName, Termination
from crucible.engine.output import OutputCallback

app = typer.Typer(help="Crucible: run untrusted, model-written code safely.", no_args_is_help=True)
err = Console(stderr=True)


@app.callback()
def _root(
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="CRUCIBLE_API_KEY",
            help="the API key for the client commands (or CRUCIBLE_API_KEY)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Crucible: run untrusted, model-written code safely, observably and at scale."""
    if api_key:
        # The client reads it from the environment (crucible.client.Client).
        os.environ["CRUCIBLE_API_KEY"] = api_key


async def _run_once(settings: Settings, request: RunRequest, live: OutputCallback) -> Result:
    """One run, the engine closed after it (its tear-down finished): one program needs
    no warm pool."""
    from crucible.engine import Sandbox  # the engine only for a local run

    engine = Sandbox(settings.model_copy(update={"pool_size": 0}))
    try:
        return await engine.run(request, on_output=live)
    finally:
        await engine.close()


def verdict_line(result: Result) -> str:
    """A one-line human summary of a Result, e.g. ``exited 0 · 12 ms · 7.0 MB``."""
    t = result.termination
    if t is Termination.exited:
        how = f"killed by {result.signal}" if result.signal else f"exit {result.exit_code}"
    else:
        how = {
            Termination.timeout: (
                f"timeout (wall {result.limits.timeout_s:g}s / CPU {result.limits.cpu_s:g}s)"
            ),
            Termination.memory_limit: f"memory limit ({result.limits.memory_mb} MB)",
            Termination.output_limit: f"output limit ({result.limits.output_bytes} bytes)",
            Termination.compile_error: "compile error",
            Termination.cancelled: "cancelled",
        }[t]
    mem = result.peak_memory_bytes / 1e6
    return (
        f"{t.value}: {how} · wall {result.wall_ms} ms · cpu {result.cpu_ms} ms · peak {mem:.1f} MB"
    )


@app.command()
def run(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="program to run")],
    language: Annotated[
        str | None, typer.Option("--language", "-l", help=f"one of {', '.join(LANGUAGES)}")
    ] = None,
    timeout: Annotated[float | None, typer.Option(help="wall-clock limit, seconds")] = None,
    cpu: Annotated[float | None, typer.Option(help="CPU-time limit, seconds")] = None,
    memory: Annotated[int | None, typer.Option(help="memory limit, MB")] = None,
    cpus: Annotated[float | None, typer.Option(help="CPU cores")] = None,
    pids: Annotated[int | None, typer.Option(help="process/thread limit")] = None,
    runtime: Annotated[
        str | None, typer.Option(help="runc, crun or gvisor (default CRUCIBLE_DEFAULT_RUNTIME)")
    ] = None,
    stdin: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="file fed to stdin")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the Result as JSON")] = False,
) -> None:
    """Run FILE in a sandbox here (no server) and exit with the program's exit code."""
    from crucible.domain.limits import resolve_limits

    settings = get_settings()
    runtime = runtime or settings.default_runtime
    if runtime not in get_args(RuntimeName):
        err.print(f"[red]--runtime must be runc, crun or gvisor, not {runtime!r}")
        raise typer.Exit(2)
    rt = cast(RuntimeName, runtime)
    try:
        limits: Limits = resolve_limits(
            {"timeout_s": timeout, "cpu_s": cpu, "memory_mb": memory, "cpus": cpus, "pids": pids},
            settings,
        )
        request = RunRequest(
            language=language or guess_language(file),
            code=file.read_text(errors="surrogateescape"),
            stdin=stdin.read_text() if stdin else "",
            limits=limits,
            runtime=rt,
        )

        def live(stream: str, chunk: bytes) -> None:
            if not json_out:
                target = sys.stdout if stream == "stdout" else sys.stderr
                target.buffer.write(chunk)
                target.flush()

        result = asyncio.run(_run_once(settings, request, live))
    except CrucibleError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if json_out:
        print(result.model_dump_json(indent=2))
    else:
        style = (
            "green"
            if result.termination is Termination.exited and result.exit_code == 0
            else "yellow"
        )
        err.print(f"[{style}]{verdict_line(result)}")
    if result.exit_code is not None:
        raise typer.Exit(result.exit_code)
    raise typer.Exit(128 + 9 if result.signal == "SIGKILL" else 1)


# The evaluation service's commands: serve, submit, status, logs, cancel, list, batch.
from crucible.cli.admin import register as register_admin  # noqa: E402
from crucible.cli.env import env_app  # noqa: E402
from crucible.cli.sandbox import register as register_sandbox  # noqa: E402
from crucible.cli.service import register  # noqa: E402

register(app)
register_admin(app)
register_sandbox(app)
app.add_typer(env_app, name="env")


def main() -> None:  # pragma: no cover - console entry point
    app()
