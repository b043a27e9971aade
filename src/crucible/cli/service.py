"""The service's commands: ``crucible serve`` and the client commands (submit, status,
logs, cancel, list, batch), registered on the CLI app by :func:`register`."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from crucible.client import DEFAULT_SERVER, ApiError, Client
from crucible.domain.evaluations import EvaluationPublic

out = Console()
err = Console(stderr=True)

Server = Annotated[
    str, typer.Option("--server", envvar="CRUCIBLE_SERVER", help="the Crucible API's base URL")
]
AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


def _client(server: str) -> Client:
    return Client(server, timeout=60.0)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}")
    return typer.Exit(2)


def _summary(ev: EvaluationPublic) -> str:
    if ev.result is None:
        extra = f" · {ev.error}" if ev.error else ""
        return f"{ev.id} · {ev.status.value}{extra}"
    r = ev.result
    how = f"exit {r.exit_code}" if r.exit_code is not None else (r.signal or "-")
    verdict = f" · {r.verdict.value}" if r.verdict else ""
    return (
        f"{ev.id} · {ev.status.value} · {r.termination.value} ({how}){verdict}"
        f" · wall {r.wall_ms} ms · queue {ev.queue_wait_ms} ms"
    )


def _exit_code(ev: EvaluationPublic) -> int:
    if ev.result is None:
        return 2
    if ev.result.verdict is not None:
        return 0 if ev.result.verdict.value == "passed" else 1
    return ev.result.exit_code if ev.result.exit_code is not None else 1


def _follow(client: Client, evaluation_id: str, *, output: bool) -> EvaluationPublic:
    for event in client.events(evaluation_id):
        if event.type in ("stdout", "stderr") and output:
            target = sys.stdout if event.type == "stdout" else sys.stderr
            target.write(event.data["data"])
            target.flush()
        elif event.type == "result":
            return EvaluationPublic.model_validate(event.data)
    return client.get(evaluation_id)


def serve(
    host: Annotated[str | None, typer.Option(help="default 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default 8000")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="default ./data")] = None,
    log_format: Annotated[str | None, typer.Option(help="text (default) or json")] = None,
    dispatcher: Annotated[
        str | None,
        typer.Option(
            help="embedded (run evaluations here; default) or celery (API only: "
            "`crucible worker` processes run them)"
        ),
    ] = None,
) -> None:
    """Serve the API. Embedded: also run evaluations (SQLite under --data-dir unless
    CRUCIBLE_DATABASE_URL). Celery: publish them to CRUCIBLE_BROKER_URL for workers."""

    import uvicorn

    from crucible.api.app import create_app
    from crucible.core.config import Settings

    if dispatcher not in (None, "embedded", "celery"):
        raise _fail(ValueError("--dispatcher must be embedded or celery"))
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "data_dir": data_dir,
        "dispatcher": dispatcher,
        "log_format": log_format,
    }
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    from crucible.cli.admin import first_key_banner
    from crucible.core import logs

    logs.configure(settings.log_format)
    first_key_banner(settings)
    # The plain asyncio loop: the sandbox watches pidfds and reaps its runtimes' children
    # itself, which must not compete with another loop's SIGCHLD handling.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="asyncio",
        log_level="info",
        log_config=None,  # logs.configure set up the handlers
        timeout_graceful_shutdown=5,
    )


def worker(
    concurrency: Annotated[
        int | None, typer.Option(help="sandboxes run at once (default CRUCIBLE_MAX_CONCURRENCY)")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option(help="default ./data")] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="serve this worker's Prometheus metrics on this port")
    ] = None,
    sandboxes: Annotated[
        int | None,
        typer.Option(
            help="host up to N agent sandboxes for the API instances (0: none; default"
            " CRUCIBLE_SANDBOX_HOST_CAPACITY); needs --listen and CRUCIBLE_CLUSTER_TOKEN"
        ),
    ] = None,
    listen: Annotated[
        str | None,
        typer.Option(help="ADDR:PORT of this host's cluster endpoint (API instances call it)"),
    ] = None,
    advertise: Annotated[
        str | None,
        typer.Option(help="the URL API instances use for it (default http://<listen>)"),
    ] = None,
) -> None:
    """Run a worker that claims queued evaluations from the database and runs them in
    sandboxes on this host (woken by Celery messages, polling when idle); with
    --sandboxes N it also hosts agent sandboxes, placed on it by the API instances.

    Reads CRUCIBLE_DATABASE_URL, CRUCIBLE_BROKER_URL and CRUCIBLE_REDIS_URL; stop it
    with SIGTERM (warm: running evaluations get CRUCIBLE_SHUTDOWN_GRACE_S to finish;
    its agent sandboxes are stopped, reason shutdown).
    """
    import logging

    from crucible.core.config import Settings
    from crucible.dispatch.worker import run_worker
    from crucible.wiring import build_worker

    overrides: dict[str, Any] = {
        "data_dir": data_dir,
        "dispatcher": "celery",
        "worker_metrics_port": metrics_port,
        "sandbox_host_capacity": sandboxes,
        "sandbox_host_listen": listen,
        "sandbox_host_advertise": advertise,
    }
    if concurrency is not None:
        overrides["max_concurrency"] = concurrency
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_worker(build_worker(settings, concurrency=settings.max_concurrency))


def submit(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="program to submit")],
    server: Server = DEFAULT_SERVER,
    language: Annotated[str | None, typer.Option("--language", "-l")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="wait for the end; print the result")
    ] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream output live")] = False,
    expected_output: Annotated[str | None, typer.Option(help="judge stdout against this")] = None,
    test: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="python tests appended")
    ] = None,
    stdin: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
    timeout: Annotated[float | None, typer.Option(help="wall-clock limit, seconds")] = None,
    memory: Annotated[int | None, typer.Option(help="memory limit, MB")] = None,
    runtime: Annotated[
        str | None, typer.Option(help="runc, crun or gvisor (default: the server's)")
    ] = None,
    environment: Annotated[
        str | None,
        typer.Option("--environment", "-e", help="environment to run in (default host)"),
    ] = None,
    priority: Annotated[str | None, typer.Option(help="high, normal or low")] = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value (repeatable)")] = None,
    json_out: AsJson = False,
) -> None:
    """Submit FILE; prints its id, or (--wait / --follow) its result, exiting with its code."""
    from crucible.cli.languages import guess_language

    labels = dict(item.split("=", 1) for item in label or [] if "=" in item)
    limits = {k: v for k, v in {"timeout_s": timeout, "memory_mb": memory}.items() if v}
    fields: dict[str, Any] = {
        "expected_output": expected_output,
        "test_code": test.read_text() if test else None,
        "stdin": stdin.read_text() if stdin else None,
        "runtime": runtime,
        "environment": environment,
        "priority": priority,
        "labels": labels or None,
        "limits": limits or None,
    }
    with _client(server) as client:
        try:
            ev = client.submit(
                file.read_text(errors="surrogateescape"),
                language=language or guess_language(file),
                **fields,
            )
            if follow:
                ev = _follow(client, ev.id, output=not json_out)
            elif wait:
                ev = client.wait(ev.id)
            else:
                out.print(ev.model_dump_json(indent=2) if json_out else ev.id)
                return
        except (ApiError, OSError) as exc:
            raise _fail(exc) from None
    if json_out:
        out.print(ev.model_dump_json(indent=2))
    elif not follow and ev.result is not None:
        sys.stdout.write(ev.result.stdout)
        sys.stderr.write(ev.result.stderr)
    err.print(_summary(ev))
    raise typer.Exit(_exit_code(ev))


def status(
    evaluation_id: Annotated[str, typer.Argument(help="evaluation id")],
    server: Server = DEFAULT_SERVER,
    json_out: AsJson = False,
) -> None:
    """Show an evaluation's status and result."""
    with _client(server) as client:
        try:
            ev = client.get(evaluation_id)
        except ApiError as exc:
            raise _fail(exc) from None
    out.print(ev.model_dump_json(indent=2) if json_out else _summary(ev))


