"""The review station's model routes in process: versions, report files, history and committing an operating point."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import pytest

from inspectline.registry import ModelRegistry
from inspectline.serving.judging import ModelFollower
from inspectline.serving.records import ServedModel
from tests.unit.serving.conftest import build_gateway
from tests.unit.serving.test_http import error_of
from tests.unit.serving.test_review_routes import judged, label_all

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def with_report(registry: ModelRegistry) -> None:
    """A small evaluation report with one plot, as training writes it beside the version."""
    folder = registry.get("v0001").path / "report"
    folder.mkdir(exist_ok=True)
    (folder / "roc_pr.png").write_bytes(PNG_BYTES)
    (folder / "report.md").write_text(
        "# Evaluation of v0001\n\n| metric | value |\n|---|---|\n| recall | 0.97 |\n\n"
        "![ROC and PR](roc_pr.png)\n\n<script>alert('x')</script>\n"
    )


def test_the_overview_names_production_and_lists_the_promotion_history(tmp_path, own_registry):
    own_registry.set_shadow("v0001", reason="compare", actor="ana")
    gateway = build_gateway(tmp_path / "gw", own_registry)
    body = gateway.client("viewer").get("/v1/models").json()
    assert (body["production"], body["shadow"], body["served"]) == ("v0001", "v0001", "v0001")
    assert [v["version"] for v in body["versions"]] == ["v0001"]
    assert [e["action"] for e in body["history"]] == ["shadow", "promote"]  # newest first
    error_of(gateway.client("camera").get("/v1/models"), 403, "forbidden")


def test_a_version_shows_its_card_lineage_and_report_with_images_loaded_by_token(tmp_path, own_registry):
    with_report(own_registry)
    gateway = build_gateway(tmp_path / "gw", own_registry)
    viewer = gateway.client("viewer")
    body = viewer.get("/v1/models/v0001").json()
    assert (body["version"], body["card_threshold"], body["operating_point"]) == ("v0001", 0.5, None)
    assert [link["version"] for link in body["lineage"]] == ["v0001"]
    assert (body["arch"], body["width"]) == (own_registry.get("v0001").card.arch, 1.0)  # the backbone, as trained
    html = body["report_html"]
    assert "<table>" in html and "0.97" in html
    assert 'data-src="/v1/models/v0001/report/roc_pr.png"' in html and ' src="' not in html
    assert "<script>" not in html  # raw HTML in the report is escaped, never passed through
    plot = viewer.get("/v1/models/v0001/report/roc_pr.png")
    assert plot.status_code == 200 and plot.headers["content-type"] == "image/png" and plot.content == PNG_BYTES
    missing = error_of(viewer.get("/v1/models/v0001/report/report.md"), 404, "model_not_found")["detail"]
    assert "'report.md'" in missing and ".png" in missing  # names the file asked for and the kinds served
    error_of(viewer.get("/v1/models/v0001/report/..%2Fcard.json"), 400, "invalid_request")
    error_of(viewer.get("/v1/models/v0042"), 404, "model_not_found")
    error_of(viewer.get("/v1/models/latest"), 400, "invalid_request")


def test_committing_an_operating_point_records_it_audited_with_the_windows_rates(tmp_path, own_registry):
    gateway = build_gateway(tmp_path / "gw", own_registry)
    label_all(gateway, judged(gateway, 6))
    admin = gateway.client("admin")
    body = {"threshold": 0.3, "unsure_band": 0.05, "reason": "recall on this week's frames", "actor": "ana"}
    committed = admin.post("/v1/models/v0001/operating-points", json=body)
    assert committed.status_code == 201, committed.text
    point = own_registry.operating_point("v0001")
    assert (point.threshold, point.unsure_band, point.actor) == (0.3, 0.05, "it-admin")
    assert point.expected["frames"] == 6.0 and set(point.expected) >= {"recall", "false_reject_rate"}
    assert "6 labelled frames of v0001" in point.basis and "chosen by ana" in point.reason
    assert committed.json()["at"] == point.at
    event = own_registry.audit.read(action="operating_point")[-1]
    assert (event.actor, event.subject) == ("it-admin", "v0001")
    # the what-if now scores the window against the new point in force; the model page lists it first
    assert gateway.client("viewer").get("/v1/models/v0001").json()["operating_points"][0]["threshold"] == 0.3
    for role in ("viewer", "reviewer"):
        error_of(gateway.client(role).post("/v1/models/v0001/operating-points", json=body), 403, "forbidden")
    error_of(admin.post("/v1/models/v0009/operating-points", json=body), 404, "model_not_found")
    error_of(admin.post("/v1/models/v0001/operating-points", json=body | {"threshold": 1.0}), 400, "invalid_request")
    error_of(admin.post("/v1/models/v0001/operating-points", json=body | {"colour": "red"}), 400, "invalid_request")


def test_a_committed_operating_point_is_rolled_out_like_a_promotion(own_registry):
    """The gateway's follower targets (version, operating point); a new point is a new target to warm."""
    warmed: list[ServedModel] = []

    async def prepare(model: ServedModel) -> None:
        warmed.append(model)

    def target() -> ServedModel:
        point = own_registry.operating_point("v0001")
        return ServedModel("v0001", point.at if point is not None else None)

    follower = ModelFollower(target=target, shadow=lambda: None, prepare_everywhere=prepare)
    asyncio.run(follower.poll_once())
    gateway_dir = own_registry.root.parent / "gw"
    gateway = build_gateway(gateway_dir, own_registry)
    body = {"threshold": 0.4, "reason": "fewer false rejects", "actor": "ana"}
    assert gateway.client("admin").post("/v1/models/v0001/operating-points", json=body).status_code == 201
    asyncio.run(follower.poll_once())
    assert [m.operating_point_at for m in warmed] == [None, own_registry.operating_point("v0001").at]
    assert follower.active == warmed[-1]


def test_the_served_model_says_which_version_is_warm_and_when_it_takes_over(tmp_path, own_registry):
    """Gateway replicas that switch at one instant: GET /v1/model shows the pending switch until it happens."""
    gateway = build_gateway(tmp_path / "gw", own_registry)
    client = gateway.client("viewer")
    first = client.get("/v1/model").json()
    assert (first["version"], first["switching_to"], first["switching_at"]) == ("v0001", None, None)
    follower = gateway.services.frames.follower
    at = time.time() + 60
    follower.pending = (ServedModel("v0002"), at)
    body = client.get("/v1/model").json()
    assert body["version"] == "v0001" and body["switching_to"] == "v0002"  # v0001 still judges until then
    assert datetime.fromisoformat(body["switching_at"]).timestamp() == pytest.approx(at)
    follower.pending = (ServedModel("v0001", "2026-12-03T10:00:00+00:00"), time.time() - 1)  # its instant has come
    body = client.get("/v1/model").json()
    assert body["switching_to"] is None and follower.active == ServedModel("v0001", "2026-12-03T10:00:00+00:00")
