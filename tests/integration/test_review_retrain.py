"""Frames kept by the running service, reviewed over HTTP, and `inspect retrain` closing the loop.

The retrain cycle: frames posted -> stored -> labelled through the API -> retrain -> gate ->
promote -> the running service answers with the new version. A mislabelled batch produces a
worse challenger, which the gate refuses.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from ray import serve
from typer.testing import CliRunner

from inspectline.cli import app as cli
from inspectline.config import StoreConfig, build_config
from inspectline.errors import ConfigError
from inspectline.imaging import encode_png
from inspectline.model import build_model, load_checkpoint, save_checkpoint
from inspectline.retrain import retrain
from inspectline.store import FrameStore
from tests.helpers import make_cell
from tests.integration.conftest import store_config as app_store_config
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration


def store_config(service) -> StoreConfig:
    return StoreConfig.model_validate(app_store_config(service.registry.root))


def settle(service) -> None:
    """Every verdict answered so far is in the frame store."""
    httpx.get(f"{service.url}/metrics", timeout=60)  # the gateway hands its pending records to the monitor
    left = asyncio.run(_flush())
    assert left == 0


async def _flush() -> int:
    return await serve.get_deployment_handle("LineMonitor", app_name="inspectline").flush_store.remote()


def post_cells(service, line: str, n: int, *, seed: int = 0) -> list[tuple[dict, int]]:
    """Post n synthetic cells (every other one defective), two frames per part; returns (verdict, true label)."""
    rng = np.random.default_rng(seed)
    out = []
    with httpx.Client(timeout=60) as client:
        for i in range(n):
            label = i % 2
            r = client.post(
                f"{service.url}/v1/frames",
                content=encode_png(make_cell(rng, bool(label))),
                headers={"Content-Type": "image/png"},
                params={
                    "line_id": line,
                    "camera_id": "cam-r",
                    "frame_id": f"{line}-{i}",
                    "part_id": f"{line}-part{i // 2}",
                },
            )
            r.raise_for_status()
            out.append((r.json(), label))
    return out


def stored(service, line: str) -> list[dict]:
    r = httpx.get(f"{service.url}/v1/frames", params={"line": line, "limit": 1000}, timeout=60)
    r.raise_for_status()
    return r.json()["frames"]


def label_all(service, frames: list[dict], labels: dict[str, int], *, invert: bool = False) -> None:
    with httpx.Client(timeout=60) as client:
        for f in frames:
            truth = labels[f["frame_id"]] ^ int(invert)
            r = client.put(
                f"{service.url}/v1/frames/{f['id']}/label",
                json={"label": "defective" if truth else "ok", "reviewer": "qa@plant"},
            )
            r.raise_for_status()


def test_every_judged_frame_is_stored_and_reviewable(service):
    line = f"rev-{uuid.uuid4().hex[:6]}"
    posted = post_cells(service, line, 6)
    settle(service)
    frames = stored(service, line)
    assert sorted(f["frame_id"] for f in frames) == sorted(v["frame_id"] for v, _ in posted)
    uncertainty = [f["uncertainty"] for f in frames]
    assert uncertainty == sorted(uncertainty)  # least sure first
    first = frames[0]
    one = httpx.get(f"{service.url}/v1/frames/{first['id']}").json()
    assert one["model_version"] == "v0001" and one["label"] is None and one["shadow"] == []
    image = httpx.get(f"{service.url}{first['image_url']}")
    assert (
        image.status_code == 200
        and image.headers["content-type"] == "image/png"
        and image.content.startswith(b"\x89PNG")
    )
    labelled = httpx.put(
        f"{service.url}/v1/frames/{first['id']}/label", json={"label": "Defective", "reviewer": "ana@plant"}
    ).json()
    assert labelled["label"] == "defective" and labelled["labelled_by"] == "ana@plant"
    assert [
        f["id"]
        for f in httpx.get(f"{service.url}/v1/frames", params={"line": line, "labelled": "true"}).json()["frames"]
    ] == [first["id"]]
    # a resent frame id is stored once
    post_cells(service, line, 2)
    settle(service)
    assert len(stored(service, line)) == 6


def test_review_errors_are_clear(service):
    bad = httpx.put(f"{service.url}/v1/frames/1/label", json={"label": "scratched", "reviewer": "ana"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_label" and "'ok'" in bad.json()["detail"]
    missing = httpx.get(f"{service.url}/v1/frames/987654")
    assert missing.status_code == 404 and missing.json()["error"] == "frame_not_found"
    assert (
        httpx.put(f"{service.url}/v1/frames/987654/label", json={"label": "ok", "reviewer": "ana"}).status_code == 404
    )
    no_reviewer = httpx.put(f"{service.url}/v1/frames/1/label", json={"label": "ok"})
    assert no_reviewer.status_code == 400 and no_reviewer.json()["error"] == "invalid_request"
    since = httpx.get(f"{service.url}/v1/frames", params={"since": "the other day"})
    assert since.status_code == 400 and "last-week" in since.json()["detail"]
    order = httpx.get(f"{service.url}/v1/frames", params={"order": "random"})
    assert order.status_code == 400 and order.json()["error"] == "invalid_request" and "uncertainty" in order.text


def test_review_export_and_import_through_the_cli(service, tmp_path):
    line = f"csv-{uuid.uuid4().hex[:6]}"
    post_cells(service, line, 4, seed=3)
    settle(service)
    cfg = service.base_app["args"]["config"]  # the inspect.yaml the service itself reads
    runner = CliRunner()
    out = tmp_path / "review.csv"
    result = runner.invoke(cli, ["review", "export", "--config", str(cfg), "--line", line, "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = out.read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("id,camera_id,frame_id")
    filled = [rows[0]] + [_with_label(rows[0], r, "defective") for r in rows[1:]]
    out.write_text("\n".join(filled) + "\n")
    result = runner.invoke(cli, ["review", "import", str(out), "--config", str(cfg), "--reviewer", "csv@plant"])
    assert result.exit_code == 0, result.output
    assert {f["label"] for f in stored(service, line)} == {"defective"}
    studio = tmp_path / "tasks.json"
    result = runner.invoke(
        cli,
        ["review", "export", "--config", str(cfg), "--line", line, "--format", "label-studio", "--out", str(studio)],
    )
    assert result.exit_code == 0, result.output
    tasks = json.loads(studio.read_text())
    assert len(tasks) == 4 and tasks[0]["data"]["image"].endswith("/image")


def _with_label(header: str, row: str, label: str) -> str:
    columns = header.split(",")
    values = row.split(",")
    values[columns.index("label")] = label
    return ",".join(values)


def test_shadow_model_is_counted_and_stored_but_never_answers(service):
    line = f"shd-{uuid.uuid4().hex[:6]}"
    service.registry.set_shadow("v0002", reason="test")
    try:
        wait_for(lambda: _shadow_active(service), timeout_s=60, what="the shadow model")
        answers = post_cells(service, line, 6, seed=5)
        assert {v["model_version"] for v, _ in answers} == {"v0001"}
        # shadow verdicts come after the answers, in the background: wait for all six
        wait_for(lambda: _shadow_count(service, line) == 6, timeout_s=60, what="six shadow verdicts")
        settle(service)
        assert _shadow_count(service, line) == 6
        metrics = httpx.get(f"{service.url}/metrics").text
        assert (
            f'inspect_shadow_frames_total{{agreement="agree",camera="cam-r",line="{line}",version="v0002"}} 6.0'
            in metrics
        )
        assert 'inspect_shadow_agreement_ratio{version="v0002"} 1.0' in metrics  # same weights as production
        frame = stored(service, line)[0]
        shadow = httpx.get(f"{service.url}/v1/frames/{frame['id']}").json()["shadow"]
        assert [s["model_version"] for s in shadow] == ["v0002"]
    finally:
        service.registry.set_shadow(None)


def _shadow_count(service, line: str) -> float:
    metrics = httpx.get(f"{service.url}/metrics").text
    return sum(
        float(row.rsplit(" ", 1)[1])
        for row in metrics.splitlines()
        if row.startswith("inspect_shadow_frames_total") and f'line="{line}"' in row
    )


def _shadow_active(service) -> bool:
    probe = f"probe-{uuid.uuid4().hex[:6]}"
    post_cells(service, probe, 1)
    httpx.get(f"{service.url}/metrics")
    return f'line="{probe}"' in "".join(
        row
        for row in httpx.get(f"{service.url}/metrics").text.splitlines()
        if row.startswith("inspect_shadow_frames_total")
    )


def _register_weak_champion(service, trained_run, tmp_path: Path) -> str:
    """A version that says OK to everything: random weights, bias towards OK. Any learning beats it."""
    _, card = load_checkpoint(trained_run.checkpoint)
    torch.manual_seed(7)
    model = build_model(card.arch, in_channels=1, head_dims=card.head_dims, head_dropout=card.head_dropout)
    with torch.no_grad():
        model.classifier[-1].bias.copy_(torch.tensor([3.0, -3.0]))
    run = tmp_path / "weak"
    save_checkpoint(run / "model.pt", model, card.model_copy(update={"metrics": {}, "version": None}))
    for name in ("splits.json", "config.yaml", "drift_reference.npz"):
        shutil.copy(trained_run.run_dir / name, run / name)
    version = service.registry.register(run / "model.pt").name
    service.registry.promote(version, reason="test: weak champion")
    wait_for(
        lambda: httpx.get(f"{service.url}/readyz").json().get("model_version") == version,
        timeout_s=60,
        what="the weak champion",
    )
    return version


def _retrain_config(service, tmp_path: Path, **retrain_settings):
    return build_config(
        {
            "paths": {
                "registry": str(service.registry.root),
                "runs": str(tmp_path / "runs"),
                "snapshots": str(tmp_path / "snapshots"),
                "reports": str(tmp_path / "reports"),
            },
            "store": app_store_config(service.registry.root),
            "retrain": {"epochs": 4, "lr": 0.003, "min_newest": 8, **retrain_settings},
            "train": {"batch_size": 8, "collapse_warmup": 10, "patience": 20},
            "readiness": {"max_latency_ms": 5000},
        }
    )


def test_retrain_cycle_promotes_a_better_model_and_the_service_switches(service, trained_run, tmp_path):
    weak = _register_weak_champion(service, trained_run, tmp_path)
    try:
        line = f"rt-{uuid.uuid4().hex[:6]}"
        since = datetime.now(timezone.utc)  # exactly this test's frames: earlier tests label frames too
        posted = post_cells(service, line, 40, seed=11)
        assert {v["verdict"] for v, _ in posted} == {"OK"}  # the weak champion flags nothing
        settle(service)
        label_all(service, stored(service, line), {v["frame_id"]: label for v, label in posted})
        outcome = retrain(_retrain_config(service, tmp_path), since, progress=False)
        assert outcome.status == "promoted", outcome.report.read_text()
        assert outcome.labelled_frames == 40 and outcome.champion == weak
        assert service.registry.production() == outcome.challenger
        assert service.registry.get(outcome.challenger).card.parent == weak
        version_dir = service.registry.get(outcome.challenger).path
        assert (version_dir / "retrain.md").is_file() and json.loads((version_dir / "retrain.json").read_text())[
            "status"
        ] == "promoted"
        assert "| golden | f1 |" in outcome.report.read_text()
        manifest = json.loads(outcome.snapshot.read_text())
        assert len(manifest["frames"]) == 40 and {f["role"] for f in manifest["frames"]} == {"train", "newest"}
        newest_parts = {f["part_id"] for f in manifest["frames"] if f["role"] == "newest"}
        train_parts = {f["part_id"] for f in manifest["frames"] if f["role"] == "train"}
        assert newest_parts and not newest_parts & train_parts  # split by part, never across
        wait_for(
            lambda: (
                post_cells(service, f"after-{uuid.uuid4().hex[:4]}", 1)[0][0]["model_version"] == outcome.challenger
            ),
            timeout_s=60,
            what="the service to answer with the challenger",
        )
        # the frames it learnt from keep their images through an age-based clean-up
        with FrameStore(store_config(service)) as store:
            store.cleanup(now=datetime.now(timezone.utc) + timedelta(days=10_000))
            assert all(store.get(f["store_id"]).image_sha256 is not None for f in manifest["frames"])
    finally:
        service.registry.promote("v0001", reason="test: restore")
        wait_for(
            lambda: httpx.get(f"{service.url}/readyz").json().get("model_version") == "v0001",
            timeout_s=60,
            what="v0001 back",
        )


def test_gate_refuses_a_challenger_taught_by_a_mislabelled_batch(service, trained_run, tmp_path):
    line = f"bad-{uuid.uuid4().hex[:6]}"
    since = datetime.now(timezone.utc)  # exactly this test's frames
    posted = post_cells(service, line, 40, seed=13)
    settle(service)
    label_all(service, stored(service, line), {v["frame_id"]: label for v, label in posted}, invert=True)
    outcome = retrain(_retrain_config(service, tmp_path, gate_sets=["golden"], replay_ratio=0.0), since, progress=False)
    assert outcome.status == "rejected", outcome.report.read_text()
    assert service.registry.production() == "v0001"
    assert service.registry.get(outcome.challenger).card.parent == "v0001"  # registered with its lineage all the same
    failed = [c for c in outcome.gate.checks if not c["passed"]]
    assert failed and all(c["set"] == "golden" for c in failed)


def test_nothing_to_learn_is_a_clear_message_and_exit_code(service, tmp_path):
    cfg = service.base_app["args"]["config"]  # the inspect.yaml the service itself reads
    result = CliRunner().invoke(cli, ["retrain", "--since", "2099-01-01", "--config", str(cfg)])
    assert result.exit_code == 3 and "no labelled frames" in result.output
    bad = CliRunner().invoke(cli, ["retrain", "--since", "a while ago", "--config", str(cfg)])
    assert isinstance(bad.exception, ConfigError) and "last-week" in str(
        bad.exception
    )  # the console script prints it, exit 2
