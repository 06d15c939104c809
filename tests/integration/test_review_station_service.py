"""The review station on the real service: Ray Serve from serve_config.yaml (Gateway, Inspectors, LineMonitor and
the Heatmaps worker), frames posted over HTTP, the pages in Chromium.

The session's service runs without tokens, so the login takes an empty token. (No ``asyncio.run`` here:
Playwright's sync API keeps an event loop on this thread; the service fixture comes first in each signature,
so Ray is up before the browser.)
"""

from __future__ import annotations

import re

import httpx
import numpy as np
import pytest

from inspectline.imaging import decode_image, encode_png
from tests.browser import colourfulness
from tests.helpers import make_cell
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration
IDS = {"line_id": "station", "camera_id": "cam-1"}


def test_frames_posted_to_the_service_appear_in_the_line_view_and_open_with_their_heatmap(service, page, screenshot):
    page.goto(f"{service.url}/ui/login?next=/ui/lines")
    page.get_by_label("Your name").fill("ana@plant")
    page.get_by_role("button", name="Sign in").click()  # an empty token: this service checks none
    page.wait_for_url(re.compile(r"/ui/lines$"))
    rng = np.random.default_rng(12)
    for n in range(3):
        body = encode_png(make_cell(rng, defective=n != 1))
        params = IDS | {"frame_id": f"station-{n}"}
        response = httpx.post(
            f"{service.url}/v1/frames", content=body, headers={"Content-Type": "image/png"}, params=params, timeout=60
        )
        assert response.status_code == 200, response.text
    # the recorder stores them a moment later; the page's next poll shows them, with no reload
    tiles = page.get_by_role("region", name="line station, camera cam-1").locator("li.tile")
    wait_for(lambda: tiles.count() == 3, timeout_s=60, what="three frames in the line view")
    assert sorted(tiles.evaluate_all("els => els.map(e => e.dataset.frameId)")) == [f"station-{n}" for n in range(3)]

    # the live half of the line view comes from the LineMonitor replica over its handle
    summary = httpx.get(f"{service.url}/v1/lines", params={"line": "station"}, timeout=60).json()
    assert summary["monitor"] == "ok" and [s["window_frames"] for s in summary["streams"]] == [3]

    frames = httpx.get(f"{service.url}/v1/frames", params={"line": "station", "order": "oldest"}).json()["frames"]
    first = frames[0]
    raw = httpx.get(f"{service.url}/v1/frames/{first['id']}/heatmap", params={"raw": "true"}, timeout=120)
    assert raw.status_code == 200, raw.text
    image = decode_image(httpx.get(f"{service.url}{first['image_url']}").content)
    heat = decode_image(raw.content)
    assert heat.dtype == np.uint16 and heat.shape == image.shape[:2] and heat.max() == 65535

    page.goto(f"{service.url}/ui/queue?line=station&labelled=&focus={first['id']}")
    page.wait_for_function("Number(document.body.dataset.ready ?? 0) > 0", timeout=30_000)
    page.keyboard.press("h")
    page.wait_for_function(
        "url => { const img = document.getElementById('frame-image');"
        " return img.dataset.shown === url && img.complete && img.naturalWidth > 0; }",
        arg=f"/v1/frames/{first['id']}/heatmap",
        timeout=120_000,
    )
    assert colourfulness(page, "#frame-image") > 20  # the overlay, not the gray frame
    screenshot("queue-heatmap-service")
