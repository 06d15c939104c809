"""The frame store: every judged frame recorded, its image kept by the retention policy, labels added by review.

    store = FrameStore(cfg.store)                  # creates (or migrates) the tables
    store.add_frames(records)                      # from the service's background recorder
    queue = store.query(labelled=False, limit=50)  # the review queue, most uncertain first
    store.set_label(queue[0].id, "defective", reviewer="ana@plant")
    store.cleanup()                                # images past max_age_days, unless labelled/snapshotted

Writing a batch is one database transaction. Its order is what makes the store safe to read at any
moment: first the image files are written, atomically and once per content hash; then their ``images``
rows; then the frame rows that point at them. A crash between the steps leaves at most an unreferenced
complete file, which the next write of the same bytes adopts.

A frame is named by its :class:`FrameKey` ``(line_id, camera_id, frame_id)``; a key already stored is
left exactly as first written, so a camera that retries a frame is counted once. Every row keeps the
SHA-256 of the image bytes as sent (``content_sha256``), also when retention drops the image, so the
service can ask :meth:`FrameStore.find` whether a repeated key is a retry (same hash) or a reused id.

Ids, limits and offsets beyond 64 bits are "not found" or a StoreError naming the bound (``queries``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from inspectline.config import StoreConfig
from inspectline.errors import FrameNotFoundError, StoreError
from inspectline.store import parts, queries, retention
from inspectline.store.database import Database
from inspectline.store.images import ImageStore
from inspectline.store.queries import FRAME_COLUMNS
from inspectline.store.records import (
    CleanupReport,
    FrameKey,
    FrameRecord,
    LabelUpdate,
    PartRecord,
    ShadowVerdict,
    StoredFrame,
    StoredPart,
    check_record,
    check_shadow_verdict,
    image_format_of,
    normalize_label,
    normalize_reviewer,
    normalize_verdict,
)
from inspectline.store.schema import frames, images, shadow_verdicts, snapshot_frames, snapshots

# Keeps IN (...) lists well under SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500
_FIND_ONE = sa.select(*FRAME_COLUMNS).where(
    frames.c.line_id == sa.bindparam("line_id"),
    frames.c.camera_id == sa.bindparam("camera_id"),
    frames.c.frame_id == sa.bindparam("frame_id"),
)


class FrameStore:
    """Judged frames, their images and their review labels; see the module docstring."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._images = ImageStore(config.storage_url)  # first: it holds no resources if the database then fails
        self._db = Database(config.database_url)

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    # --- writing ---------------------------------------------------------------------------------
    def add_frames(self, records: Sequence[FrameRecord]) -> int:
        """Record judged frames in one transaction; returns how many were new (repeats are ignored)."""
        for record in records:
            check_record(record)
        batch: dict[FrameKey, FrameRecord] = {}
        for r in records:  # within a batch too, the first of a key wins
            batch.setdefault(r.key, r)
        kept = {key: self._kept_image(r) for key, r in batch.items()}  # checked before anything is written
        if not batch:
            return 0
        with self._db.write(image_lock="shared") as conn:
            known = self._existing_keys(conn, list(batch))
            rows, files = [], {}
            for key, r in batch.items():
                if key in known:
                    continue
                sha, fmt = kept[key] or (None, None)
                if sha is not None:
                    files.setdefault(sha, (fmt, r.image))
                rows.append(_frame_row(r, sha, fmt))
            self._store_images(conn, files)
            if not rows:
                return 0
            stmt = self._db.insert(frames).on_conflict_do_nothing(index_elements=list(FrameKey._fields))
            return len(conn.execute(stmt.returning(frames.c.id), rows).all())

    def _kept_image(self, r: FrameRecord) -> tuple[str, str] | None:
        """(sha256, format) of the image retention keeps for this frame, or None; refuses a wrong content hash."""
        if r.image is None or not retention.keeps_image(*r.key, r.verdict, self.config.keep_ok_images):
            return None
        sha = hashlib.sha256(r.image).hexdigest()
        if sha != r.content_sha256:
            msg = (
                f"frame {r.key}: content_sha256 {r.content_sha256} is not the hash of its image ({sha}); "
                "pass the hash of the bytes the camera sent, or leave it out to have it computed"
            )
            raise StoreError(msg)
        return sha, image_format_of(r)

    def _store_images(self, conn: sa.Connection, files: dict[str, tuple[str, bytes]]) -> None:
        """Write the files not yet recorded, then record them: files strictly before rows."""
        if not files:
            return
        recorded = set(conn.scalars(sa.select(images.c.sha256).where(images.c.sha256.in_(list(files)))))
        missing = {sha: v for sha, v in files.items() if sha not in recorded}
        for sha, (fmt, data) in missing.items():
            self._images.write(sha, fmt, data)
        if missing:
            now = datetime.now(timezone.utc)
            rows = [
                {"sha256": sha, "format": fmt, "size_bytes": len(data), "stored_at": now}
                for sha, (fmt, data) in missing.items()
            ]
            conn.execute(self._db.insert(images).on_conflict_do_nothing(index_elements=["sha256"]), rows)

    @staticmethod
    def _existing_keys(conn: sa.Connection, keys: list[FrameKey]) -> set[FrameKey]:
        columns = (frames.c.line_id, frames.c.camera_id, frames.c.frame_id)
        found: set[FrameKey] = set()
        for i in range(0, len(keys), _CHUNK):
            stmt = sa.select(*columns).where(sa.tuple_(*columns).in_(keys[i : i + _CHUNK]))
            found.update(FrameKey(*row) for row in conn.execute(stmt))
        return found

    def add_shadow_verdicts(self, rows: Sequence[ShadowVerdict]) -> int:
        """Record shadow-model verdicts; one per (line_id, camera_id, frame_id, model_version), repeats ignored."""
        for r in rows:
            check_shadow_verdict(r)
        values = [
            {
                "line_id": r.line_id,
                "camera_id": r.camera_id,
                "frame_id": r.frame_id,
                "model_version": r.model_version,
                "verdict": normalize_verdict(r.verdict),
                "defect_probability": float(r.defect_probability),
                "received_at": r.received_at,
            }
            for r in rows
        ]
        if not values:
            return 0
        stmt = self._db.insert(shadow_verdicts).on_conflict_do_nothing(
            index_elements=[*FrameKey._fields, "model_version"]
        )
        with self._db.write() as conn:
            return len(conn.execute(stmt.returning(shadow_verdicts.c.id), values).all())

    def shadow_verdicts(self, frame_id: int) -> list[ShadowVerdict]:
        """Shadow verdicts on stored frame ``frame_id`` (its store id), oldest first."""
        frame = self.get(frame_id)
        sv = shadow_verdicts.c
        with self._db.read() as conn:
            result = conn.execute(
                sa.select(
                    sv.line_id,
                    sv.camera_id,
                    sv.frame_id,
                    sv.model_version,
                    sv.verdict,
                    sv.defect_probability,
                    sv.received_at,
                )
                .where(sv.line_id == frame.line_id, sv.camera_id == frame.camera_id, sv.frame_id == frame.frame_id)
                .order_by(sv.received_at, sv.model_version)
            )
            return [ShadowVerdict(**row._mapping) for row in result]

    def add_parts(self, records: Sequence[PartRecord]) -> int:
        """Record decided part verdicts; one per (line_id, station, part_id), repeats ignored (``store.parts``)."""
        return parts.add_parts(self._db, records)

    def find_part(self, part_id: str, *, line: str | None = None) -> list[StoredPart]:
        """Every station's verdict on ``part_id`` (on ``line`` when given), first decided first; [] when none."""
        with self._db.read() as conn:
            return parts.find_parts(conn, part_id, line)

    def query_parts(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        line: str | None = None,
        station: str | None = None,
        verdict: str | None = None,
        order: str = "newest",
        limit: int = 100,
        offset: int = 0,
    ) -> list[StoredPart]:
        """Part verdicts decided in ``[since, until)`` matching every filter given, ``newest`` or ``oldest`` first."""
        stmt = parts.select_parts(
            since=since,
            until=until,
            line=line,
            station=station,
            verdict=verdict,
            order=order,
            limit=limit,
            offset=offset,
        )
        with self._db.read() as conn:
            return [parts.to_part(row) for row in conn.execute(stmt)]

    def count_parts(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        line: str | None = None,
        station: str | None = None,
        verdict: str | None = None,
    ) -> int:
        """How many part verdicts :meth:`query_parts` would find with these filters, ignoring pages."""
        stmt = parts.count_parts(since=since, until=until, line=line, station=station, verdict=verdict)
        with self._db.read() as conn:
            return conn.scalar(stmt)

    # --- reading ---------------------------------------------------------------------------------
    def get(self, id: int) -> StoredFrame:
        """The stored frame with this id; FrameNotFoundError if there is none."""
        found = self.get_many([id])
        if id not in found:
            raise FrameNotFoundError(
                f"no stored frame has id {id!r}; ids come from GET /v1/frames or `inspect review export`"
            )
        return found[id]

    def get_many(self, ids: Iterable[int]) -> dict[int, StoredFrame]:
        """Stored frames by id; unknown ids (also any outside the 64-bit range) are simply absent from the result."""
        wanted = [i for i in dict.fromkeys(ids) if queries.is_int64(i)]
        out: dict[int, StoredFrame] = {}
        with self._db.read() as conn:
            for i in range(0, len(wanted), _CHUNK):
                for row in conn.execute(sa.select(*FRAME_COLUMNS).where(frames.c.id.in_(wanted[i : i + _CHUNK]))):
                    out[row.id] = _to_frame(row)
        return out

    def find(self, line_id: str, camera_id: str, frame_id: str) -> StoredFrame | None:
        """The frame a line's camera sent under ``frame_id``, or None; its ``content_sha256`` tells a retry.

        The gateway asks this for every new frame id, so it is one statement built once, with bound values:
        the tuple ``IN`` of :meth:`find_many` is rendered anew on every call and, as the gateway calls it, costs
        about twice the CPU for one key (``python -m benchmarks.repeated_id_lookup``).
        """
        with self._db.read() as conn:
            row = conn.execute(_FIND_ONE, {"line_id": line_id, "camera_id": camera_id, "frame_id": frame_id}).first()
        return _to_frame(row) if row is not None else None

    def find_many(self, keys: Iterable[tuple[str, str, str]]) -> dict[FrameKey, StoredFrame]:
        """Stored frames by ``(line_id, camera_id, frame_id)``; unknown keys are absent from the result."""
        wanted = [FrameKey(*k) for k in dict.fromkeys(keys)]
        key = sa.tuple_(frames.c.line_id, frames.c.camera_id, frames.c.frame_id)
        out: dict[FrameKey, StoredFrame] = {}
        with self._db.read() as conn:
            for i in range(0, len(wanted), _CHUNK):
                for row in conn.execute(sa.select(*FRAME_COLUMNS).where(key.in_(wanted[i : i + _CHUNK]))):
                    frame = _to_frame(row)
                    out[frame.key] = frame
        return out

    def find_by_camera(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[StoredFrame]]:
        """Frames by ``(camera_id, frame_id)`` on any line, for review files that name no line.

        A pair maps to every line's frame under it (ordered by line); unknown pairs are absent.
        """
        wanted = list(dict.fromkeys(tuple(p) for p in pairs))
        key = sa.tuple_(frames.c.camera_id, frames.c.frame_id)
        out: dict[tuple[str, str], list[StoredFrame]] = {}
        with self._db.read() as conn:
            for i in range(0, len(wanted), _CHUNK):
                stmt = sa.select(*FRAME_COLUMNS).where(key.in_(wanted[i : i + _CHUNK])).order_by(frames.c.line_id)
                for row in conn.execute(stmt):
                    out.setdefault((row.camera_id, row.frame_id), []).append(_to_frame(row))
        return out

    def query(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        line: str | None = None,
        camera: str | None = None,
        verdict: str | None = None,
        labelled: bool | None = None,
        model_version: str | None = None,
        has_image: bool | None = None,
        order: str = "uncertainty",
        limit: int = 100,
        offset: int = 0,
    ) -> list[StoredFrame]:
        """Frames received in ``[since, until)`` matching every filter given, in ``order``.

        ``order`` is ``uncertainty`` (most uncertain first: the review queue), ``newest`` or ``oldest``.
        ``has_image`` keeps only frames whose image is (True) or is not (False) stored.
        """
        stmt = queries.select_frames(
            **_filters(since, until, line, camera, verdict, labelled, model_version, has_image),
            order=order,
            limit=limit,
            offset=offset,
        )
        with self._db.read() as conn:
            return [_to_frame(row) for row in conn.execute(stmt)]

    def iter_query(
        self, *, order: str = "uncertainty", limit: int | None = None, batch_size: int = 500, **filters: Any
    ) -> Iterator[StoredFrame]:
        """Like :meth:`query` without a page size (``limit`` None = all), streamed from one consistent read."""
        queries.check_filters(filters)
        stmt = queries.select_frames(order=order, limit=limit, **filters)
        with self._db.read() as conn:
            for row in conn.execution_options(yield_per=batch_size).execute(stmt):
                yield _to_frame(row)

    def count(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        line: str | None = None,
        camera: str | None = None,
        verdict: str | None = None,
        labelled: bool | None = None,
        model_version: str | None = None,
        has_image: bool | None = None,
    ) -> int:
        """How many frames :meth:`query` would find with these filters, ignoring pages."""
        stmt = queries.count_frames(**_filters(since, until, line, camera, verdict, labelled, model_version, has_image))
        with self._db.read() as conn:
            return conn.scalar(stmt)

    def recent(self, limit: int) -> list[StoredFrame]:
        """The ``limit`` most recently received frames, newest first."""
        return self.query(order="newest", limit=limit)

    def labelled(self, *, since: datetime | None = None, until: datetime | None = None) -> list[StoredFrame]:
        """Every labelled frame received in ``[since, until)``, oldest first."""
        return list(self.iter_query(since=since, until=until, labelled=True, order="oldest"))

    def labelled_scores(self, **filters: Any) -> tuple[list[int], list[float], list[str]]:
        """The threshold what-if's columns for the labelled frames matching ``filters`` (as :meth:`query`'s):
        labels (1 defective, 0 ok) and calibrated defect probabilities, and the model versions among them.

        Two columns instead of whole rows: 100,000 labelled frames are read in a fraction of a second.
        """
        queries.check_filters(filters)
        where = queries.conditions(**{**filters, "labelled": True})
        with self._db.read() as conn:
            rows = conn.execute(sa.select(frames.c.label, frames.c.defect_probability).where(*where)).all()
            versions = conn.scalars(sa.select(frames.c.model_version).where(*where).distinct()).all()
        return [int(label == "defective") for label, _ in rows], [p for _, p in rows], sorted(versions)

    def active_streams(self, *, recent: int = 2000, line: str | None = None) -> list[tuple[str, str]]:
        """The (line, camera) pairs among the ``recent`` newest frames (of ``line``), sorted: the cameras active
        lately, for the line view. Two columns of an index-ordered range, not whole rows."""
        newest = (
            sa.select(frames.c.line_id, frames.c.camera_id)
            .where(*queries.conditions(line=line))
            .order_by(frames.c.received_at.desc())
            .limit(recent)
            .subquery()
        )
        with self._db.read() as conn:
            rows = conn.execute(sa.select(newest.c.line_id, newest.c.camera_id).distinct()).all()
        return sorted((row.line_id, row.camera_id) for row in rows)

    # --- images ----------------------------------------------------------------------------------
    def image(self, id: int) -> tuple[bytes, str]:
        """The frame's image bytes and format; StoreError if retention did not keep them."""
        frame = self.get(id)
        if frame.image_sha256 is None:
            raise StoreError(_not_kept(frame, self.config))
        return self._images.read(frame.image_sha256, frame.image_format), frame.image_format

    def local_image_path(self, frame: StoredFrame, cache_dir: Path) -> Path:
        """A local file with the frame's image: the stored file on local storage, else a copy in ``cache_dir``."""
        if frame.image_sha256 is None:
            raise StoreError(_not_kept(frame, self.config))
        return self._images.local_file(frame.image_sha256, frame.image_format, cache_dir)

    # --- review ----------------------------------------------------------------------------------
    def set_label(self, id: int, label: str, reviewer: str, at: datetime | None = None) -> StoredFrame:
        """Label one frame ``ok`` or ``defective`` (any case); a new label replaces the old one."""
        return self.set_labels([LabelUpdate(id, label, reviewer, at)])[0]

    def set_labels(self, updates: Sequence[LabelUpdate]) -> list[StoredFrame]:
        """Apply many labels in one transaction: all of them, or none if any is invalid or unknown."""
        now = datetime.now(timezone.utc)
        values = [
            {
                "fid": u.id,
                "new_label": normalize_label(u.label),
                "new_by": normalize_reviewer(u.reviewer),
                "new_at": u.at or now,
            }
            for u in updates
        ]
        if not values:
            return []
        missing = sorted({v["fid"] for v in values} - set(self.get_many(v["fid"] for v in values)))
        if missing:
            raise FrameNotFoundError(
                f"no stored frame has id {', '.join(map(str, missing[:10]))}{' ...' if len(missing) > 10 else ''}"
            )
        stmt = (
            sa.update(frames)
            .where(frames.c.id == sa.bindparam("fid"))
            .values(
                label=sa.bindparam("new_label"),
                labelled_by=sa.bindparam("new_by"),
                labelled_at=sa.bindparam("new_at", type_=frames.c.labelled_at.type),
            )
        )
        with self._db.write() as conn:
            conn.execute(stmt, values)
        stored = self.get_many(v["fid"] for v in values)
        return [stored[u.id] for u in updates]

    def clear_label(self, id: int) -> StoredFrame:
        """Take a frame's label away (a reviewer's undo): it is unlabelled again, back in the review queue."""
        self.get(id)
        with self._db.write() as conn:
            conn.execute(
                sa.update(frames).where(frames.c.id == id).values(label=None, labelled_by=None, labelled_at=None)
            )
        return self.get(id)

    def create_snapshot(self, name: str, frame_ids: Sequence[int]) -> int:
        """Record which frames a training run used; clean-up never removes their images. Returns its id."""
        ids = list(dict.fromkeys(frame_ids))
        if not name or not name.strip():
            raise StoreError(f"snapshot name {name!r} is empty; name it after the training run")
        with self._db.write(image_lock="shared") as conn:
            if conn.scalar(sa.select(snapshots.c.id).where(snapshots.c.name == name)) is not None:
                raise StoreError(f"snapshot {name!r} already exists; snapshots are immutable, choose a new name")
            known: set[int] = set()
            valid = [i for i in ids if queries.is_int64(i)]
            for i in range(0, len(valid), _CHUNK):
                known.update(conn.scalars(sa.select(frames.c.id).where(frames.c.id.in_(valid[i : i + _CHUNK]))))
            missing = [i for i in ids if i not in known]
            if missing:
                raise FrameNotFoundError(
                    f"snapshot {name!r}: no stored frame has id {', '.join(map(str, missing[:10]))}"
                )
            snapshot_id = conn.execute(
                sa.insert(snapshots).values(name=name, created_at=datetime.now(timezone.utc)).returning(snapshots.c.id)
            ).scalar_one()
            if ids:
                conn.execute(sa.insert(snapshot_frames), [{"snapshot_id": snapshot_id, "frame_id": i} for i in ids])
        return snapshot_id

    def cleanup(self, now: datetime | None = None) -> CleanupReport:
        """Age-based clean-up of images (never rows, labelled frames or snapshot frames); see ``retention``."""
        return retention.cleanup(self._db, self._images, self.config.max_age_days, now or datetime.now(timezone.utc))


