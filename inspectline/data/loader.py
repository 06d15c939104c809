"""Torch datasets and loaders, including the class-weighted sampler.

``class_sample_weights`` maps each sample's weight through its *class index* (``weights[label]``),
so a dataset whose first sample is DEFECTIVE, or whose classes are listed in another order, still
draws each class equally often. (The classic bug builds the weight table in enumeration order of
whatever classes appear first, silently swapping them.)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from inspectline.data.sources import CLASS_NAMES, Sample
from inspectline.imaging import read_image, to_model_image


class FrameDataset(Dataset):
    """Samples through an albumentations transform; images come from memory when preloaded.

    Each item is ``(image, label)``; with ``soft_targets`` the label is the pair (ok, defective) of target
    probabilities instead: the annotators' ``defect_probability`` where the sample has one, else its 0/1 label.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: A.Compose,
        color_mode: str,
        images: Sequence[np.ndarray] | None = None,
        *,
        soft_targets: bool = False,
    ):
        if images is not None and len(images) != len(samples):
            msg = f"{len(images)} preloaded images for {len(samples)} samples"
            raise ValueError(msg)
        self.samples = list(samples)
        self.transform = transform
        self.color_mode = color_mode
        self.images = images
        self.soft_targets = soft_targets

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        sample = self.samples[index]
        image = (
            self.images[index] if self.images is not None else to_model_image(read_image(sample.path), self.color_mode)
        )
        x = self.transform(image=image)["image"]
        if not self.soft_targets:
            return x, sample.label
        p = float(sample.meta.get("defect_probability", sample.label))
        return x, torch.tensor([1.0 - p, p])

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)


def class_sample_weights(labels: np.ndarray, num_classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """Per-sample weights that give every present class the same total weight."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    per_class = np.divide(counts.sum(), num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return per_class[labels]


def loader_workers(setting: int | str, cpu_count: int | None = None) -> int:
    """Loader processes for ``train.num_workers``: a number as given, or ``auto``.

    ``auto`` keeps augmentation in the training process on a machine of up to 4 cores: a worker
    process would take CPU from the forward/backward pass. Augmenting from the in-memory cache costs a
    few per cent of a full-width ResNet18's step, but a fifth of the quarter-width one's in
    ``elpv-cpu-long``, and even there one worker on 2 cores trained slower (README, "Training: speed
    and what each lever does"). Bigger machines get a quarter of their cores (at most 8), so the
    loader keeps up with a GPU. The cores counted are those this process may run on (a container's or
    ``taskset``'s CPU set), as PyTorch counts them for its own threads, not every core of the host.
    """
    if setting != "auto":
        return int(setting)
    cores = cpu_count or _usable_cores()
    return 0 if cores <= 4 else min(8, cores // 4)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no CPU affinity on this platform (macOS)
        return os.cpu_count() or 1


def create_loader(
    dataset: FrameDataset,
    *,
    batch_size: int,
    train: bool,
    balanced: bool = False,
    num_workers: int = 0,
    seed: int = 0,
) -> DataLoader:
    """A loader: class-balanced sampling or shuffling for training, ordered for evaluation.

    With workers, this process's OpenCV is set to one thread: the workers do the augmenting, and they
    are forked (sharing the image cache with this process instead of each holding a copy). A worker
    forked while OpenCV's thread pool is running inherits the pool without its threads and hangs in
    its first OpenCV call; with one thread there is no pool to inherit, and each worker inherits that
    one thread, so the workers share the CPU with the training process without oversubscribing it.
    """
    if num_workers > 0:
        cv2.setNumThreads(1)
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if train and balanced:
        weights = class_sample_weights(dataset.labels)
        sampler = WeightedRandomSampler(
            torch.as_tensor(weights, dtype=torch.double),
            num_samples=len(dataset),
            replacement=True,
            generator=generator,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and len(dataset) > batch_size,  # BatchNorm in the head needs batches > 1
        num_workers=num_workers,
        generator=generator,
        worker_init_fn=_seed_worker,
        persistent_workers=num_workers > 0,
    )


def _seed_worker(_worker_id: int) -> None:
    import random

    seed = torch.initial_seed() % 2**32  # differs per worker and per epoch
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset.transform, "set_random_seed"):
        # each worker holds a copy of the Compose; without this they would augment identically
        info.dataset.transform.set_random_seed(seed)
