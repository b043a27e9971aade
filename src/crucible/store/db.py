"""Engines and migrations: SQLite (WAL) by default, PostgreSQL by URL.

SQLite notes, because its defaults bite a multi-threaded server:

* WAL lets readers proceed while one writer writes; ``busy_timeout`` makes a second
  writer wait for the lock instead of failing at once.
* pysqlite opens transactions lazily with a plain ``BEGIN`` (deferred): a transaction
  that reads and then writes can find the lock taken at the upgrade and fail with
  SQLITE_BUSY *without* waiting (the busy handler is skipped to avoid deadlock).
  Writers therefore start with ``BEGIN IMMEDIATE``: the store's write sessions use an
  engine of their own whose dialect begins so, its read sessions one that begins with
  ``BEGIN``. Each engine's ``do_begin`` says it, not a ``begin`` event listener: one
  listener makes SQLAlchemy dispatch its execution events around every statement
  (a tenth of the claim's and the finish's CPU).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str, *, write: bool = False, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the SQLite pragmas and locking described above;
    ``write``: its transactions begin with ``BEGIN IMMEDIATE`` (SQLite)."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, **kwargs)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")  # the pool's event: once per connection
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    begin = "BEGIN IMMEDIATE" if write else "BEGIN"

    def do_begin(dbapi_conn: Any) -> None:
        dbapi_conn.execute(begin)

    engine.dialect.do_begin = do_begin  # type: ignore[method-assign,assignment]  # its own
    return engine


def alembic_config(url: str) -> Config:
    """Alembic's configuration pointing at the packaged migrations."""
    cfg = Config()
    location = resources.files("crucible.store").joinpath("migrations")
    cfg.set_main_option("script_location", str(location))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


# Any constant: the key of the PostgreSQL advisory lock held while migrating.
_MIGRATION_LOCK = 0x6372756369626C65


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest revision (idempotent); ``engine`` a writing one.

    On PostgreSQL an advisory lock serialises processes starting together (API
    instances and workers all migrate at start): the first upgrades, the rest find
    the schema at head.
    """
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
            conn.commit()
        try:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
        finally:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})")
                conn.commit()


def now() -> datetime:
    return datetime.now(UTC)


class Database:
    """One database (SQLite or PostgreSQL) and its public unit of work, on which the
    store's parts are built: :class:`~crucible.store.repo.Store` is this plus the
    evaluations, the queue and batches; the other modules (cluster, keys, audit,
    sandboxes) take a store and use ``transaction()`` and ``reading()`` only."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        # SQLite: a second engine (and pool) whose transactions take the write lock
        # first; PostgreSQL: the same one.
        sqlite = self.dialect == "sqlite"
        self.write_engine: Engine = make_engine(url, write=True) if sqlite else self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)
        self._local = threading.local()

    def migrate(self) -> None:
        migrate(self.write_engine)

    def dispose(self) -> None:
        self.engine.dispose()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()

    def ping(self) -> None:
        """Raise when the database is unusable."""
        with self._read() as s:
            s.execute(text("SELECT 1"))

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        # One write session per thread, reused transaction after transaction (a
        # Session's construction was a tenth of a submission's store CPU); a nested
        # transaction on the same thread gets a fresh one.
        local = self._local
        if getattr(local, "busy", False):
            with self._write() as fresh, fresh.begin():
                yield fresh
            return
        s = getattr(local, "write", None)
        if s is None:
            s = local.write = self._write()
        local.busy = True
        try:
            with s.begin():
                yield s
        finally:
            s.close()  # expunges: what it returned stays readable (expire_on_commit=False)
            local.busy = False

    def transaction(self) -> AbstractContextManager[Session]:
        """A write transaction: committed on exit, rolled back on an exception."""
        return self._tx()

    def reading(self) -> Session:
        """A read-only session (use as a context manager); records stay readable."""
        return self._read()
