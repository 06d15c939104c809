from pathlib import Path

import numpy as np
import torch

from inspectline.config import DataConfig
from inspectline.data import FrameDataset, Preprocessing, Sample, build_eval_preset, class_sample_weights, create_loader


def test_weights_follow_the_class_index_not_enumeration_order():
    # DEFECTIVE (1) appears first and is the minority: the classic bug gives it the OK weight.
    labels = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 1])
    weights = class_sample_weights(labels)
    assert weights[0] == weights[-1] == 10 / (2 * 2)
    assert np.allclose(weights[1:-1], 10 / (2 * 8))
    assert np.isclose(weights[labels == 1].sum(), weights[labels == 0].sum())


def test_absent_class_gets_zero_weight_without_dividing_by_zero():
    weights = class_sample_weights(np.array([0, 0, 0]))
    assert np.allclose(weights, 0.5)  # 3 samples / (2 classes * 3)


def test_balanced_loader_draws_each_class_equally(tmp_path: Path):
    labels = [1] * 10 + [0] * 90  # 10 % defective, defective first
    samples = [Sample(key=str(i), path=tmp_path / f"{i}.png", label=label) for i, label in enumerate(labels)]
    images = [np.full((8, 8, 1), label * 255, np.uint8) for label in labels]
    pre = Preprocessing(image_size=8, color_mode="gray", mean=(0.0,), std=(1.0,))
    dataset = FrameDataset(samples, build_eval_preset(pre), "gray", images)
    loader = create_loader(dataset, batch_size=50, train=True, balanced=True, seed=0)
    drawn = torch.cat([y for _ in range(40) for _, y in loader]).numpy()
    assert abs(drawn.mean() - 0.5) < 0.03  # unbalanced would be 0.10
    plain = create_loader(dataset, batch_size=50, train=True, balanced=False, seed=0)
    assert abs(torch.cat([y for _, y in plain]).float().mean().item() - 0.1) < 1e-6


def test_dataset_reads_from_disk_when_not_preloaded(folder_dataset: Path):
    from inspectline.data import load_samples

    samples = load_samples(DataConfig(source="folder", path=folder_dataset))[:3]
    pre = Preprocessing(image_size=16, color_mode="gray", mean=(0.5,), std=(0.2,))
    x, y = FrameDataset(samples, build_eval_preset(pre), "gray")[0]
    assert x.shape == (1, 16, 16) and y == samples[0].label


def test_auto_workers_keep_small_machines_in_process_and_scale_on_big_ones():
    from inspectline.data import loader_workers

    assert loader_workers("auto", cpu_count=2) == 0
    assert loader_workers("auto", cpu_count=4) == 0
    assert loader_workers("auto", cpu_count=16) == 4
    assert loader_workers("auto", cpu_count=128) == 8
    assert loader_workers(3, cpu_count=2) == 3


def test_auto_workers_count_the_cores_this_process_may_use_not_the_hosts(monkeypatch):
    import os

    from inspectline.data import loader_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)  # a 2-CPU container
    assert loader_workers("auto") == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    assert loader_workers("auto") == 4


def test_soft_targets_are_the_annotators_probability_where_a_sample_has_one(tmp_path: Path):
    samples = [
        Sample(key="a", path=tmp_path / "a.png", label=0, meta={"defect_probability": 0.3333}),
        Sample(key="b", path=tmp_path / "b.png", label=1, meta={"defect_probability": 0.6667}),
        Sample(key="c", path=tmp_path / "c.png", label=1),  # an engineer's label: no probability
    ]
    images = [np.zeros((8, 8, 1), np.uint8)] * 3
    pre = Preprocessing(image_size=8, color_mode="gray", mean=(0.0,), std=(1.0,))
    soft = FrameDataset(samples, build_eval_preset(pre), "gray", images, soft_targets=True)
    targets = torch.stack([soft[i][1] for i in range(3)])
    assert torch.allclose(targets, torch.tensor([[0.6667, 0.3333], [0.3333, 0.6667], [0.0, 1.0]]))
    assert targets.argmax(dim=1).tolist() == [s.label for s in samples]  # the same class as the 0/1 label
    hard = FrameDataset(samples, build_eval_preset(pre), "gray", images)
    assert [hard[i][1] for i in range(3)] == [0, 1, 1]
    # the balanced sampler still weighs by the 0/1 label
    assert soft.labels.tolist() == [0, 1, 1]


LOADER_AFTER_OPENCV_THREADS = """
import cv2, numpy as np, torch
from pathlib import Path
from inspectline.config import AugmentConfig
from inspectline.data import FrameDataset, Preprocessing, Sample, build_train_preset, create_loader

cv2.setNumThreads(4)
big = np.random.default_rng(0).random((1500, 1500)).astype(np.float32)
for _ in range(3):
    cv2.resize(big, (700, 700))  # OpenCV's thread pool is now running in this process
samples = [Sample(key=str(i), path=Path(f"{i}.png"), label=i % 2) for i in range(16)]
images = [np.random.default_rng(i).integers(0, 255, (32, 32, 1), dtype=np.uint8) for i in range(16)]
pre = Preprocessing(image_size=32, color_mode="gray", mean=(0.5,), std=(0.2,))
dataset = FrameDataset(samples, build_train_preset(pre, AugmentConfig(), seed=0), "gray", images)
loader = create_loader(dataset, batch_size=4, train=True, balanced=True, num_workers=2)
for epoch in range(2):
    shapes = {tuple(x.shape) for x, _ in loader}
    assert shapes == {(4, 1, 32, 32)}, shapes
print("ok")
"""


def test_loader_workers_start_in_a_process_that_has_used_opencv_threads():
    """A worker forked while OpenCV's thread pool ran inherited it without its threads and hung in it."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", LOADER_AFTER_OPENCV_THREADS], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
