"""Albumentations presets, named and built from config, and the preprocessing that travels with a model.

``Preprocessing`` (defined in ``inspectline.card``) is the single description of how a frame becomes
a tensor: image size, colour mode, interpolation and normalisation statistics (computed on the
training split). It is stored inside every checkpoint; training, evaluation, ``inspect predict``
and the service all call :func:`build_eval_preset` on it, so they cannot disagree.

Presets (``augment.preset``):

* ``train``      resize, flips and 90° rotations, a small affine, elastic transform, grid distortion,
                 CLAHE, brightness/contrast, Gaussian noise, blur, coarse dropout, normalise.
* ``reference``  the augmentations of the ELPV reference (Deitsch et al. 2019): resize, flips and 90°
                 rotations, a small affine (scale, rotation, translation), normalise.
* ``light``      resize, flips and 90° rotations, brightness/contrast, normalise.
* ``none``       the eval preset (resize and normalise only).

Training decodes and resizes every image once (:func:`resize_images`) and augments from that cache:
the presets' own resize is then a copy, and a frame is never decoded or downscaled twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.augmentations.geometric.functional import generate_displacement_fields
from albumentations.pytorch import ToTensorV2

from inspectline.card import Preprocessing
from inspectline.config import AugmentConfig


class ElasticTransform(A.ElasticTransform):
    """Albumentations' elastic transform, its sampling maps built in float32.

    The displacement fields come from albumentations' own function and the transform's own generator,
    so every image gets exactly the distortion ``A.ElasticTransform`` would give it (bit for bit: a
    float32 sum of an integer coordinate and a float32 shift rounds as the float64 sum cast to float32
    does). Albumentations 2.0 builds the maps from int64 coordinate grids through float64, which took
    1.2 ms of the transform's 4 ms on a 192 px cell, and the transform is the largest part of the
    ``train`` preset's cost.
    """

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:  # noqa: ARG002 - the base signature
        height, width = params["shape"][:2]
        dx, dy = generate_displacement_fields(
            (height, width),
            self.alpha,
            self.sigma,
            same_dxdy=self.same_dxdy,
            kernel_size=(17, 17) if self.approximate else (0, 0),
            random_generator=self.random_generator,
            noise_distribution=self.noise_distribution,
        )
        return {
            "map_x": dx + np.arange(width, dtype=np.float32),
            "map_y": dy + np.arange(height, dtype=np.float32)[:, None],
        }


def _resize(size: int) -> A.Resize:
    # INTER_AREA for the usual downscale from camera resolution; one definition for every preset.
    return A.Resize(size, size, interpolation=cv2.INTER_AREA)


def _finish(pre: Preprocessing) -> list[A.BasicTransform]:
    return [A.Normalize(mean=pre.mean, std=pre.std, max_pixel_value=255.0), ToTensorV2()]


def build_eval_preset(pre: Preprocessing) -> A.Compose:
    """Resize and normalise: the only transform between a served frame and the model."""
    return A.Compose([_resize(pre.image_size), *_finish(pre)])


def build_train_preset(pre: Preprocessing, aug: AugmentConfig, *, seed: int | None = None) -> A.Compose:
    """The named training preset with the probabilities from ``aug``.

    Albumentations draws from the Compose's own generator, not numpy's global one, so ``seed`` is what
    makes augmentation reproducible (loader workers re-seed their copy, see ``data.loader``).
    """
    if aug.preset == "none":
        return build_eval_preset(pre)
    geometric = [
        A.HorizontalFlip(p=aug.hflip),
        A.VerticalFlip(p=aug.vflip),
        A.RandomRotate90(p=aug.rotate90),
    ]
    photometric = [A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=aug.brightness_contrast)]
    affine = A.Affine(
        scale=(1 - aug.affine_scale, 1 + aug.affine_scale),
        translate_percent=(-aug.affine_translate, aug.affine_translate),
        rotate=(-aug.affine_rotate, aug.affine_rotate),
        border_mode=cv2.BORDER_REFLECT_101,
        p=aug.affine,
    )
    if aug.preset == "light":
        return A.Compose([_resize(pre.image_size), *geometric, *photometric, *_finish(pre)], seed=seed)
    if aug.preset == "reference":
        return A.Compose([_resize(pre.image_size), *geometric, affine, *_finish(pre)], seed=seed)
    heavy = [
        affine,
        # alpha/sigma in pixels, scaled to the image so small test images are not shredded
        ElasticTransform(
            alpha=pre.image_size * 0.25, sigma=pre.image_size * 0.05, border_mode=cv2.BORDER_REFLECT_101, p=aug.elastic
        ),
        A.GridDistortion(num_steps=5, distort_limit=0.2, border_mode=cv2.BORDER_REFLECT_101, p=aug.grid_distortion),
        A.CLAHE(clip_limit=(1.0, 3.0), tile_grid_size=(8, 8), p=aug.clahe),
        *photometric,
        A.GaussNoise(std_range=(0.02, 0.08), p=aug.noise),
        A.OneOf([A.GaussianBlur(blur_limit=(3, 5)), A.MotionBlur(blur_limit=(3, 5))], p=aug.blur),
        A.CoarseDropout(
            num_holes_range=(1, 4),
            hole_height_range=(0.05, 0.15),
            hole_width_range=(0.05, 0.15),
            fill=0,
            p=aug.coarse_dropout,
        ),
    ]
    return A.Compose([_resize(pre.image_size), *geometric, *heavy, *_finish(pre)], seed=seed)


def resize_images(images: Sequence[np.ndarray], image_size: int) -> list[np.ndarray]:
    """Each decoded image resized once to the model's side, as the presets resize it: the training cache."""
    resize = _resize(image_size)
    return [resize(image=image)["image"] for image in images]  # (H, W, C) uint8, channel axis kept


def compute_normalization(images: Sequence[np.ndarray], image_size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] of the training images, after the preset's resize."""
    resize = _resize(image_size)
    total = total_sq = None
    pixels = 0
    for image in images:
        resized = resize(image=image)["image"].astype(np.float64) / 255.0
        resized = resized.reshape(-1, resized.shape[-1] if resized.ndim == 3 else 1)
        s, sq = resized.sum(axis=0), (resized**2).sum(axis=0)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        pixels += resized.shape[0]
    if total is None:
        msg = "cannot compute normalisation statistics from zero images"
        raise ValueError(msg)
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 1e-12))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-3)) for s in std)
