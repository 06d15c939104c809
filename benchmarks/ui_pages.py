"""How long the review station's pages take to load with a 100,000-frame store, in a real browser.

    PYTHONPATH=$PWD python -m benchmarks.ui_pages                      # 100,000 frames, 5 loads per page
    PYTHONPATH=$PWD python -m benchmarks.ui_pages --frames 20000 --runs 3

Fills a fresh SQLite store with ``--frames`` judged frames (``benchmarks.store_queries``: 4 lines x 4 cameras
over 30 days, ~90 % OK, rows without images as a plant's store mostly is; the newest hour gets fresh
timestamps so the line view has live throughput) and labels ``--labelled`` of them. The gateway's app runs
in process with a real (tiny) model, that store and the model book, served by uvicorn on loopback
(``tests.unit.serving.conftest.build_gateway``: only Ray's hops are replaced by calls, so the numbers
leave out the Ray hop to the line monitor, which answers from memory).

For each page Chromium (Debian's, driven by Playwright) signs in once, then loads the page ``--runs``
times: the time from navigation until the page has drawn its data (``body[data-ready]``, set by the
page's script after its API calls returned and were rendered). Each API call the pages make is also
timed on its own with httpx. Medians; the load average before and after is recorded, because the CPU is
shared. Writes ``benchmarks/results/ui_pages.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from benchmarks.machine import machine_info, save_result
from benchmarks.store_queries import batches, label_some
from inspectline.registry import ModelRegistry
from inspectline.store import FrameStore
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, missing_browser, serve_app
from tests.unit.serving.conftest import build_gateway, make_tiny_registry, secret

PAGES = ("lines", "queue", "model", "whatif")
API_CALLS = {  # what each page asks when it opens (besides GET /v1/session)
    "lines": [("/v1/lines", {"latest": 6})],
    "queue": [("/v1/frames", {"order": "uncertainty", "labelled": "false", "limit": 50, "offset": 0})],
    "model": [("/v1/models", {}), ("/v1/models/v0002", {})],
    "whatif": [("/v1/models", {}), ("/v1/whatif", {})],
}


def two_versions(root: Path) -> ModelRegistry:
    """The unit tests' tiny model as v0001 and again as v0002 in production (the store's frames name both)."""
    registry = make_tiny_registry(root)
    registry.register(registry.get("v0001").checkpoint, parent="v0001")
    registry.promote("v0002")
    return registry


def fill(store: FrameStore, frames: int, labelled: float) -> float:
    """The store's frames, the newest hour moved to now; returns the seconds it took."""
    started = time.perf_counter()
    shift = datetime.now(timezone.utc) - datetime(2026, 11, 30, tzinfo=timezone.utc)
    for batch in batches(frames):
        store.add_frames([dataclasses.replace(r, received_at=r.received_at + shift) for r in batch])
    label_some(store, share=labelled)
    return time.perf_counter() - started


def time_api(url: str, token: str, runs: int) -> dict[str, float]:
    out = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for calls in API_CALLS.values():
            for path, params in calls:
                key = f"{path}?{'&'.join(f'{k}={v}' for k, v in params.items())}".rstrip("?")
                if key in out:
                    continue
                times = []
                for _ in range(runs + 1):  # the first warms the store's caches and is not counted
                    started = time.perf_counter()
                    response = client.get(path, params=params)
                    times.append(time.perf_counter() - started)
                    response.raise_for_status()
                out[key] = round(1000 * statistics.median(times[1:]), 1)
    return out


def time_pages(url: str, token: str, runs: int) -> dict[str, dict[str, float]]:
    from playwright.sync_api import sync_playwright

    out = {}
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), headless=True, args=list(CHROMIUM_FLAGS)
        )
        page = context.new_page()
        page.goto(f"{url}/ui/login")
        page.get_by_label("API token").fill(token)
        page.get_by_label("Your name").fill("bench")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/ui/lines")
        for name in PAGES:
            times = []
            for _ in range(runs + 1):  # the first load fills the browser's cache of scripts; not counted
                started = time.perf_counter()
                page.goto(f"{url}/ui/{name}")
                page.wait_for_function("Number(document.body.dataset.ready ?? 0) > 0", timeout=60_000)
                times.append(time.perf_counter() - started)
            kept = times[1:]
            out[name] = {"median_ms": round(1000 * statistics.median(kept), 1), "max_ms": round(1000 * max(kept), 1)}
        context.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--labelled", type=float, default=0.1, help="share of the frames labelled")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    reason = missing_browser()
    if reason:
        raise SystemExit(reason)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="ui-pages-") as tmp:
        root = Path(tmp)
        registry = two_versions(root)
        gateway = build_gateway(root / "gateway", registry, store_dir=root / "store")
        with FrameStore(gateway.store_config) as store:
            fill_s = fill(store, args.frames, args.labelled)
            labelled = store.count(labelled=True)
        token = secret("reviewer")
        with serve_app(gateway.app) as url:
            api = time_api(url, token, args.runs)
            pages = time_pages(url, token, args.runs)
        gateway.monitor.recorder.close()
        gateway.services.frames.outbox.journal.close()
    result = {
        "benchmark": "ui_pages",
        "frames": args.frames,
        "labelled_frames": labelled,
        "runs": args.runs,
        "fill_seconds": round(fill_s, 1),
        "protocol": "SQLite store; in-process gateway app under uvicorn; Chromium headless on loopback; "
        "page load = navigation until the page drew its data; medians after one warm-up load",
        "pages": pages,
        "api_ms": api,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "machine": machine_info(),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = save_result("ui_pages", result)
    print(f"{args.frames} frames ({labelled} labelled), load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"{'page':<10} {'median ms':>10} {'max ms':>10}")
    for name, t in pages.items():
        print(f"/ui/{name:<6} {t['median_ms']:>10.1f} {t['max_ms']:>10.1f}")
    print(f"{'API call':<70} {'median ms':>10}")
    for call, ms in api.items():
        print(f"{call:<70} {ms:>10.1f}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
