"""The review station's pages as the gateway serves them: templates, static files, and what stays out of the API."""

from __future__ import annotations

import re

import pytest

from inspectline.serving import ui


@pytest.mark.parametrize("page", ["login", *ui.PAGES])
def test_every_page_is_served_without_a_token_and_loads_its_own_script(gateway, page):
    response = gateway.client().get(f"/ui/{page}")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    scripts = re.findall(r'<script type="module" src="([^"]+)"', html)
    assert scripts == [ui.static_url(f"{page}.js")] and re.search(r"\?v=[0-9a-f]{12}$", scripts[0])
    assert '<html lang="en">' in html and 'href="#main"' in html  # language and a skip link for screen readers
    if page != "login":
        assert 'aria-current="page"' in html and all(f'href="/ui/{p}"' in html for p in ui.PAGES)


def test_static_files_are_served_with_their_type_and_cached_by_content(gateway):
    client = gateway.client()
    script = client.get(ui.static_url("queue.js"))
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "immutable" in script.headers["cache-control"]
    assert client.get("/ui/static/ui.css").headers["content-type"].startswith("text/css")
    for name in ("nothing.js", "ui.py", "..%2Fui.py"):
        assert client.get(f"/ui/static/{name}").status_code in (400, 404), name


def test_the_root_goes_to_the_line_view_and_an_unknown_page_lists_the_pages(gateway):
    client = gateway.client()
    root = client.get("/ui", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/ui/lines"
    missing = client.get("/ui/settings")
    assert missing.status_code == 404 and "/ui/queue" in missing.text and "/ui/whatif" in missing.text


def test_the_pages_stay_out_of_the_api_document(gateway):
    paths = gateway.client().get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]
    assert {"/v1/lines", "/v1/whatif", "/v1/frames/{id}/heatmap", "/v1/models/{version}/operating-points"} <= set(paths)
