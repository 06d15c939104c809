import json
import os
import threading
from pathlib import Path

import pytest

from inspectline.data import Preprocessing
from inspectline.errors import ModelNotFoundError
from inspectline.model import ModelCard, build_model, save_checkpoint
from inspectline.registry import PENDING_VERSION, ExportRecord, ModelRegistry, OperatingPoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    card = ModelCard(
        arch="resnet18",
        class_names=("ok", "defective"),
        head_dims=(32, 16),
        head_dropout=(0.5, 0.3, 0.2),
        preprocessing=Preprocessing(image_size=32, color_mode="gray", mean=(0.5,), std=(0.2,)),
        metrics={"f1": 0.9},
    )
    save_checkpoint(run / "model.pt", build_model("resnet18", in_channels=1, head_dims=(32, 16)), card)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "report").mkdir()
    (run / "report" / "report.md").write_text(f"# report\n\nModel version: **{PENDING_VERSION}** · split: **test**\n")
    return run / "model.pt"


def test_register_creates_immutable_numbered_versions(tmp_path: Path, checkpoint: Path):
    reg = ModelRegistry(tmp_path / "models")
    v1 = reg.register(checkpoint)
    v2 = reg.register(checkpoint, parent="v0001")
    assert (v1.name, v2.name) == ("v0001", "v0002")
    assert reg.names() == ["v0001", "v0002"]
    assert reg.get("2").card.version == "v0002" and reg.get("v0002").card.parent == "v0001"
    assert (v1.path / "report" / "report.md").is_file() and (v1.path / "config.yaml").is_file()
    assert (
        "Model version: **v0002** · split" in (v2.path / "report" / "report.md").read_text()
    )  # the report names its version
    assert (
        PENDING_VERSION in (checkpoint.parent / "report" / "report.md").read_text()
    )  # the run's own copy is left alone
    assert json.loads((v1.path / "card.json").read_text())["version"] == "v0001"
    with pytest.raises(PermissionError):
        if os.geteuid() == 0:  # root ignores file modes: check the mode bits instead
            assert not os.stat(v1.checkpoint).st_mode & 0o222
            raise PermissionError
        v1.checkpoint.write_bytes(b"x")
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".staging")]


def test_promote_and_rollback(tmp_path: Path, checkpoint: Path):
    reg = ModelRegistry(tmp_path / "models")
    for _ in range(3):
        reg.register(checkpoint)
    assert reg.production() is None
    with pytest.raises(ModelNotFoundError, match="no model is in production"):
        reg.resolve("production")
    reg.promote("v0001")
    reg.promote("v0003", reason="better F1", actor="ana")
    assert reg.production() == "v0003" and reg.resolve("production") == reg.get("v0003").checkpoint
    assert reg.rollback()["version"] == "v0001"
    with pytest.raises(ModelNotFoundError, match="no earlier production version"):
        reg.rollback()
    assert [(e["action"], e["version"]) for e in reg.history()] == [
        ("promote", "v0001"),
        ("promote", "v0003"),
        ("rollback", "v0001"),
    ]
    assert reg.history()[1]["reason"] == "better F1"
    promoted = reg.audit.read(action="promote")[1]
    assert (promoted.actor, promoted.before, promoted.after) == ("ana", "v0001", "v0003")


def test_references_resolve_and_unknown_versions_list_what_exists(tmp_path: Path, checkpoint: Path):
    reg = ModelRegistry(tmp_path / "models")
    reg.register(checkpoint)
    reg.register(checkpoint)
    assert reg.resolve("latest") == reg.get("v0002").checkpoint
    assert reg.resolve(str(checkpoint)) == checkpoint
    assert reg.resolve(str(reg.get("v0001").path)) == reg.get("v0001").checkpoint
    with pytest.raises(ModelNotFoundError, match=r"'v0009'.*available: v0001, v0002"):
        reg.promote("v0009")


