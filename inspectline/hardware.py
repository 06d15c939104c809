"""What the CPU can do, detected once at start: the one place training, inference engines and benchmarks ask.

Line PCs differ: an AMD EPYC with AVX2 only, an Intel Xeon with AVX-512, VNNI (int8 dot products) and
AMX (bf16/int8 matrix units). bf16 autocast doubles CPU training and inference speed where the CPU
has native bf16 (AMX or AVX512-BF16) and is *slower* than fp32 where it has to be emulated, so it is
used only where :func:`cpu_supports_bf16` says so; INT8 engines gain most with VNNI or AMX.

    caps = cpu_capabilities()
    caps.bf16, caps.int8_accelerated, caps.describe()
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

# /proc/cpuinfo flag names of the features that change which engine and precision are fastest.
FEATURE_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuCapabilities:
    model: str
    flags: frozenset[str]  # the FEATURE_FLAGS this CPU has
    torch_capability: str  # what PyTorch dispatches to: "DEFAULT", "AVX2", "AVX512", "AMX" ...
    # /proc/cpuinfo's "cpu family" and "model" numbers: VMs often hide the model name ("AMD EPYC") but these
    # still tell the generation (AMD family 25 model 1 is Zen 3, model 17 is Zen 4). Empty where not given.
    family: str = ""
    model_number: str = ""

    @property
    def bf16(self) -> bool:
        """Native bf16 arithmetic (AMX or AVX512-BF16): bf16 autocast is faster than fp32 here."""
        return bool({"amx_bf16", "avx512_bf16"} & self.flags)

    @property
    def int8_accelerated(self) -> bool:
        """int8 dot-product instructions (VNNI or AMX-INT8)."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    def describe(self) -> str:
        features = ", ".join(f for f in FEATURE_FLAGS if f in self.flags) or "no SIMD extensions detected"
        return f"{self.model} ({features}; torch dispatch {self.torch_capability})"

    def to_dict(self) -> dict:
        return {
            "cpu": self.model,
            "cpu_flags": sorted(self.flags),
            "torch_cpu_capability": self.torch_capability,
            "bf16": self.bf16,
            "int8_accelerated": self.int8_accelerated,
        }


def resolve_device(name: str) -> torch.device:
    """The torch device for a ``device`` setting (training, inspectors): ``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.cache
def cpu_capabilities() -> CpuCapabilities:
    """The CPU's model and relevant features (cached: the CPU does not change while we run)."""
    return parse_cpuinfo(_read_cpuinfo(), torch_capability=_torch_capability())


def cpu_supports_bf16() -> bool:
    return cpu_capabilities().bf16


def parse_cpuinfo(text: str, *, torch_capability: str = "DEFAULT") -> CpuCapabilities:
    """Capabilities from the text of ``/proc/cpuinfo`` (first processor; all cores of a CPU match)."""
    model, flags = platform.processor() or "unknown", set()
    numbers = {"cpu family": "", "model": ""}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("unknown", "", "x86_64"):
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key in numbers and not numbers[key]:
            numbers[key] = value.strip()
    return CpuCapabilities(
        model=model,
        flags=frozenset(flags & set(FEATURE_FLAGS)),
        torch_capability=torch_capability,
        family=numbers["cpu family"],
        model_number=numbers["model"],
    )


def _read_cpuinfo() -> str:
    path = Path("/proc/cpuinfo")
    return path.read_text() if path.is_file() else ""


def _torch_capability() -> str:
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"
