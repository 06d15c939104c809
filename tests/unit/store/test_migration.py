"""A store created by the version-1 schema (frames keyed by camera and frame id, no content hash) opens
with the current code: every row, label, image, shadow verdict and snapshot link survives, and the new
key and column work. The version-1 tables are frozen here as they were shipped."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import sqlalchemy as sa

from inspectline.config import StoreConfig
from inspectline.store import FrameStore
from inspectline.store.schema import SCHEMA_VERSION, UtcDateTime
from tests.unit.store.factories import png, record

_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
V1 = sa.MetaData()
sa.Table(
    "images",
    V1,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("format", sa.String(8), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("stored_at", UtcDateTime, nullable=False),
)
V1_FRAMES = sa.Table(
    "frames",
    V1,
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
    sa.Column("image_sha256", sa.String(64), sa.ForeignKey("images.sha256", name="fk_frames_image")),
    sa.Column("image_format", sa.String(8)),
    sa.Column("label", sa.String(16)),
    sa.Column("labelled_by", sa.String),
    sa.Column("labelled_at", UtcDateTime),
    sa.UniqueConstraint("camera_id", "frame_id", name="uq_frames_camera_frame"),
    sa.Index("ix_frames_received_at", "received_at"),
    sa.Index("ix_frames_line_received", "line_id", "received_at"),
    sa.Index("ix_frames_camera_received", "camera_id", "received_at"),
    sa.Index("ix_frames_label_uncertainty", "label", "uncertainty"),
    sa.Index("ix_frames_image_sha256", "image_sha256"),
)
V1_SHADOWS = sa.Table(
    "shadow_verdicts",
    V1,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("camera_id", sa.String, nullable=False),
    sa.Column("frame_id", sa.String, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("defect_probability", sa.Float, nullable=False),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("camera_id", "frame_id", "model_version", name="uq_shadow_camera_frame_model"),
)
sa.Table(
    "snapshots",
    V1,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)
V1_LINKS = sa.Table(
    "snapshot_frames",
    V1,
    sa.Column("snapshot_id", _Id, sa.ForeignKey("snapshots.id", name="fk_snapshot_frames_snapshot"), primary_key=True),
    sa.Column("frame_id", _Id, sa.ForeignKey("frames.id", name="fk_snapshot_frames_frame"), primary_key=True),
    sa.Index("ix_snapshot_frames_frame_id", "frame_id"),
)
T0 = datetime(2026, 1, 5, 8, tzinfo=timezone.utc)


def _fill_v1(url: str, images_dir) -> None:
    """A version-1 store with three frames, one image, a label, a shadow verdict and a snapshot."""
    engine = sa.create_engine(url)
    row = {
        "line_id": "line-a",
        "part_id": None,
        "captured_at": None,
        "received_at": T0,
        "verdict": "DEFECTIVE",
        "defect_probability": 0.9,
        "confidence": 0.9,
        "threshold": 0.5,
        "uncertainty": 0.4,
        "model_version": "v0001",
        "views": {"identity": 0.9},
        "image_sha256": None,
        "image_format": None,
        "label": None,
        "labelled_by": None,
        "labelled_at": None,
    }
    with engine.begin() as conn:
        V1.create_all(conn)
        conn.execute(sa.insert(V1.tables["images"]).values(sha256="a" * 64, format="png", size_bytes=70, stored_at=T0))
        conn.execute(
            sa.insert(V1_FRAMES),
            [
                row
                | {
                    "camera_id": "cam1",
                    "frame_id": "f1",
                    "image_sha256": "a" * 64,
                    "image_format": "png",
                    "label": "defective",
                    "labelled_by": "ana",
                    "labelled_at": T0,
                },
                row | {"camera_id": "cam1", "frame_id": "f2"},
                row | {"camera_id": "cam2", "frame_id": "f1", "line_id": "line-b"},
            ],
        )
        conn.execute(
            sa.insert(V1_SHADOWS).values(
                camera_id="cam2",
                frame_id="f1",
                model_version="v0002",
                verdict="OK",
                defect_probability=0.2,
                received_at=T0,
            )
        )
        conn.execute(sa.insert(V1.tables["snapshots"]).values(id=1, name="retrain-1", created_at=T0))
        conn.execute(sa.insert(V1_LINKS).values(snapshot_id=1, frame_id=1))
    engine.dispose()
    images_dir.mkdir(parents=True, exist_ok=True)
    (images_dir / "aa").mkdir(exist_ok=True)


def test_a_version_1_store_is_migrated_in_place_keeping_everything(database_url, tmp_path):
    _fill_v1(database_url, tmp_path / "images")
    store = FrameStore(StoreConfig(database_url=database_url, storage_url=str(tmp_path / "images")))
    f1 = store.find("line-a", "cam1", "f1")
    assert (f1.label, f1.labelled_by, f1.image_sha256, f1.content_sha256) == ("defective", "ana", "a" * 64, None)
    assert store.find("line-a", "cam1", "f2") is not None and store.find("line-b", "cam2", "f1") is not None
    assert store.count() == 3
    [shadow] = store.shadow_verdicts(store.find("line-b", "cam2", "f1").id)
    assert (shadow.line_id, shadow.model_version) == ("line-b", "v0002")
    # the new key: the same camera and frame id on another line is another frame
    assert store.add_frames([record("f1", camera_id="cam1", line_id="line-c", shade=3)]) == 1
    assert store.add_frames([record("f1", camera_id="cam1", line_id="line-a", shade=3)]) == 0  # still unique
    assert store.find("line-c", "cam1", "f1").content_sha256 is not None
    # snapshot links still protect the frame from clean-up, and the version is recorded once
    with store._db.read() as conn:
        assert conn.scalar(sa.text("SELECT frame_id FROM snapshot_frames")) == f1.id
        assert conn.scalar(sa.text("SELECT schema_version FROM store_meta")) == SCHEMA_VERSION
    store.close()
    again = FrameStore(StoreConfig(database_url=database_url, storage_url=str(tmp_path / "images")))
    assert again.count() == 4
    again.close()


def test_a_new_store_starts_at_the_current_version(database_url, tmp_path):
    store = FrameStore(StoreConfig(database_url=database_url, storage_url=str(tmp_path / "images")))
    with store._db.read() as conn:
        assert conn.scalar(sa.text("SELECT schema_version FROM store_meta")) == SCHEMA_VERSION
    assert store.add_frames([record("f1", shade=1)]) == 1
    assert store.find("line-a", "cam1", "f1").content_sha256 == hashlib.sha256(png(1)).hexdigest()
    store.close()
