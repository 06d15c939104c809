"""Every engine on the same tiny weights: same outputs, same verdicts through the Predictor, clear errors.

The models are written with the formats' own convert/save (what ``inspect export`` does), once per
module; INT8 and parity are covered in ``tests/unit/test_export.py`` on a trained model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from inspectline.data import Preprocessing
from inspectline.engines import (
    FORMATS,
    OnnxRuntimeEngine,
    OpenVinoEngine,
    TorchEngine,
    export_format,
    images_per_second,
    runtime_installed,
)
from inspectline.errors import EngineError, EngineUnavailableError, ExportError
from inspectline.export import _LogitsAndEmbedding
from inspectline.hardware import CpuCapabilities, cpu_capabilities
from inspectline.model import ModelCard, build_model
from inspectline.predictor import Predictor

SIDE = 32
CARD = ModelCard(
    arch="resnet18",
    class_names=("ok", "defective"),
    head_dims=(32, 16),
    head_dropout=(0.5, 0.3, 0.2),
    preprocessing=Preprocessing(image_size=SIDE, color_mode="gray", mean=(0.5,), std=(0.2,)),
    threshold=0.5,
)
AVX2_ONLY = CpuCapabilities(model="test CPU", flags=frozenset({"avx2", "fma"}), torch_capability="AVX2")
WITH_BF16 = CpuCapabilities(model="test CPU", flags=frozenset({"avx2", "amx_bf16", "amx_tile"}), torch_capability="AMX")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16)).eval()
    # Non-trivial BatchNorm statistics, so a wrongly folded BN would show in the outputs.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """fp32 files of every format, and OpenVINO's fp16 IR, for the same weights."""
    folder = tmp_path_factory.mktemp("engines")
    example = torch.randn(2, 1, SIDE, SIDE)
    paths = {}
    for name, fmt in FORMATS.items():
        graph = fmt.convert(_LogitsAndEmbedding(_model()).eval(), example)
        for precision in ("fp32", "fp16") if name == "openvino" else ("fp32",):
            target = folder / f"{name}-{precision}"
            target.mkdir()
            paths[f"{name}-{precision}"] = fmt.save(graph, target, precision)
    return paths


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(6, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def _engines(exported: dict[str, Path]) -> dict[str, object]:
    return {
        "onnxruntime fp32": OnnxRuntimeEngine(exported["onnx-fp32"], precision="fp32", threads=1),
        "openvino fp32": OpenVinoEngine(exported["openvino-fp32"], precision="fp32", threads=1),
        "openvino fp16": OpenVinoEngine(exported["openvino-fp16"], precision="fp16", threads=1),
    }


def test_exported_engines_return_the_checkpoints_logits_and_embeddings(exported, batch):
    reference = TorchEngine(_model(), precision="fp32").run(batch)
    assert reference.logits.shape == (6, 2) and reference.embeddings.shape == (6, 16)
    for label, engine in _engines(exported).items():
        out = engine.run(batch)
        assert out.logits.dtype == np.float32 and out.logits.shape == (6, 2), label
        assert out.embeddings.shape == (6, 16), label
        tolerance = 2e-2 if "fp16" in label else 1e-4  # fp16 weights: about 3 significant digits
        scale = np.abs(reference.logits).max()
        np.testing.assert_allclose(out.logits, reference.logits, atol=tolerance * max(scale, 1.0), err_msg=label)
        np.testing.assert_allclose(
            out.embeddings, reference.embeddings, atol=tolerance * np.abs(reference.embeddings).max(), err_msg=label
        )
        # any batch size: the batch dimension was exported dynamic
        single = engine.run(batch[:1])
        np.testing.assert_allclose(single.logits, out.logits[:1], atol=1e-4 * max(scale, 1.0), err_msg=label)


def test_predictor_gives_the_same_verdicts_through_every_engine(exported):
    frames = [np.random.default_rng(i).integers(0, 255, (40, 40), dtype=np.uint8) for i in range(8)]
    torch_predictor = Predictor(_model(), CARD, threshold=0.5)
    expected = torch_predictor.predict(frames)
    for label, engine in _engines(exported).items():
        predictor = Predictor(engine, CARD, threshold=0.5)
        got = predictor.predict(frames)
        assert predictor.engine is engine and predictor.device.type == "cpu"
        for a, b in zip(expected, got, strict=True):
            assert b.view_probabilities.keys() == a.view_probabilities.keys()
            assert b.defect_probability == pytest.approx(a.defect_probability, abs=1e-2 if "fp16" in label else 1e-5)
            if abs(a.defect_probability - 0.5) > 0.02:
                assert b.verdict == a.verdict, label
            assert b.embedding.shape == a.embedding.shape == (16,)


def test_predictor_keeps_the_torch_module_only_for_the_torch_engine(exported):
    assert isinstance(Predictor(_model(), CARD).model, torch.nn.Module)
    with pytest.raises(EngineError, match="openvino engine, which has no PyTorch module"):
        _ = Predictor(OpenVinoEngine(exported["openvino-fp32"], precision="fp32"), CARD).model


def test_threads_reach_the_runtime(exported):
    assert OnnxRuntimeEngine(exported["onnx-fp32"], precision="fp32", threads=1).describe()["runtime_threads"] == 1
    engine = OpenVinoEngine(exported["openvino-fp32"], precision="fp32", threads=1)
    assert engine.describe() | {"runtime_threads": 1} == engine.describe()
    assert engine.describe()["inference_precision"] == "f32"
    with pytest.raises(EngineError, match="threads=0"):
        OpenVinoEngine(exported["openvino-fp32"], precision="fp32", threads=0)


def test_openvino_leaves_thread_placement_to_the_os(exported):
    # Pinned, every single-thread replica on a machine ran on its first core (benchmarks/cpu_pinning.py).
    for threads in (1, 2, None):
        assert (
            OpenVinoEngine(exported["openvino-fp32"], precision="fp32", threads=threads).describe()["cpu_pinning"]
            is False
        )


def test_torch_bf16_only_where_the_cpu_has_it(batch):
    with pytest.raises(EngineError, match=r"no native bf16.*accepted here: fp32"):
        TorchEngine(_model(), precision="bf16", capabilities=AVX2_ONLY)
    with pytest.raises(EngineError, match="float16 autocast is for GPUs"):
        TorchEngine(_model(), precision="fp16", capabilities=WITH_BF16)
    # With native bf16 it runs under autocast (emulated here when the test CPU lacks it: slow but exact enough).
    reference = TorchEngine(_model(), precision="fp32").run(batch)
    out = TorchEngine(_model(), precision="bf16", capabilities=WITH_BF16).run(batch)
    assert out.logits.dtype == np.float32
    np.testing.assert_allclose(out.logits, reference.logits, atol=0.1 * max(np.abs(reference.logits).max(), 1.0))


def test_openvino_bf16_is_refused_where_it_would_silently_run_fp32(exported):
    if cpu_capabilities().bf16:
        engine = OpenVinoEngine(exported["openvino-fp32"], precision="bf16")
        assert engine.describe()["inference_precision"] == "bf16"
    else:
        with pytest.raises(EngineError, match="needs a CPU with native bf16"):
            OpenVinoEngine(exported["openvino-fp32"], precision="bf16")


def test_unknown_precisions_and_formats_name_the_accepted_ones(exported):
    with pytest.raises(
        EngineError, match="'int8' is not available for the torch engine \\(accepted: fp32, bf16, fp16\\)"
    ):
        TorchEngine(_model(), precision="int8")
    with pytest.raises(EngineError, match="accepted: fp32, int8"):
        OnnxRuntimeEngine(exported["onnx-fp32"], precision="fp16")
    with pytest.raises(ExportError, match="accepted: fp32, int8"):
        export_format("onnx", "bf16")
    with pytest.raises(ExportError, match="not one of onnx, openvino"):
        export_format("tensorrt")
    with pytest.raises(EngineError, match="no OpenVINO model at"):
        OpenVinoEngine(Path("/nonexistent/model.xml"), precision="fp32")


@pytest.mark.parametrize(
    ("module", "build", "extra"),
    [
        ("openvino", lambda p: OpenVinoEngine(p["openvino-fp32"], precision="fp32"), "openvino"),
        ("onnxruntime", lambda p: OnnxRuntimeEngine(p["onnx-fp32"], precision="fp32"), "onnx"),
    ],
)
def test_a_missing_runtime_says_how_to_install_it(monkeypatch, exported, module, build, extra):
    monkeypatch.setitem(sys.modules, module, None)  # what `import module` sees when it is not installed
    assert not runtime_installed(module)
    with pytest.raises(EngineUnavailableError, match=f"pip install 'inspectline\\[{extra}\\]'"):
        build(exported)


def test_images_per_second_measures_every_runner(batch):
    engine = TorchEngine(_model(), precision="fp32", threads=1)
    speeds = images_per_second({"a": engine.run, "b": engine.run}, batch.numpy(), repeats=2, min_seconds=0.01)
    assert set(speeds) == {"a", "b"} and all(v > 0 for v in speeds.values())


@pytest.mark.parametrize(("pooling", "width"), [("max", 1.0), ("gem", 1.0), ("avg", 0.5)])
def test_every_pooling_and_width_exports_to_the_same_outputs(tmp_path, batch, pooling, width):
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16), pooling=pooling, width=width).eval()
    reference = TorchEngine(model, precision="fp32").run(batch)
    engines = {"onnx": OnnxRuntimeEngine, "openvino": OpenVinoEngine}
    for name, fmt in FORMATS.items():
        (tmp_path / name).mkdir()
        path = fmt.save(fmt.convert(_LogitsAndEmbedding(model).eval(), batch[:2]), tmp_path / name, "fp32")
        out = engines[name](path, precision="fp32", threads=1).run(batch)
        np.testing.assert_allclose(out.logits, reference.logits, atol=1e-4, err_msg=name)
        np.testing.assert_allclose(out.embeddings, reference.embeddings, atol=1e-4, err_msg=name)
