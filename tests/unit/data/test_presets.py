import albumentations as A
import numpy as np
import torch

from inspectline.config import AugmentConfig
from inspectline.data import Preprocessing, build_eval_preset, build_train_preset, compute_normalization

PRE = Preprocessing(image_size=32, color_mode="gray", mean=(0.5,), std=(0.25,))


def _names(compose: A.Compose) -> list[str]:
    names = []
    for t in compose.transforms:
        names.append(type(t).__name__)
        if isinstance(t, A.OneOf):
            names += [type(c).__name__ for c in t.transforms]
    return names


def test_train_preset_contains_the_recipe_augmentations():
    names = _names(build_train_preset(PRE, AugmentConfig()))
    for required in (
        "ElasticTransform",
        "GridDistortion",
        "CLAHE",
        "GaussNoise",
        "GaussianBlur",
        "MotionBlur",
        "CoarseDropout",
        "HorizontalFlip",
        "VerticalFlip",
        "RandomRotate90",
        "RandomBrightnessContrast",
    ):
        assert required in names
    assert names[0] == "Resize" and names[-2:] == ["Normalize", "ToTensorV2"]


def test_eval_preset_is_resize_and_normalise_only_and_deterministic():
    assert _names(build_eval_preset(PRE)) == ["Resize", "Normalize", "ToTensorV2"]
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 1), dtype=np.uint8)
    a = build_eval_preset(PRE)(image=image)["image"]
    b = build_eval_preset(PRE)(image=image)["image"]
    assert a.shape == (1, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    flat = np.full((32, 32, 1), 128, np.uint8)
    value = build_eval_preset(PRE)(image=flat)["image"][0, 0, 0].item()
    assert abs(value - (128 / 255 - 0.5) / 0.25) < 1e-5


def test_train_preset_augments_and_is_seeded():
    image = np.random.default_rng(1).integers(0, 255, (40, 40, 1), dtype=np.uint8)
    preset = build_train_preset(PRE, AugmentConfig(), seed=7)
    outs = [preset(image=image)["image"] for _ in range(5)]
    assert all(o.shape == (1, 32, 32) for o in outs)
    assert not all(torch.equal(outs[0], o) for o in outs[1:])
    again = build_train_preset(PRE, AugmentConfig(), seed=7)
    assert torch.equal(again(image=image)["image"], outs[0])


def test_all_probabilities_zero_equals_eval_and_none_preset_is_eval():
    zero = AugmentConfig(**{k: 0.0 for k in AugmentConfig.model_fields if k != "preset"})
    image = np.random.default_rng(2).integers(0, 255, (40, 40, 1), dtype=np.uint8)
    expected = build_eval_preset(PRE)(image=image)["image"]
    assert torch.equal(build_train_preset(PRE, zero)(image=image)["image"], expected)
    assert _names(build_train_preset(PRE, AugmentConfig(preset="none"))) == ["Resize", "Normalize", "ToTensorV2"]
    assert "ElasticTransform" not in _names(build_train_preset(PRE, AugmentConfig(preset="light")))


def test_normalisation_statistics_match_numpy():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (32, 32, 1), dtype=np.uint8) for _ in range(6)]
    mean, std = compute_normalization(images, 32)
    stacked = np.stack(images).astype(np.float64) / 255
    assert abs(mean[0] - stacked.mean()) < 1e-9
    assert abs(std[0] - stacked.std()) < 1e-9
    rgb_mean, _ = compute_normalization([np.dstack([i, i // 2, i // 4]) for i in images], 32)
    assert len(rgb_mean) == 3 and rgb_mean[0] > rgb_mean[1] > rgb_mean[2]


def test_reference_preset_is_the_reference_augmentations_only():
    aug = AugmentConfig(preset="reference", affine_scale=0.05, affine_rotate=5, affine_translate=0.02)
    preset = build_train_preset(PRE, aug)
    names = _names(preset)
    assert names == ["Resize", "HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine", "Normalize", "ToTensorV2"]
    affine = preset.transforms[4]
    assert affine.scale["x"] == (0.95, 1.05) and affine.rotate == (-5, 5)


def test_the_resized_cache_gives_the_eval_preset_the_same_tensor():
    from inspectline.data import resize_images

    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 255, (50, 70, 1), dtype=np.uint8), rng.integers(0, 255, (90, 90, 1), dtype=np.uint8)]
    cached = resize_images(frames, 32)
    assert [c.shape for c in cached] == [(32, 32, 1), (32, 32, 1)] and cached[0].dtype == np.uint8
    for frame, small in zip(frames, cached, strict=True):
        assert torch.equal(build_eval_preset(PRE)(image=small)["image"], build_eval_preset(PRE)(image=frame)["image"])


def test_the_train_presets_elastic_transform_distorts_exactly_as_albumentations_does():
    import cv2

    from inspectline.data.presets import ElasticTransform

    rng = np.random.default_rng(3)
    for shape in ((192, 192, 1), (40, 56, 1), (48, 48, 3)):
        image = cv2.GaussianBlur(rng.integers(0, 255, shape, dtype=np.uint8), (5, 5), 1.5).reshape(shape)
        for options in ({}, {"approximate": True}, {"same_dxdy": True}):
            kwargs = {"alpha": shape[0] * 0.25, "sigma": shape[0] * 0.05, "border_mode": cv2.BORDER_REFLECT_101}
            ours = A.Compose([ElasticTransform(**kwargs, **options, p=1.0)], seed=7)
            theirs = A.Compose([A.ElasticTransform(**kwargs, **options, p=1.0)], seed=7)
            for _ in range(3):  # the generators advance alike: each call's fields match too
                a, b = ours(image=image)["image"], theirs(image=image)["image"]
                assert np.array_equal(a, b), (shape, options)
                assert not np.array_equal(a, image)
