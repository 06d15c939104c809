"""Schema versions of the frame store, and bringing an existing database up to the current one on open.

Plants keep their stores across upgrades, so opening a store made by an older inspectline migrates it in
place, in the same exclusive transaction that creates a new store's tables: two processes opening it at
once never both migrate, and a failure leaves the database exactly as it was. The version lives in the
one-row ``store_meta`` table; a database with a ``frames`` table but no ``store_meta`` is version 1 (made
before versions were recorded).

Version 1 -> 2 keys frames and shadow verdicts by ``(line_id, camera_id, frame_id)`` instead of
``(camera_id, frame_id)`` and adds ``frames.content_sha256`` (NULL for the old rows: their bytes were
not hashed when they arrived, and only retained images could be hashed now, so none are, rather than
some). Every row keeps its id, so labels, image references and snapshot memberships survive as they are.
A shadow verdict takes the line of its frame; one whose frame never arrived gets the line ``""`` (unknown).

Version 2 -> 3 adds the ``parts`` table (the line's part verdicts) and changes nothing else, so it is the
same ``create_all`` that makes a new store's tables; a version 1 store goes through 2 on the way.

PostgreSQL changes the tables with ``ALTER TABLE``. SQLite cannot drop a constraint, so each table is
rebuilt the way SQLite documents (foreign keys off, create the new table, copy, drop the old one, rename
the new one into its place, then ``PRAGMA foreign_key_check``); the caller turns foreign keys off before
the transaction because SQLite ignores that pragma inside one.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateTable

from inspectline.errors import StoreError
from inspectline.store.schema import SCHEMA_VERSION, frames, metadata, shadow_verdicts, store_meta

log = logging.getLogger(__name__)

_V1_FRAMES_UNIQUE = "uq_frames_camera_frame"
_V1_SHADOW_UNIQUE = "uq_shadow_camera_frame_model"
# The line of a shadow verdict's frame: in version 1, (camera_id, frame_id) names at most one frame.
_LINE_OF_FRAME = (
    "COALESCE((SELECT f.line_id FROM frames f WHERE f.camera_id = s.camera_id AND f.frame_id = s.frame_id), '')"
)


def stored_version(conn: Connection) -> int | None:
    """The database's schema version: None for an empty database, 1 for one made before versions were kept."""
    tables = set(sa.inspect(conn).get_table_names())
    if "frames" not in tables:
        return None
    if "store_meta" not in tables:
        return 1
    version = conn.scalar(sa.select(store_meta.c.schema_version))
    return 1 if version is None else version


def bring_up_to_date(conn: Connection, dialect: str, url: str) -> None:
    """Create a new store's tables, or migrate an older one to :data:`SCHEMA_VERSION`; inside one transaction."""
    version = stored_version(conn)
    if version is not None and version > SCHEMA_VERSION:
        msg = (
            f"the frame store {url} has schema version {version}, newer than this inspectline knows "
            f"({SCHEMA_VERSION}); upgrade inspectline on this machine to the version that wrote it"
        )
        raise StoreError(msg)
    if version == 1:
        counts = _v1_to_v2(conn, dialect)
        log.warning(
            "migrated the frame store %s from schema version 1 to 2 (frames keyed by line, camera and frame; "
            "content hashes kept from now on): %d frames, %d labelled, %d with images, %d in snapshots, "
            "%d shadow verdicts (%d of them without a stored frame, line unknown)",
            url,
            *counts,
        )
    metadata.create_all(conn)
    _create_missing_indexes(conn)
    if version in (1, 2):
        log.warning("migrated the frame store %s from schema version 2 to 3 (a parts table for part verdicts)", url)
    if version != SCHEMA_VERSION:
        conn.execute(sa.delete(store_meta))
        conn.execute(sa.insert(store_meta).values(id=1, schema_version=SCHEMA_VERSION))


