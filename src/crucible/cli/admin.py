"""Administration commands that work on the database directly (like ``crucible serve``,
they read ``--data-dir`` / CRUCIBLE_DATABASE_URL): ``crucible keys create|list|revoke``
and ``crucible audit verify``; and the first-start banner that prints a new admin key.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crucible.core.config import Settings

# The store (SQLAlchemy, Alembic: a third of the CLI's start-up) is imported by the
# commands that use it, so `crucible submit` and the other client commands, which
# never touch the database, start without it.
if TYPE_CHECKING:
    from crucible.store import Store

out = Console()
err = Console(stderr=True)

keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit trail.", no_args_is_help=True)

DataDir = Annotated[Path | None, typer.Option(help="default ./data (SQLite there)")]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(envvar="CRUCIBLE_DATABASE_URL", help="PostgreSQL URL (default: SQLite)"),
]


def _store(data_dir: Path | None, database_url: str | None) -> Store:
    from crucible.store import Store

    overrides: dict[str, Any] = {"data_dir": data_dir, "database_url": database_url}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.sqlalchemy_url)
    store.migrate()
    return store


def _audit(store: Store, action: str, target: str, detail: dict[str, Any]) -> None:
    """Key changes made at the console are admin actions too (actor: the console)."""
    from crucible.store.audit import AuditEvent, AuditLog

    AuditLog(store).append(
        AuditEvent(action=action, outcome=0, actor_name="console", target=target, detail=detail)
    )


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="who or what the key is for")],
    role: Annotated[str, typer.Option(help="admin or researcher")] = "researcher",
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a key and print it, alone, on stdout (shown this once)."""
    from crucible.store.keys import ROLES, KeyStore

    if role not in ROLES:
        err.print(f"[red]error:[/red] --role must be one of {', '.join(ROLES)}")
        raise typer.Exit(2)
    store = _store(data_dir, database_url)
    try:
        record, secret = KeyStore(store).create(name, role)
        _audit(store, "cli.keys.create", record.id, {"name": name, "role": role})
    finally:
        store.dispose()
    err.print(f"created {record.id} ({role}) for {name!r}; the key is shown only now:")
    sys.stdout.write(secret + "\n")


@keys_app.command("list")
def keys_list(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Every key (never the secrets)."""
    from crucible.store.keys import KeyStore

    store = _store(data_dir, database_url)
    try:
        keys = KeyStore(store).list()
    finally:
        store.dispose()
    if json_out:
        rows = [asdict(key) for key in keys]
        sys.stdout.write(json.dumps(rows, default=str, indent=2) + "\n")
        return
    table = Table("id", "name", "role", "prefix", "created", "last used", "revoked")
    fmt = "%Y-%m-%d %H:%M"
    for k in keys:
        table.add_row(
            k.id,
            k.name,
            k.role,
            k.prefix + "…",
            k.created_at.strftime(fmt),
            k.last_used_at.strftime(fmt) if k.last_used_at else "",
            k.revoked_at.strftime(fmt) if k.revoked_at else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (key_…)")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a key: it stops working at once."""
    from crucible.core.errors import NotFound
    from crucible.store.keys import KeyStore

    store = _store(data_dir, database_url)
    try:
        KeyStore(store).revoke(key_id)
        _audit(store, "cli.keys.revoke", key_id, {})
    except NotFound as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        store.dispose()
    out.print(f"{key_id} revoked")


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    expect_head: Annotated[
        str | None, typer.Option(help="a head hash recorded earlier must still be in the chain")
    ] = None,
) -> None:
    """Check the audit chain; exit 1 naming the first entry that was edited or removed."""
    from crucible.store.audit import AuditLog

    store = _store(data_dir, database_url)
    try:
        result = AuditLog(store).verify(expect_head=expect_head)
    finally:
        store.dispose()
    if not result.ok:
        err.print(
            f"[red]audit chain broken at entry {result.broken_seq}:[/red] {result.reason}"
            f" ({result.checked} entries before it are intact)"
        )
        raise typer.Exit(1)
    out.print(f"audit chain intact: {result.checked} entries, head {result.head}")


def first_key_banner(settings: Settings) -> None:
    """On a first start with no active key (and no bootstrap key configured), create an
    admin key and print it once, with a sign-in link for the web UI."""
    from crucible.store import Store
    from crucible.store.keys import KeyStore

    if settings.bootstrap_admin_key:
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(settings.sqlalchemy_url)
    try:
        store.migrate()
        keys = KeyStore(store)
        if keys.count_active() > 0:
            return
        record, secret = keys.create("first admin", "admin")
        _audit(store, "cli.keys.bootstrap", record.id, {"role": "admin"})
    finally:
        store.dispose()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    print(
        "\n  No API keys existed, so an admin key was created. It is shown only now:\n\n"
        f"    {secret}\n\n"
        f"  Sign in to the web UI: http://{host}:{settings.port}/#key={secret}\n"
        "  CLI: export CRUCIBLE_API_KEY=<the key>   More keys: crucible keys create\n",
        flush=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")
    app.add_typer(audit_app, name="audit")
