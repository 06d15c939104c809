"""The frame store's tables, one SQLAlchemy Core schema for SQLite and PostgreSQL alike.

    store_meta        one row: the schema version (older stores are migrated on open, see ``migrations``)
    frames            one row per judged (line_id, camera_id, frame_id); never deleted, only its image reference
    images            one row per stored image file (content sha256), written before any frame points to it
    shadow_verdicts   a shadow model's verdict per (line_id, camera_id, frame_id, model_version)
    snapshots         named training snapshots ...
    snapshot_frames   ... and the frames each one holds, which clean-up must not touch
    parts             one row per decided (line_id, station, part_id): the part verdict and every view it came from

``frames.image_sha256`` is a foreign key into ``images``, so the database itself refuses a frame row
pointing at an image the store has not recorded as completely written, and refuses to forget an image a
frame still uses. ``frames.content_sha256`` is the hash of the image as the camera sent it, kept for
every frame (also when retention drops the image), so a reused frame id can be told from a retry of the
same frame; where the image is kept, ``image_sha256`` is the same hash. ``frames.uncertainty``
(``|defect_probability - threshold|``) is stored rather than computed so the review queue ("unlabelled,
most uncertain first") is an index scan on both databases. ``parts.views`` keeps each view's camera,
frame id (the camera's), verdict, defect probability, model version and arrival time as JSON, so a part
verdict can be explained after its frames' images are gone.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from inspectline.store.records import LABELS, PART_VERDICTS, VERDICTS, to_utc


class UtcDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both databases.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC text,
    which also keeps its string comparisons in time order.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = to_utc(value)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:  # noqa: ARG002 - SQLAlchemy's signature
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# 1: frames keyed by (camera_id, frame_id), no content hash (stores made before versions were recorded).
# 2: frames and shadow verdicts keyed by line too; frames.content_sha256; indexes for the review page.
# 3: parts, the line's part verdicts.
SCHEMA_VERSION = 3

metadata = sa.MetaData()

store_meta = sa.Table(
    "store_meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),  # always 1: one row
    sa.Column("schema_version", sa.Integer, nullable=False),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("format", sa.String(8), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("stored_at", UtcDateTime, nullable=False),
)

frames = sa.Table(
    "frames",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("camera_id", sa.String, nullable=False),
    sa.Column("frame_id", sa.String, nullable=False),
    sa.Column("line_id", sa.String, nullable=False),
    sa.Column("part_id", sa.String),
    sa.Column("captured_at", UtcDateTime),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("defect_probability", sa.Float, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("uncertainty", sa.Float, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("views", sa.JSON, nullable=False),
    sa.Column("content_sha256", sa.String(64)),  # NULL only in rows migrated from schema version 1
    sa.Column("image_sha256", sa.String(64), sa.ForeignKey("images.sha256", name="fk_frames_image")),
    sa.Column("image_format", sa.String(8)),
    sa.Column("label", sa.String(16)),
    sa.Column("labelled_by", sa.String),
    sa.Column("labelled_at", UtcDateTime),
    sa.UniqueConstraint("line_id", "camera_id", "frame_id", name="uq_frames_line_camera_frame"),
    sa.CheckConstraint(_in("verdict", VERDICTS), name="ck_frames_verdict"),
    sa.CheckConstraint(f"label IS NULL OR {_in('label', LABELS)}", name="ck_frames_label"),
    # The review page's questions (queries.py): equality filters lead, the order follows.
    sa.Index("ix_frames_received_at", "received_at"),
    sa.Index("ix_frames_line_received", "line_id", "received_at"),
    sa.Index("ix_frames_camera_received", "camera_id", "received_at"),
    sa.Index("ix_frames_verdict_received", "verdict", "received_at"),
    sa.Index("ix_frames_line_verdict_received", "line_id", "verdict", "received_at"),
    sa.Index("ix_frames_uncertainty", "uncertainty"),
    sa.Index("ix_frames_label_uncertainty", "label", "uncertainty"),
    sa.Index("ix_frames_line_label_uncertainty", "line_id", "label", "uncertainty"),
    sa.Index("ix_frames_image_sha256", "image_sha256"),
)

shadow_verdicts = sa.Table(
    "shadow_verdicts",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("line_id", sa.String, nullable=False),
    sa.Column("camera_id", sa.String, nullable=False),
    sa.Column("frame_id", sa.String, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("defect_probability", sa.Float, nullable=False),
    sa.Column("received_at", UtcDateTime, nullable=False),
    # Keyed by the camera's ids, not frames.id: the shadow verdict may be written before its frame row.
    sa.UniqueConstraint("line_id", "camera_id", "frame_id", "model_version", name="uq_shadow_line_camera_frame_model"),
    sa.CheckConstraint(_in("verdict", VERDICTS), name="ck_shadow_verdict"),
)

snapshots = sa.Table(
    "snapshots",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

snapshot_frames = sa.Table(
    "snapshot_frames",
    metadata,
    sa.Column("snapshot_id", _Id, sa.ForeignKey("snapshots.id", name="fk_snapshot_frames_snapshot"), primary_key=True),
    sa.Column("frame_id", _Id, sa.ForeignKey("frames.id", name="fk_snapshot_frames_frame"), primary_key=True),
    sa.Index("ix_snapshot_frames_frame_id", "frame_id"),
)

parts = sa.Table(
    "parts",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("line_id", sa.String, nullable=False),
    sa.Column("station", sa.String, nullable=False),
    sa.Column("part_id", sa.String, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("disposition", sa.String(8), nullable=False),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("views", sa.JSON, nullable=False),
    sa.Column("missing", sa.JSON, nullable=False),
    sa.Column("deadline_missed", sa.Boolean, nullable=False),
    sa.Column("first_view_at", UtcDateTime, nullable=False),
    sa.Column("decided_at", UtcDateTime, nullable=False),
    sa.Column("decision_seconds", sa.Float, nullable=False),
    # A part is decided once per station; a second decision (a replayed spool) is the same one.
    sa.UniqueConstraint("line_id", "station", "part_id", name="uq_parts_line_station_part"),
    sa.CheckConstraint(_in("verdict", PART_VERDICTS), name="ck_parts_verdict"),
    sa.CheckConstraint(_in("disposition", ("reject", "pass")), name="ck_parts_disposition"),
    sa.Index("ix_parts_part_id", "part_id"),
    sa.Index("ix_parts_decided_at", "decided_at"),
    sa.Index("ix_parts_line_decided", "line_id", "decided_at"),
    sa.Index("ix_parts_verdict_decided", "verdict", "decided_at"),
)
