"""The review station in a real browser: the gateway's app (real model, store, heatmaps) served by uvicorn.

Frames go into the store the way the recorder puts them there; the page sees them through the API like any
other frames. Each test signs in through the login page with its own token and saves a screenshot of the page
it exercised under ``test-results/<test>/``. (No ``asyncio.run`` here: Playwright's sync API keeps an event
loop on this thread.)
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from inspectline.imaging import decode_image, encode_png
from inspectline.serving.records import StreamStatus
from inspectline.whatif import what_if
from tests.browser import colourfulness, serve_app
from tests.unit.serving.conftest import (  # noqa: F401 - tiny_registry is a fixture
    build_gateway,
    make_tiny_registry,
    secret,
    tiny_registry,
)
from tests.unit.store.factories import record

pytestmark = pytest.mark.integration
SIZE = 96


def frame_image(n: int) -> bytes:
    """A gray cell-like frame: a bright square with a dark crack whose place depends on ``n``."""
    rng = np.random.default_rng(n)
    image = np.clip(rng.normal(150, 12, (SIZE, SIZE)), 0, 255).astype(np.uint8)
    row = 10 + (n * 13) % (SIZE - 20)
    image[row : row + 3, 8:-8] = 40
    return encode_png(image)


def frames(count: int, *, start: int = 0, line_id: str = "line-1", camera_id: str = "cam-1", seconds_ago: float = 20):
    """``count`` judged frames received just now, p(defect) spread over (0, 1), every image kept."""
    now = datetime.now(timezone.utc)
    out = []
    for n in range(start, start + count):
        p = round(0.05 + 0.9 * ((n * 7) % 20) / 19, 4)
        verdict = "DEFECTIVE" if p >= 0.5 else "OK"
        out.append(
            record(
                f"f{n}",
                line_id=line_id,
                camera_id=camera_id,
                verdict=verdict,
                p=p,
                shade=None,
                image=frame_image(n),
                content_sha256=None,
                received_at=now - timedelta(seconds=seconds_ago - n),
                captured_at=now - timedelta(seconds=seconds_ago + 1 - n),
            )
        )
    return out


@pytest.fixture
def station(tmp_path, tiny_registry) -> Iterator[tuple]:  # noqa: F811 - the imported fixture
    """(gateway, base URL): the review station's app on a loopback port."""
    gateway = build_gateway(tmp_path / "gateway", tiny_registry)
    with serve_app(gateway.app) as url:
        yield gateway, url
    gateway.monitor.recorder.close()
    gateway.services.frames.outbox.journal.close()


def sign_in(page, url: str, role: str, *, name: str = "ana@plant", then: str = "/ui/lines") -> None:
    page.goto(f"{url}/ui/login?next={then}")
    page.get_by_label("API token").fill(secret(role))
    page.get_by_label("Your name").fill(name)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(then) + "$"))
    ready(page)


def ready(page, after: int = 0) -> int:
    """Wait until the page has shown fresh data more than ``after`` times; returns the count."""
    page.wait_for_function(f"Number(document.body.dataset.ready ?? 0) > {after}", timeout=30_000)
    return int(page.evaluate("document.body.dataset.ready"))


def test_frames_appear_in_the_line_view_without_a_reload(station, page, screenshot):
    gateway, url = station
    with gateway.store() as store:
        store.add_frames(frames(3))
    gateway.live = [StreamStatus("line-1", "cam-1", 3, 1 / 3, 0.0, "alarm", ("output",), 0.001)]
    sign_in(page, url, "reviewer")
    cam1 = page.get_by_role("region", name="line line-1, camera cam-1")
    assert cam1.locator("li.tile").count() == 3
    assert cam1.locator("[data-field=drift]").inner_text() == "ALARM: output"
    assert cam1.locator("[data-field=defect_ratio]").inner_text() == "33.3 %"
    with gateway.store() as store:
        store.add_frames(frames(2, start=3, camera_id="cam-2"))
    page.get_by_role("region", name="line line-1, camera cam-2").wait_for(timeout=15_000)  # the next poll
    cam2 = page.get_by_role("region", name="line line-1, camera cam-2")
    assert sorted(cam2.locator("li.tile").evaluate_all("els => els.map(e => e.dataset.frameId)")) == ["f3", "f4"]
    assert cam2.locator("[data-field=throughput]").inner_text() == "2"  # frames in the last minute
    page.wait_for_function("[...document.querySelectorAll('li.tile img')].every(i => i.complete && i.naturalWidth)")
    screenshot("line-view")


