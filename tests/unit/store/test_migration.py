"""Opening a store made by an earlier version migrates it in place, keeping every row, label, image and link.

``V1`` below is the schema as inspectline wrote it before schema versions were recorded, and ``V2`` the
one it wrote from then until part verdicts were stored; both are frozen here on purpose: they must never
follow ``inspectline/store/schema.py``, or these tests would stop testing the migration of real plant
databases.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from inspectline.config import StoreConfig
from inspectline.errors import StoreError
from inspectline.store import FrameStore, ShadowVerdict, migrations
from inspectline.store.images import ImageStore
from inspectline.store.schema import SCHEMA_VERSION, UtcDateTime, metadata, store_meta
from tests.unit.store.factories import T0, part_record, png, record

# --- the frozen version 1 schema -----------------------------------------------------------------
V1 = sa.MetaData()
_V1_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_VERDICTS = "verdict IN ('OK', 'DEFECTIVE', 'UNSURE')"

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
    sa.Column("id", _V1_ID, primary_key=True, autoincrement=True),
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
    sa.CheckConstraint(_VERDICTS, name="ck_frames_verdict"),
    sa.CheckConstraint("label IS NULL OR label IN ('ok', 'defective')", name="ck_frames_label"),
    sa.Index("ix_frames_received_at", "received_at"),
    sa.Index("ix_frames_line_received", "line_id", "received_at"),
    sa.Index("ix_frames_camera_received", "camera_id", "received_at"),
    sa.Index("ix_frames_label_uncertainty", "label", "uncertainty"),
    sa.Index("ix_frames_image_sha256", "image_sha256"),
)
sa.Table(
    "shadow_verdicts",
    V1,
    sa.Column("id", _V1_ID, primary_key=True, autoincrement=True),
    sa.Column("camera_id", sa.String, nullable=False),
    sa.Column("frame_id", sa.String, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("defect_probability", sa.Float, nullable=False),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("camera_id", "frame_id", "model_version", name="uq_shadow_camera_frame_model"),
    sa.CheckConstraint(_VERDICTS, name="ck_shadow_verdict"),
)
sa.Table(
    "snapshots",
    V1,
    sa.Column("id", _V1_ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)
sa.Table(
    "snapshot_frames",
    V1,
    sa.Column(
        "snapshot_id", _V1_ID, sa.ForeignKey("snapshots.id", name="fk_snapshot_frames_snapshot"), primary_key=True
    ),
    sa.Column("frame_id", _V1_ID, sa.ForeignKey("frames.id", name="fk_snapshot_frames_frame"), primary_key=True),
    sa.Index("ix_snapshot_frames_frame_id", "frame_id"),
)


# --- the frozen version 2 schema (version 1 keyed by line, content hashes, review indexes) ---------
V2 = sa.MetaData()
sa.Table(
    "store_meta",
    V2,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("schema_version", sa.Integer, nullable=False),
)
sa.Table(
    "images",
    V2,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("format", sa.String(8), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("stored_at", UtcDateTime, nullable=False),
)
sa.Table(
    "frames",
    V2,
    sa.Column("id", _V1_ID, primary_key=True, autoincrement=True),
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
    sa.Column("content_sha256", sa.String(64)),
    sa.Column("image_sha256", sa.String(64), sa.ForeignKey("images.sha256", name="fk_frames_image")),
    sa.Column("image_format", sa.String(8)),
    sa.Column("label", sa.String(16)),
    sa.Column("labelled_by", sa.String),
    sa.Column("labelled_at", UtcDateTime),
    sa.UniqueConstraint("line_id", "camera_id", "frame_id", name="uq_frames_line_camera_frame"),
    sa.CheckConstraint(_VERDICTS, name="ck_frames_verdict"),
    sa.CheckConstraint("label IS NULL OR label IN ('ok', 'defective')", name="ck_frames_label"),
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
sa.Table(
    "shadow_verdicts",
    V2,
    sa.Column("id", _V1_ID, primary_key=True, autoincrement=True),
    sa.Column("line_id", sa.String, nullable=False),
    sa.Column("camera_id", sa.String, nullable=False),
    sa.Column("frame_id", sa.String, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("defect_probability", sa.Float, nullable=False),
    sa.Column("received_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("line_id", "camera_id", "frame_id", "model_version", name="uq_shadow_line_camera_frame_model"),
    sa.CheckConstraint(_VERDICTS, name="ck_shadow_verdict"),
)
sa.Table(
    "snapshots",
    V2,
    sa.Column("id", _V1_ID, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
)
sa.Table(
    "snapshot_frames",
    V2,
    sa.Column(
        "snapshot_id", _V1_ID, sa.ForeignKey("snapshots.id", name="fk_snapshot_frames_snapshot"), primary_key=True
    ),
    sa.Column("frame_id", _V1_ID, sa.ForeignKey("frames.id", name="fk_snapshot_frames_frame"), primary_key=True),
    sa.Index("ix_snapshot_frames_frame_id", "frame_id"),
)


# --- a version 1 store with something of everything ---------------------------------------------
def _frame_row(frame_id: str, *, camera: str = "cam1", line: str = "line-a", p: float = 0.8, image: str | None = None):
    return {
        "camera_id": camera,
        "frame_id": frame_id,
        "line_id": line,
        "part_id": f"part-{frame_id}",
        "captured_at": None,
        "received_at": T0,
        "verdict": "DEFECTIVE" if p >= 0.5 else "OK",
        "defect_probability": p,
        "confidence": max(p, 1 - p),
        "threshold": 0.5,
        "uncertainty": abs(p - 0.5),
        "model_version": "v0001",
        "views": {"identity": p},
        "image_sha256": image,
        "image_format": "png" if image else None,
    }


@pytest.fixture
def v1_store(database_url, tmp_path):
    """``(database_url, storage_url)`` of a version 1 store: 4 frames, 2 labelled, 2 images, a snapshot, shadows."""
    storage = str(tmp_path / "images")
    sha = {shade: hashlib.sha256(png(shade)).hexdigest() for shade in (1, 2)}
    for shade, digest in sha.items():
        ImageStore(storage).write(digest, "png", png(shade))
    engine = sa.create_engine(database_url)
    t = V1.tables
    with engine.begin() as conn:
        V1.create_all(conn)
        conn.execute(
            sa.insert(t["images"]),
            [{"sha256": d, "format": "png", "size_bytes": len(png(s)), "stored_at": T0} for s, d in sha.items()],
        )
        conn.execute(
            sa.insert(t["frames"]),
            [
                _frame_row("f1", image=sha[1]),
                _frame_row("f2", image=sha[2], camera="cam2"),
                _frame_row("f3", p=0.1),
                _frame_row("f4", line="line-b", p=0.3),
            ],
        )
        ids = {r.frame_id: r.id for r in conn.execute(sa.select(t["frames"].c.frame_id, t["frames"].c.id))}
        conn.execute(
            sa.update(t["frames"]).where(t["frames"].c.frame_id.in_(["f1", "f3"])),
            {"label": "defective", "labelled_by": "ana", "labelled_at": T0 + timedelta(hours=1)},
        )
        snapshot = conn.execute(
            sa.insert(t["snapshots"]).values(name="retrain-v0002", created_at=T0).returning(t["snapshots"].c.id)
        ).scalar_one()
        conn.execute(sa.insert(t["snapshot_frames"]), [{"snapshot_id": snapshot, "frame_id": ids["f2"]}])
        shadow = {"model_version": "v0002", "verdict": "OK", "defect_probability": 0.2, "received_at": T0}
        conn.execute(
            sa.insert(t["shadow_verdicts"]),
            [
                {"camera_id": "cam1", "frame_id": "f1", **shadow},
                {"camera_id": "cam1", "frame_id": "f4-never-stored", **shadow},
            ],
        )
    engine.dispose()
    return database_url, storage, ids


def _open(database_url: str, storage: str, **settings) -> FrameStore:
    return FrameStore(StoreConfig(database_url=database_url, storage_url=storage, keep_ok_images=1.0, **settings))


def test_a_version_1_store_is_migrated_keeping_every_row_label_image_and_link(v1_store, caplog):
    database_url, storage, ids = v1_store
    with caplog.at_level(logging.INFO, logger="inspectline.store"), _open(database_url, storage) as store:
        assert "from schema version 1 to 2" in caplog.text and "from schema version 2 to 3" in caplog.text
        assert "4 frames, 2 labelled, 2 with images, 1 in snapshots, 2 shadow verdicts (1 of them" in caplog.text
        frames = {f.frame_id: f for f in store.query(order="oldest", limit=10)}
        assert {name: f.id for name, f in frames.items()} == ids  # ids kept: labels and snapshots still point right
        assert [(f.line_id, f.camera_id) for f in frames.values()] == [
            ("line-a", "cam1"),
            ("line-a", "cam2"),
            ("line-a", "cam1"),
            ("line-b", "cam1"),
        ]
        assert {n: (f.label, f.labelled_by) for n, f in frames.items() if f.label} == {
            "f1": ("defective", "ana"),
            "f3": ("defective", "ana"),
        }
        assert frames["f1"].labelled_at == T0 + timedelta(hours=1)
        assert store.image(ids["f1"]) == (png(1), "png") and store.image(ids["f2"]) == (png(2), "png")
        assert all(f.content_sha256 is None for f in frames.values())  # never hashed when they arrived

        # The snapshot link survived: clean-up keeps f2's image although it is old and unlabelled.
        with _open(database_url, storage, max_age_days=1) as cleaner:
            report = cleaner.cleanup(now=T0 + timedelta(days=30))
        assert (report.images_deleted, report.kept_labelled, report.kept_in_snapshot) == (0, 1, 1)
        assert store.image(ids["f2"])[0] == png(2)

        # Shadow verdicts took their frame's line; the one whose frame never arrived has an unknown line.
        assert [(s.line_id, s.model_version) for s in store.shadow_verdicts(ids["f1"])] == [("line-a", "v0002")]
        with store._db.read() as conn:
            lines = dict(conn.execute(sa.text("SELECT frame_id, line_id FROM shadow_verdicts")).all())
        assert lines == {"f1": "line-a", "f4-never-stored": ""}

        # The new key works: the same camera and frame id on another line is another frame, with its hash.
        assert store.add_frames([record("f1", line_id="line-b", shade=5)]) == 1
        assert store.find("line-b", "cam1", "f1").content_sha256 == hashlib.sha256(png(5)).hexdigest()
        assert store.find("line-a", "cam1", "f1").id == ids["f1"]
        assert store.add_frames([record("f1", line_id="line-a", shade=5)]) == 0  # the old row still holds its key
        shadow = ShadowVerdict("line-b", "cam1", "f1", "v0002", "DEFECTIVE", 0.9, T0)
        assert store.add_shadow_verdicts([shadow]) == 1

        with store._db.read() as conn:
            assert conn.scalar(sa.select(store_meta.c.schema_version)) == SCHEMA_VERSION
            inspector = sa.inspect(conn)
            for table in metadata.sorted_tables:  # every index of the current schema, on both databases
                assert {i.name for i in table.indexes} <= {i["name"] for i in inspector.get_indexes(table.name)}


def test_reopening_a_migrated_store_does_not_migrate_it_again(v1_store, caplog):
    database_url, storage, _ = v1_store
    _open(database_url, storage).close()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="inspectline.store"), _open(database_url, storage) as store:
        assert store.count() == 4
    assert "migrated" not in caplog.text


def test_two_processes_opening_a_version_1_store_at_once_migrate_it_once(v1_store, caplog):
    database_url, storage, _ = v1_store
    opened, errors = [], []

    def open_store():
        try:
            opened.append(_open(database_url, storage))
        except Exception as exc:  # noqa: BLE001 - surfaced below; a thread's exception would otherwise be lost
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="inspectline.store"):
        threads = [threading.Thread(target=open_store) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert caplog.text.count("from schema version 1 to 2") == 1
    assert [s.count() for s in opened] == [4, 4, 4]
    for store in opened:
        store.close()


def test_a_failed_migration_leaves_the_version_1_store_as_it_was(v1_store, monkeypatch):
    database_url, storage, _ = v1_store
    counts = iter([(4, 2, 2, 1, 2, 1), (3, 2, 2, 1, 2, 1)])  # as if a frame had been lost on the way
    monkeypatch.setattr(migrations, "_counts", lambda _conn: next(counts))
    with pytest.raises(StoreError, match=r"changed its row counts.*nothing was changed"):
        _open(database_url, storage)
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        assert migrations.stored_version(conn) == 1
        assert "store_meta" not in sa.inspect(conn).get_table_names()
        assert conn.scalar(sa.select(sa.func.count()).select_from(V1_FRAMES)) == 4
    engine.dispose()
    monkeypatch.undo()
    with _open(database_url, storage) as store:  # and the next open migrates it for real
        assert store.count() == 4


def test_a_store_from_a_newer_version_is_refused_not_downgraded(make_store):
    store = make_store()
    with store._db.write() as conn:
        conn.execute(sa.update(store_meta).values(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1}, newer than .* \({SCHEMA_VERSION}\)"):
        make_store()


def test_a_new_store_records_the_current_schema_version(store):
    with store._db.read() as conn:
        assert conn.execute(sa.select(store_meta)).all() == [(1, SCHEMA_VERSION)]


def test_a_version_2_store_gains_the_parts_table_keeping_its_frames(database_url, tmp_path, caplog):
    storage = str(tmp_path / "images")
    engine = sa.create_engine(database_url)
    t = V2.tables
    with engine.begin() as conn:
        V2.create_all(conn)
        conn.execute(sa.insert(t["store_meta"]).values(id=1, schema_version=2))
        row = _frame_row("f1") | {"content_sha256": hashlib.sha256(b"sent f1").hexdigest()}
        conn.execute(sa.insert(t["frames"]), [row])
    engine.dispose()
    with caplog.at_level(logging.INFO, logger="inspectline.store"), _open(database_url, storage) as store:
        assert "from schema version 2 to 3" in caplog.text and "from schema version 1 to 2" not in caplog.text
        [frame] = store.query(limit=10)
        assert (frame.frame_id, frame.content_sha256) == ("f1", row["content_sha256"])
        assert store.add_parts([part_record("part-f1")]) == 1
        assert [p.part_id for p in store.find_part("part-f1")] == ["part-f1"]
        with store._db.read() as conn:
            assert conn.scalar(sa.select(store_meta.c.schema_version)) == SCHEMA_VERSION == 3
            names = {i["name"] for i in sa.inspect(conn).get_indexes("parts")}
        assert {i.name for i in metadata.tables["parts"].indexes} <= names
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="inspectline.store"), _open(database_url, storage) as store:
        assert store.count() == 1 and "migrated" not in caplog.text
