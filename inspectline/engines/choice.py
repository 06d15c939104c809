"""Which engine judges a version's frames: one rule, from a preference and the version's exports.

A replica (or ``inspect predict``) states a preference, ``engine: auto|torch|openvino|onnxruntime``
and ``precision: auto|fp32|fp16|bf16|int8``; :func:`choose_engine` turns it into an
:class:`EngineChoice` with the reason, and :func:`open_engine` builds that engine.

The rule for ``engine: auto``:

1. Candidates are the version's exports that **passed parity** (forced ones never qualify), whose
   runtime is installed here, whose precision this CPU runs natively (OpenVINO bf16 needs AMX or
   AVX512-BF16), and whose precision matches when one is asked for.
2. The fastest candidate wins: the speed-up over PyTorch fp32 measured when exporting; exports
   without a measurement rank after measured ones, int8 before fp16/bf16 before fp32.
3. If there is none, or the fastest was measured slower than PyTorch fp32, the torch engine runs
   the checkpoint: bf16 autocast where the CPU (or GPU) supports it, else fp32 — or fp32 always with
   ``torch_autocast: false`` (the service's default: autocast was never checked for parity).

On a GPU the torch engine always runs (exports run on the CPU). An explicit engine names what to
run; with an explicit precision a forced export is accepted too (the reason says so), and a missing
export or runtime is an error that says how to make or install it.

    choice = choose_engine(registry.get("v0003"), EnginePreference(engine="auto"))
    choice.engine, choice.precision, choice.reason
    engine = open_engine(registry.get("v0003"), choice, threads=1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict

from inspectline.engines.base import (
    FORMAT_ENGINES,
    InferenceEngine,
    check_precision,
    missing_runtime_message,
    runtime_installed,
)
from inspectline.engines.formats import export_format
from inspectline.engines.torch_engine import TorchEngine, check_torch_precision, torch_precisions
from inspectline.errors import EngineError, EngineUnavailableError
from inspectline.hardware import CpuCapabilities, cpu_capabilities
from inspectline.model import load_checkpoint
from inspectline.registry import ExportRecord, ModelVersion

# Without a measured speed, the precision that is usually fastest comes first.
_PRECISION_RANK = {"int8": 3, "fp16": 2, "bf16": 2, "fp32": 1}


class EnginePreference(BaseModel):
    """What a replica asks for; ``auto`` leaves it to :func:`choose_engine`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: Literal["auto", "torch", "openvino", "onnxruntime"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = "auto"
    # With precision auto, may the checkpoint run bf16/fp16 autocast where the hardware has it natively?
    # Faster, but unlike an export it was never checked for parity: the service keeps it off by default.
    torch_autocast: bool = True


@dataclass(frozen=True)
class EngineChoice:
    """The engine and precision that will run, why, and the export it runs (None: the checkpoint in torch)."""

    engine: str
    precision: str
    reason: str
    export: ExportRecord | None = None

    def describe(self) -> dict[str, Any]:
        e = self.export
        return {
            "engine": self.engine,
            "precision": self.precision,
            "reason": self.reason,
            "export": e.path if e else None,
            "agreement": e.parity.get("test", {}).get("agreement") if e else None,
            "forced": e.forced if e else False,
        }


def choose_engine(
    version: ModelVersion,
    preference: EnginePreference | None = None,
    *,
    device: str | torch.device = "cpu",
    capabilities: CpuCapabilities | None = None,
    installed: Callable[[str], bool] = runtime_installed,
) -> EngineChoice:
    """Apply the rule in the module docstring; raises :class:`EngineError` for a preference that cannot be met."""
    preference = preference or EnginePreference()
    device = torch.device(device)
    caps = capabilities or cpu_capabilities()
    if preference.engine == "torch" or (preference.engine == "auto" and device.type != "cpu"):
        why = (
            "asked for torch" if preference.engine == "torch" else f"exports run on the CPU; this replica has {device}"
        )
        return _torch_choice(preference.precision, device, caps, why, autocast=preference.torch_autocast)
    if preference.engine != "auto":
        return _explicit_export(version, preference, caps, installed)

    exports = version.manifest.exports
    usable, skipped = [], []
    for record in exports:
        problem = _unusable(record, preference.precision, caps, installed)
        (skipped.append(f"{_label(record)}: {problem}") if problem else usable.append(record))
    if usable:
        best = max(usable, key=_rank)
        speedup = best.speedup
        if speedup is None or speedup > 1.0:
            measured = f"measured {speedup:.2f}× torch fp32 on {best.measured_on}" if speedup else "not measured"
            reason = (
                f"auto: {_label(best)} passed parity (agreement {_agreement(best)}), {measured}; "
                f"the fastest of {len(usable)} usable export(s)"
            )
            return EngineChoice(FORMAT_ENGINES[best.format], best.precision, reason, best)
        why = f"the fastest passed export, {_label(best)}, measured {speedup:.2f}× torch fp32 on {best.measured_on}"
    elif exports:
        why = "no usable export (" + "; ".join(skipped) + ")"
    else:
        why = f"{version.name} has no exports"
    precision = preference.precision
    if precision != "auto" and precision not in torch_precisions(device, caps):
        msg = f"auto engine with precision {precision!r}: {why}, and torch cannot run {precision} here"
        raise EngineError(msg)
    return _torch_choice(precision, device, caps, f"auto: {why}", autocast=preference.torch_autocast)


def open_engine(
    version: ModelVersion,
    choice: EngineChoice,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    channels_last: bool = True,
) -> InferenceEngine:
    """Build the chosen engine for ``version`` (the checkpoint for torch, the export's files otherwise)."""
    if choice.engine == "torch":
        model, _ = load_checkpoint(version.checkpoint, device=device)
        return TorchEngine(
            model, precision=choice.precision, device=device, channels_last=channels_last, threads=threads
        )
    if choice.export is None:
        msg = f"engine {choice.engine!r} runs an export, and the choice names none"
        raise EngineError(msg)
    return export_format(choice.export.format).open(version.path / choice.export.path, choice.precision, threads)


def _torch_choice(
    precision: str, device: torch.device, caps: CpuCapabilities, why: str, *, autocast: bool = True
) -> EngineChoice:
    if precision == "auto" and not autocast:
        return EngineChoice("torch", "fp32", f"{why}; torch fp32 (autocast off: only parity-checked precisions)")
    if precision == "auto":
        native = [p for p in ("bf16", "fp16") if p in torch_precisions(device, caps)]
        precision = native[0] if native else "fp32"
        detail = f"{precision} autocast" if native else f"fp32 ({_no_native_half(device, caps)})"
    else:
        check_torch_precision(precision, device, caps)
        detail = precision
    return EngineChoice("torch", precision, f"{why}; torch {detail}")


def _explicit_export(
    version: ModelVersion, preference: EnginePreference, caps: CpuCapabilities, installed: Callable[[str], bool]
) -> EngineChoice:
    engine, precision = preference.engine, preference.precision
    if precision != "auto":
        check_precision(engine, precision)
    if not installed(engine):
        raise EngineUnavailableError(f"engine {engine!r}: {missing_runtime_message(engine)}")
    exports = [e for e in version.manifest.exports if FORMAT_ENGINES.get(e.format) == engine]
    matching = [e for e in exports if precision in ("auto", e.precision) and (e.passed or precision != "auto")]
    if not matching:
        fmt = next(f for f, e in FORMAT_ENGINES.items() if e == engine)
        listed = ", ".join(_label(e) + ("" if e.passed else " (forced)") for e in version.manifest.exports) or "none"
        wanted = "" if precision == "auto" else f" at {precision}"
        hint = (
            f"inspect export {version.name} --format {fmt} --precision {precision if precision != 'auto' else 'int8'}"
        )
        msg = f"{version.name} has no usable {engine} export{wanted} (exports: {listed}); make one with `{hint}`"
        raise EngineError(msg)
    record = max(matching, key=_rank)
    problem = _unusable(record, record.precision, caps, installed, require_passed=False)
    if problem:
        msg = f"{version.name}'s {_label(record)} cannot run here: {problem}"
        raise EngineError(msg)
    parity = f"parity passed (agreement {_agreement(record)})" if record.passed else "parity below the bound, forced"
    return EngineChoice(engine, record.precision, f"asked for {engine} {precision}: {_label(record)}, {parity}", record)


def _unusable(
    record: ExportRecord,
    precision: str,
    caps: CpuCapabilities,
    installed: Callable[[str], bool],
    *,
    require_passed: bool = True,
) -> str | None:
    """Why ``record`` cannot be chosen here, or None."""
    engine = FORMAT_ENGINES.get(record.format)
    if engine is None:
        return f"format {record.format!r} is not one this inspectline runs ({', '.join(FORMAT_ENGINES)})"
    if require_passed and not record.passed:
        return "parity below the bound (forced)"
    if precision not in ("auto", record.precision):
        return f"precision {record.precision}, not {precision}"
    if not installed(engine):
        return missing_runtime_message(engine)
    if record.precision == "bf16" and not caps.bf16:
        return f"bf16 needs AMX or AVX512-BF16, which {caps.model} lacks"
    return None


def _rank(record: ExportRecord) -> tuple[bool, float, int]:
    speedup = record.speedup
    return speedup is not None, speedup or 0.0, _PRECISION_RANK.get(record.precision, 0)


def _label(record: ExportRecord) -> str:
    return f"{record.format}-{record.precision}"


def _agreement(record: ExportRecord) -> str:
    value = record.parity.get("test", {}).get("agreement")
    return f"{value:.2%}" if isinstance(value, float) else "not recorded"


def _no_native_half(device: torch.device, caps: CpuCapabilities) -> str:
    if device.type == "cpu":
        return f"no native bf16 on {caps.model}"
    return "no half precision on this GPU"