def _frame_row(r: FrameRecord, sha: str | None, fmt: str | None) -> dict[str, Any]:
    return {
        "camera_id": r.camera_id,
        "frame_id": r.frame_id,
        "line_id": r.line_id,
        "part_id": r.part_id,
        "captured_at": r.captured_at,
        "received_at": r.received_at,
        "verdict": r.verdict,
        "defect_probability": float(r.defect_probability),
        "confidence": float(r.confidence),
        "threshold": float(r.threshold),
        "uncertainty": abs(float(r.defect_probability) - float(r.threshold)),
        "model_version": r.model_version,
        "views": {str(k): float(v) for k, v in r.views.items()},
        "content_sha256": r.content_sha256,
        "image_sha256": sha,
        "image_format": fmt,
    }


def _to_frame(row: sa.Row) -> StoredFrame:
    return StoredFrame(**row._mapping)


def _filters(*values: object) -> dict[str, Any]:
    """:meth:`FrameStore.query`'s filter arguments, in :data:`queries.FILTERS` order, as keywords."""
    return dict(zip(queries.FILTERS, values, strict=True))


def _not_kept(frame: StoredFrame, config: StoreConfig) -> str:
    return (
        f"frame {frame.id} ({frame.key}, {frame.verdict}) has no stored image: OK frames keep "
        f"a sample of keep_ok_images={config.keep_ok_images}, and clean-up removes images older than "
        f"max_age_days={config.max_age_days} unless labelled"
    )
