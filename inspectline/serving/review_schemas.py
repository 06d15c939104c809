"""Request and response models of the review station's API (``serving.review_routes``, ``serving.model_routes``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from inspectline.ids import ID_PATTERN
from inspectline.serving.schemas import StoredFrameView


class Session(BaseModel):
    """Who the caller is, and what the page may offer them."""

    name: str = Field(description="the token's name; 'anonymous' when the service runs without tokens")
    scopes: list[str]
    may_review: bool = Field(description="may see images and heatmaps, label frames and run the what-if")
    may_admin: bool = Field(description="may commit an operating point")
    auth: bool = Field(description="whether the service checks tokens at all")


class LiveFrame(StoredFrameView):
    heatmap_url: str | None = Field(description="the frame's heatmap (review scope), when its image was kept")


class StreamView(BaseModel):
    """One camera of one line in the line view."""

    line_id: str
    camera_id: str
    latest: list[LiveFrame] = Field(description="the newest frames, newest first")
    last_frame_at: datetime | None
    frames_last_minute: int = Field(ge=0, description="frames received in the last 60 s (throughput)")
    window_frames: int = Field(ge=0, description="frames in the line monitor's current drift window")
    defect_ratio: float | None = Field(description="DEFECTIVE share of the window; null until the monitor saw one")
    unsure_ratio: float | None
    drift: str = Field(description="ok, alarm, filling (no window evaluated yet), off (no reference) or unknown")
    drift_signals: list[str] = Field(description="signals in alarm at the last evaluation")
    drift_p_value: float | None = Field(description="smallest corrected p-value of the last evaluation")


class LineSummary(BaseModel):
    generated_at: datetime
    served_version: str | None
    monitor: str = Field(description="ok, or unavailable (live shares and drift are then unknown)")
    streams: list[StreamView]


class WhatIfPoint(BaseModel):
    """Rates and counts of one operating point on the window's labelled frames (rates null when undefined)."""

    threshold: float
    unsure_band: float
    frames: int
    defective_frames: int
    ok_frames: int
    defective_judged_defective: int
    defective_judged_unsure: int
    defective_judged_ok: int
    ok_judged_defective: int
    ok_judged_unsure: int
    ok_judged_ok: int
    recall: float | None = Field(description="defective frames not passed as OK")
    precision: float | None = Field(description="frames judged DEFECTIVE that are defective")
    false_reject_rate: float | None = Field(description="OK frames judged DEFECTIVE")
    unsure_share: float | None = Field(description="frames sent to a person")
    model_versions: list[str]


class SweepPoint(BaseModel):
    threshold: float
    recall: float | None
    precision: float | None
    false_reject_rate: float | None
    unsure_share: float | None


class WhatIfReport(BaseModel):
    model_version: str = Field(description="the version whose frames were scored")
    window: dict[str, Any] = Field(description="the filters that chose the frames")
    frames: int = Field(description="labelled frames in the window")
    model_versions: list[str]
    proposed: WhatIfPoint
    current: WhatIfPoint = Field(description="the operating point in force for the version")
    sweep: list[SweepPoint] = Field(description="rates by threshold at the proposed UNSURE band")


class VersionSummary(BaseModel):
    version: str
    arch: str
    width: float = Field(1.0, description="the backbone's channel scale (model.width; 1.0: torchvision's ResNet)")
    created_at: str | None
    parent: str | None
    threshold: float = Field(description="the operating threshold in force (operating point, else the card's)")
    unsure_band: float | None
    metrics: dict[str, float]
    export_count: int = Field(description="exported engines (ONNX, OpenVINO ...)")


class HistoryEvent(BaseModel):
    at: datetime
    action: str
    subject: str
    before: Any = None
    after: Any = None
    actor: str
    reason: str


class ModelsOverview(BaseModel):
    production: str | None
    shadow: str | None
    served: str | None = Field(description="the version this gateway judges frames with right now")
    versions: list[VersionSummary]
    history: list[HistoryEvent] = Field(description="promotions, rollbacks, shadow changes, operating points, exports")


class ModelDetail(VersionSummary):
    classes: list[str]
    image_size: int
    color_mode: str
    temperature: float
    threshold_policy: str
    tta_views: list[str]
    card_threshold: float
    operating_point: dict[str, Any] | None
    operating_points: list[dict[str, Any]] = Field(description="newest first; the first is in force")
    exports: list[dict[str, Any]] = Field(description="exported engines with their parity results")
    lineage: list[dict[str, Any]] = Field(description="this version, its parent, grandparent ...")
    report_html: str | None = Field(description="the evaluation report; images carry data-src (load them with a token)")
    history: list[HistoryEvent]


class OperatingPointRequest(BaseModel):
    """A new operating point for a version, as chosen on the what-if page."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(gt=0, lt=1)
    unsure_band: float = Field(0.0, ge=0, lt=0.5)
    reason: str = Field(min_length=1, max_length=500, pattern=r"\S", description="why: recorded in the audit trail")
    actor: str = Field(min_length=1, max_length=200, pattern=r"\S", description="who chose it (name or e-mail)")
    since: datetime | None = Field(None, description="the what-if window the expected rates are read on")
    until: datetime | None = None
    line: str | None = Field(None, pattern=ID_PATTERN)
    camera: str | None = Field(None, pattern=ID_PATTERN)


class OperatingPointView(BaseModel):
    version: str
    threshold: float
    unsure_band: float | None
    basis: str
    expected: dict[str, float]
    actor: str
    reason: str
    at: str
