"""The `inspect` console script end to end, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inspectline.imaging import decode_image
from tests.helpers import IMAGE_SIDE, tiny_config

pytestmark = pytest.mark.integration
INSPECT = str(Path(sys.executable).with_name("inspect"))
IMAGE_SIDE_2D = (IMAGE_SIDE, IMAGE_SIDE)


def run(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([INSPECT, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def workdir(folder_dataset: Path, tmp_path_factory) -> Path:
    """A working directory with inspect.yaml and one model trained through the CLI."""
    work = tmp_path_factory.mktemp("cli")
    cfg = tiny_config(folder_dataset, work)
    (work / "inspect.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    proc = run("train", "--quiet", "--promote", cwd=work)
    assert "registered v0001" in proc.stdout and "promoted v0001 to production" in proc.stdout
    return work


def test_train_registers_and_reports(workdir: Path):
    report = workdir / "models" / "v0001" / "report" / "report.md"
    assert "## Worst mistakes, with heatmaps" in report.read_text()
    listing = run("models", "list", cwd=workdir).stdout
    assert "* v0001" in listing and "resnet18" in listing
    card = json.loads(run("models", "show", "v0001", cwd=workdir).stdout)
    assert card["version"] == "v0001" and card["preprocessing"]["image_size"] == 32


def test_predict_prints_verdicts_and_names_bad_files(workdir: Path, folder_dataset: Path):
    good = sorted((folder_dataset / "defective").glob("*.png"))[:2]
    bad = workdir / "not_an_image.png"
    bad.write_text("nope")
    proc = run("predict", "--json", *map(str, good), str(bad), cwd=workdir, ok=False)
    assert proc.returncode == 1
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(r["model_version"] == "v0001" for r in rows[:2])
    assert all(r["verdict"] in ("OK", "DEFECTIVE") and 0 <= r["defect_probability"] <= 1 for r in rows[:2])
    assert rows[2]["path"].endswith("not_an_image.png") and "not a recognised image" in rows[2]["error"]


def test_predict_writes_heatmap_overlays_next_to_the_verdicts(workdir: Path, folder_dataset: Path):
    cells = sorted((folder_dataset / "defective").glob("*.png"))[:2]
    twin = workdir / "twin" / cells[0].name  # same file name from another folder: must not overwrite
    twin.parent.mkdir(exist_ok=True)
    twin.write_bytes(cells[0].read_bytes())
    proc = run("predict", "--json", "--heatmap", "heatmaps", *map(str, [*cells, twin]), cwd=workdir)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    names = [Path(r["heatmap"]).name for r in rows]
    assert names == [f"{cells[0].stem}.heatmap.png", f"{cells[1].stem}.heatmap.png", f"{cells[0].stem}-2.heatmap.png"]
    for row in rows:
        overlay = decode_image((workdir / row["heatmap"]).read_bytes())
        assert overlay.shape == (*IMAGE_SIDE_2D, 3) and row["verdict"] in ("OK", "DEFECTIVE")


def test_evaluate_writes_metrics_and_report(workdir: Path):
    proc = run("evaluate", "--model", "v0001", "--split", "test", "--out", "eval-out", cwd=workdir)
    assert "accuracy" in proc.stdout
    metrics = json.loads((workdir / "eval-out" / "metrics.json").read_text())
    assert metrics["model_version"] == "v0001" and metrics["split"] == "test" and metrics["metrics"]["n"] == 12
    assert (workdir / "eval-out" / "roc_pr.png").is_file()
    assert "## Worst mistakes, with heatmaps" in (workdir / "eval-out" / "report.md").read_text()


def test_promote_and_rollback_through_the_cli(workdir: Path):
    run("train", "--quiet", "--set", "train.epochs=1", cwd=workdir)
    assert "production is now v0002" in run("models", "promote", "v0002", "--reason", "test", cwd=workdir).stdout
    assert "rolled back to v0001" in run("models", "rollback", cwd=workdir).stdout
    assert json.loads((workdir / "models" / "production.json").read_text())["version"] == "v0001"


def test_errors_are_one_clear_line_with_exit_status_2(workdir: Path):
    proc = run("train", "--set", "model.arch=vgg", cwd=workdir, ok=False)
    assert proc.returncode == 2 and "model.arch" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("evaluate", "--data", "sqlite:x", cwd=workdir, ok=False)
    assert proc.returncode == 2 and "must be one of elpv, folder, mvtec, manifest" in proc.stderr
    proc = run("models", "promote", "v0999", cwd=workdir, ok=False)
    assert proc.returncode == 2 and "available: v0001" in proc.stderr
