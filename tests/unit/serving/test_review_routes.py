"""The review station's frame routes in process: the session, the line view, heatmaps, undo and the what-if."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inspectline.explain import Explainer
from inspectline.imaging import decode_image
from inspectline.serving.records import StreamStatus
from inspectline.whatif import sweep, what_if
from tests.unit.serving.conftest import TOKENS, build_gateway
from tests.unit.serving.test_http import error_of, png, post
from tests.unit.store.factories import record


def judged(gateway, count: int, *, start: int = 0, **ids) -> list[dict]:
    """``count`` frames posted by a camera (every third defective-looking), as the store lists them, oldest first."""
    camera = gateway.client("camera")
    for i in range(start, start + count):
        assert post(camera, png(i, i % 3 == 0), frame_id=f"f{i}", **ids).status_code == 200
    gateway.flush()
    return gateway.client("viewer").get("/v1/frames", params={"order": "oldest", "limit": 1000}).json()["frames"]


def label_all(gateway, frames: list[dict]) -> None:
    reviewer = gateway.client("reviewer")
    for n, frame in enumerate(frames):
        body = {"label": "defective" if n % 2 else "ok", "reviewer": "ana"}
        assert reviewer.put(f"/v1/frames/{frame['id']}/label", json=body).status_code == 200


def test_the_session_names_the_token_and_what_the_page_may_offer(gateway, tmp_path, tiny_registry):
    for role, offers in {"viewer": (False, False), "reviewer": (True, False), "admin": (True, True)}.items():
        body = gateway.client(role).get("/v1/session").json()
        assert (body["name"], body["may_review"], body["may_admin"], body["auth"]) == (TOKENS[role][0], *offers, True)
    error_of(gateway.client("camera").get("/v1/session"), 403, "forbidden")  # a camera's token is not for pages
    open_service = build_gateway(tmp_path / "open", tiny_registry, auth=False)
    body = open_service.client().get("/v1/session").json()
    assert (body["name"], body["may_admin"], body["auth"]) == ("anonymous", True, False)


def test_a_heatmap_has_the_frames_size_and_is_computed_once_then_served_from_beside_the_image(gateway, monkeypatch):
    [frame] = judged(gateway, 1)
    client = gateway.client("reviewer")
    image = decode_image(client.get(frame["image_url"]).content)
    overlay = client.get(f"/v1/frames/{frame['id']}/heatmap")
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    assert decode_image(overlay.content).shape == (*image.shape[:2], 3)
    raw = decode_image(client.get(f"/v1/frames/{frame['id']}/heatmap", params={"raw": "true"}).content)
    assert raw.dtype == np.uint16 and raw.shape == image.shape[:2] and raw.max() == 65535
    cached = sorted(p.name for p in Path(gateway.store_config.storage_url, "heatmaps").rglob("*.png"))
    assert len(cached) == 2 and all(p.startswith(frame["content_sha256"]) for p in cached)

    def no_more_explaining(*_):
        raise AssertionError("the heatmap was computed again")

    monkeypatch.setattr(Explainer, "explain", no_more_explaining)
    assert client.get(f"/v1/frames/{frame['id']}/heatmap").content == overlay.content


def test_frames_without_an_image_or_a_model_have_no_heatmap_and_say_why(gateway):
    with gateway.store() as store:
        store.add_frames(
            [
                record("no-image", shade=None, verdict="OK", p=0.1),
                record("old-model", shade=7, model_version="v0042"),
            ]
        )
        ids = {f.frame_id: f.id for f in store.query(limit=10)}
    client = gateway.client("reviewer")
    assert "retention" in error_of(client.get(f"/v1/frames/{ids['no-image']}/heatmap"), 404, "image_not_kept")["detail"]
    assert "v0042" in error_of(client.get(f"/v1/frames/{ids['old-model']}/heatmap"), 404, "model_not_found")["detail"]
    error_of(client.get("/v1/frames/987654/heatmap"), 404, "frame_not_found")
    error_of(client.get(f"/v1/frames/{ids['old-model']}/heatmap", params={"raw": "perhaps"}), 400, "invalid_request")


def test_undo_takes_a_label_back_and_the_audit_trail_says_who(gateway):
    frames = judged(gateway, 2)
    reviewer = gateway.client("reviewer")
    target = frames[0]["id"]
    reviewer.put(f"/v1/frames/{target}/label", json={"label": "defective", "reviewer": "ana@plant"})
    undone = reviewer.delete(f"/v1/frames/{target}/label", params={"reviewer": "ana@plant"})
    assert undone.status_code == 200 and (undone.json()["label"], undone.json()["labelled_by"]) == (None, None)
    queue = reviewer.get("/v1/frames", params={"labelled": "false"}).json()
    assert target in [f["id"] for f in queue["frames"]] and queue["total"] == 2
    event = gateway.services.audit.read(action="label")[-1]
    assert (event.actor, event.before, event.after) == ("ana", {"label": "defective", "reviewer": "ana@plant"}, None)
    assert "ana@plant" in event.reason
    reviewer.delete(f"/v1/frames/{frames[1]['id']}/label", params={"reviewer": "ana"})  # nothing to take back
    assert len(gateway.services.audit.read(action="label")) == 2
    error_of(reviewer.delete(f"/v1/frames/{target}/label"), 400, "invalid_request")  # who takes it back?


def test_the_what_if_scores_the_labelled_frames_of_the_window_as_whatif_does(gateway):
    judged(gateway, 6, camera_id="cam-1")
    frames = judged(gateway, 4, start=6, camera_id="cam-2")
    label_all(gateway, frames)
    client = gateway.client("reviewer")
    labelled = gateway.store().labelled()
    p = sorted(f.defect_probability for f in labelled)
    middle = round((p[0] + p[-1]) / 2, 4)
    body = client.get("/v1/whatif", params={"threshold": middle, "unsure_band": 0.001}).json()
    assert body["proposed"] == what_if(labelled, middle, 0.001).to_dict()
    assert body["current"] == what_if(labelled, 0.5, 0.0).to_dict()  # the tiny model's card threshold, no band
    assert [s["recall"] for s in body["sweep"]] == [w.recall for w in sweep(labelled, 0.001)]
    assert (body["model_version"], body["frames"], body["window"]) == ("v0001", 10, {"model_version": "v0001"})
    # moving the threshold moves recall: below every probability nothing passes, above every one everything does
    low = client.get("/v1/whatif", params={"threshold": max(p[0] - 0.01, 0.001)}).json()["proposed"]
    high = client.get("/v1/whatif", params={"threshold": min(p[-1] + 0.01, 0.999)}).json()["proposed"]
    assert (low["recall"], high["recall"]) == (1.0, 0.0)
    assert client.get("/v1/whatif", params={"camera": "cam-2"}).json()["frames"] == 4
    error_of(client.get("/v1/whatif", params={"model_version": "v0009"}), 404, "model_not_found")
    error_of(client.get("/v1/whatif", params={"threshold": 1.5}), 400, "invalid_request")
    error_of(gateway.client("viewer").get("/v1/whatif"), 403, "forbidden")


def test_the_line_view_merges_the_stores_frames_with_the_monitors_live_windows(gateway):
    judged(gateway, 3, camera_id="cam-1")
    judged(gateway, 2, start=3, camera_id="cam-2")
    judged(gateway, 1, start=5, line_id="line-2", camera_id="cam-1")
    gateway.live = [
        StreamStatus("line-1", "cam-1", 3, 1 / 3, 0.0, "alarm", ("output",), 0.001),
        StreamStatus("line-9", "cam-7", 5, 0.2, 0.0, "filling"),
        StreamStatus("other", "other", 9, 0.0, 0.0, "ok"),  # the monitor's overflow bucket is no camera
    ]
    body = gateway.client("viewer").get("/v1/lines", params={"latest": 2}).json()
    streams = {(s["line_id"], s["camera_id"]): s for s in body["streams"]}
    assert list(streams) == [("line-1", "cam-1"), ("line-1", "cam-2"), ("line-2", "cam-1"), ("line-9", "cam-7")]
    cam1 = streams["line-1", "cam-1"]
    assert [f["frame_id"] for f in cam1["latest"]] == ["f2", "f1"] and cam1["frames_last_minute"] == 3
    assert (cam1["drift"], cam1["drift_signals"], cam1["defect_ratio"]) == ("alarm", ["output"], pytest.approx(1 / 3))
    assert cam1["latest"][0]["heatmap_url"] == f"/v1/frames/{cam1['latest'][0]['id']}/heatmap"
    assert (streams["line-1", "cam-2"]["drift"], streams["line-1", "cam-2"]["defect_ratio"]) == ("unknown", None)
    assert streams["line-9", "cam-7"]["latest"] == [] and streams["line-9", "cam-7"]["last_frame_at"] is None
    assert (body["served_version"], body["monitor"]) == ("v0001", "ok")
    only = gateway.client("viewer").get("/v1/lines", params={"line": "line-2"}).json()["streams"]
    assert [(s["line_id"], s["camera_id"]) for s in only] == [("line-2", "cam-1")]

    async def monitor_down():
        raise ConnectionError("the line monitor's replica is restarting")

    gateway.services.review.line_status = monitor_down
    body = gateway.client("viewer").get("/v1/lines").json()
    assert body["monitor"] == "unavailable" and len(body["streams"]) == 3  # the store's half still shows


def test_the_store_decides_which_frames_have_an_image_to_explain(gateway):
    """A frame record without image bytes gets no heatmap link in the line view."""
    with gateway.store() as store:
        store.add_frames([record("no-image", shade=None, verdict="OK", line_id="line-3")])
    [stream] = gateway.client("viewer").get("/v1/lines", params={"line": "line-3"}).json()["streams"]
    assert [(f["frame_id"], f["heatmap_url"], f["image_url"]) for f in stream["latest"]] == [("no-image", None, None)]
