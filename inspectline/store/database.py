"""Connecting to the frame store's database: engine set-up, transactions and error translation.

Two databases are supported through SQLAlchemy: SQLite (the embedded default) and PostgreSQL (via
psycopg 3) for plants that outgrow one machine.

SQLite connections run in WAL mode (readers never block the writer), with a busy timeout (a second
writer waits instead of failing at once) and foreign keys on. Write transactions start with
``BEGIN IMMEDIATE``: a deferred transaction that reads first and writes later can fail with "database is
locked" when another writer got in between, and no busy timeout helps with that.

Image files live outside the database, so writing an image and writing the row that points to it
cannot share one transaction. The *image lock* closes the remaining race, clean-up deleting a file in the
moment a new frame reuses it: frame writers hold it shared and clean-up holds it exclusive. On SQLite
every write transaction is already exclusive; on PostgreSQL it is a transaction-scoped advisory lock.

Opening a database creates a new store's tables, or migrates an older store to the current schema
(``migrations``), in one exclusive transaction.

Database failures surface as :class:`StoreError` naming the database (password hidden), so the service
can tell "store unavailable, keep the backlog" from a programming error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from inspectline.errors import StoreError
from inspectline.store import migrations

SUPPORTED = ("sqlite", "postgresql")
SQLITE_BUSY_TIMEOUT_MS = 10_000
# An arbitrary fixed 64-bit key ("inspimg"): every process of one plant uses the same lock.
_IMAGE_LOCK_KEY = 0x0069_6E73_7069_6D67

ImageLock = Literal["shared", "exclusive"] | None


class Database:
    """An engine plus the transaction helpers the store needs."""

    def __init__(self, url: str) -> None:
        try:
            parsed = sa.make_url(url)
        except ArgumentError:
            msg = f"database_url {url!r} is not a database URL; use sqlite:///path/frames.db or postgresql+psycopg://user@host:5432/db"
            raise StoreError(msg) from None
        self.url = parsed.render_as_string(hide_password=True)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in SUPPORTED:
            msg = f"database_url {self.url!r} names {self.dialect!r}; supported databases are {', '.join(SUPPORTED)}"
            raise StoreError(msg)
        try:
            self.engine = (
                _sqlite_engine(parsed) if self.dialect == "sqlite" else sa.create_engine(parsed, pool_pre_ping=True)
            )
        except (NoSuchModuleError, ImportError) as exc:
            msg = (
                f"cannot open {self.url}: the database driver is not installed ({exc}); PostgreSQL "
                "needs `pip install inspectline[postgres]`"
            )
            raise StoreError(msg) from None
        self._open_schema()

    def _open_schema(self) -> None:
        """Create or migrate the tables; exclusive, so two processes opening at once never both do it."""
        with self.translate_errors("open"), self.engine.connect() as conn:
            # A SQLite table rebuild must not trip the foreign keys that point at the table; SQLite only
            # honours this pragma outside a transaction, hence on the driver's connection, before BEGIN.
            driver = conn.connection.driver_connection if self.dialect == "sqlite" else None
            if driver is not None:
                driver.execute("PRAGMA foreign_keys=OFF")
            try:
                conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    self._lock_images(conn, "exclusive")
                    migrations.bring_up_to_date(conn, self.dialect, self.url)
            finally:
                if driver is not None:
                    driver.execute("PRAGMA foreign_keys=ON")

    def insert(self, table: sa.Table):
        """A dialect INSERT, so callers can add ``on_conflict_do_nothing()``."""
        return (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(table)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: one consistent view of the database."""
        with self.translate_errors("read from"), self.engine.connect() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self, *, image_lock: ImageLock = None) -> Iterator[Connection]:
        """A write transaction, committed when the block ends without an exception."""
        with self.translate_errors("write to"), self.engine.connect() as conn:
            conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                self._lock_images(conn, image_lock)
                yield conn

    def _lock_images(self, conn: Connection, image_lock: ImageLock) -> None:
        """Take the image lock for this transaction (on SQLite every write transaction is already exclusive)."""
        if image_lock is not None and self.dialect == "postgresql":
            fn = "pg_advisory_xact_lock_shared" if image_lock == "shared" else "pg_advisory_xact_lock"
            conn.execute(sa.text(f"SELECT {fn}(:key)"), {"key": _IMAGE_LOCK_KEY})

    @contextlib.contextmanager
    def translate_errors(self, doing: str) -> Iterator[None]:
        """Database failures -> StoreError naming the database; our own errors pass through untouched."""
        try:
            yield
        except DBAPIError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
            msg = f"cannot {doing} the frame store database {self.url}: {reason}"
            raise StoreError(msg) from exc

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_engine(url: sa.URL) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in str(url)
    if in_memory:
        # Every new connection to ":memory:" is a different, empty database: share one.
        engine = sa.create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Hand transaction control to SQLAlchemy's "begin" event below instead of pysqlite's own.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable at each checkpoint; safe with WAL
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(f"BEGIN {conn.get_execution_options().get('sqlite_begin', 'DEFERRED')}")

    return engine
