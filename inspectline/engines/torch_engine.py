"""The PyTorch engine: the checkpoint's own module, eager, channels_last, optionally under autocast.

Precisions:

* ``fp32``  everywhere.
* ``bf16``  autocast to bfloat16: on a CPU only where it has native bf16 (AMX or AVX512-BF16, see
            :mod:`inspectline.hardware`); elsewhere it would be emulated and slower than fp32, so it
            is refused. On CUDA where the GPU supports bf16.
* ``fp16``  autocast to float16 on CUDA only (CPU float16 kernels are slower than fp32).

``threads`` sets PyTorch's intra-op thread count, which is process-wide: a replica given one CPU
must run with ``threads=1``.

    engine = TorchEngine(model, precision="fp32", threads=2)
    out = engine.run(batch)  # (N, C, H, W) -> logits (N, K), embeddings (N, D)
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from inspectline.engines.base import EngineOutput, InferenceEngine
from inspectline.errors import EngineError
from inspectline.hardware import CpuCapabilities, cpu_capabilities
from inspectline.model import DefectClassifier

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class TorchEngine(InferenceEngine):
    """Eager PyTorch on the CPU or a GPU."""

    name = "torch"

    def __init__(
        self,
        model: DefectClassifier,
        *,
        precision: str = "fp32",
        device: str | torch.device = "cpu",
        channels_last: bool = True,
        threads: int | None = None,
        capabilities: CpuCapabilities | None = None,
    ):
        super().__init__(precision, threads)
        self._device = torch.device(device)
        check_torch_precision(precision, self._device, capabilities or cpu_capabilities())
        if threads is not None:
            torch.set_num_threads(threads)
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self._device, memory_format=self._memory_format).eval()

    @property
    def device(self) -> torch.device:
        return self._device

    def describe(self) -> dict:
        return {**super().describe(), "runtime_threads": torch.get_num_threads()}

    def run(self, batch: np.ndarray | torch.Tensor) -> EngineOutput:
        x = torch.as_tensor(batch).to(self._device, memory_format=self._memory_format, non_blocking=True)
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        autocast = (
            torch.autocast(device_type=self._device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            logits, embedding = self.model.forward_with_embedding(x)
        return EngineOutput(logits=logits.float().cpu().numpy(), embeddings=embedding.float().cpu().numpy())


def torch_precisions(device: torch.device, capabilities: CpuCapabilities) -> tuple[str, ...]:
    """The precisions the torch engine runs well on ``device``."""
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp32", "fp16")
    return ("fp32", "bf16") if capabilities.bf16 else ("fp32",)


def check_torch_precision(precision: str, device: torch.device, capabilities: CpuCapabilities) -> None:
    accepted = torch_precisions(device, capabilities)
    if precision in accepted:
        return
    if device.type == "cpu":
        why = (
            f"this CPU ({capabilities.describe()}) has no native bf16 (AMX or AVX512-BF16), so bf16 would be "
            "emulated and slower than fp32"
            if precision == "bf16"
            else "float16 autocast is for GPUs; CPU float16 kernels are slower than fp32"
        )
    else:
        why = f"{torch.cuda.get_device_name(device)} does not support it"
    msg = f"torch precision {precision!r} on {device}: {why} (accepted here: {', '.join(accepted)})"
    raise EngineError(msg)
