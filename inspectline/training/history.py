"""Where each epoch's numbers go: ``history.jsonl``, TensorBoard event files and a readable log line.

One :class:`EpochLog` per ``fit``. Each epoch's row (losses, accuracy, precision, recall, F1, ROC-AUC,
the train-val gap, learning rate ...) is appended to ``history.jsonl``, written as TensorBoard scalars
(``train/loss``, ``val/roc_auc``, ``gap/accuracy`` ...) into the run folder with tensorboardX, so
``tensorboard --logdir runs/`` shows every run's curves side by side, and logged as one line.

Progress bars are for terminals: :func:`interactive` tells ``fit`` whether stderr is one. In a log
file (``nohup``, CI, systemd) there is one line per epoch instead of thousands of carriage-return
frames.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# history key -> TensorBoard tag
_TAGS = {
    "train_loss": "train/loss",
    "train_accuracy": "train/accuracy",
    "val_loss": "val/loss",
    "val_accuracy": "val/accuracy",
    "val_precision": "val/precision",
    "val_recall": "val/recall",
    "val_f1": "val/f1_at_0.5",
    "val_best_f1": "val/best_f1",
    "val_roc_auc": "val/roc_auc",
    "gap_accuracy": "gap/accuracy",
    "gap_loss": "gap/loss",
    "prediction_diversity": "val/prediction_diversity",
    "lr": "train/lr",
    "images_per_s": "speed/train_images_per_s",
}


def interactive() -> bool:
    """True when progress bars make sense: stderr is a terminal."""
    return sys.stderr.isatty()


class EpochLog:
    """Appends epoch rows to the history file and the TensorBoard event file, and logs a line each."""

    def __init__(self, history_path: Path | None, tensorboard_dir: Path | None, *, log_lines: bool = True):
        self.history_path = history_path
        self.log_lines = log_lines
        self._writer = None
        if tensorboard_dir is not None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=str(tensorboard_dir), flush_secs=30)

    def write(self, row: dict, *, total_epochs: int) -> None:
        if self.history_path is not None:
            with self.history_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        if self._writer is not None:
            for key, tag in _TAGS.items():
                if row.get(key) is not None:
                    self._writer.add_scalar(tag, row[key], row["epoch"])
        if self.log_lines:
            log.info(
                "epoch %d/%d: train loss %.4f acc %.3f | val loss %.4f acc %.3f best-F1 %.3f AUC %s | "
                "%.0f s, %.1f img/s",
                row["epoch"],
                total_epochs,
                row["train_loss"],
                row["train_accuracy"],
                row["val_loss"],
                row["val_accuracy"],
                row["val_best_f1"],
                f"{row['val_roc_auc']:.3f}" if row.get("val_roc_auc") is not None else "n/a",
                row["seconds"],
                row.get("images_per_s", 0.0),
            )

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
