"""``inspect export`` on the session's trained tiny model: every format and precision, parity, refusal, CLI.

The tiny model (ResNet18 at 32 px, four epochs) is not one INT8 keeps verdicts for (its logits are a
few tenths apart); its INT8 exports are forced so they are recorded whatever this CPU's rounding
does, and are checked for what holds everywhere: they respond like the checkpoint, without collapse.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from inspectline.cli import app, main
from inspectline.engines import EnginePreference, choose_engine, export_format
from inspectline.engines.openvino_engine import OpenVinoFormat
from inspectline.errors import ExportError, ParityError
from inspectline.export import ExportRequest, export_version, split_frames, version_splits
from inspectline.hardware import cpu_capabilities
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry

KINDS = [("onnx", "fp32"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "fp16"), ("openvino", "int8")]


@pytest.fixture(scope="module")
def registry(trained_run, tmp_path_factory) -> ModelRegistry:
    reg = ModelRegistry(tmp_path_factory.mktemp("export") / "models")
    reg.register(trained_run.checkpoint)
    return reg


@pytest.fixture(scope="module")
def exports(registry) -> dict:
    results = {}
    for fmt, precision in KINDS:
        request = ExportRequest(format=fmt, precision=precision, force=precision == "int8", calibration_frames=20)
        results[(fmt, precision)] = export_version(registry, "v0001", request, actor="ana")
    return results


@pytest.fixture(scope="module")
def test_frames(registry):
    version = registry.get("v0001")
    return split_frames(version_splits(version)["test"], version.card)


def test_every_export_is_stored_and_recorded_in_the_version(registry, exports):
    version = registry.get("v0001")
    recorded = {(e.format, e.precision): e for e in version.manifest.exports}
    assert set(recorded) == set(KINDS)
    for (fmt, precision), record in recorded.items():
        assert (version.path / record.path).is_file()
        assert record.path.startswith(f"exports/{fmt}-{precision}/")
        assert record.actor == "ana" and record.runtime.startswith(export_format(fmt).runtime)
        assert set(record.parity) >= {"bound", "test", "random", "problems"}
        test = record.parity["test"]
        assert test["frames"] == 12 and 0 <= test["agreement"] <= 1 and test["roc_auc_change"] is not None
        assert record.parity["random"]["frames"] == 64
        assert record.images_per_s > 0 and record.torch_fp32_images_per_s > 0 and record.measured_on
        assert record.forced == (not record.passed)
    assert not any(p.name.startswith(".") for p in (version.path / "exports").iterdir())  # no staging left
    assert [e.action for e in registry.audit.read()].count("export") == len(KINDS)


def test_floating_point_exports_match_the_checkpoint(exports):
    for kind in [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "fp16")]:
        result = exports[kind]
        assert result.record.passed, result.table
        assert result.report.test.agreement == 1.0 and result.report.random.agreement == 1.0
        assert result.report.test.max_abs_dp < (1e-2 if kind[1] == "fp16" else 1e-4)
        assert result.report.bound == 0.999


def test_int8_exports_are_quantized_on_the_training_split_and_still_respond(registry, exports, test_frames):
    frames, _ = test_frames
    version = registry.get("v0001")
    reference = Predictor.load(version.checkpoint)
    expected = reference.forward(frames).view_logits.numpy().ravel()
    for kind in [("onnx", "int8"), ("openvino", "int8")]:
        record = exports[kind].record
        assert record.quantization["calibration_split"] == "train"
        assert record.quantization["calibration_frames"] == 20
        assert record.quantization["calibration_items"] == 40  # every frame in both TTA views
        assert exports[kind].report.bound == 0.99
        predictor = Predictor.from_version(version, EnginePreference(engine=record_engine(kind), precision="int8"))
        got = predictor.forward(frames).view_logits.numpy().ravel()
        assert np.isfinite(got).all()
        # quantized, not scrambled: a broken graph correlates near 0; this tiny model's logits lie a few
        # tenths apart, so INT8 rounding alone moves the correlation well below 1 (0.74-0.95 seen)
        assert np.corrcoef(expected, got)[0, 1] > 0.5, kind


def record_engine(kind: tuple[str, str]) -> str:
    return {"onnx": "onnxruntime", "openvino": "openvino"}[kind[0]]


def test_predictors_from_the_version_judge_like_the_checkpoint(registry, exports, test_frames):
    frames, _ = test_frames
    version = registry.get("v0001")
    expected = Predictor.load(version.checkpoint).predict_tensor(frames)
    for engine in ("onnxruntime", "openvino"):
        predictor = Predictor.from_version(version, EnginePreference(engine=engine, precision="fp32"), threads=1)
        assert predictor.engine.name == engine and predictor.engine_choice.export.precision == "fp32"
        got = predictor.predict_tensor(frames)
        assert [p.verdict for p in got] == [p.verdict for p in expected]
        np.testing.assert_allclose(
            [p.defect_probability for p in got], [p.defect_probability for p in expected], atol=1e-4
        )


def test_auto_choice_takes_the_fastest_passed_export(registry, exports):
    version = registry.get("v0001")
    choice = choose_engine(version)
    passed = [e for e in version.manifest.exports if e.passed]
    fastest = max(passed, key=lambda e: e.speedup)
    if fastest.speedup > 1.0:
        assert (choice.engine, choice.precision) == (record_engine((fastest.format, "")), fastest.precision)
    else:
        assert choice.engine == "torch"
    assert choice.export is None or choice.export.passed  # a forced INT8 is never chosen automatically


def test_a_diverging_export_is_refused_and_leaves_nothing(registry, exports, monkeypatch):
    convert = OpenVinoFormat.convert

    def negated(self, module, example):
        class Flipped(torch.nn.Module):  # an export whose scores differ from the checkpoint's
            def __init__(self):
                super().__init__()
                self.inner = module

            def forward(self, x):
                logits, embedding = self.inner(x)
                return logits.flip(-1), embedding

        return convert(self, Flipped().eval(), example)

    monkeypatch.setattr(OpenVinoFormat, "convert", negated)
    version = registry.get("v0001")
    before = version.manifest.exports
    with pytest.raises(ParityError, match=r"refused: verdict agreement on the test split .* below the bound 99.90%"):
        export_version(registry, "v0001", ExportRequest(format="openvino", precision="fp32", measure_speed=False))
    assert version.manifest.exports == before
    assert sorted(p.name for p in (version.path / "exports").iterdir()) == sorted(f"{f}-{p}" for f, p in KINDS)

    forced = export_version(
        registry, "v0001", ExportRequest(format="openvino", precision="fp32", force=True, measure_speed=False)
    )
    assert not forced.record.passed and forced.record.forced and "FAIL" in forced.table
    assert choose_engine(version, EnginePreference(engine="auto", precision="fp32")).export != forced.record
    monkeypatch.setattr(OpenVinoFormat, "convert", convert)
    redone = export_version(registry, "v0001", ExportRequest(format="openvino", precision="fp32", measure_speed=False))
    assert redone.record.passed  # a new export of the same kind replaces the forced one


def test_requests_that_cannot_be_exported(registry):
    with pytest.raises(ExportError, match="accepted: fp32, int8"):
        export_version(registry, "v0001", ExportRequest(format="onnx", precision="fp16"))
    with pytest.raises(ExportError, match="--max-drop controls INT8"):
        export_version(registry, "v0001", ExportRequest(format="openvino", precision="fp32", max_drop=0.01))
    if not cpu_capabilities().bf16:
        with pytest.raises(ExportError, match="native bf16"):
            export_version(registry, "v0001", ExportRequest(format="openvino", precision="bf16"))


def test_cli_export_and_models_show(registry, exports, monkeypatch, capsys):
    shown = CliRunner().invoke(app, ["models", "show", "v0001", "--registry", str(registry.root)])
    assert shown.exit_code == 0, shown.output
    assert '"format": "openvino"' in shown.output and '"speedup_vs_torch_fp32"' in shown.output

    def inspect(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["inspect", *args, "--registry", str(registry.root)])
        with pytest.raises(SystemExit) as exited:
            main()
        return exited.value.code, capsys.readouterr().err

    code, err = inspect("export", "v0001", "--format", "onnx", "--precision", "bf16")
    assert code == 2 and "accepted: fp32, int8" in err and "Traceback" not in err
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [onnx] extra were not installed
    code, err = inspect("export", "v0001", "--format", "onnx")
    assert code == 2 and "error: onnxruntime is not installed; install it with: pip install 'inspectline[onnx]'" in err
    assert "Traceback" not in err


def test_the_engines_benchmark_measures_a_passed_export_instead_of_replacing_it(
    registry, exports, tmp_path, monkeypatch
):
    """`benchmarks/inference_engines.py --registry` after `make demo` must leave the export the service runs."""
    import argparse
    import shutil

    from benchmarks import inference_engines

    copy = ModelRegistry(shutil.copytree(registry.root, tmp_path / "models"))
    kept, redone = ("openvino", "fp32"), ("openvino", "int8")
    recorded = {(e.format, e.precision): e for e in copy.get("v0001").manifest.exports}
    # whatever this CPU's rounding made of the tiny model's INT8, record it as forced: one kind of each
    copy.record_export("v0001", recorded[redone].model_copy(update={"passed": False, "forced": True}))
    before = {(e.format, e.precision): e for e in copy.get("v0001").manifest.exports}
    assert before[kept].passed and not before[kept].forced
    monkeypatch.setattr(inference_engines, "EXPORTS", [kept, redone])
    args = argparse.Namespace(threads=1, calibration_frames=20)
    engines, agreement, accuracy = inference_engines._engines_for_version(copy, "v0001", args, cpu_capabilities())

    after = {(e.format, e.precision): e for e in copy.get("v0001").manifest.exports}
    assert after[kept] == before[kept]  # the passed export is measured as recorded, not exported again
    assert after[redone].actor == "benchmarks/inference_engines.py"  # a forced export is made again
    assert accuracy["exports"]["openvino-fp32"]["reused"] is True
    assert accuracy["exports"]["openvino-int8"]["reused"] is False
    assert agreement[("openvino", "fp32")] == before[kept].parity["test"]["agreement"]
    assert {("torch", "fp32"), ("openvino", "fp32"), ("openvino", "int8")} <= set(engines)
