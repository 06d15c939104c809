"""The review station's pages at ``/ui``, served by the gateway itself: no other server to run.

    /ui            -> /ui/lines
    /ui/login      the API token (kept in the browser's sessionStorage) and the reviewer's name
    /ui/lines      line view: per line and camera the latest frames with heatmap thumbnails, throughput,
                   defect share and drift; refreshes itself every few seconds
    /ui/queue      review queue: least sure first, filters, the frame large with its heatmap, keys o/d/s,
                   arrows, u to undo, the count of what is left
    /ui/model      model versions: production/shadow, operating point, metrics, exports' parity, lineage,
                   promotion history and the evaluation report with its plots
    /ui/whatif     threshold what-if: move the threshold and UNSURE band, read recall, precision,
                   false-reject rate and UNSURE share on labelled frames, commit the operating point

The pages are server-rendered Jinja templates (``ui/templates``) holding the markup, the forms and the
``<template>`` rows a page fills in; their data comes from the API, because the token lives in the
browser's sessionStorage (never a cookie), so only the page's script can send it: a small plain ES module
per page (``ui/static``), no front-end library. The pages are not part of the API's OpenAPI document.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from inspectline.store import ORDERS, VERDICTS

UI_DIR = Path(__file__).resolve().parent / "ui"
STATIC_DIR = UI_DIR / "static"
PAGES = {"lines": "Line", "queue": "Review queue", "model": "Model", "whatif": "Threshold what-if"}
_MEDIA = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
POLL_SECONDS = 2.0  # the line view's refresh

router = APIRouter(include_in_schema=False)


@functools.cache
def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=UI_DIR / "templates")
    templates.env.globals |= {"static": static_url, "pages": PAGES, "verdicts": VERDICTS, "orders": ORDERS}
    return templates


@functools.cache
def static_url(name: str) -> str:
    """The file's URL with a digest of its content, so a new release is never served from a stale cache."""
    digest = hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    return f"/ui/static/{name}?v={digest}"


@router.get("/ui")
async def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/lines", status_code=307)


@router.get("/ui/login", response_class=HTMLResponse)
async def login_page(request: Request) -> HTMLResponse:
    return _templates().TemplateResponse(request, "login.html", {"page": "login", "title": "Sign in"})


@router.get("/ui/static/{name}")
async def static_file(name: Annotated[str, PathParam(pattern=r"^[a-z][a-z0-9_-]*\.[a-z]+$")]) -> FileResponse:
    path = STATIC_DIR / name
    media = _MEDIA.get(path.suffix)
    if media is None or not path.is_file():
        return HTMLResponse("no such file", status_code=404)  # type: ignore[return-value]
    return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=31536000, immutable"})


@router.get("/ui/{page}", response_class=HTMLResponse)
async def page(request: Request, page: str) -> HTMLResponse:
    if page not in PAGES:
        pages = ", ".join(f"/ui/{p}" for p in ("login", *PAGES))
        return HTMLResponse(f"<!doctype html><title>Not found</title><p>No such page; the pages are {pages}</p>", 404)
    context = {"page": page, "title": PAGES[page], "poll_seconds": POLL_SECONDS}
    return _templates().TemplateResponse(request, f"{page}.html", context)
