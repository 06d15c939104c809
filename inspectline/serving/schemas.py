"""The response models of the service's API (what ``/openapi.json`` promises every answer looks like)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from inspectline.serving.judging import Answer
from inspectline.store import StoredFrame


class Verdict(BaseModel):
    """The answer to one frame."""

    frame_id: str
    line_id: str
    camera_id: str
    part_id: str | None
    verdict: Literal["OK", "DEFECTIVE", "UNSURE"] = Field(description="UNSURE within the band around the threshold")
    defect_probability: float = Field(ge=0, le=1, description="calibrated probability that the part is defective")
    confidence: float = Field(ge=0, le=1, description="calibrated probability that the OK/DEFECTIVE call is right")
    threshold: float = Field(ge=0, le=1)
    model_version: str = Field(description="the version that judged this frame")
    views: dict[str, float] = Field(description="calibrated defect probability per TTA view")
    latency_ms: float = Field(ge=0)
    captured_at: datetime | None
    received_at: datetime
    content_sha256: str = Field(description="SHA-256 of the image bytes judged")
    duplicate: bool = Field(description="true when this frame id was judged before for these same bytes")


class BatchItem(BaseModel):
    index: int
    filename: str | None
    status: int = Field(description="200, or the status this file alone would have got")
    result: Verdict | None = None
    error: str | None = None
    detail: str | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]


class StoredFrameView(BaseModel):
    id: int
    line_id: str
    camera_id: str
    frame_id: str
    part_id: str | None
    captured_at: datetime | None
    received_at: datetime
    verdict: str
    defect_probability: float
    confidence: float
    threshold: float
    uncertainty: float = Field(description="|defect_probability - threshold|: the smaller, the less sure")
    model_version: str
    views: dict[str, float]
    content_sha256: str | None
    image_sha256: str | None
    image_format: str | None
    image_url: str | None
    label: str | None
    labelled_by: str | None
    labelled_at: datetime | None


class ShadowView(BaseModel):
    model_version: str
    verdict: str
    defect_probability: float


class StoredFrameDetail(StoredFrameView):
    shadow: list[ShadowView]


class FrameList(BaseModel):
    frames: list[StoredFrameView]
    total: int
    limit: int
    offset: int


class PartViewOut(BaseModel):
    """One camera's view of a part, as it was when the part was decided."""

    camera_id: str
    frame_id: str = Field(description="the camera's frame id (GET /v1/frames?line=...&camera=... finds the frame)")
    verdict: Literal["OK", "DEFECTIVE", "UNSURE"]
    defect_probability: float = Field(ge=0, le=1)
    model_version: str | None
    received_at: datetime
    frame_url: str | None = Field(None, description="the stored frame (GET /v1/frames/{id}); None if not found")
    image_url: str | None = Field(None, description="the frame's image (review scope), when it was kept")
    heatmap_url: str | None = Field(None, description="where the model looked (review scope), when the image was kept")


class StoredPartView(BaseModel):
    """A part's verdict at one station of its line."""

    id: int
    line_id: str
    station: str
    part_id: str
    verdict: Literal["OK", "DEFECTIVE", "UNSURE", "NO_RESULT"] = Field(
        description="DEFECTIVE if any view is, else UNSURE if any view is, else OK with every required view, "
        "else NO_RESULT (a required view missed the deadline)"
    )
    disposition: Literal["reject", "pass"] = Field(description="what the line's reject gate does with the part")
    reason: str
    views: list[PartViewOut]
    missing: list[str] = Field(description="required views that had not arrived when the part was decided")
    deadline_missed: bool
    first_view_at: datetime
    decided_at: datetime
    decision_seconds: float = Field(ge=0, description="from the part's first view to its verdict")


class PartDetail(BaseModel):
    part_id: str
    stations: list[StoredPartView] = Field(description="one verdict per station that saw the part, first decided first")


class PartList(BaseModel):
    parts: list[StoredPartView]
    total: int
    limit: int
    offset: int


class AuditEventView(BaseModel):
    """One change that affects verdicts (see ``inspect audit``)."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    before: Any = None
    after: Any = None
    reason: str
    prev: str = Field(
        description="SHA-256 of the line before this one in the trail (the chain `inspect audit --verify` checks)"
    )


class AuditList(BaseModel):
    events: list[AuditEventView] = Field(description="in the order they were appended; the latest `limit` of them")
    total: int = Field(description="events at or after `since`")
    limit: int


class LabelRequest(BaseModel):
    label: Literal["ok", "defective", "OK", "DEFECTIVE", "Ok", "Defective"] = Field(description="ok or defective")
    reviewer: str = Field(min_length=1, max_length=200, pattern=r"\S", description="who labelled it (name or e-mail)")


class EngineInfo(BaseModel):
    """Which engine judges the served version's frames, and why (``inspectline.engines.choose_engine``)."""

    engine: str = Field(description="torch, openvino or onnxruntime")
    precision: str = Field(description="fp32, fp16, bf16 or int8")
    reason: str
    export: str | None = Field(None, description="the export's files inside the version folder; null: the checkpoint")
    agreement: float | None = Field(None, description="the export's verdict agreement with the checkpoint (test split)")
    forced: bool = Field(False, description="recorded with --force below the parity bound")


class ModelInfo(BaseModel):
    version: str
    arch: str
    width: float = Field(1.0, description="the backbone's channel scale (model.width; 1.0: torchvision's ResNet)")
    classes: list[str]
    threshold: float
    unsure_band: float
    temperature: float
    tta_views: list[str]
    image_size: int
    color_mode: str
    created_at: str | None
    parent: str | None
    metrics: dict[str, float]
    operating_point: dict[str, Any] | None = Field(None, description="the operating point in force, when one was set")
    engine: EngineInfo | None = Field(None, description="the inference engine of the replicas")
    shadow_version: str | None = None
    switching_to: str | None = Field(
        None,
        description="a promoted version (or new operating point) this replica has warm and takes up at switching_at, "
        "together with every other Gateway replica (judge: gateway with switch_delay_s); null: none pending",
    )
    switching_at: datetime | None = Field(None, description="when switching_to takes over (UTC)")


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    model_version: str


def verdict_of(answer: Answer) -> Verdict:
    m = answer.meta
    return Verdict(
        frame_id=m.frame_id,
        line_id=m.line_id,
        camera_id=m.camera_id,
        part_id=m.part_id,
        verdict=answer.verdict,
        defect_probability=answer.defect_probability,
        confidence=answer.confidence,
        threshold=answer.threshold,
        model_version=answer.model_version,
        views=answer.views,
        latency_ms=answer.latency_s * 1000,
        captured_at=m.captured_at,
        received_at=answer.received_at,
        content_sha256=answer.content_sha256,
        duplicate=answer.duplicate,
    )


def frame_links(frame: StoredFrame | None) -> dict[str, str | None]:
    """Where a stored frame, its image and its heatmap are served; image and heatmap only when it was kept."""
    kept = frame is not None and frame.image_sha256 is not None
    return {
        "frame_url": f"/v1/frames/{frame.id}" if frame is not None else None,
        "image_url": f"/v1/frames/{frame.id}/image" if kept else None,
        "heatmap_url": f"/v1/frames/{frame.id}/heatmap" if kept else None,
    }


def frame_view(frame: StoredFrame) -> dict[str, Any]:
    return frame.to_dict() | {"image_url": frame_links(frame)["image_url"]}
