"""Inference engines behind one interface: a preprocessed batch in, view logits and embeddings out.

    engine        precisions                    runs
    torch         fp32, bf16 (native only), fp16 (CUDA)   the checkpoint, eager PyTorch
    openvino      fp32, fp16, bf16, int8        vNNNN/exports/openvino-<precision>/model.xml
    onnxruntime   fp32, int8                    vNNNN/exports/onnx-<precision>/model.onnx

OpenVINO and ONNX Runtime are optional: ``pip install 'inspectline[openvino]'`` / ``'inspectline[onnx]'``;
without them the engine raises :class:`~inspectline.errors.EngineUnavailableError` saying so. Exports
are written by ``inspect export`` (:mod:`inspectline.export`); :func:`choose_engine` picks the engine a
replica runs (the fastest export that passed parity, else torch).
"""

from inspectline.engines.base import (
    ENGINE_PRECISIONS,
    ENGINES,
    FORMAT_ENGINES,
    PRECISIONS,
    EngineOutput,
    InferenceEngine,
    images_per_second,
    require_runtime,
    runtime_installed,
)
from inspectline.engines.choice import EngineChoice, EnginePreference, choose_engine, open_engine
from inspectline.engines.formats import FORMAT_PRECISIONS, FORMATS, export_format
from inspectline.engines.onnx_engine import OnnxRuntimeEngine
from inspectline.engines.openvino_engine import OpenVinoEngine
from inspectline.engines.torch_engine import TorchEngine

__all__ = [
    "ENGINES",
    "ENGINE_PRECISIONS",
    "FORMATS",
    "FORMAT_ENGINES",
    "FORMAT_PRECISIONS",
    "PRECISIONS",
    "EngineChoice",
    "EngineOutput",
    "EnginePreference",
    "InferenceEngine",
    "OnnxRuntimeEngine",
    "OpenVinoEngine",
    "TorchEngine",
    "choose_engine",
    "export_format",
    "images_per_second",
    "open_engine",
    "require_runtime",
    "runtime_installed",
]
