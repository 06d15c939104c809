"""Retention: which images are kept when a frame is written, and which are removed as they age.

At write time every row is kept, but image bytes only for DEFECTIVE and UNSURE frames and for a
``keep_ok_images`` share of OK ones. The OK sample is decided by a hash of the frame's key (``line_id``,
``camera_id``, ``frame_id``), not by chance, so a frame sent twice (a camera retrying) is decided the
same way, two lines' ``cam-1/f1`` are sampled independently, and the share holds per camera and over any
time window.

Clean-up removes the images, never the rows, of frames received more than ``max_age_days`` ago, except
frames that carry a review label or belong to a training snapshot: those are what the next model learns
from and what an earlier model can be audited against. Files are shared by content, so a file is deleted
only when no frame at all refers to it any more.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta

import sqlalchemy as sa

from inspectline.store.database import Database
from inspectline.store.images import ImageStore
from inspectline.store.records import CleanupReport, to_utc
from inspectline.store.schema import frames, images, snapshot_frames

log = logging.getLogger(__name__)

# Frames handled per clean-up transaction: bounds how long frame writers wait for the image lock.
CLEANUP_CHUNK = 500


def keeps_image(line_id: str, camera_id: str, frame_id: str, verdict: str, keep_ok_images: float) -> bool:
    """Whether a frame's image is stored: always for DEFECTIVE/UNSURE, a stable sample of OK frames."""
    if verdict != "OK" or keep_ok_images >= 1.0:
        return True
    if keep_ok_images <= 0.0:
        return False
    # NUL separators: ("ab", "c") and ("a", "bc") must not share a decision.
    digest = hashlib.sha256(f"{line_id}\x00{camera_id}\x00{frame_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < keep_ok_images


def cleanup(db: Database, store: ImageStore, max_age_days: int | None, now: datetime) -> CleanupReport:
    """Remove images of unprotected frames received before ``now - max_age_days``; see the module docstring."""
    if max_age_days is None:
        return CleanupReport(cutoff=None)
    cutoff = to_utc(now) - timedelta(days=max_age_days)
    in_snapshot = sa.exists().where(snapshot_frames.c.frame_id == frames.c.id)
    expired = sa.and_(frames.c.received_at < cutoff, frames.c.image_sha256.is_not(None))
    totals = {"images_deleted": 0, "bytes_freed": 0, "frames_cleared": 0, "failed_deletes": 0}
    while True:
        with db.write(image_lock="exclusive") as conn:
            rows = conn.execute(
                sa.select(frames.c.id, frames.c.image_sha256)
                .where(expired, frames.c.label.is_(None), ~in_snapshot)
                .limit(CLEANUP_CHUNK)
            ).all()
            if not rows:
                break
            ids = [r.id for r in rows]
            hashes = {r.image_sha256 for r in rows}
            conn.execute(sa.update(frames).where(frames.c.id.in_(ids)).values(image_sha256=None))
            still_used = set(
                conn.scalars(sa.select(frames.c.image_sha256).where(frames.c.image_sha256.in_(hashes)).distinct())
            )
            doomed = conn.execute(
                sa.select(images.c.sha256, images.c.format, images.c.size_bytes).where(
                    images.c.sha256.in_(hashes - still_used)
                )
            ).all()
            conn.execute(sa.delete(images).where(images.c.sha256.in_([d.sha256 for d in doomed])))
            # Files go while the exclusive lock is held, so no writer can reuse one in between. A file
            # that cannot be removed is already unreferenced: it costs space, never correctness.
            for d in doomed:
                try:
                    if store.delete(d.sha256, d.format):
                        totals["images_deleted"] += 1
                        totals["bytes_freed"] += d.size_bytes
                except OSError as exc:
                    totals["failed_deletes"] += 1
                    log.warning("clean-up could not delete image %s from %s: %s", d.sha256[:12], store.url, exc)
            totals["frames_cleared"] += len(ids)
    with db.read() as conn:
        kept_labelled = conn.scalar(
            sa.select(sa.func.count()).select_from(frames).where(expired, frames.c.label.is_not(None))
        )
        kept_in_snapshot = conn.scalar(
            sa.select(sa.func.count()).select_from(frames).where(expired, frames.c.label.is_(None), in_snapshot)
        )
    report = CleanupReport(cutoff=cutoff, kept_labelled=kept_labelled, kept_in_snapshot=kept_in_snapshot, **totals)
    log.info("frame store clean-up before %s: %s", cutoff.isoformat(timespec="seconds"), report)
    return report
