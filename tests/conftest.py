"""Shared fixtures: tiny real image datasets on disk in every supported layout, a tiny config, one
real trained model per test session, and the browser rig (see ``tests/browser.py``).

The images are synthetic but learnable: OK frames are a smooth cell-like gradient with noise and
bus bars; DEFECTIVE frames add a dark crack. A ResNet18 at 32 px separates them in a few epochs.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from inspectline.imaging import encode_png
from tests.browser import CHROMIUM, CHROMIUM_FLAGS, missing_browser, output_dir
from tests.helpers import make_cell, tiny_config, write_dataset
from tests.system_packages import missing


@pytest.fixture(scope="session")
def folder_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder_dataset")
    write_dataset(root)
    return root


@pytest.fixture(scope="session")
def mvtec_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mvtec") / "cell"
    rng = np.random.default_rng(1)
    layout = {("train", "good"): 10, ("test", "good"): 6, ("test", "crack"): 5, ("test", "finger"): 5}
    for (split, kind), n in layout.items():
        folder = root / split / kind
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i:03d}.png").write_bytes(encode_png(make_cell(rng, kind != "good")))
    (root / "ground_truth" / "crack").mkdir(parents=True)  # present in real MVTec, must be ignored
    return root


@pytest.fixture(scope="session")
def manifest_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV manifest with a group column: 12 parts, 4 frames each, labels by part."""
    root = tmp_path_factory.mktemp("manifest")
    rng = np.random.default_rng(2)
    (root / "frames").mkdir()
    rows = []
    for part in range(12):
        defective = part % 3 == 0
        for view in range(4):
            rel = f"frames/part{part:02d}_{view}.png"
            (root / rel).write_bytes(encode_png(make_cell(rng, defective)))
            rows.append(
                {
                    "path": rel,
                    "label": "defective" if defective else "ok",
                    "group": f"part{part:02d}",
                    "station": "A" if view < 2 else "B",
                }
            )
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "group", "station"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture(scope="session")
def trained_run(folder_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    """One real training run, shared by the tests that need a trained checkpoint."""
    from inspectline.training import run_training

    workdir = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(folder_dataset, workdir)
    return run_training(cfg, progress=False)


# --- the browser rig -------------------------------------------------------------------------------
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test, so the page fixture knows whether the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def browser_context() -> Iterator:
    """Debian's Chromium with a fresh user-data dir, driven by Playwright; skips with the install command.

    Module-scoped on purpose: Playwright's sync API keeps an event loop running on the main thread
    while it is open, and every later ``asyncio.run`` in the session would fail.
    """
    reason = missing_browser()
    if reason:
        missing("chromium", reason)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="inspect-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_FLAGS),
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def test_output(request: pytest.FixtureRequest) -> Path:
    """This test's output folder: ``test-results/<test id>/`` under the repository root."""
    return output_dir(request.config.rootpath, request.node.nodeid)


@pytest.fixture
def page(browser_context, request: pytest.FixtureRequest, test_output: Path) -> Iterator:
    """A new tab with no cookies; a failing test leaves ``failure.png`` in its output folder."""
    browser_context.clear_cookies()
    tab = browser_context.new_page()
    yield tab
    call = getattr(request.node, "report_call", None)
    if call is not None and call.failed:
        tab.screenshot(path=str(test_output / "failure.png"), full_page=True)
    tab.close()


@pytest.fixture
def screenshot(page, test_output: Path) -> Callable[[str], Path]:
    """``screenshot("queue")`` saves the whole page as ``test-results/<test id>/queue.png``."""

    def take(name: str) -> Path:
        path = test_output / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
