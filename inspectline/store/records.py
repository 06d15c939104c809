"""The frame store's value types: what goes in (a judged frame, a shadow verdict, a label) and what
comes out (a stored frame, a clean-up report), with the checks that keep bad values out of the database.

Everything here is a plain frozen dataclass so the service, the CLI and ``inspect retrain`` can pass
records around without touching SQLAlchemy. Datetimes are timezone-aware UTC on the way out; on the way
in an aware datetime in any zone is converted to UTC and a naive one is taken to be UTC already.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

from inspectline.errors import InvalidLabelError, StoreError, UnsupportedImageError
from inspectline.imaging import FORMAT_NAMES, format_named, sniff_format

VERDICTS = ("OK", "DEFECTIVE", "UNSURE")
PART_VERDICTS = (*VERDICTS, "NO_RESULT")  # a part may also have no verdict: a required view missed its deadline
PART_VIEW_FIELDS = ("camera_id", "frame_id", "verdict", "defect_probability", "model_version", "received_at")
LABELS = ("ok", "defective")
IMAGE_FORMATS = FORMAT_NAMES  # the names images are stored under; the full table is imaging.IMAGE_FORMATS
ORDERS = ("uncertainty", "newest", "oldest")

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class FrameKey(NamedTuple):
    """What names one frame a camera sent: unique in the store (a camera's ids are only unique on its line)."""

    line_id: str
    camera_id: str
    frame_id: str

    def __str__(self) -> str:
        return f"{self.line_id}/{self.camera_id}/{self.frame_id}"


@dataclass(frozen=True)
class FrameRecord:
    """One judged frame as the service hands it over.

    ``image`` is the bytes the camera sent, or None when the service does not pass them on.
    ``content_sha256`` is the SHA-256 (hex) of those bytes: computed from ``image`` when not given, and
    required when ``image`` is None, because a repeated frame id is told apart from a retry by it. When
    both are given they must agree; the store checks that for every image it keeps.
    """

    camera_id: str
    frame_id: str
    line_id: str
    part_id: str | None
    captured_at: datetime | None
    received_at: datetime
    verdict: str
    defect_probability: float
    confidence: float
    threshold: float
    model_version: str
    views: dict[str, float] = field(hash=False)
    image: bytes | None = field(default=None, repr=False)
    image_format: str | None = None
    content_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.content_sha256 is None and isinstance(self.image, bytes):
            object.__setattr__(self, "content_sha256", hashlib.sha256(self.image).hexdigest())

    @property
    def key(self) -> FrameKey:
        return FrameKey(self.line_id, self.camera_id, self.frame_id)


@dataclass(frozen=True)
class StoredFrame:
    """A frame as read back from the store, with its review label if it has one."""

    id: int
    camera_id: str
    frame_id: str
    line_id: str
    part_id: str | None
    captured_at: datetime | None
    received_at: datetime
    verdict: str
    defect_probability: float
    confidence: float
    threshold: float
    model_version: str
    views: dict[str, float] = field(hash=False)
    content_sha256: str | None  # of the image as sent; None only for frames stored before schema version 2
    image_sha256: str | None  # the kept image file (the same hash), None when retention did not keep it
    image_format: str | None
    label: str | None
    labelled_by: str | None
    labelled_at: datetime | None

    @property
    def key(self) -> FrameKey:
        return FrameKey(self.line_id, self.camera_id, self.frame_id)

    @property
    def uncertainty(self) -> float:
        """Distance of the defect probability from the threshold: the smaller, the less sure the model was."""
        return abs(self.defect_probability - self.threshold)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, ISO 8601 datetimes, plus ``uncertainty``."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        out["views"] = dict(self.views)
        out["uncertainty"] = self.uncertainty
        return out


@dataclass(frozen=True)
class ShadowVerdict:
    """What a shadow (challenger) model said about a frame; never returned to the line."""

    line_id: str
    camera_id: str
    frame_id: str
    model_version: str
    verdict: str
    defect_probability: float
    received_at: datetime

    @property
    def key(self) -> FrameKey:
        return FrameKey(self.line_id, self.camera_id, self.frame_id)


@dataclass(frozen=True)
class PartRecord:
    """One part's verdict at one station as the line was told it, with the views it was decided from.

    ``views`` holds one JSON-ready dict per view with :data:`PART_VIEW_FIELDS` (``received_at`` as ISO
    8601 text, ``frame_id`` the camera's id); ``missing`` names the required views that never came.
    """

    line_id: str
    station: str
    part_id: str
    verdict: str
    disposition: str
    reason: str
    views: tuple[dict[str, Any], ...] = field(hash=False)
    missing: tuple[str, ...]
    deadline_missed: bool
    first_view_at: datetime
    decided_at: datetime
    decision_seconds: float


@dataclass(frozen=True)
class StoredPart(PartRecord):
    """A part verdict as read back from the store; ``id`` is its row."""

    id: int = field(kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: every field, ISO 8601 datetimes, views and missing as lists."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        out["views"] = [dict(v) for v in self.views]
        out["missing"] = list(self.missing)
        return out


@dataclass(frozen=True)
class LabelUpdate:
    """One review decision: frame ``id`` is ``label`` according to ``reviewer`` (at ``at``, default now)."""

    id: int
    label: str
    reviewer: str
    at: datetime | None = None


@dataclass(frozen=True)
class CleanupReport:
    """What one age-based clean-up did. ``cutoff`` is None when ``max_age_days`` is off."""

    cutoff: datetime | None
    images_deleted: int = 0
    bytes_freed: int = 0
    frames_cleared: int = 0  # rows whose image reference was removed (the rows themselves stay)
    kept_labelled: int = 0  # frames past the cutoff that keep their image because they carry a label
    kept_in_snapshot: int = 0  # unlabelled frames past the cutoff kept because a training snapshot holds them
    failed_deletes: int = 0  # files that could not be removed; unreferenced, so only their space is lost


def to_utc(value: datetime) -> datetime:
    """Aware datetimes converted to UTC; naive ones are taken to be UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def normalize_verdict(value: str) -> str:
    """``ok`` / ``Defective`` ... -> ``OK`` / ``DEFECTIVE``; StoreError naming the accepted verdicts otherwise."""
    verdict = str(value).strip().upper()
    if verdict not in VERDICTS:
        msg = f"verdict {value!r} is not one of {', '.join(VERDICTS)}"
        raise StoreError(msg)
    return verdict


def normalize_label(value: object) -> str:
    """``OK`` / `` Defective `` ... -> ``ok`` / ``defective``; InvalidLabelError otherwise."""
    label = str(value).strip().lower() if isinstance(value, str) else None
    if label not in LABELS:
        msg = f"label {value!r} is not one of {', '.join(LABELS)} (case does not matter)"
        raise InvalidLabelError(msg)
    return label


def normalize_reviewer(value: object) -> str:
    """A non-empty reviewer name, stripped; InvalidLabelError otherwise."""
    reviewer = value.strip() if isinstance(value, str) else ""
    if not reviewer:
        msg = f"reviewer {value!r} is empty; every label must name who set it (a name or an e-mail address)"
        raise InvalidLabelError(msg)
    return reviewer


def image_format_of(record: FrameRecord) -> str:
    """The record's image format, normalised (``JPG`` -> ``jpeg``), or sniffed from the bytes when not given."""
    where = f"frame {record.key}"
    if record.image_format is not None:
        try:
            return format_named(str(record.image_format)).name
        except UnsupportedImageError as exc:
            msg = f"{where}: {exc}"
            raise StoreError(msg) from None
    found = sniff_format(record.image or b"")
    if found is None:
        msg = f"{where}: image format not given and the bytes are not {', '.join(IMAGE_FORMATS)}"
        raise StoreError(msg)
    return found.name


def check_shadow_verdict(verdict: ShadowVerdict) -> None:
    """Refuse a shadow verdict whose ids or model version are not non-empty strings."""
    for name in ("line_id", "camera_id", "frame_id", "model_version"):
        value = getattr(verdict, name)
        if not isinstance(value, str) or not value:
            msg = f"shadow verdict on frame {verdict.key}: {name} {value!r} must be a non-empty string"
            raise StoreError(msg)


def check_record(record: FrameRecord) -> None:
    """Refuse a record the database would store wrongly; the message names the frame and the bad field."""
    where = f"frame {record.line_id!r}/{record.camera_id!r}/{record.frame_id!r}"
    for name in ("camera_id", "frame_id", "line_id", "model_version"):
        value = getattr(record, name)
        if not isinstance(value, str) or not value:
            msg = f"{where}: {name} {value!r} must be a non-empty string"
            raise StoreError(msg)
    if record.verdict not in VERDICTS:
        msg = f"{where}: verdict {record.verdict!r} is not one of {', '.join(VERDICTS)}"
        raise StoreError(msg)
    if not isinstance(record.received_at, datetime):
        msg = f"{where}: received_at {record.received_at!r} must be a datetime"
        raise StoreError(msg)
    for name in ("defect_probability", "confidence", "threshold"):
        value = getattr(record, name)
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            msg = f"{where}: {name} {value!r} must be a number in [0, 1]"
            raise StoreError(msg)
    if record.image is not None and not isinstance(record.image, bytes):
        msg = f"{where}: image must be bytes or None, not {type(record.image).__name__}"
        raise StoreError(msg)
    if record.content_sha256 is None:
        msg = (
            f"{where}: neither the image nor its content_sha256 is given; every frame records the hash of "
            "the bytes the camera sent, so a reused frame id can be told from a retry"
        )
        raise StoreError(msg)
    if not isinstance(record.content_sha256, str) or not _SHA256_HEX.fullmatch(record.content_sha256):
        msg = f"{where}: content_sha256 {record.content_sha256!r} is not a SHA-256 hex digest (64 of 0-9, a-f)"
        raise StoreError(msg)
    if record.image is not None:
        image_format_of(record)


def check_part(part: PartRecord) -> None:
    """Refuse a part verdict the database would store wrongly; the message names the part and the bad field."""
    where = f"part {part.line_id!r}/{part.station!r}/{part.part_id!r}"
    for name in ("line_id", "station", "part_id", "reason"):
        value = getattr(part, name)
        if not isinstance(value, str) or not value:
            msg = f"{where}: {name} {value!r} must be a non-empty string"
            raise StoreError(msg)
    if part.verdict not in PART_VERDICTS:
        msg = f"{where}: verdict {part.verdict!r} is not one of {', '.join(PART_VERDICTS)}"
        raise StoreError(msg)
    if part.disposition not in ("reject", "pass"):
        msg = f"{where}: disposition {part.disposition!r} is not one of reject, pass"
        raise StoreError(msg)
    for view in part.views:
        if not isinstance(view, dict) or set(view) != set(PART_VIEW_FIELDS):
            got = sorted(view) if isinstance(view, dict) else type(view).__name__
            msg = f"{where}: each view must have exactly the fields {', '.join(PART_VIEW_FIELDS)}, got {got}"
            raise StoreError(msg)
    for name in ("first_view_at", "decided_at"):
        if not isinstance(getattr(part, name), datetime):
            msg = f"{where}: {name} {getattr(part, name)!r} must be a datetime"
            raise StoreError(msg)