def test_three_frames_labelled_with_the_keyboard_reach_the_store_and_undo_takes_one_back(station, page, screenshot):
    gateway, url = station
    with gateway.store() as store:
        store.add_frames(frames(8))
        least_sure = [f.id for f in store.query(order="uncertainty", labelled=False, limit=3)]
    sign_in(page, url, "reviewer", name="ana@plant", then="/ui/queue")
    left = page.locator("#left")
    assert left.inner_text() == "8 left to review"
    count = ready(page)
    for key in ("o", "d", "o"):
        page.keyboard.press(key)
        count = ready(page, count)
    assert left.inner_text() == "5 left to review"
    with gateway.store() as store:
        labelled = {f.id: (f.label, f.labelled_by) for f in store.query(labelled=True)}
    assert labelled == {
        least_sure[0]: ("ok", "ana@plant"),
        least_sure[1]: ("defective", "ana@plant"),
        least_sure[2]: ("ok", "ana@plant"),
    }
    page.keyboard.press("u")
    ready(page, count)
    assert page.locator("#said").inner_text().startswith("Label of frame")
    with gateway.store() as store:
        assert store.get(least_sure[2]).label is None and store.count(labelled=True) == 2
    assert left.inner_text() == "6 left to review"
    screenshot("queue")


def test_skip_and_arrows_move_through_a_filtered_queue_least_sure_first(station, page):
    gateway, url = station
    with gateway.store() as store:
        store.add_frames(frames(6) + frames(3, start=6, camera_id="cam-2"))
        order = [f.frame_id for f in store.query(order="uncertainty", labelled=False, camera="cam-2")]
    sign_in(page, url, "reviewer", then="/ui/queue?camera=cam-2")
    title = page.locator("#frame-title [data-field=frame_id]")
    assert page.locator("#left").inner_text() == "3 left to review" and title.inner_text() == order[0]
    seen = []
    count = ready(page)
    for key in ("s", "ArrowRight", "ArrowLeft", "ArrowLeft"):
        page.keyboard.press(key)
        count = ready(page, count)
        seen.append(title.inner_text())
    assert seen == [order[1], order[2], order[1], order[0]]
    with gateway.store() as store:
        assert store.count(labelled=True) == 0  # moving labels nothing


def shown(page, url: str, timeout_ms: int = 30_000) -> None:
    """Wait until the queue's large image shows ``url`` and has loaded."""
    page.wait_for_function(
        "url => { const img = document.getElementById('frame-image');"
        " return img.dataset.shown === url && img.complete && img.naturalWidth > 0; }",
        arg=url,
        timeout=timeout_ms,
    )


def test_a_heatmap_opens_over_the_frame_in_the_queue(station, page, screenshot):
    gateway, url = station
    with gateway.store() as store:
        store.add_frames(frames(2))
        first = store.query(order="uncertainty", limit=1)[0]
    sign_in(page, url, "reviewer", then="/ui/queue")
    shown(page, f"/v1/frames/{first.id}/image")
    assert colourfulness(page, "#frame-image") == 0  # the gray frame as the camera sent it
    page.keyboard.press("h")
    shown(page, f"/v1/frames/{first.id}/heatmap", timeout_ms=60_000)  # computed now by the heatmap service
    assert colourfulness(page, "#frame-image") > 20  # the colour map over it
    image = page.locator("#frame-image")
    assert image.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [SIZE, SIZE]
    assert page.get_by_role("button", name="Heatmap").get_attribute("aria-pressed") == "true"
    assert image.get_attribute("alt").startswith(f"heatmap of frame {first.frame_id}")
    cached = list(Path(gateway.store_config.storage_url, "heatmaps").rglob("*.png"))
    assert cached and all(p.name.startswith(first.image_sha256) for p in cached)  # kept beside the image
    shot = decode_image(screenshot("heatmap").read_bytes())
    assert shot.shape[0] > SIZE


