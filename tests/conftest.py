"""Shared fixtures: tiny real image datasets on disk in every supported layout, a tiny config and one
real trained model per test session.

The images are synthetic but learnable: OK frames are a smooth cell-like gradient with noise and
bus bars; DEFECTIVE frames add a dark crack. A ResNet18 at 32 px separates them in a few epochs.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from inspectline.imaging import encode_png
from tests.helpers import make_cell, tiny_config, write_dataset


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


# Programs some tests run for real; without one, those tests skip. `make test` ends with what is missing.
EXTERNAL_PROGRAMS = {
    "promtool": "apt-get install -y prometheus",
    "mosquitto": "apt-get install -y mosquitto",
    "systemd-analyze": "apt-get install -y systemd",
}


def find_program(name: str) -> str | None:
    """``name`` on PATH, or in /usr/sbin where Debian puts daemons (not on a normal user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")


def pytest_terminal_summary(terminalreporter) -> None:
    missing = {name: how for name, how in EXTERNAL_PROGRAMS.items() if find_program(name) is None}
    if missing:
        terminalreporter.write_sep("-", "programs missing here: the tests that run them were skipped")
        for name, how in missing.items():
            terminalreporter.write_line(f"{name}: {how}")
