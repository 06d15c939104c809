"""The training loop as plain functions: ``fit`` -> ``train_one_epoch`` / ``evaluate``.

Recipe: cross-entropy with label smoothing, mixup on a share of batches, AdamW (or SGD), a OneCycle schedule
stepped per batch, gradient clipping, mixed precision where the hardware has it (``training.precision``:
AMP on CUDA, bf16 on CPUs with AMX/AVX512-BF16), channels-last memory and optional weight averaging
(``training.averaging``: EMA or SWA). After every epoch the validation split is evaluated and the
epoch's row (losses, accuracy, precision, recall, F1, ROC-AUC, the train-val gap, learning rate,
prediction diversity, images/s) goes to ``history.jsonl``, TensorBoard and the log (``training.history``).

Two callbacks earn their place:

* :class:`EarlyStopping` keeps the state of the best validation F1 and stops after ``patience``
  epochs without improvement, but never before ``early_stopping_start`` of the epochs: the best
  OneCycle models come from the annealing phase, after the noisy high learning rates. With
  ``train.keep: last`` every epoch is run and the last one's weights are kept instead.
* :class:`CollapseDetector` warns when (nearly) every validation sample gets the same class and stops
  training after ``collapse_patience`` such epochs in a row.

The validation F1 that selects the checkpoint is the best F1 over thresholds (``val_best_f1``):
the operating point calibration will choose. F1 at a fixed 0.5 (``val_f1``, logged) swings with
label smoothing and mixup, which shift the logits without changing the ranking.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from inspectline.config import TrainConfig
from inspectline.training.averaging import WeightAverager
from inspectline.training.history import EpochLog, interactive
from inspectline.training.metrics import best_f1, classification_metrics, prediction_diversity
from inspectline.training.precision import Precision, autocast, resolve_precision

log = logging.getLogger(__name__)


@dataclass
class EarlyStopping:
    patience: int
    min_epochs: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    bad_epochs: int = 0

    def step(self, score: float, epoch: int, model: nn.Module) -> bool:
        """Record an epoch; True when training should stop.

        A tie goes to the later epoch: with OneCycle it has the lower learning rate behind it, and on a
        small validation set an early epoch can reach the same score by luck.
        """
        if score >= self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            return False
        self.bad_epochs += 1
        return self.bad_epochs >= self.patience and epoch >= self.min_epochs


@dataclass
class CollapseDetector:
    share: float
    patience: int
    warmup: int
    streak: int = 0

    def step(self, diversity: float, epoch: int) -> bool:
        """True when the model has predicted one class for ``patience`` epochs in a row after warm-up."""
        if diversity < self.share:
            self.streak = 0
            return False
        self.streak += 1
        log.warning(
            "epoch %d: prediction collapse, %.1f%% of validation samples get the same class (%d epoch(s) in a row)",
            epoch,
            100 * diversity,
            self.streak,
        )
        return epoch > self.warmup and self.streak >= self.patience


@dataclass
class FitResult:
    best_epoch: int
    best_val_f1: float
    epochs_run: int
    stop_reason: str  # "completed", "early_stopping" or "collapse"
    kept_epoch: int = 0  # whose weights ``model`` holds: best_epoch, or the last one with ``keep: last``
    kept_val_f1: float = 0.0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def mixup(
    x: torch.Tensor, y: torch.Tensor, alpha: float, generator: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mix a batch with a shuffled copy: returns mixed inputs, both targets and the weight of the first."""
    lam = float(generator.beta(alpha, alpha))
    perm = torch.as_tensor(generator.permutation(x.shape[0]), device=x.device)
    return lam * x + (1 - lam) * x[perm], y, y[perm], lam


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    device: torch.device,
    rng: np.random.Generator,
    *,
    precision: Precision | None = None,
    scaler: torch.amp.GradScaler | None = None,
    averager: WeightAverager | None = None,
    progress: bool = True,
    desc: str = "train",
) -> dict:
    """One pass over the training loader; returns mean loss and accuracy on the (dominant) targets.

    Targets are class indices, or per-class probabilities (soft labels, ``FrameDataset(soft_targets=True)``):
    the loss takes either, and accuracy counts the most probable class of a soft target."""
    model.train()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    precision = precision or Precision(None, "fp32")
    total_loss = correct = seen = 0.0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress, unit="batch"):
        x = x.to(device, memory_format=memory_format, non_blocking=True)
        y = y.to(device, non_blocking=True)
        mixed = cfg.mixup_alpha > 0 and rng.random() < cfg.mixup_prob
        with autocast(device, precision):
            if mixed:
                x, y_a, y_b, lam = mixup(x, y, cfg.mixup_alpha, rng)
                logits = model(x)
                loss = lam * criterion(logits, y_a) + (1 - lam) * criterion(logits, y_b)
                target = y_a if lam >= 0.5 else y_b
            else:
                logits = model(x)
                loss = criterion(logits, y)
                target = y
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # float16 autocast: scale the loss so small gradients do not underflow
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
        scheduler.step()
        if averager is not None:
            averager.after_step(model)
        n = y.shape[0]
        total_loss += float(loss.detach()) * n
        if target.ndim == 2:
            target = target.argmax(dim=1)
        correct += float((logits.argmax(dim=1) == target).sum())
        seen += n
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "images": int(seen)}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    *,
    channels_last: bool = True,
    precision: Precision | None = None,
) -> dict:
    """Loss and raw logits over a loader, in eval mode, no TTA (the per-epoch check)."""
    model.eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    losses, logits_all, labels_all = [], [], []
    for x, y in loader:
        with autocast(device, precision or Precision(None, "fp32")):
            logits = model(x.to(device, memory_format=memory_format)).float()
        losses.append(float(criterion(logits, y.to(device))) * y.shape[0])
        logits_all.append(logits.cpu())
        labels_all.append(y)
    logits = torch.cat(logits_all)
    labels = torch.cat(labels_all)
    return {"loss": sum(losses) / max(len(labels), 1), "logits": logits, "labels": labels.numpy()}


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over every parameter; OneCycle then drives its learning rate and momentum."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    cfg: TrainConfig,
    device: torch.device,
    *,
    history_path: Path | None = None,
    tensorboard_dir: Path | None = None,
    progress: bool = True,
) -> FitResult:
    """Train with early stopping on validation F1; on return ``model`` holds the best weights.

    ``progress`` shows bars when stderr is a terminal; otherwise each epoch is one log line.
    With weight averaging, the averaged weights are validated, kept and returned in ``model``.
    """
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=len(train_loader)
    )
    stopper = EarlyStopping(cfg.patience, min_epochs=math.ceil(cfg.early_stopping_start * cfg.epochs))
    collapse = CollapseDetector(cfg.collapse_share, cfg.collapse_patience, cfg.collapse_warmup)
    rng = np.random.default_rng(cfg.seed)
    precision = resolve_precision(cfg.precision, device)
    log.info("training precision: %s (%s)", precision.name, precision.reason)
    scaler = torch.amp.GradScaler(device.type) if precision.needs_scaler else None
    averager = (
        WeightAverager(model, cfg.weight_averaging, epochs=cfg.epochs, ema_decay=cfg.ema_decay, swa_start=cfg.swa_start)
        if cfg.weight_averaging != "none"
        else None
    )
    bars = progress and interactive()
    epoch_log = EpochLog(history_path, tensorboard_dir, log_lines=not bars)
    history: list[dict] = []
    stop_reason = "completed"
    started = time.perf_counter()
    epochs = tqdm(range(1, cfg.epochs + 1), desc="epochs", unit="epoch", disable=not bars)
    try:
        for epoch in epochs:
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train = train_one_epoch(
                model,
                train_loader,
                criterion,
                optimizer,
                scheduler,
                cfg,
                device,
                rng,
                precision=precision,
                scaler=scaler,
                averager=averager,
                progress=bars,
                desc=f"epoch {epoch}",
            )
            train_seconds = time.perf_counter() - t0
            if averager is not None:
                averager.after_epoch(model, epoch, train_loader, device)
            judged = averager.model_to_validate(model) if averager is not None else model
            val = evaluate(
                judged, val_loader, eval_criterion, device, channels_last=cfg.channels_last, precision=precision
            )
            row = _epoch_row(epoch, lr, train, val, train_seconds, time.perf_counter() - t0)
            history.append(row)
            epoch_log.write(row, total_epochs=cfg.epochs)
            epochs.set_postfix(
                val_f1=f"{row['val_best_f1']:.3f}",
                auc=f"{row['val_roc_auc'] or 0:.3f}",
                best=f"{max(stopper.best_score, row['val_best_f1']):.3f}",
            )
            if stopper.step(row["val_best_f1"], epoch, judged) and cfg.keep == "best":
                stop_reason = "early_stopping"
                break
            if collapse.step(row["prediction_diversity"], epoch):
                stop_reason = "collapse"
                break
    finally:
        epochs.close()
        epoch_log.close()
    kept_epoch, kept_f1 = stopper.best_epoch, stopper.best_score
    # A collapsed run keeps its best epoch even with keep: last; a collapsed model is never the one shipped.
    if cfg.keep == "last" and history and stop_reason != "collapse":
        kept_epoch, kept_f1 = history[-1]["epoch"], history[-1]["val_best_f1"]
        if averager is not None:  # the averaged weights were validated; keep those, as keep: best does
            model.load_state_dict(judged.state_dict())
    elif stopper.best_state is not None:
        model.load_state_dict(stopper.best_state)
    return FitResult(
        best_epoch=stopper.best_epoch,
        best_val_f1=stopper.best_score,
        epochs_run=len(history),
        stop_reason=stop_reason,
        kept_epoch=kept_epoch,
        kept_val_f1=kept_f1,
        history=history,
        seconds=time.perf_counter() - started,
    )


def _epoch_row(epoch: int, lr: float, train: dict, val: dict, train_seconds: float, seconds: float) -> dict:
    """The history row of one epoch: what the log, TensorBoard and the report's curves show."""
    prob = torch.softmax(val["logits"], dim=1)[:, 1].numpy()
    m = classification_metrics(val["labels"], prob, 0.5)
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "val_loss": val["loss"],
        "val_accuracy": m["accuracy"],
        "val_precision": m["precision"],
        "val_recall": m["recall"],
        "val_f1": m["f1"],
        "val_best_f1": best_f1(val["labels"], prob),
        "val_roc_auc": m["roc_auc"],
        "gap_accuracy": train["accuracy"] - m["accuracy"],
        "gap_loss": val["loss"] - train["loss"],
        "prediction_diversity": prediction_diversity((prob >= 0.5).astype(int)),
        "images_per_s": train["images"] / max(train_seconds, 1e-9),
        "seconds": seconds,
    }