def test_moving_the_threshold_changes_the_recall_the_what_if_shows(station, page, screenshot):
    gateway, url = station
    with gateway.store() as store:
        store.add_frames(frames(20))
        for n, frame in enumerate(store.query(limit=20)):  # labels that mostly agree with the scores
            store.set_label(frame.id, "defective" if frame.defect_probability > 0.3 + 0.05 * (n % 5) else "ok", "ana")
        labelled = store.labelled()
    sign_in(page, url, "reviewer", then="/ui/whatif")
    recall = page.locator("#rates tr[data-rate=recall] td[data-col=proposed]")
    count = ready(page)
    expected = what_if(labelled, 0.5, 0.0)
    assert recall.inner_text() == f"{100 * expected.recall:.1f} %"
    number = page.get_by_label("Threshold value")
    number.fill("0.9")
    number.dispatch_event("change")
    ready(page, count)
    moved = what_if(labelled, 0.9, 0.0)
    assert moved.recall < expected.recall
    assert recall.inner_text() == f"{100 * moved.recall:.1f} %"
    assert page.locator("#scored").inner_text().startswith("20 labelled frames of v0001")
    screenshot("whatif")


def test_an_admin_commits_the_operating_point_chosen_in_the_what_if(tmp_path, page, screenshot):
    registry = make_tiny_registry(tmp_path / "own-registry")  # this test changes the version's operating point
    gateway = build_gateway(tmp_path / "gateway", registry)
    with gateway.store() as store:
        store.add_frames(frames(10))
        for n, frame in enumerate(store.query(limit=10)):
            store.set_label(frame.id, "defective" if n % 2 else "ok", "ana")
    with serve_app(gateway.app) as url:
        sign_in(page, url, "admin", name="ana@plant", then="/ui/whatif")
        count = ready(page)
        for label, value in (("Threshold value", "0.35"), ("UNSURE band value", "0.05")):
            page.get_by_label(label).fill(value)
            page.get_by_label(label).dispatch_event("change")
        ready(page, count)
        page.wait_for_function(  # a busy machine may score the threshold alone first, then both
            "document.getElementById('proposed-head').textContent === 'proposed (0.35 ± 0.05)'"
        )
        page.get_by_label("Why").fill("fewer escapes on this week's frames")
        page.get_by_role("button", name="Commit operating point").click()
        page.wait_for_function("document.getElementById('committed').textContent.startsWith('Committed')")
        screenshot("whatif-committed")
    gateway.monitor.recorder.close()
    gateway.services.frames.outbox.journal.close()
    point = registry.operating_point("v0001")
    assert (point.threshold, point.unsure_band, point.actor) == (0.35, 0.05, "it-admin")
    assert point.reason == "fewer escapes on this week's frames (chosen by ana@plant)"
    assert point.expected["frames"] == 10.0 and "10 labelled frames of v0001" in point.basis


def test_a_read_only_token_sees_the_queue_but_cannot_label(station, page, screenshot):
    gateway, url = station
    with gateway.store() as store:
        store.add_frames(frames(3))
        first = store.query(limit=1)[0].id
    sign_in(page, url, "viewer", then="/ui/queue")
    assert "Read-only token" in page.locator("#notice").inner_text()
    assert page.get_by_role("button", name="OK").is_disabled()
    assert page.get_by_role("button", name="Defective").is_disabled()
    count = int(page.evaluate("document.body.dataset.ready"))
    page.keyboard.press("o")
    ready(page, count)
    assert "read only" in page.locator("#notice").inner_text()
    # and the API refuses, whatever the page offers
    status = page.evaluate(
        """async ([id]) => {
             const token = sessionStorage.getItem("inspect.token");
             const headers = {"Content-Type": "application/json", Authorization: `Bearer ${token}`};
             const body = JSON.stringify({label: "ok", reviewer: "mallory"});
             return (await fetch(`/v1/frames/${id}/label`, {method: "PUT", headers, body})).status; }""",
        [first],
    )
    assert status == 403
    with gateway.store() as store:
        assert store.count(labelled=True) == 0
    screenshot("read-only")


def test_the_model_page_shows_the_version_in_service_and_its_history(station, page, screenshot):
    _, url = station
    sign_in(page, url, "viewer", then="/ui/model")
    assert page.locator("#in-service [data-field=production]").inner_text() == "v0001"
    assert page.locator("#model-card [data-field=version]").inner_text() == "v0001"
    assert page.locator("#history tbody tr").count() >= 1
    screenshot("model")
