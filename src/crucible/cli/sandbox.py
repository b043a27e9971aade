"""Long-lived sandboxes from the command line: ``crucible sandbox create|exec|ls|rm``
and ``crucible shell [ID]``, a prompt whose every line runs as ``bash -lc LINE``.
They talk to a server (``--server`` / ``CRUCIBLE_SERVER``) like the other client
commands."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from crucible.client import DEFAULT_SERVER, Client
from crucible.client.errors import ApiError
from crucible.client.sandboxes import RemoteSandbox
from crucible.core.errors import CrucibleError, SandboxStopped
from crucible.domain.models import ExecPublic, SandboxPublic

out = Console()
err = Console(stderr=True)

Server = Annotated[
    str, typer.Option("--server", envvar="CRUCIBLE_SERVER", help="the Crucible API's base URL")
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]
Runtime = Annotated[str | None, typer.Option(help="runc, crun or gvisor (default: the server's)")]
Memory = Annotated[int | None, typer.Option("--memory", help="memory of the sandbox, MiB")]
Cpus = Annotated[float | None, typer.Option(help="CPU cores")]
Pids = Annotated[int | None, typer.Option(help="processes and threads")]
Disk = Annotated[int | None, typer.Option("--disk", help="writable layer, MiB")]
Ttl = Annotated[
    float | None, typer.Option("--ttl", help="stopped this many seconds after creation")
]
Idle = Annotated[float | None, typer.Option("--idle-timeout", help="stopped after this long idle")]
EnvironmentOpt = Annotated[
    str | None,
    typer.Option(
        "--environment",
        "-e",
        help="root under the writable layer (default: the server's, else host)",
    ),
]
FAILURES = (ApiError, CrucibleError, OSError)

sandbox_app = typer.Typer(help="Long-lived sandboxes an agent (or you) drives step by step.")


def _client(server: str) -> Client:
    return Client(server, timeout=60.0)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


def _limits(memory: int | None, cpus: float | None, pids: int | None, disk: int | None) -> Any:
    given = {"memory_mb": memory, "cpus": cpus, "pids": pids, "disk_mb": disk}
    return {k: v for k, v in given.items() if v is not None} or None


def _print_output(result: ExecPublic) -> None:
    sys.stdout.buffer.write(result.stdout_bytes)
    sys.stdout.flush()
    sys.stderr.buffer.write(result.stderr_bytes)
    sys.stderr.flush()


def _age(record: SandboxPublic) -> str:
    end = record.stopped_at or datetime.now(UTC)
    s = int((end - record.created_at).total_seconds())
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


@sandbox_app.command("create")
def create(
    server: Server = DEFAULT_SERVER,
    runtime: Runtime = None,
    environment: EnvironmentOpt = None,
    memory: Memory = None,
    cpus: Cpus = None,
    pids: Pids = None,
    disk: Disk = None,
    ttl: Ttl = None,
    idle_timeout: Idle = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value (repeatable)")] = None,
    json_out: AsJson = False,
) -> None:
    """Create a sandbox; prints its id (or its record with --json)."""
    labels = dict(item.split("=", 1) for item in label or [] if "=" in item)
    with _client(server) as client:
        try:
            box = client.sandboxes.create(
                runtime=runtime,
                limits=_limits(memory, cpus, pids, disk),
                ttl_s=ttl,
                idle_timeout_s=idle_timeout,
                labels=labels or None,
                environment=environment,
            )
        except FAILURES as exc:
            raise _fail(exc) from None
    out.print(box.record.model_dump_json(indent=2) if json_out else box.id)


@sandbox_app.command("exec")
def exec_(
    sandbox_id: Annotated[str, typer.Argument(help="sandbox id (sbx_…)")],
    cmd: Annotated[list[str], typer.Argument(help="the command and its arguments (after --)")],
    server: Server = DEFAULT_SERVER,
    cwd: Annotated[str | None, typer.Option(help="working directory in the sandbox")] = None,
    user: Annotated[str | None, typer.Option(help="user in the sandbox")] = None,
    timeout: Annotated[float | None, typer.Option(help="kill the command after this")] = None,
    stdin: Annotated[bool, typer.Option("--stdin", help="send this process's stdin")] = False,
    json_out: AsJson = False,
) -> None:
    """Run CMD in the sandbox; prints its output and exits with its exit code."""
    data = sys.stdin.buffer.read() if stdin else None
    with _client(server) as client:
        try:
            result = client.sandboxes.get(sandbox_id).exec(
                cmd, input=data, cwd=cwd, user=user, timeout_s=timeout
            )
        except FAILURES as exc:
            raise _fail(exc) from None
    if json_out:
        out.print(result.model_dump_json(indent=2))
    else:
        _print_output(result)
        if result.memory_limit:
            err.print("[yellow]the sandbox reached its memory limit")
        if result.timed_out:
            err.print(f"[yellow]timed out after {timeout:g} s" if timeout else "[yellow]timed out")
    raise typer.Exit(result.returncode if result.returncode is not None else 1)


@sandbox_app.command("ls")
def list_(
    server: Server = DEFAULT_SERVER,
    status: Annotated[str | None, typer.Option(help="running, stopped or lost")] = None,
    limit: Annotated[int, typer.Option(help="how many")] = 50,
    json_out: AsJson = False,
) -> None:
    """List sandboxes, newest first (yours; an admin's key sees everyone's)."""
    with _client(server) as client:
        try:
            page = client.sandboxes.list(status=status, limit=limit)
        except FAILURES as exc:
            raise _fail(exc) from None
    if json_out:
        out.print(page.model_dump_json(indent=2))
        return
    table = Table()
    table.add_column("id", no_wrap=True)  # ids must stay whole to be copied
    table.add_column("status", no_wrap=True)
    table.add_column("runtime")
    table.add_column("owner", overflow="fold")
    for name in ("age", "execs", "cpu ms", "peak MB"):
        table.add_column(name, justify="right")
    for b in page.items:
        state = b.status.value + (f" ({b.stop_reason.value})" if b.stop_reason else "")
        r = b.resources
        table.add_row(
            b.id,
            state,
            b.runtime,
            b.owner_key_id or "-",
            _age(b),
            str(r.exec_count),
            str(r.cpu_ms),
            f"{r.peak_memory_bytes / 1e6:.1f}",
        )
    out.print(table)


@sandbox_app.command("rm")
def remove(
    sandbox_ids: Annotated[list[str], typer.Argument(help="sandbox ids")],
    server: Server = DEFAULT_SERVER,
) -> None:
    """Delete sandboxes (their transcripts stay on the server)."""
    with _client(server) as client:
        for sandbox_id in sandbox_ids:
            try:
                client.sandboxes.get(sandbox_id).close()
            except FAILURES as exc:
                raise _fail(exc) from None
            out.print(f"{sandbox_id} · deleted")


def shell(
    sandbox_id: Annotated[
        str | None, typer.Argument(help="a sandbox's id; default: a new one, removed at the end")
    ] = None,
    server: Server = DEFAULT_SERVER,
    runtime: Runtime = None,
    environment: EnvironmentOpt = None,
    memory: Memory = None,
    ttl: Ttl = None,
    timeout: Annotated[float | None, typer.Option(help="each command's time limit")] = None,
) -> None:
    """An interactive shell in a sandbox: each line runs as `bash -lc LINE`; `exit` or
    end of input leaves. Without ID it creates a sandbox and removes it on exit."""
    with _client(server) as client:
        try:
            if sandbox_id is None:
                box = client.sandboxes.create(
                    runtime=runtime,
                    limits=_limits(memory, None, None, None),
                    ttl_s=ttl,
                    environment=environment,
                )
                err.print(f"sandbox {box.id} (removed when you leave)")
            else:
                box = client.sandboxes.get(sandbox_id)
        except FAILURES as exc:
            raise _fail(exc) from None
        try:
            _repl(box, timeout)
        finally:
            if sandbox_id is None:
                try:
                    box.close()
                except FAILURES as exc:
                    err.print(f"[red]could not remove {box.id}:[/red] {exc}")


def _repl(box: RemoteSandbox, timeout: float | None) -> None:
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            err.print(f"[bold]{box.id}[/bold]$ ", end="")
        line = sys.stdin.readline()
        if not line:  # end of input
            return
        line = line.strip()
        if not line:
            continue
        if line in ("exit", "logout"):
            return
        try:
            result = box.exec(line, timeout_s=timeout)
        except FAILURES as exc:
            err.print(f"[red]error:[/red] {exc}")
            if isinstance(exc, SandboxStopped):
                return  # nothing more can run in it
            continue
        _print_output(result)
        if result.memory_limit:
            err.print("[yellow]" + escape("[memory limit reached]"))
        if result.timed_out:
            err.print("[yellow]" + escape("[timed out]"))
        elif result.returncode:
            err.print("[yellow]" + escape(f"[exit {result.returncode}]"))


def register(app: typer.Typer) -> None:
    """Add ``crucible sandbox …`` and ``crucible shell`` to the CLI."""
    app.add_typer(sandbox_app, name="sandbox")
    app.command()(shell)
