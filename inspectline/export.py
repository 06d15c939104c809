"""``inspect export``: a registered version as an ONNX or OpenVINO model, parity-checked, stored inside it.

    inspect export v0003 --format openvino --precision int8 [--max-drop 0.01] [--force]

1. The checkpoint's network is captured with its two outputs, logits and the penultimate embedding
   (drift monitoring needs it); preprocessing, flip views, temperature and threshold stay in the
   model card and are applied by the :class:`~inspectline.predictor.Predictor` for every engine.
2. INT8: NNCF post-training quantization, calibrated on ``calibration_frames`` frames (300 by
   default) of the version's own **training** split (``splits.json``), each in every TTA view the
   service feeds. With ``max_drop`` it is accuracy-controlled: NNCF keeps the most sensitive layers
   in floating point until verdict agreement with the checkpoint on the **validation** split drops
   by at most ``max_drop`` (0.01 = one verdict in a hundred).
3. Parity against the checkpoint on the **test** split and on random inputs
   (:mod:`inspectline.parity`); below the bound (99 % for INT8, 99.9 % otherwise) the export is
   refused with :class:`~inspectline.errors.ParityError` and its files removed, unless ``force``.
4. Speed: images/s of the export and of the checkpoint in PyTorch fp32, interleaved, on this CPU.
5. The files go to ``vNNNN/exports/<format>-<precision>/`` (replacing an earlier export of the same
   kind) and an :class:`~inspectline.registry.ExportRecord` with the parity report into the
   version's manifest (``ModelRegistry.record_export``, audited).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from inspectline.config import DataConfig
from inspectline.data import FrameDataset, build_eval_preset, create_loader, load_samples, load_split_manifest
from inspectline.engines.base import images_per_second, require_runtime, runtime_version
from inspectline.engines.formats import export_format
from inspectline.errors import DataError, ExportError, ParityError
from inspectline.hardware import cpu_capabilities
from inspectline.model import ModelCard, load_checkpoint
from inspectline.parity import ParityReport, default_bound, measure_parity, parity_table
from inspectline.predictor import Predictor
from inspectline.registry import SYSTEM_ACTOR, ExportRecord, ModelRegistry, ModelVersion

log = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
SPEED_FRAMES = 8  # frames per timed call (times the TTA views): the service's usual micro-batch


class ExportRequest(BaseModel):
    """What ``inspect export`` asks for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str = Field(description="onnx or openvino (checked against the formats table, with the choices)")
    precision: str = "fp32"
    max_drop: float | None = Field(None, ge=0, le=1, description="INT8 only: accuracy-controlled quantization")
    force: bool = False
    min_agreement: float | None = Field(None, ge=0, le=1, description="None: 0.99 for int8, 0.999 otherwise")
    calibration_frames: int = Field(300, ge=1)
    threads: int | None = Field(None, ge=1, description="engine threads (None: the runtime's default)")
    measure_speed: bool = True


@dataclass(frozen=True)
class ExportResult:
    record: ExportRecord
    report: ParityReport
    table: str


class _LogitsAndEmbedding(nn.Module):
    """The exported graph: ``(N, C, H, W)`` -> logits ``(N, K)`` and embedding ``(N, D)``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_embedding(x)


def export_version(
    registry: ModelRegistry, name: str, request: ExportRequest, *, actor: str = SYSTEM_ACTOR
) -> ExportResult:
    """Export, check parity, measure speed, store and record; see the module docstring."""
    fmt = export_format(request.format, request.precision)
    if request.max_drop is not None and request.precision != "int8":
        msg = f"--max-drop controls INT8 quantization; precision {request.precision!r} has nothing to control"
        raise ExportError(msg)
    for module in (*fmt.requires, *(("nncf",) if request.precision == "int8" else ())):
        require_runtime(module)  # a missing runtime fails here, before any work
    caps = cpu_capabilities()
    if request.precision == "bf16" and not caps.bf16:
        msg = (
            f"a bf16 export can only be checked on a CPU with native bf16 (AMX or AVX512-BF16); this one is "
            f"{caps.describe()}. Export fp16 (OpenVINO's default precision) or int8 here, or bf16 on the line PC"
        )
        raise ExportError(msg)
    version = registry.get(name)
    card = version.card
    point = registry.operating_point(version.name)
    threshold = point.threshold if point is not None else card.threshold
    splits = version_splits(version)
    label = f"{request.format}-{request.precision}"
    bound = request.min_agreement or default_bound(request.precision)

    model, _ = load_checkpoint(version.checkpoint)
    test_frames, test_labels = split_frames(splits["test"], card)
    log.info("%s: capturing %s for %s", version.name, card.backbone, request.format)
    exported = fmt.convert(_LogitsAndEmbedding(model).eval(), test_frames[:2])
    reference = Predictor(model, card, threshold=threshold, threads=request.threads)
    quantization: dict[str, Any] = {}
    if request.precision == "int8":
        exported, quantization = _quantize(fmt, exported, reference, splits, request)

    exports = version.path / EXPORTS_DIR
    exports.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=exports, prefix=f".staging-{label}-"))
    try:
        model_file = fmt.save(exported, staging, request.precision)
        engine = fmt.open(model_file, request.precision, request.threads)
        candidate = Predictor(engine, card, threshold=threshold)
        report = measure_parity(reference, candidate, test_frames, test_labels, bound=bound)
        table = parity_table({f"{version.name} {label}": report})
        if not report.passed and not request.force:
            msg = (
                f"export {label} of {version.name} refused: {'; '.join(report.problems)}\n{table}\n"
                "Nothing was recorded. Try --max-drop for INT8, or --force to record it anyway (it will never be "
                "chosen automatically)."
            )
            raise ParityError(msg)
        speed = _speed(reference, candidate, test_frames) if request.measure_speed else {}
        final = exports / label
        _replace_folder(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    record = ExportRecord(
        format=request.format,
        precision=request.precision,
        path=(final / model_file.name).relative_to(version.path).as_posix(),
        passed=report.passed,
        forced=not report.passed,
        parity=report.model_dump(mode="json"),
        runtime=runtime_version(fmt.runtime),
        quantization=quantization,
        measured_on=caps.model if speed else "",
        actor=actor,
        **speed,
    )
    registry.record_export(version.name, record)
    return ExportResult(record=record, report=report, table=table)


def split_frames(
    samples: list, card: ModelCard, *, limit: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, np.ndarray]:
    """Preprocessed frames ``(N, C, H, W)`` and labels of ``samples`` (at most ``limit``, drawn with ``seed``)."""
    if limit is not None and len(samples) > limit:
        picked = np.random.default_rng(seed).choice(len(samples), size=limit, replace=False)
        samples = [samples[i] for i in sorted(picked)]
    pre = card.preprocessing
    loader = create_loader(FrameDataset(samples, build_eval_preset(pre), pre.color_mode), batch_size=64, train=False)
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels).numpy()


def version_splits(version: ModelVersion):
    """The version's own train/val/test split, from its data config and ``splits.json``."""
    card = version.card
    manifest = version.path / "splits.json"
    if not card.config.get("data") or not manifest.is_file():
        msg = (
            f"{version.name} does not carry its data config and splits.json, which an export needs for "
            "calibration and parity; register versions with `inspect train`"
        )
        raise DataError(msg)
    data_cfg = DataConfig.model_validate(card.config["data"])
    return load_split_manifest(manifest, load_samples(data_cfg))


