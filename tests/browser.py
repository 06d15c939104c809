"""The browser test rig: Debian's Chromium driven by Playwright for Python, and a loopback web server.

Pages are tested in a real browser, as a quality engineer uses them. Chromium comes from Debian
(``apt-get install -y chromium``, as ``.ci/run`` does); Playwright drives it through its executable path
and never downloads a browser of its own (no ``playwright install``). Each session gets a fresh
user-data dir, and every test's screenshots go to ``test-results/<test>/`` under the repository root.

    def test_page(page, screenshot):                 # fixtures in tests/conftest.py
        with serve_app(app) as url:
            page.goto(url)
            screenshot("line-view")                  # test-results/<test>/line-view.png
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

CHROMIUM = Path("/usr/bin/chromium")
INSTALL = "apt-get install -y chromium"
# No sandbox (CI runs as root), no GPU, and nothing that talks to the network on its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
RESULTS_DIR = "test-results"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (with the command that fixes it), or None when they can."""
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM}: {INSTALL}"
    try:
        import playwright.sync_api  # noqa: F401 - only whether it imports
    except ImportError:
        return "Playwright for Python is missing: pip install -e '.[dev]' (never `playwright install`)"
    return None


def output_dir(root: Path, nodeid: str) -> Path:
    """``<root>/test-results/<test id with unsafe characters replaced>``, created empty of nothing."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", nodeid).strip("-")
    folder = Path(root) / RESULTS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def serve_app(app, *, timeout_s: float = 20.0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            msg = f"uvicorn did not start on 127.0.0.1:{port} within {timeout_s} s"
            raise RuntimeError(msg)
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout_s)
        sock.close()


def colourfulness(page, selector: str) -> float:
    """Mean |red - blue| of the image at ``selector`` as the browser decoded it: 0 for a gray frame, tens for
    a heatmap's colours (it must be same-origin or an object URL, so a canvas may read it)."""
    return page.evaluate(
        """selector => {
            const img = document.querySelector(selector);
            const canvas = document.createElement("canvas");
            [canvas.width, canvas.height] = [img.naturalWidth, img.naturalHeight];
            const context = canvas.getContext("2d");
            context.drawImage(img, 0, 0);
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let sum = 0;
            for (let i = 0; i < data.length; i += 4) sum += Math.abs(data[i] - data[i + 2]);
            return sum / (data.length / 4);
        }""",
        selector,
    )
