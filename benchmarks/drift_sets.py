"""Shifted frame sets for measuring drift detection on real frames (used by the drift benchmark and test).

* ``darker``         brightness x 0.6 (a lamp failing, an aperture closing);
* ``blurred``        Gaussian blur, sigma 2 px at camera resolution (defocus, vibration);
* ``other_product``  300 x 300 patches of another image set entirely: the two photographs that
                     ship with scikit-learn, in gray: what a camera sees when the line runs a
                     product the model never saw.

Brightness and blur use the replay adapter's own ``apply_shift``, the same shifts an engineer can
inject from ``inspect camera replay --shift``.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_sample_images

from inspectline.camera_adapters.replay import apply_shift
from inspectline.imaging import to_model_image


def shifted_sets(frames: list[np.ndarray], seed: int = 0) -> dict[str, list[np.ndarray]]:
    """The three shifted versions of ``frames`` (``other_product`` has as many patches as frames)."""
    return {
        "darker": [apply_shift(f, "brightness", -0.4) for f in frames],
        "blurred": [apply_shift(f, "blur", 2.0) for f in frames],
        "other_product": other_product(len(frames), frames[0].shape[0], seed),
    }


def other_product(n: int, side: int, seed: int = 0) -> list[np.ndarray]:
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    patches = []
    for k in range(n):
        photo = photos[k % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        patches.append(to_model_image(photo[y : y + side, x : x + side], "gray"))
    return patches
