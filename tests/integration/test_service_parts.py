"""Part verdicts on the running service: three cameras' frames of one part give one stored, counted verdict.

The service fixture's inspect.yaml declares ``PARTS_LINE`` with one station whose three cameras are all
required and a webhook output to the test's receiver (``conftest.inspect_yaml``); frames are posted as
the line's cameras would, with a ``part_id``.
"""

from __future__ import annotations

import uuid

import httpx
import numpy as np
import pytest

from inspectline.imaging import encode_png
from tests.helpers import make_cell
from tests.integration.conftest import PARTS_CAMERAS, PARTS_DEADLINE_MS, PARTS_LINE, wait_for
from tests.integration.test_service_metrics import scrape, total

pytestmark = pytest.mark.integration


def post_views(url: str, part_id: str, cameras: tuple[str, ...], *, defective: int | None = 1) -> dict[str, dict]:
    """One frame per camera of ``part_id`` (the ``defective``-th shows a defect); the service's answers by camera."""
    answers = {}
    for i, camera in enumerate(cameras):
        image = encode_png(make_cell(np.random.default_rng(i), defective=i == defective))
        params = {"line_id": PARTS_LINE, "camera_id": camera, "part_id": part_id, "frame_id": f"{part_id}-{camera}"}
        response = httpx.post(
            f"{url}/v1/frames", content=image, headers={"Content-Type": "image/png"}, params=params, timeout=120
        )
        response.raise_for_status()
        answers[camera] = response.json()
    return answers


def rule(verdicts: set[str], missing: bool) -> str:
    """The part rule, written out here independently of ``serving.parts``."""
    if "DEFECTIVE" in verdicts:
        return "DEFECTIVE"
    if "UNSURE" in verdicts:
        return "UNSURE"
    return "NO_RESULT" if missing else "OK"


def stored_part(url: str, part_id: str) -> dict | None:
    response = httpx.get(f"{url}/v1/parts/{part_id}", timeout=30)
    return response.json() if response.status_code == 200 else None


def test_three_views_give_one_part_verdict_by_the_rule_stored_counted_and_delivered(service, parts_receiver):
    part_id = f"P-{uuid.uuid4().hex[:8]}"
    before = scrape(service.url)
    answers = post_views(service.url, part_id, PARTS_CAMERAS)
    expected = rule({a["verdict"] for a in answers.values()}, missing=False)
    wait_for(lambda: stored_part(service.url, part_id) is not None, timeout_s=60, what=f"part {part_id} stored")
    [verdict] = stored_part(service.url, part_id)["stations"]
    assert (verdict["line_id"], verdict["station"], verdict["verdict"]) == (PARTS_LINE, "final", expected)
    assert not verdict["deadline_missed"] and verdict["missing"] == []
    assert {v["camera_id"]: (v["frame_id"], v["verdict"]) for v in verdict["views"]} == {
        c: (a["frame_id"], a["verdict"]) for c, a in answers.items()
    }
    after = scrape(service.url)
    counted = total(after, "inspect_parts_total", line=PARTS_LINE, verdict=expected) - total(
        before, "inspect_parts_total", line=PARTS_LINE, verdict=expected
    )
    assert counted == 1
    decided = total(after, "inspect_part_decision_seconds_count", line=PARTS_LINE) - total(
        before, "inspect_part_decision_seconds_count", line=PARTS_LINE
    )
    assert decided == 1
    listed = httpx.get(f"{service.url}/v1/parts", params={"line": PARTS_LINE, "verdict": expected}, timeout=30).json()
    assert part_id in [p["part_id"] for p in listed["parts"]]

    def delivered() -> list[dict]:
        return [d for d in parts_receiver.received if d["part_id"] == part_id]

    wait_for(lambda: delivered(), timeout_s=60, what=f"part {part_id} delivered to the line's webhook")
    [sent] = delivered()
    assert (sent["verdict"], sent["station"], sent["disposition"]) == (expected, "final", verdict["disposition"])


def test_a_part_whose_view_never_comes_is_no_result_after_its_deadline(service):
    part_id = f"P-{uuid.uuid4().hex[:8]}"
    before = scrape(service.url)
    answers = post_views(service.url, part_id, PARTS_CAMERAS[:2], defective=None)  # the third camera sends nothing
    timeout = PARTS_DEADLINE_MS / 1000 + 60
    wait_for(lambda: stored_part(service.url, part_id) is not None, timeout_s=timeout, what=f"part {part_id} decided")
    [verdict] = stored_part(service.url, part_id)["stations"]
    assert verdict["missing"] == [PARTS_CAMERAS[2]] and verdict["deadline_missed"]
    seen = {a["verdict"] for a in answers.values()}
    assert seen == {"OK"}, f"the model judged a defect-free cell {seen}; this test needs OK views"
    assert verdict["verdict"] == rule(seen, missing=True) == "NO_RESULT"
    assert verdict["decision_seconds"] >= PARTS_DEADLINE_MS / 1000
    after = scrape(service.url)
    missed = total(after, "inspect_parts_deadline_missed_total", line=PARTS_LINE) - total(
        before, "inspect_parts_deadline_missed_total", line=PARTS_LINE
    )
    assert missed == 1
