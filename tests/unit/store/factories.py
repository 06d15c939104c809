"""Tiny real frames for store tests: 4x4 PNGs whose bytes differ by ``shade``, and records around them."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from inspectline.imaging import encode_png
from inspectline.store import FrameRecord, PartRecord

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)


def png(shade: int = 0) -> bytes:
    return encode_png(np.full((4, 4), shade, dtype=np.uint8))


def record(
    frame_id: str = "f1",
    *,
    camera_id: str = "cam1",
    verdict: str = "DEFECTIVE",
    p: float = 0.8,
    minutes: float = 0,
    shade: int | None = 0,
    **fields,
) -> FrameRecord:
    """A judged frame of line-a received ``minutes`` after :data:`T0` carrying ``png(shade)``.

    With ``shade`` None no image is passed on, only the hash of (stand-in) bytes the camera sent.
    """
    values = {
        "camera_id": camera_id,
        "frame_id": frame_id,
        "line_id": "line-a",
        "part_id": f"part-{frame_id}",
        "captured_at": T0 + timedelta(minutes=minutes, seconds=-1),
        "received_at": T0 + timedelta(minutes=minutes),
        "verdict": verdict,
        "defect_probability": p,
        "confidence": p if p >= 0.5 else 1 - p,
        "threshold": 0.5,
        "model_version": "v0001",
        "views": {"identity": p, "hflip": p},
        "image": None if shade is None else png(shade),
        "image_format": "png",
        "content_sha256": None if shade is not None else hashlib.sha256(f"sent {frame_id}".encode()).hexdigest(),
    }
    values.update(fields)
    return FrameRecord(**values)


def files_under(root: Path) -> list[Path]:
    """Every file below ``root``, hidden temporary files included."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file()) if Path(root).exists() else []


def part_record(part_id: str = "P-1", *, verdict: str = "OK", minutes: float = 0, **fields) -> PartRecord:
    """A part of line-a's ``main`` station decided ``minutes`` after :data:`T0` from views of cam1 and cam2."""
    decided = T0 + timedelta(minutes=minutes)
    p = {"OK": 0.1, "DEFECTIVE": 0.9, "UNSURE": 0.5, "NO_RESULT": 0.1}[verdict]
    views = tuple(
        {
            "camera_id": camera,
            "frame_id": f"{part_id}-{camera}",
            "verdict": "OK" if verdict == "NO_RESULT" else verdict,
            "defect_probability": p,
            "model_version": "v0001",
            "received_at": (decided - timedelta(seconds=0.2)).isoformat(),
        }
        for camera in (("cam1",) if verdict == "NO_RESULT" else ("cam1", "cam2"))
    )
    values = {
        "line_id": "line-a",
        "station": "main",
        "part_id": part_id,
        "verdict": verdict,
        "disposition": "pass" if verdict == "OK" else "reject",
        "reason": f"{verdict} by the part rule",
        "views": views,
        "missing": ("cam2",) if verdict == "NO_RESULT" else (),
        "deadline_missed": verdict == "NO_RESULT",
        "first_view_at": decided - timedelta(seconds=0.3),
        "decided_at": decided,
        "decision_seconds": 0.3,
    }
    values.update(fields)
    return PartRecord(**values)
