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

Database failures surface as :class:`StoreError` naming the database (password hidden), so the service
can tell "store unavailable, keep the backlog" from a programming error.
"""

from __future__ import annotations

import contextlib
import logging
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
from inspectline.store.schema import SCHEMA_VERSION, frames, images, metadata, shadow_verdicts, store_meta

log = logging.getLogger(__name__)
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
        self._migrate()

    def _migrate(self) -> None:
        """Create the tables, or bring an older store up to :data:`SCHEMA_VERSION` in one transaction.

        Exclusive, so two processes opening the store at once neither create nor migrate it twice.
        """
        with self.translate_errors("open"), self.engine.connect() as conn:
            if self.dialect == "sqlite":  # a table rebuild must not trip the foreign keys pointing at it
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
            try:
                conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    if self.dialect == "postgresql":
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _IMAGE_LOCK_KEY})
                    version = _schema_version(conn)
                    if version == 1:
                        migrate_v1_to_v2(conn, self.dialect)
                        log.warning("frame store %s migrated from schema version 1 to 2", self.url)
                    metadata.create_all(conn)
                    if version != SCHEMA_VERSION:
                        conn.execute(sa.delete(store_meta))
                        conn.execute(sa.insert(store_meta).values(id=1, schema_version=SCHEMA_VERSION))
            finally:
                if self.dialect == "sqlite":
                    conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")

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
                if image_lock is not None and self.dialect == "postgresql":
                    fn = "pg_advisory_xact_lock_shared" if image_lock == "shared" else "pg_advisory_xact_lock"
                    conn.execute(sa.text(f"SELECT {fn}(:key)"), {"key": _IMAGE_LOCK_KEY})
                yield conn

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


def _schema_version(conn: Connection) -> int | None:
    """The stored schema version; 1 for stores made before versions were recorded; None for a new store."""
    tables = set(sa.inspect(conn).get_table_names())
    if "frames" not in tables:
        return None
    if "store_meta" not in tables:
        return 1
    return conn.scalar(sa.select(store_meta.c.schema_version)) or 1


_V1_FRAME_INDEXES = (
    "ix_frames_received_at",
    "ix_frames_line_received",
    "ix_frames_camera_received",
    "ix_frames_label_uncertainty",
    "ix_frames_image_sha256",
)


def migrate_v1_to_v2(conn: Connection, dialect: str) -> None:
    """Key frames and shadow verdicts by line too; add ``frames.content_sha256`` (unknown for old rows)."""
    shadow_lines = (
        "COALESCE((SELECT f.line_id FROM frames f WHERE f.camera_id = s.camera_id AND f.frame_id = s.frame_id), '')"
    )
    if dialect == "postgresql":
        for statement in (
            "ALTER TABLE frames ADD COLUMN content_sha256 VARCHAR(64)",
            "ALTER TABLE frames DROP CONSTRAINT uq_frames_camera_frame",
            "ALTER TABLE frames ADD CONSTRAINT uq_frames_line_camera_frame UNIQUE (line_id, camera_id, frame_id)",
            "ALTER TABLE shadow_verdicts ADD COLUMN line_id VARCHAR",
            f"UPDATE shadow_verdicts s SET line_id = {shadow_lines}",
            "ALTER TABLE shadow_verdicts ALTER COLUMN line_id SET NOT NULL",
            "ALTER TABLE shadow_verdicts DROP CONSTRAINT uq_shadow_camera_frame_model",
            "ALTER TABLE shadow_verdicts ADD CONSTRAINT uq_shadow_line_camera_frame_model "
            "UNIQUE (line_id, camera_id, frame_id, model_version)",
        ):
            conn.exec_driver_sql(statement)
        return
    # SQLite cannot change a table's constraints: build each table anew, copy, drop the old one and rename
    # the new one into its place (the order SQLite documents: references to the old name stay valid).
    staging = sa.MetaData()
    images.to_metadata(staging)
    new_frames = frames.to_metadata(staging, name="frames_v2")
    new_shadows = shadow_verdicts.to_metadata(staging, name="shadow_verdicts_v2")
    for index in _V1_FRAME_INDEXES:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {index}")
    new_frames.create(conn)
    new_shadows.create(conn)
    listed = ", ".join(c.name for c in frames.c if c.name != "content_sha256")
    conn.exec_driver_sql(f"INSERT INTO frames_v2 ({listed}) SELECT {listed} FROM frames")
    listed = ", ".join(c.name for c in shadow_verdicts.c if c.name != "line_id")
    conn.exec_driver_sql(
        f"INSERT INTO shadow_verdicts_v2 (line_id, {listed}) SELECT {shadow_lines}, {listed} FROM shadow_verdicts s"
    )
    conn.exec_driver_sql("DROP TABLE shadow_verdicts")
    conn.exec_driver_sql("DROP TABLE frames")
    conn.exec_driver_sql("ALTER TABLE frames_v2 RENAME TO frames")
    conn.exec_driver_sql("ALTER TABLE shadow_verdicts_v2 RENAME TO shadow_verdicts")
    problems = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if problems:
        msg = f"the migrated frame store fails its foreign-key check: {problems[:5]}"
        raise StoreError(msg)
