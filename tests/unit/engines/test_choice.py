"""The engine choice rule, as a table: version exports x what is installed x the CPU -> engine, precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inspectline.engines import EnginePreference, choose_engine
from inspectline.errors import EngineError, EngineUnavailableError
from inspectline.hardware import CpuCapabilities
from inspectline.registry import ExportRecord, ModelVersion, VersionManifest

AVX2 = CpuCapabilities(model="AMD EPYC", flags=frozenset({"avx2", "fma"}), torch_capability="AVX2")
AMX = CpuCapabilities(
    model="Intel Xeon", flags=frozenset({"avx512f", "amx_bf16", "amx_int8", "amx_tile"}), torch_capability="AMX"
)


def _export(fmt: str, precision: str, speed: float | None = 2.0, *, passed: bool = True) -> ExportRecord:
    return ExportRecord(
        format=fmt,
        precision=precision,
        path=f"exports/{fmt}-{precision}/model.{'xml' if fmt == 'openvino' else 'onnx'}",
        passed=passed,
        forced=not passed,
        parity={"test": {"agreement": 0.995 if passed else 0.9}},
        images_per_s=None if speed is None else 100.0 * speed,
        torch_fp32_images_per_s=None if speed is None else 100.0,
        measured_on="AMD EPYC",
    )


def _version(tmp_path: Path, *exports: ExportRecord) -> ModelVersion:
    path = tmp_path / "v0007"
    path.mkdir(exist_ok=True)
    manifest = VersionManifest(exports=exports)
    (path / "manifest.json").write_text(json.dumps(manifest.model_dump(mode="json")))
    return ModelVersion(name="v0007", path=path)


def _everything(_engine: str) -> bool:
    return True


def _no_openvino(engine: str) -> bool:
    return engine != "openvino"


CASES = [
    # (exports, preference, capabilities, installed) -> (engine, precision, words in the reason)
    ((), {}, AVX2, _everything, ("torch", "fp32", "has no exports; torch fp32 (no native bf16 on AMD EPYC)")),
    ((), {}, AMX, _everything, ("torch", "bf16", "torch bf16 autocast")),
    ((), {"torch_autocast": False}, AMX, _everything, ("torch", "fp32", "autocast off: only parity-checked")),
    (
        (_export("openvino", "int8", 1.9),),
        {"torch_autocast": False},
        AMX,
        _everything,
        ("openvino", "int8", "passed parity"),
    ),
    (
        (_export("onnx", "fp32", 1.3), _export("openvino", "int8", 1.9), _export("openvino", "fp32", 1.4)),
        {},
        AVX2,
        _everything,
        ("openvino", "int8", "measured 1.90× torch fp32 on AMD EPYC; the fastest of 3"),
    ),
    (
        (_export("openvino", "int8", 3.0, passed=False), _export("onnx", "fp32", 1.2)),
        {},
        AVX2,
        _everything,
        ("onnxruntime", "fp32", "the fastest of 1"),
    ),
    (
        (_export("openvino", "int8", 1.9), _export("onnx", "int8", 1.5)),
        {},
        AVX2,
        _no_openvino,
        ("onnxruntime", "int8", "onnx-int8 passed parity"),
    ),
    (
        (_export("openvino", "bf16", 4.0), _export("openvino", "fp32", 1.4)),
        {},
        AVX2,
        _everything,
        ("openvino", "fp32", "openvino-fp32"),
    ),
    ((_export("openvino", "bf16", 4.0),), {}, AMX, _everything, ("openvino", "bf16", "4.00×")),
    ((_export("onnx", "int8", 0.8),), {}, AVX2, _everything, ("torch", "fp32", "measured 0.80× torch fp32")),
    (
        (_export("onnx", "fp32", None), _export("openvino", "int8", None)),
        {},
        AVX2,
        _everything,
        ("openvino", "int8", "not measured"),
    ),
    (
        (_export("openvino", "int8", 2.0), _export("openvino", "fp32", 1.4)),
        {"precision": "fp32"},
        AVX2,
        _everything,
        ("openvino", "fp32", "openvino-fp32"),
    ),
    (
        (_export("openvino", "int8", 2.0),),
        {"engine": "torch"},
        AMX,
        _everything,
        ("torch", "bf16", "asked for torch"),
    ),
    (
        (_export("openvino", "int8", 2.0, passed=False),),
        {"engine": "openvino", "precision": "int8"},
        AVX2,
        _everything,
        ("openvino", "int8", "parity below the bound, forced"),
    ),
    (
        (_export("openvino", "int8", 2.0), _export("openvino", "fp16", 1.5)),
        {"engine": "openvino"},
        AVX2,
        _everything,
        ("openvino", "int8", "asked for openvino auto"),
    ),
]


@pytest.mark.parametrize(("exports", "preference", "caps", "installed", "expected"), CASES)
def test_choice_rule(tmp_path, exports, preference, caps, installed, expected):
    choice = choose_engine(
        _version(tmp_path, *exports), EnginePreference(**preference), capabilities=caps, installed=installed
    )
    engine, precision, words = expected
    assert (choice.engine, choice.precision) == (engine, precision), choice.reason
    assert words in choice.reason
    described = choice.describe()
    assert described["engine"] == engine and described["reason"] == choice.reason
    assert (described["export"] is None) == (engine == "torch")


def test_on_a_gpu_the_torch_engine_runs(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda: True)
    choice = choose_engine(_version(tmp_path, _export("openvino", "int8")), device="cuda", capabilities=AVX2)
    assert (choice.engine, choice.precision) == ("torch", "bf16")
    assert "exports run on the CPU" in choice.reason


def test_preferences_that_cannot_be_met_say_what_to_do(tmp_path):
    version = _version(tmp_path, _export("onnx", "fp32"))
    with pytest.raises(EngineError, match=r"no usable openvino export at int8 .*--format openvino"):
        choose_engine(version, EnginePreference(engine="openvino", precision="int8"), capabilities=AVX2)
    with pytest.raises(EngineUnavailableError, match="pip install 'inspectline\\[openvino\\]'"):
        choose_engine(version, EnginePreference(engine="openvino"), capabilities=AVX2, installed=_no_openvino)
    with pytest.raises(EngineError, match="torch cannot run fp16 here"):
        choose_engine(version, EnginePreference(precision="fp16"), capabilities=AVX2)
    with pytest.raises(EngineError, match="no native bf16"):
        choose_engine(version, EnginePreference(engine="torch", precision="bf16"), capabilities=AVX2)
    bf16 = _version(tmp_path, _export("openvino", "bf16"))
    with pytest.raises(EngineError, match="cannot run here: bf16 needs AMX or AVX512-BF16"):
        choose_engine(bf16, EnginePreference(engine="openvino", precision="bf16"), capabilities=AVX2)
    with pytest.raises(ValueError, match="engine"):
        EnginePreference(engine="tensorrt")
