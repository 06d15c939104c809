"""A whole training run, stage by stage: load data -> split -> fit -> calibrate -> evaluate -> save.

A run directory holds everything needed to understand and reproduce it:

    runs/<name>/
      config.yaml      the resolved configuration
      splits.json      the exact train/val/test keys
      history.jsonl    one line per epoch
      events.out.tfevents.*  the same curves for ``tensorboard --logdir runs/``
      model.pt         the calibrated checkpoint (weights + model card)
      drift_reference.npz   validation-split outputs, image statistics and embedding components
      report/          metrics.json, report.md and plots on the test split

``inspect train`` calls :func:`run_training`; ``inspect retrain`` calls :func:`train_model` with its
own splits and a parent checkpoint to warm-start from.

Every image is decoded once and, for training and the per-epoch validation, resized once to the
model's side (``data.cache_images``); augmentation works from that cache. Calibration, the drift
reference and the test evaluation go through the :class:`Predictor` on the decoded frames, exactly
as the service judges them.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from inspectline.config import InspectConfig
from inspectline.data import (
    CLASS_NAMES,
    FrameDataset,
    Preprocessing,
    Splits,
    build_eval_preset,
    build_train_preset,
    compute_normalization,
    create_loader,
    describe,
    load_images,
    load_samples,
    loader_workers,
    resize_images,
    save_split_manifest,
    split_samples,
)
from inspectline.explain import write_gallery
from inspectline.hardware import resolve_device
from inspectline.model import ModelCard, build_model, load_checkpoint, save_checkpoint
from inspectline.monitoring.drift import reference_from_frames
from inspectline.predictor import Predictor
from inspectline.training.calibration import choose_threshold, fit_temperature
from inspectline.training.evaluation import Evaluation, collect_outputs, evaluate_predictor
from inspectline.training.loop import FitResult, fit
from inspectline.training.operating_point import standard_points
from inspectline.training.report import write_report

log = logging.getLogger(__name__)


@dataclass
class TrainingRun:
    run_dir: Path
    checkpoint: Path
    card: ModelCard
    fit: FitResult
    evaluation: Evaluation
    report: Path


def load_data(cfg: InspectConfig) -> Splits:
    """Samples of the configured source, split as configured."""
    samples = load_samples(cfg.data)
    return split_samples(samples, test_size=cfg.data.test_size, val_size=cfg.data.val_size, seed=cfg.data.seed)


def run_training(cfg: InspectConfig, *, run_dir: Path | None = None, progress: bool = True) -> TrainingRun:
    """Train from scratch (or from ``model.init_weights``) on the configured source."""
    return train_model(
        cfg, load_data(cfg), run_dir=run_dir or new_run_dir(cfg.paths.runs, cfg.model.arch), progress=progress
    )


def new_run_dir(root: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(root) / f"{stamp}-{name}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(root) / f"{stamp}-{name}-{suffix}"
    return run_dir


def train_model(
    cfg: InspectConfig,
    splits: Splits,
    *,
    run_dir: Path,
    init_from: Path | None = None,
    parent: str | None = None,
    progress: bool = True,
) -> TrainingRun:
    """Fit, calibrate, evaluate on ``splits.test`` and save into ``run_dir``.

    ``init_from`` warm-starts from an inspectline checkpoint: its architecture and preprocessing are
    kept (the weights were learnt with them), the rest of the recipe comes from ``cfg``.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    save_split_manifest(splits, run_dir / "splits.json", source=cfg.data.model_dump(mode="json"), seed=cfg.data.seed)
    log.info("data: train %s, val %s, test %s", describe(splits.train), describe(splits.val), describe(splits.test))
    _seed_everything(cfg.train.seed)
    device = resolve_device(cfg.train.device)

    if init_from is not None:
        model, base_card = load_checkpoint(init_from)
        pre, arch, head_dims, head_dropout, pooling, width = (
            base_card.preprocessing,
            base_card.arch,
            base_card.head_dims,
            base_card.head_dropout,
            base_card.pooling,
            base_card.width,
        )
        color_mode = pre.color_mode
    else:
        color_mode = cfg.data.color_mode
        arch, head_dims, head_dropout, pooling, width = (
            cfg.model.arch,
            cfg.model.head_dims,
            cfg.model.head_dropout,
            cfg.model.pooling,
            cfg.model.width,
        )

    cache = cfg.data.cache_images
    images = {name: load_images(splits[name], color_mode) if cache else None for name in ("train", "val", "test")}
    if init_from is None:
        train_images = images["train"] if cache else load_images(splits.train, color_mode)
        mean, std = compute_normalization(train_images, cfg.data.image_size)
        pre = Preprocessing(image_size=cfg.data.image_size, color_mode=color_mode, mean=mean, std=std)
        model = build_model(
            arch,
            num_classes=len(CLASS_NAMES),
            in_channels=pre.channels,
            head_dims=head_dims,
            head_dropout=head_dropout,
            pooling=pooling,
            width=width,
            init_weights=cfg.model.init_weights,
        )

    # The training cache: every image resized once to the model's side; augmentation starts from it.
    resized = {name: resize_images(images[name], pre.image_size) if cache else None for name in ("train", "val")}
    train_set = FrameDataset(
        splits.train,
        build_train_preset(pre, cfg.augment, seed=cfg.train.seed),
        color_mode,
        resized["train"],
        soft_targets=cfg.train.soft_labels,
    )
    val_set = FrameDataset(splits.val, build_eval_preset(pre), color_mode, resized["val"])
    t = cfg.train
    workers = loader_workers(t.num_workers)
    train_loader = create_loader(
        train_set,
        batch_size=t.batch_size,
        train=True,
        balanced=t.balanced_sampling,
        num_workers=workers,
        seed=t.seed,
    )
    val_loader = create_loader(val_set, batch_size=t.batch_size * 2, train=False, num_workers=workers)

    result = fit(
        model,
        train_loader,
        val_loader,
        t,
        device,
        history_path=run_dir / "history.jsonl",
        tensorboard_dir=run_dir if t.tensorboard else None,
        progress=progress,
    )
    log.info(
        "fit: %d epochs (%s), best validation F1 %.4f at epoch %d; kept epoch %d (train.keep: %s, F1 %.4f)",
        result.epochs_run,
        result.stop_reason,
        result.best_val_f1,
        result.best_epoch,
        result.kept_epoch,
        t.keep,
        result.kept_val_f1,
    )

    card = ModelCard(
        arch=arch,
        class_names=CLASS_NAMES,
        head_dims=head_dims,
        head_dropout=head_dropout,
        pooling=pooling,
        width=width,
        preprocessing=pre,
        threshold_policy=cfg.calibration.threshold_policy,
        tta_views=cfg.calibration.tta_views,
        parent=parent,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        config=cfg.model_dump(mode="json"),
    )
    card = calibrate(Predictor(model, card, device=device, channels_last=t.channels_last), splits, images["val"], cfg)

    checkpoint = run_dir / "model.pt"
    save_checkpoint(checkpoint, model, card)
    predictor = Predictor(model, card, device=device, channels_last=t.channels_last)
    val_frames = images["val"] if cache else load_images(splits.val, color_mode)
    reference_from_frames(predictor, val_frames).save(run_dir / "drift_reference.npz")
    evaluation = evaluate_predictor(
        predictor, splits.test, cfg.readiness, images=images["test"], split="test", size_bytes=checkpoint.stat().st_size
    )
    headline = {k: v for k, v in evaluation.metrics.items() if isinstance(v, float)} | {
        "ece": evaluation.ece_after,
        "val_f1": result.kept_val_f1,
    }
    card = card.model_copy(update={"metrics": headline})
    save_checkpoint(checkpoint, model, card)
    report = write_report(
        evaluation, run_dir / "report", history=result.history, title=f"{arch} trained on {cfg.data.source}"
    )
    with report.open("a") as fh:  # the gallery of worst mistakes with heatmaps, after the report's own sections
        fh.write(write_gallery(predictor, splits.test, evaluation, report.parent, images=images["test"]))
    return TrainingRun(
        run_dir=run_dir, checkpoint=checkpoint, card=card, fit=result, evaluation=evaluation, report=report
    )


