"""The one interface every inference engine implements, the table of engines and precisions, and the
optional-runtime guard.

An engine runs the classifier on a preprocessed batch and nothing else: preprocessing, flip views,
temperature, threshold and verdicts stay in :class:`~inspectline.predictor.Predictor`, so they are
applied identically whatever runs the network.

    out = engine.run(batch)          # (N, C, H, W) float32
    out.logits, out.embeddings       # (N, K) and (N, D) float32 numpy arrays

Exported models are files inside a version (``vNNNN/exports/<format>-<precision>/``); a format
(``onnx``, ``openvino``) is run by one engine (``onnxruntime``, ``openvino``). Runtimes other than
PyTorch are optional extras: :func:`require_runtime` imports one or raises
:class:`~inspectline.errors.EngineUnavailableError` with the ``pip install`` command.
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import importlib.util
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch

from inspectline.errors import EngineError, EngineUnavailableError

# Names of the exported graph's input and outputs, shared by every format.
INPUT_NAME, LOGITS_NAME, EMBEDDING_NAME = "image", "logits", "embedding"

# What each engine can run. torch runs the checkpoint itself; the others run exports.
ENGINE_PRECISIONS: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16", "fp16"),
    "openvino": ("fp32", "fp16", "bf16", "int8"),
    "onnxruntime": ("fp32", "int8"),
}
ENGINES = tuple(ENGINE_PRECISIONS)
FORMAT_ENGINES = {"onnx": "onnxruntime", "openvino": "openvino"}  # export format -> the engine that runs it
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

# Python module -> the extra that installs it (pip install 'inspectline[<extra>]').
_RUNTIME_EXTRAS = {
    "openvino": "openvino",
    "nncf": "openvino",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
}
_ENGINE_RUNTIMES = {"torch": "torch", "openvino": "openvino", "onnxruntime": "onnxruntime"}


@dataclass(frozen=True)
class EngineOutput:
    """One engine call's results for N images."""

    logits: np.ndarray  # (N, K) float32, before temperature
    embeddings: np.ndarray  # (N, D) float32 penultimate activations


class InferenceEngine(abc.ABC):
    """Runs the classifier: a preprocessed ``(N, C, H, W)`` float32 batch in, logits and embeddings out."""

    name: ClassVar[str]

    def __init__(self, precision: str, threads: int | None):
        check_precision(self.name, precision)
        if threads is not None and threads < 1:
            msg = f"threads={threads} for the {self.name} engine must be at least 1 (or None: the runtime's default)"
            raise EngineError(msg)
        self.precision = precision
        self.threads = threads

    @property
    def device(self) -> torch.device:
        """Where the network runs; exported engines run on the CPU."""
        return torch.device("cpu")

    @abc.abstractmethod
    def run(self, batch: np.ndarray | torch.Tensor) -> EngineOutput:
        """Logits ``(N, K)`` and embeddings ``(N, D)`` for a preprocessed batch ``(N, C, H, W)``."""

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "precision": self.precision, "threads": self.threads, "device": str(self.device)}


def check_precision(engine: str, precision: str) -> None:
    if engine not in ENGINE_PRECISIONS:
        msg = f"engine {engine!r} is not one of {', '.join(ENGINES)}"
        raise EngineError(msg)
    if precision not in ENGINE_PRECISIONS[engine]:
        accepted = ", ".join(ENGINE_PRECISIONS[engine])
        msg = f"precision {precision!r} is not available for the {engine} engine (accepted: {accepted})"
        raise EngineError(msg)


def as_float_array(batch: np.ndarray | torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view of a CPU batch (no copy when it already is one)."""
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().cpu().contiguous().numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


def require_runtime(module: str) -> ModuleType:
    """Import an optional runtime, or raise :class:`EngineUnavailableError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EngineUnavailableError(missing_runtime_message(module)) from None


def missing_runtime_message(name: str) -> str:
    """What to tell a user whose runtime (a module or an engine name) is not installed."""
    module = _ENGINE_RUNTIMES.get(name, name)
    extra = _RUNTIME_EXTRAS.get(module, module)
    return f"{module} is not installed; install it with: pip install 'inspectline[{extra}]'"


def runtime_installed(engine: str) -> bool:
    """Whether the runtime of ``engine`` can be imported (without importing it)."""
    module = _ENGINE_RUNTIMES.get(engine, engine)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (tests), or a broken install
        return False


def runtime_version(module: str) -> str:
    """``"<module> <version>"`` of an installed runtime, for export records and benchmark rows."""
    require_runtime(module)
    try:
        return f"{module} {importlib.metadata.version(module)}"
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree, not an installed distribution
        return f"{module} (version unknown)"


def images_per_second(
    runners: Mapping[str, Callable[[np.ndarray], object]],
    batch: np.ndarray,
    *,
    repeats: int = 5,
    min_seconds: float = 0.2,
) -> dict[str, float]:
    """Best-of-``repeats`` images/s of each runner on ``batch``, the runners interleaved.

    Interleaving means contention from other processes on a shared machine hits every runner alike,
    so the ratios between them stay meaningful; the best repeat is the least disturbed one. Each
    repeat runs a runner for at least ``min_seconds`` (several calls for fast ones).
    """
    for run in runners.values():
        run(batch)  # warm-up: lazy initialisation and allocation are not what we measure
    best = dict.fromkeys(runners, 0.0)
    for _ in range(repeats):
        for name, run in runners.items():
            calls, started = 0, time.perf_counter()
            while True:
                run(batch)
                calls += 1
                elapsed = time.perf_counter() - started
                if elapsed >= min_seconds:
                    break
            best[name] = max(best[name], calls * len(batch) / elapsed)
    return best
