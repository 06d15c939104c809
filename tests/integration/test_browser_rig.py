"""The browser rig works end to end: Chromium renders a heatmap served over loopback, and the screenshot
shows it. The review station's page tests stand on these fixtures."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response

from inspectline.explain import Explainer, overlay_png
from inspectline.imaging import decode_image
from tests.browser import serve_app
from tests.unit.test_explain import frame, make_predictor

pytestmark = pytest.mark.integration


def heatmap_app(png: bytes) -> FastAPI:
    app = FastAPI()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return (
            "<!doctype html><html lang='en'><title>Heatmap</title>"
            "<body style='margin:0;background:#fff'><h1 style='margin:0;font-size:16px'>Frame 7</h1>"
            "<img id='heatmap' alt='heatmap of frame 7' src='/heatmap.png'></body></html>"
        )

    @app.get("/heatmap.png")
    def heatmap() -> Response:
        return Response(png, media_type="image/png")

    return app


def test_chromium_renders_a_heatmap_served_on_loopback(page, screenshot, test_output):
    image = frame(8, (96, 160))
    [heatmap] = Explainer.from_predictor(make_predictor()).explain([image])
    png = overlay_png(image, heatmap)
    with serve_app(heatmap_app(png)) as url:
        page.goto(url)
        img = page.locator("#heatmap")
        page.wait_for_function("document.getElementById('heatmap').complete")
        assert img.evaluate("el => [el.naturalWidth, el.naturalHeight]") == [160, 96]
        assert page.get_by_role("img", name="heatmap of frame 7").is_visible()
        shot = screenshot("heatmap")
        box = img.bounding_box()
    assert shot == test_output / "heatmap.png" and shot.parent.parent.name == "test-results"
    # the screenshot holds the overlay's pixels where the image sits: the browser really drew it
    pixels = decode_image(shot.read_bytes())[..., :3]
    x, y = round(box["x"]), round(box["y"])
    drawn = pixels[y : y + 96, x : x + 160].astype(int)
    expected = decode_image(png).astype(int)
    assert drawn.shape == expected.shape and np.abs(drawn - expected).mean() < 3.0
