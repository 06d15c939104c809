"""`benchmarks/elpv_accuracy.py --table` lists the recorded training results and nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.elpv_accuracy import seed_table, table

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


def test_the_table_names_a_scaled_backbone(tmp_path: Path):
    narrow = RESULT | {"config": {"model": {"arch": "resnet18", "width": 0.5}, "data": {"image_size": 300}}}
    (tmp_path / "elpv_elpv-cpu-w50-300.json").write_text(json.dumps(narrow))
    (tmp_path / "elpv_elpv-cpu-full.json").write_text(
        json.dumps(RESULT | {"config": RESULT["config"] | {"model": {"arch": "resnet18", "width": 1.0}}})
    )
    rows = table(folder=tmp_path).splitlines()[2:]
    assert rows[0].startswith("| `elpv_elpv-cpu-full` | resnet18 @ 192 |")
    assert rows[1].startswith("| `elpv_elpv-cpu-w50-300` | resnet18 x0.5 @ 300 |")


def _run(seed: int, roc_auc: float, **config) -> dict:
    """A recorded elpv-cpu result: the profile's config with ``config`` changes (section -> fields)."""
    from inspectline.cli import profile_path
    from inspectline.config import load_config

    tree = load_config(profile_path("elpv-cpu")).model_dump(mode="json")
    for section, fields in config.items():
        tree[section].update(fields)
    tree["train"]["seed"] = seed
    tree["paths"]["runs"] = f"/tmp/runs-{seed}"  # where it wrote is not what it trained
    point = {"recall": 0.9, "false_reject_rate": 0.4 + seed / 100}
    return RESULT | {
        "recipe": "elpv-cpu",
        "config": tree,
        "roc_auc": roc_auc,
        "operating_points": {"in force": {"test": point}},
        "machine": {"cpu": "AMD EPYC"},
    }


def test_the_seed_table_groups_runs_by_what_they_trained_and_names_the_change(tmp_path: Path):
    runs = {
        "elpv-cpu-zen4": _run(0, 0.870),
        "elpv-cpu-seed1": _run(1, 0.880),
        "elpv-cpu-gem": _run(0, 0.876, model={"pooling": "gem"}),
        "elpv-cpu-gem-seed1": _run(1, 0.878, model={"pooling": "gem"}),
        "elpv-cpu-gem-seed2": _run(2, 0.880, model={"pooling": "gem"}),
    }
    for name, result in runs.items():
        (tmp_path / f"elpv_{name}.json").write_text(json.dumps(result))
    (tmp_path / "elpv_views_seeds.json").write_text(json.dumps({"rows": []}))
    rows = {line.split(" | ")[0]: line for line in seed_table(folder=tmp_path).splitlines()[2:]}
    assert set(rows) == {"| `elpv-cpu` (bf16)", "| `elpv-cpu` + `model.pooling=gem` (bf16)"}
    profile, gem = rows["| `elpv-cpu` (bf16)"], rows["| `elpv-cpu` + `model.pooling=gem` (bf16)"]
    assert "| 2 (0, 1) | 0.875 ± 0.007 (0.870-0.880) |" in profile
    assert "| 3 (0, 1, 2) | 0.878 ± 0.002 (0.876-0.880) |" in gem
    assert gem.endswith("| 0.900 / 0.410 | AMD EPYC |")  # shipped point: mean recall / mean false rejects


def test_the_seed_table_groups_what_was_trained_whichever_profile_it_started_from(tmp_path: Path):
    narrow = {"model": {"width": 0.25}, "train": {"keep": "last"}}  # elpv-cpu-narrow's changes to elpv-cpu
    from_cpu = _run(0, 0.855, **narrow)
    from_narrow = _run(1, 0.861, **narrow) | {"recipe": "elpv-cpu-narrow"}
    older = _run(2, 0.864)
    del older["config"]["model"]["width"]  # recorded before model.width existed: it trained at full width
    runs = {
        "elpv-cpu-w25-last": from_cpu,
        "elpv-cpu-narrow-seed1": from_narrow,
        "elpv-cpu-old": older,
        "elpv-cpu-zen4": _run(0, 0.870),
        "elpv-cpu-xeon": _run(1, 0.880) | {"machine": {"cpu": "Intel Xeon"}},
    }
    for name, result in runs.items():
        (tmp_path / f"elpv_{name}.json").write_text(json.dumps(result))
    rows = seed_table(folder=tmp_path).splitlines()[2:]
    assert len(rows) == 3
    by_name = {(row.split(" | ")[0], row.rsplit(" | ", 1)[1]): row for row in rows}
    assert "| 2 (0, 1) | 0.858 ± 0.004 (0.855-0.861) |" in by_name["| `elpv-cpu-narrow` (bf16)", "AMD EPYC |"]
    assert "| 2 (0, 2) | 0.867 ± 0.004 (0.864-0.870) |" in by_name["| `elpv-cpu` (bf16)", "AMD EPYC |"]
    assert "| 1 (1) | 0.880 |" in by_name["| `elpv-cpu` (bf16)", "Intel Xeon |"]  # another machine: its own row


def test_the_seed_table_pools_runs_fed_by_different_loader_counts_and_names_the_gpu(tmp_path: Path):
    runs = {
        "elpv-gpu": _run(0, 0.922, train={"num_workers": 4}) | {"machine": {"cpu": "Xeon", "gpu": "NVIDIA H200"}},
        "elpv-gpu-seed1": _run(1, 0.914, train={"num_workers": 6}) | {"machine": {"cpu": "Xeon", "gpu": "NVIDIA H200"}},
    }
    for name, result in runs.items():
        (tmp_path / f"elpv_{name}.json").write_text(json.dumps(result))
    rows = seed_table(folder=tmp_path).splitlines()[2:]
    assert len(rows) == 1  # loader processes change how fast a run goes, not what it trains
    assert "| 2 (0, 1) | 0.918 ± 0.006 (0.914-0.922) |" in rows[0]
    assert rows[0].endswith("| NVIDIA H200 |")