def calibrate(
    predictor: Predictor, splits: Splits, val_images: list[np.ndarray] | None, cfg: InspectConfig
) -> ModelCard:
    """Fit the temperature on TTA-averaged validation logits, then choose the threshold.

    The card also keeps both standard operating points (max F1 and the target recall) with what
    each gives on validation, for the report and ``inspect models set-threshold``.
    """
    view_logits, _ = collect_outputs(predictor, splits.val, val_images)
    labels = np.array([s.label for s in splits.val])
    temperature = fit_temperature(view_logits.mean(dim=0).numpy(), labels)
    card = predictor.card.model_copy(update={"temperature": temperature})
    calibrated, _ = Predictor(predictor.model, card, device=predictor.device).calibrated_probabilities(view_logits)
    c = cfg.calibration
    threshold = choose_threshold(labels, calibrated, c.threshold_policy, c.target_recall)
    points = standard_points(labels, calibrated, c.target_recall)
    log.info(
        "calibration: temperature %.3f, threshold %.3f (%s); validation recall %.3f, precision %s",
        temperature,
        threshold,
        c.threshold_policy,
        points[c.threshold_policy]["recall"] or 0.0,
        points[c.threshold_policy]["precision"],
    )
    return card.model_copy(update={"threshold": threshold, "operating_points": points})


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