def logs(
    evaluation_id: Annotated[str, typer.Argument(help="evaluation id")],
    server: Server = DEFAULT_SERVER,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream until it ends")] = False,
) -> None:
    """Print an evaluation's full stdout (and stderr to stderr)."""
    with _client(server) as client:
        try:
            if follow:
                ev = _follow(client, evaluation_id, output=True)
                err.print(_summary(ev))
                return
            sys.stdout.write(client.logs(evaluation_id, "stdout"))
            sys.stderr.write(client.logs(evaluation_id, "stderr"))
        except ApiError as exc:
            raise _fail(exc) from None


def cancel(
    evaluation_id: Annotated[str, typer.Argument(help="evaluation id")],
    server: Server = DEFAULT_SERVER,
) -> None:
    """Cancel a queued or running evaluation."""
    with _client(server) as client:
        try:
            done = client.cancel(evaluation_id)
        except ApiError as exc:
            raise _fail(exc) from None
    out.print(f"{done.id} · {done.status.value}")


def list_(
    server: Server = DEFAULT_SERVER,
    status: Annotated[str | None, typer.Option(help="queued, running, completed, ...")] = None,
    label: Annotated[str | None, typer.Option(help="key:value")] = None,
    batch: Annotated[str | None, typer.Option(help="batch id")] = None,
    limit: Annotated[int, typer.Option(help="how many")] = 20,
    json_out: AsJson = False,
) -> None:
    """List recent evaluations, newest first."""
    with _client(server) as client:
        try:
            page = client.list(status=status, label=label, batch_id=batch, limit=limit)
        except ApiError as exc:
            raise _fail(exc) from None
    if json_out:
        out.print(page.model_dump_json(indent=2))
        return
    table = Table("id", "status", "language", "termination", "verdict", "wall ms", "created")
    for ev in page.items:
        r = ev.result
        table.add_row(
            ev.id,
            ev.status.value,
            ev.request.language,
            r.termination.value if r else "",
            r.verdict.value if r and r.verdict else "",
            str(r.wall_ms) if r else "",
            ev.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    out.print(table)


def batch(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="one JSON body a line")],
    server: Server = DEFAULT_SERVER,
    defaults: Annotated[str | None, typer.Option(help="JSON merged under every item")] = None,
    json_out: AsJson = False,
) -> None:
    """Submit FILE.jsonl as one batch, show progress, then a summary by verdict and termination."""
    items = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    with _client(server) as client:
        try:
            created = client.batch(items, json.loads(defaults) if defaults else None)
            err.print(f"batch {created.id}: {created.count} evaluations")
            final = None
            with Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                disable=json_out,
            ) as progress:
                task = progress.add_task("running", total=created.count)
                for state in client.batch_events(created.id):
                    progress.update(task, completed=state.done)
                    final = state
            final = final or client.get_batch(created.id)
        except (ApiError, ValueError) as exc:
            raise _fail(exc) from None
    if json_out:
        out.print(final.model_dump_json(indent=2))
        return
    rows: Counter[tuple[str, str]] = Counter()
    for ev in client_iter(server, created.id):
        r = ev.result
        verdict = r.verdict.value if r and r.verdict else "-"
        rows[(verdict, r.termination.value if r else ev.status.value)] += 1
    table = Table("verdict", "termination", "count", title=f"batch {created.id}")
    for (verdict, termination), n in sorted(rows.items()):
        table.add_row(verdict, termination, str(n))
    out.print(table)
    rate = f"{final.pass_rate:.1%}" if final.pass_rate is not None else "n/a"
    out.print(f"{final.done}/{final.count} done · pass rate {rate}")


def client_iter(server: str, batch_id: str) -> list[EvaluationPublic]:
    with _client(server) as client:
        return list(client.iter(batch_id=batch_id))


def register(app: typer.Typer) -> None:
    """Add the service's commands to the ``crucible`` CLI."""
    app.command()(serve)
    app.command()(worker)
    app.command()(submit)
    app.command()(status)
    app.command()(logs)
    app.command()(cancel)
    app.command("list")(list_)
    app.command()(batch)
