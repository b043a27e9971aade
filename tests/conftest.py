"""Shared fixtures: a sandbox state dir per session, databases (SQLite and a throwaway
PostgreSQL database per session), settings pointing at temporary directories."""

from __future__ import annotations

import gc
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from crucible.core.config import Settings
from support import auth_keys  # noqa: F401 - auth on for every server and client (see there)
from support.mounts import unmount_below

PG_ADMIN = os.environ.get("CRUCIBLE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    """Sandbox state for this session: the root fs and init are built once (on /tmp,
    where mounts work), and it never clashes with /run/crucible or other sessions."""
    path = Path(tempfile.mkdtemp(prefix="crucible-test-state-", dir="/tmp"))
    yield path
    unmount_below(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, migrated once, dropped at the end."""
    psycopg = pytest.importorskip("psycopg")
    name = f"crucible_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unavailable at {PG_ADMIN}: {exc}")
    admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    from crucible.store import Store

    store = Store(Settings(database_url=url).sqlalchemy_url)
    store.migrate()
    store.dispose()
    try:
        yield url
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _truncate(url: str) -> None:
    from sqlalchemy import text

    from crucible.store import Store
    from crucible.store.tables import Base

    store = Store(Settings(database_url=url).sqlalchemy_url)
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    store.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Each storage test runs on both backends; None means SQLite under data_dir."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_database")
    _truncate(url)
    return url


@pytest.fixture
def settings(tmp_path: Path, state_dir: Path) -> Settings:
    # A prefix of its own: containers and cgroups a test may check for leftovers are
    # its own, not those of another run on the machine (a server, a benchmark).
    return Settings(
        data_dir=tmp_path / "data",
        state_dir=state_dir,
        max_concurrency=2,
        prefix=f"crucible-i{secrets.token_hex(3)}",
    )


# The heaviest modules first, by worker-seconds in a fresh-clone run (pytest's
# --junitxml times summed per module): `make pytest` hands modules to its processes
# in collection order (`--dist loadscope --no-loadscope-reorder`), so a heavy module
# started last no longer runs alone while the other process idles. A module not listed
# runs after these, in collection order; refresh the list when one grows past them.
HEAVIEST_FIRST = (
    "tests/distributed/test_faults.py",
    "tests/distributed/test_sandbox_hosts.py",
    "tests/integration/test_inspect_provider.py",
    "tests/integration/test_server.py",
    "tests/security/test_adversarial.py",
    "tests/integration/test_inspect_evals_tasks.py",
    "tests/integration/test_envbuild.py",
    "tests/integration/test_sandbox_engine.py",
    "tests/distributed/test_inspect_across_hosts.py",
    "tests/distributed/test_lost_work.py",
    "tests/distributed/test_scale.py",
    "tests/integration/test_cli_keys.py",
    "tests/integration/test_dockerfile_build.py",
    "tests/integration/test_sessions.py",
    "tests/security/test_memory_under_load.py",
    "tests/integration/test_inspect_provider_remote.py",
    "tests/integration/test_fuzz.py",
    "tests/distributed/test_smoke.py",
    "tests/integration/test_environments.py",
    "tests/integration/test_sandboxes_client.py",
    "tests/integration/test_inspect_compose.py",
    "tests/integration/test_dockerfile_build_api.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {module: i for i, module in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


def _leaks_knowingly(marks: Iterable[pytest.Mark]) -> bool:
    return any(
        m.name == "filterwarnings" and "PytestUnraisableExceptionWarning" in str(m.args)
        for m in marks
    )


# Tests marked to ignore unraisable warnings (Inspect's own unclosed anyio streams) get
# their garbage collected at their own teardown, under their own marks: left to the
# collector, such a stream's __del__ warned in whatever test ran next on that process,
# which then failed (test_bad_names_are_refused, in a loaded run). The fixtures are
# autouse, so set up first in their scope and torn down last: after what they collect.
@pytest.fixture(autouse=True)
def _collect_a_known_leak(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if _leaks_knowingly(request.node.iter_markers()):
        gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _collect_a_modules_known_leak(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    marks = getattr(request.module, "pytestmark", [])
    if _leaks_knowingly(marks if isinstance(marks, list) else [marks]):
        gc.collect()
