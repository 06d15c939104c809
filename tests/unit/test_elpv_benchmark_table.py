"""`benchmarks/elpv_accuracy.py --table` lists the recorded training results and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.elpv_accuracy import table

RESULT = {
    "config": {"model": {"arch": "resnet18"}, "data": {"image_size": 192}},
    "epochs_run": 36,
    "max_f1_accuracy": 0.8369,
    "accuracy": 0.6159,
    "roc_auc": 0.8757,
    "four_class_accuracy": 0.4345,
    "recall": 0.941,
    "precision": 0.446,
    "final_train_accuracy": 0.79,
    "training_precision": "bf16",
    "wall_seconds": 1800.0,
    "load_average_before": [0.2, 0.3, 0.4],
}


def test_the_table_lists_training_results_and_skips_the_views_comparison(tmp_path: Path):
    (tmp_path / "elpv_elpv-cpu.json").write_text(json.dumps(RESULT))
    (tmp_path / "elpv_views_seeds.json").write_text(json.dumps({"rows": [{"model": "elpv-cpu", "flip2": 0.87}]}))
    lines = table(folder=tmp_path).splitlines()
    assert len(lines) == 3  # header, rule, one result
    assert lines[2] == (
        "| `elpv_elpv-cpu` | resnet18 @ 192 | 36 | 0.8369 / 0.6159 | 0.8757 | 0.4345 | 0.941 / 0.446 | 0.790 "
        "| bf16 | 30 min (0.2) |"
    )
