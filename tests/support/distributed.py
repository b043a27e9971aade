"""Helpers of the distributed tests (fixtures in conftest.py). The servers and process
launchers live in tests/support/local_cluster.py, shared with bench/soak.py; this module adds
what only the tests need (pytest skips, a database on the machine's PostgreSQL) and
re-exports the rest, so tests import everything from here."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support.local_cluster import (
    ADMIN_KEY,
    AUTH,
    CRUCIBLE,
    Cluster,
    PostgresServer,
    Proc,
    RedisServer,
    Unavailable,
    free_port,
    http,
    wait_for,
)

__all__ = [
    "ADMIN_KEY",
    "AUTH",
    "CRUCIBLE",
    "PG_ADMIN",
    "Cluster",
    "PostgresServer",
    "Proc",
    "RedisServer",
    "Unavailable",
    "free_port",
    "fresh_database",
    "http",
    "wait_final",
    "wait_for",
]

PG_ADMIN = os.environ.get("CRUCIBLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def wait_final(api: httpx.Client, evaluation_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll until the evaluation is final (tolerates an API that is briefly down)."""

    def final() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/evaluations/{evaluation_id}").json()
        return body if body["status"] in ("completed", "cancelled", "error") else None

    result: dict[str, Any] = wait_for(final, timeout, f"{evaluation_id} to finish", 0.2)
    return result


def fresh_database(admin_url: str) -> Iterator[str]:
    """A new database on the machine's PostgreSQL (never restarted), dropped after."""
    psycopg = pytest.importorskip("psycopg")
    name = f"crucible_dist_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unavailable at {admin_url}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with contextlib.suppress(Exception):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
