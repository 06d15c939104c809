"""OpenVINO: the engine that runs ``openvino`` exports on the CPU, and how such an export is written.

Precisions (the IR stored in ``vNNNN/exports/openvino-<precision>/model.xml``, and how it is compiled):

* ``fp32``  FP32 IR, ``INFERENCE_PRECISION_HINT=f32``: full precision even on CPUs with AMX.
* ``fp16``  FP16-compressed IR (half the size), compiled at the CPU plugin's *default* precision:
            bf16 on CPUs with AMX or AVX512-BF16, f32 on AVX2-only CPUs.
* ``bf16``  FP32 IR, ``INFERENCE_PRECISION_HINT=bf16``; refused on CPUs without native bf16, where
            OpenVINO would silently run f32.
* ``int8``  an NNCF post-training-quantised IR (see :mod:`inspectline.export`); layers left in
            floating point run at the default precision.

The network is captured with ``torch.export`` (batch dimension dynamic) and converted with
``openvino.convert_model``; the input is named ``image``, the outputs ``logits`` and ``embedding``.
``threads`` sets ``INFERENCE_NUM_THREADS`` (a replica with one CPU uses 1); the ``LATENCY`` hint
keeps one stream, which is what a synchronous batch call wants. CPU pinning is off: the plugin pins a
process's inference threads to cores counted from the first, without knowing of other processes, so
two single-thread replicas on a 2-core machine both ran on core 0 — half the machine
(``benchmarks/cpu_pinning.py``). One process loses nothing without it; the OS scheduler places threads.

    engine = OpenVinoEngine(Path("models/v0003/exports/openvino-int8/model.xml"), precision="int8", threads=2)
"""

from __future__ import annotations

import threading
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

MODEL_FILE = "model.xml"
_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}  # fp16 and int8: the plugin's default precision


def compile_options(precision: str, threads: int | None, *, cpu_pinning: bool = False) -> dict[str, Any]:
    """The CPU plugin's configuration for an export of ``precision`` run by ``threads`` threads."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": cpu_pinning}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if precision in _PRECISION_HINTS:
        config["INFERENCE_PRECISION_HINT"] = _PRECISION_HINTS[precision]
    return config


class OpenVinoEngine(InferenceEngine):
    """An OpenVINO IR (a path, an in-memory ``ov.Model`` or an already compiled model) on the CPU."""

    name = "openvino"

    def __init__(self, model: Path | Any, *, precision: str, threads: int | None = None):
        super().__init__(precision, threads)
        ov = require_runtime("openvino")
        if isinstance(model, ov.CompiledModel):
            compiled = model
        else:
            config = compile_options(precision, threads)
            source = str(model) if isinstance(model, Path) else model
            if isinstance(model, Path) and not model.is_file():
                msg = f"no OpenVINO model at {model}"
                raise EngineError(msg)
            compiled = ov.Core().compile_model(source, "CPU", config)
        self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32", "bf16"
        if precision == "bf16" and self.inference_precision != "bf16":
            capabilities = ", ".join(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            msg = (
                f"OpenVINO bf16 needs a CPU with native bf16 (AMX or AVX512-BF16); this one offers {capabilities} "
                f"and would run {self.inference_precision} (use fp32, fp16 or int8 here)"
            )
            raise EngineError(msg)
        self.runtime_threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))  # 0: the plugin decides
        self.cpu_pinning = bool(compiled.get_property("ENABLE_CPU_PINNING"))
        self._request = compiled.create_infer_request()
        self._logits, self._embedding = compiled.output(LOGITS_NAME), compiled.output(EMBEDDING_NAME)
        self._lock = threading.Lock()  # one infer request: calls from several threads take turns

    def run(self, batch: np.ndarray | torch.Tensor) -> EngineOutput:
        with self._lock:
            results = self._request.infer({INPUT_NAME: as_float_array(batch)})
            return EngineOutput(
                logits=np.array(results[self._logits], dtype=np.float32),
                embeddings=np.array(results[self._embedding], dtype=np.float32),
            )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "inference_precision": self.inference_precision,
            "runtime_threads": self.runtime_threads,
            "cpu_pinning": self.cpu_pinning,
        }


class OpenVinoFormat:
    """Writing ``openvino`` exports: capture, convert, save; and running the in-memory model NNCF hands back."""

    name = "openvino"
    engine = "openvino"
    runtime = "openvino"
    requires = ("openvino",)  # modules an export needs (INT8 adds nncf)
    model_file = MODEL_FILE

    def convert(self, module: torch.nn.Module, example: torch.Tensor) -> Any:
        """``module(x) -> (logits, embedding)`` as an ``ov.Model`` with a dynamic batch dimension."""
        ov = require_runtime("openvino")
        program = torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
        model = ov.convert_model(program)
        # Only the batch varies: fixed C, H, W let the CPU plugin pick its kernels once.
        model.reshape({model.inputs[0]: ov.PartialShape([-1, *example.shape[1:]])})
        model.inputs[0].get_tensor().set_names({INPUT_NAME})
        for output, name in zip(model.outputs, (LOGITS_NAME, EMBEDDING_NAME), strict=True):
            output.get_tensor().set_names({name})
        return model

    def save(self, model: Any, folder: Path, precision: str) -> Path:
        ov = require_runtime("openvino")
        path = folder / MODEL_FILE
        ov.save_model(model, str(path), compress_to_fp16=precision == "fp16")
        return path

    def quantization_input(self, batch: np.ndarray) -> np.ndarray:
        """What NNCF feeds the model for one calibration item."""
        return batch

    def engine_for(self, model: Any, precision: str) -> OpenVinoEngine:
        """An engine over an in-memory model (``ov.Model``, or the compiled model NNCF validates with)."""
        return OpenVinoEngine(model, precision=precision)

    def open(self, path: Path, precision: str, threads: int | None = None) -> OpenVinoEngine:
        return OpenVinoEngine(path, precision=precision, threads=threads)