def _quantize(fmt, exported: Any, reference: Predictor, splits, request: ExportRequest) -> tuple[Any, dict]:
    """NNCF INT8, plain or accuracy-controlled; returns the quantized model and what was done."""
    nncf = require_runtime("nncf")
    frames, _ = split_frames(splits["train"], reference.card, limit=request.calibration_frames)
    # One calibration item per frame and view, as the service feeds them: (1, C, H, W) each.
    views = reference.view_batch(frames)
    items = [views[i : i + 1].numpy() for i in range(len(views))]
    calibration = nncf.Dataset(items, fmt.quantization_input)
    info: dict[str, Any] = {
        "method": "nncf post-training quantization",
        "nncf": nncf.__version__,
        "calibration_split": "train",
        "calibration_frames": len(frames),
        "calibration_items": len(items),
    }
    if request.max_drop is None:
        log.info("quantizing to INT8 on %d calibration items", len(items))
        return nncf.quantize(exported, calibration, subset_size=len(items)), info

    val_frames, _ = split_frames(splits["val"], reference.card)
    reference_verdicts = _verdicts(reference, val_frames)
    validation = nncf.Dataset(list(zip(val_frames, reference_verdicts, strict=True)))

    def agreement(model: Any, data: Any) -> tuple[float, list[float]]:
        """Verdict agreement with the checkpoint on validation frames; NNCF drives it (higher is better)."""
        pairs = list(data)
        candidate = Predictor(fmt.engine_for(model, request.precision), reference.card, threshold=reference.threshold)
        got = _verdicts(candidate, torch.stack([f for f, _ in pairs]))
        per_frame = [float(a == b) for a, (_, b) in zip(got, pairs, strict=True)]
        return float(np.mean(per_frame)), per_frame

    log.info(
        "accuracy-controlled INT8: at most %.3f lost verdict agreement on %d validation frames",
        request.max_drop,
        len(val_frames),
    )
    quantized = nncf.quantize_with_accuracy_control(
        exported,
        calibration,
        validation,
        agreement,
        max_drop=request.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(items),
    )
    info |= {
        "method": "nncf post-training quantization with accuracy control",
        "max_drop": request.max_drop,
        "metric": "verdict agreement with the checkpoint on the validation split",
        "validation_frames": len(val_frames),
    }
    return quantized, info


def _verdicts(predictor: Predictor, frames: torch.Tensor, batch_size: int = 32) -> list[bool]:
    """DEFECTIVE (True) or OK per frame at the predictor's threshold."""
    out = []
    for start in range(0, len(frames), batch_size):
        probs, _ = predictor.calibrated_probabilities(predictor.forward(frames[start : start + batch_size]).view_logits)
        out += (probs >= predictor.threshold).tolist()
    return out


def _speed(reference: Predictor, candidate: Predictor, frames: torch.Tensor) -> dict[str, float]:
    """Images/s of both engines on one service-sized micro-batch (frames and their flips), interleaved."""
    batch = reference.view_batch(frames[:SPEED_FRAMES]).numpy()
    speed = images_per_second({"torch": reference.engine.run, "export": candidate.engine.run}, batch, repeats=3)
    return {"images_per_s": round(speed["export"], 1), "torch_fp32_images_per_s": round(speed["torch"], 1)}


def _replace_folder(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; an earlier export there is moved aside first, then deleted."""
    if target.exists():
        old = target.with_name(f".old-{target.name}-{new.name}")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