def test_concurrent_promotions_leave_a_valid_pointer(tmp_path: Path, checkpoint: Path):
    reg = ModelRegistry(tmp_path / "models")
    for _ in range(2):
        reg.register(checkpoint)
    seen: list[str | None] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            seen.append(ModelRegistry(tmp_path / "models").production())

    threads = [threading.Thread(target=reader)] + [
        threading.Thread(target=lambda n=n: [reg.promote(n) for _ in range(25)]) for n in ("v0001", "v0002")
    ]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    assert set(seen) <= {None, "v0001", "v0002"} and len(seen) > 10
    pointer = json.loads((tmp_path / "models" / "production.json").read_text())
    assert pointer["version"] in {"v0001", "v0002"}
    assert len(reg.history()) == 50
    assert not list((tmp_path / "models").glob(".production.json.*"))


def test_shadow_pointer(tmp_path: Path, checkpoint: Path):
    reg = ModelRegistry(tmp_path / "models")
    reg.register(checkpoint)
    reg.register(checkpoint)
    assert reg.shadow() is None
    assert reg.set_shadow("2", reason="trial") == "v0002" and reg.shadow() == "v0002"
    with pytest.raises(ModelNotFoundError):
        reg.set_shadow("v0007")
    assert reg.shadow() == "v0002"
    assert reg.set_shadow(None) is None and reg.shadow() is None
    assert [e["action"] for e in reg.history()] == ["shadow", "shadow"]


def test_operating_points_are_recorded_beside_the_immutable_version(tmp_path: Path, checkpoint: Path):
    reg = ModelRegistry(tmp_path / "models")
    reg.register(checkpoint)
    assert reg.operating_point("v0001") is None  # the card's threshold is in force
    point = OperatingPoint(
        threshold=0.31,
        unsure_band=0.05,
        basis="target recall 0.97 on validation",
        expected={"recall": 0.97, "precision": 0.81},
        actor="ana",
        reason="customer complaint",
    )
    reg.set_operating_point("1", point)
    reg.set_operating_point("v0001", OperatingPoint(threshold=0.35, basis="manual", actor="ben"))
    current = reg.operating_point("v0001")
    assert (current.threshold, current.actor, current.unsure_band) == (0.35, "ben", None) and current.at
    assert [p.threshold for p in reg.get("v0001").manifest.operating_points] == [0.31, 0.35]
    assert reg.get("v0001").card.threshold == 0.5  # the weights and card never change
    first, second = reg.audit.read(action="operating_point")
    assert first.before == {"threshold": 0.5, "unsure_band": None} and first.reason == "customer complaint"
    assert second.before == {"threshold": 0.31, "unsure_band": 0.05} and second.after["threshold"] == 0.35
    with pytest.raises(ValueError):
        OperatingPoint(threshold=1.5, basis="manual", actor="ana")
    with pytest.raises(ModelNotFoundError):
        reg.set_operating_point("v0009", point)


def test_exports_are_listed_in_the_manifest_one_per_format_and_precision(tmp_path: Path, checkpoint: Path):
    reg = ModelRegistry(tmp_path / "models")
    reg.register(checkpoint)
    reg.record_export(
        "v0001",
        ExportRecord(
            format="onnx", precision="fp32", path="exports/onnx-fp32/model.onnx", passed=True, parity={"agreement": 1.0}
        ),
    )
    reg.record_export(
        "v0001",
        ExportRecord(
            format="openvino",
            precision="int8",
            path="exports/openvino-int8/model.xml",
            passed=False,
            parity={"agreement": 0.97},
        ),
    )
    reg.record_export(
        "v0001",
        ExportRecord(
            format="openvino",
            precision="int8",
            path="exports/openvino-int8/model.xml",
            passed=True,
            parity={"agreement": 0.995},
        ),
    )
    exports = reg.get("v0001").manifest.exports
    assert [(e.format, e.precision, e.passed) for e in exports] == [("onnx", "fp32", True), ("openvino", "int8", True)]
    assert [e.after["format"] for e in reg.audit.read(action="export")] == ["onnx", "openvino", "openvino"]