def _v1_to_v2(conn: Connection, dialect: str) -> tuple[int, ...]:
    counts = _counts(conn)
    if dialect == "postgresql":
        for statement in (
            "ALTER TABLE frames ADD COLUMN content_sha256 VARCHAR(64)",
            f"ALTER TABLE frames DROP CONSTRAINT {_V1_FRAMES_UNIQUE}",
            "ALTER TABLE frames ADD CONSTRAINT uq_frames_line_camera_frame UNIQUE (line_id, camera_id, frame_id)",
            "ALTER TABLE shadow_verdicts ADD COLUMN line_id VARCHAR",
            f"UPDATE shadow_verdicts s SET line_id = {_LINE_OF_FRAME}",
            "ALTER TABLE shadow_verdicts ALTER COLUMN line_id SET NOT NULL",
            f"ALTER TABLE shadow_verdicts DROP CONSTRAINT {_V1_SHADOW_UNIQUE}",
            "ALTER TABLE shadow_verdicts ADD CONSTRAINT uq_shadow_line_camera_frame_model "
            "UNIQUE (line_id, camera_id, frame_id, model_version)",
        ):
            conn.exec_driver_sql(statement)
    else:
        kept = ", ".join(c.name for c in frames.c if c.name != "content_sha256")
        _rebuild_sqlite_table(conn, frames, f"INSERT INTO {{new}} ({kept}) SELECT {kept} FROM frames")
        kept = ", ".join(c.name for c in shadow_verdicts.c if c.name != "line_id")
        _rebuild_sqlite_table(
            conn,
            shadow_verdicts,
            f"INSERT INTO {{new}} (line_id, {kept}) SELECT {_LINE_OF_FRAME}, {kept} FROM shadow_verdicts s",
        )
        problems = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if problems:
            msg = (
                f"migrating the frame store left rows whose references are broken: {problems[:5]}; nothing was changed"
            )
            raise StoreError(msg)
    after = _counts(conn)
    if after[:5] != counts[:5]:  # the same rows, labels, images and snapshot links, or nothing at all
        msg = f"migrating the frame store changed its row counts from {counts} to {after}; nothing was changed"
        raise StoreError(msg)
    return after


def _rebuild_sqlite_table(conn: Connection, table: sa.Table, copy_sql: str) -> None:
    """Replace ``table`` with one built from the current schema, its rows copied by ``copy_sql``."""
    staging = sa.MetaData()
    for other in metadata.sorted_tables:  # what the new table's foreign keys refer to
        if other is not table:
            other.to_metadata(staging)
    new = table.to_metadata(staging, name=f"{table.name}_v2")
    conn.execute(CreateTable(new))  # the table alone: its indexes keep their names and are made after the rename
    conn.exec_driver_sql(copy_sql.format(new=new.name))
    conn.exec_driver_sql(f"DROP TABLE {table.name}")  # drops the old indexes with it
    conn.exec_driver_sql(f"ALTER TABLE {new.name} RENAME TO {table.name}")


def _create_missing_indexes(conn: Connection) -> None:
    """Indexes the current schema declares that the database lacks (``create_all`` only adds whole tables)."""
    inspector = sa.inspect(conn)
    for table in metadata.sorted_tables:
        present = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in present:
                index.create(conn)
                log.info("frame store: created index %s on %s", index.name, table.name)


def _counts(conn: Connection) -> tuple[int, ...]:
    """(frames, labelled, with images, snapshot links, shadow verdicts, shadow verdicts without their frame)."""
    orphans = (
        "SELECT COUNT(*) FROM shadow_verdicts s WHERE NOT EXISTS "
        "(SELECT 1 FROM frames f WHERE f.camera_id = s.camera_id AND f.frame_id = s.frame_id)"
    )
    return tuple(
        conn.exec_driver_sql(sql).scalar_one()
        for sql in (
            "SELECT COUNT(*) FROM frames",
            "SELECT COUNT(*) FROM frames WHERE label IS NOT NULL",
            "SELECT COUNT(*) FROM frames WHERE image_sha256 IS NOT NULL",
            "SELECT COUNT(*) FROM snapshot_frames",
            "SELECT COUNT(*) FROM shadow_verdicts",
            orphans,
        )
    )
