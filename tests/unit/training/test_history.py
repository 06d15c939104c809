"""Epoch rows go to history.jsonl, TensorBoard and one log line each; no progress-bar frames in a log."""

import json
import logging
import struct
from pathlib import Path

from tensorboardX.proto import event_pb2

from inspectline.training.history import EpochLog


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of every TensorBoard event file in ``folder``: the TFRecord framing read by hand."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in folder.glob("events.out.tfevents.*"):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4  # length, its CRC, the record, its CRC
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def _row(epoch: int) -> dict:
    return {
        "epoch": epoch,
        "lr": 0.001 * epoch,
        "train_loss": 1.0 / epoch,
        "train_accuracy": 0.5 + 0.1 * epoch,
        "val_loss": 1.2 / epoch,
        "val_accuracy": 0.5 + 0.05 * epoch,
        "val_precision": 0.5,
        "val_recall": 0.6,
        "val_f1": 0.55,
        "val_best_f1": 0.6,
        "val_roc_auc": None,
        "gap_accuracy": 0.05 * epoch,
        "gap_loss": 0.2 / epoch,
        "prediction_diversity": 0.6,
        "images_per_s": 42.0,
        "seconds": 3.0,
    }


def test_rows_reach_the_history_file_tensorboard_and_the_log(tmp_path: Path, caplog):
    with caplog.at_level(logging.INFO, logger="inspectline.training.history"):
        log = EpochLog(tmp_path / "history.jsonl", tmp_path, log_lines=True)
        for epoch in (1, 2):
            log.write(_row(epoch), total_epochs=2)
        log.close()
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    scalars = read_scalars(tmp_path)
    assert [step for step, _ in scalars["train/loss"]] == [1, 2]
    assert abs(scalars["gap/accuracy"][1][1] - 0.1) < 1e-6
    assert "val/roc_auc" not in scalars  # undefined values are left out, never written as a made-up number
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2: train loss 1.0000")
