"""ONNX Runtime: the engine that runs ``onnx`` exports on the CPU, and how such an export is written.

Precisions (``vNNNN/exports/onnx-<precision>/model.onnx``):

* ``fp32``  the graph as ``torch.onnx.export`` (the ``torch.export``-based exporter) writes it.
* ``int8``  an NNCF post-training-quantised graph (QuantizeLinear/DequantizeLinear pairs, which
            ONNX Runtime fuses into integer kernels); see :mod:`inspectline.export`.

fp16 and bf16 are not offered: ONNX Runtime's CPU provider runs them through casts, slower than
fp32 (OpenVINO covers those precisions). ``threads`` sets the intra-op thread count; inter-op
parallelism stays at 1, since the network is one chain of layers.

    engine = OnnxRuntimeEngine(Path("models/v0003/exports/onnx-fp32/model.onnx"), precision="fp32", threads=1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from inspectline.engines.base import (
    EMBEDDING_NAME,
    INPUT_NAME,
    LOGITS_NAME,
    EngineOutput,
    InferenceEngine,
    as_float_array,
    require_runtime,
)
from inspectline.errors import EngineError

MODEL_FILE = "model.onnx"
OPSET = 18


class OnnxRuntimeEngine(InferenceEngine):
    """An ONNX graph (a path or serialised bytes) in an ONNX Runtime CPU session."""

    name = "onnxruntime"

    def __init__(self, model: Path | bytes, *, precision: str, threads: int | None = None):
        super().__init__(precision, threads)
        ort = require_runtime("onnxruntime")
        if isinstance(model, Path) and not model.is_file():
            msg = f"no ONNX model at {model}"
            raise EngineError(msg)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: ONNX Runtime's default, one per physical core
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        source = str(model) if isinstance(model, Path) else model
        self._session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def describe(self) -> dict[str, Any]:
        options = self._session.get_session_options()
        return {**super().describe(), "runtime_threads": options.intra_op_num_threads}

    def run(self, batch: np.ndarray | torch.Tensor) -> EngineOutput:
        # InferenceSession.run is thread-safe: no lock needed.
        logits, embedding = self._session.run([LOGITS_NAME, EMBEDDING_NAME], {INPUT_NAME: as_float_array(batch)})
        return EngineOutput(logits=logits.astype(np.float32), embeddings=embedding.astype(np.float32))


class OnnxFormat:
    """Writing ``onnx`` exports, and running the in-memory graph NNCF hands back."""

    name = "onnx"
    engine = "onnxruntime"
    runtime = "onnxruntime"
    requires = ("onnx", "onnxscript", "onnxruntime")  # modules an export needs (INT8 adds nncf)
    model_file = MODEL_FILE

    def convert(self, module: torch.nn.Module, example: torch.Tensor) -> Any:
        """``module(x) -> (logits, embedding)`` as an ``onnx.ModelProto`` with a dynamic batch dimension."""
        require_runtime("onnx")
        require_runtime("onnxscript")  # torch.onnx's exporter is built on it
        program = torch.onnx.export(
            module,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[LOGITS_NAME, EMBEDDING_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        return program.model_proto

    def save(self, model: Any, folder: Path, precision: str) -> Path:  # noqa: ARG002 - one signature for every format
        onnx = require_runtime("onnx")
        path = folder / MODEL_FILE
        onnx.save(model, str(path))
        return path

    def quantization_input(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """What NNCF feeds the graph for one calibration item."""
        return {INPUT_NAME: batch}

    def engine_for(self, model: Any, precision: str) -> OnnxRuntimeEngine:
        """An engine over an in-memory ``onnx.ModelProto``."""
        return OnnxRuntimeEngine(model.SerializeToString(), precision=precision)

    def open(self, path: Path, precision: str, threads: int | None = None) -> OnnxRuntimeEngine:
        return OnnxRuntimeEngine(path, precision=precision, threads=threads)
