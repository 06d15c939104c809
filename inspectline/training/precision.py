"""Where training runs and in which precision: the device, and the autocast dtype for ``train.precision``.

``auto`` uses mixed precision only where the hardware does it natively, because emulated bf16 is
*slower* than fp32:

* CUDA: AMP, bf16 where the GPU supports it, else float16 with a gradient scaler;
* CPU with AMX or AVX512-BF16 (:func:`inspectline.hardware.cpu_supports_bf16`): bf16 autocast,
  about 2.1× the fp32 training throughput of ResNet18/50 on a 2-core Intel Xeon with AMX;
* any other CPU (AVX2 only, e.g. AMD EPYC before Zen 4): fp32.

``bf16`` forces bf16 autocast on any device (tests and benchmarks use it on CPUs without native bf16);
``fp32`` never autocasts. Weights, optimiser state and the loss stay fp32 in every case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from inspectline.hardware import cpu_capabilities, cpu_supports_bf16

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Precision:
    """The resolved choice: the autocast dtype (None: fp32) and why it was chosen."""

    dtype: torch.dtype | None
    reason: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bf16 has fp32's range."""
        return self.dtype == torch.float16


def resolve_precision(setting: str, device: torch.device) -> Precision:
    """The autocast dtype for ``train.precision`` on ``device`` (see the module docstring)."""
    if setting not in PRECISIONS:
        msg = f"train.precision {setting!r} is not one of {', '.join(PRECISIONS)}"
        raise ValueError(msg)
    if setting == "fp32":
        return Precision(None, "fp32 requested")
    if setting == "bf16":
        return Precision(torch.bfloat16, "bf16 requested")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, "CUDA AMP (bf16)")
        return Precision(torch.float16, "CUDA AMP (float16 with a gradient scaler)")
    if device.type == "cpu" and cpu_supports_bf16():
        return Precision(torch.bfloat16, f"CPU with native bf16: {cpu_capabilities().describe()}")
    return Precision(None, f"no native bf16 on {cpu_capabilities().describe() if device.type == 'cpu' else device}")


def autocast(device: torch.device, precision: Precision) -> torch.autocast:
    """The autocast context for a training or validation step (disabled for fp32)."""
    return torch.autocast(device.type, dtype=precision.dtype or torch.float32, enabled=precision.dtype is not None)
