"""Heatmaps: computed as the verdict was (preprocessing, TTA views flipped back), rendered, and the gallery."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from inspectline.data.presets import Preprocessing
from inspectline.data.sources import Sample
from inspectline.errors import ConfigError
from inspectline.explain import Explainer, overlay_png, raw_png, render, render_overlay, write_gallery
from inspectline.imaging import decode_image, encode_png
from inspectline.model import ModelCard, build_model, save_checkpoint
from inspectline.predictor import Predictor
from inspectline.training.evaluation import Evaluation

SIDE = 64


def make_predictor(views: tuple[str, ...] = ("identity", "hflip"), seed: int = 0) -> Predictor:
    """A random-initialised gray ResNet18 at 64 px: its heatmaps are arbitrary but not flip-symmetric."""
    torch.manual_seed(seed)
    model = build_model("resnet18", in_channels=1, head_dims=(16, 8))
    card = ModelCard(
        arch="resnet18",
        class_names=("ok", "defective"),
        head_dims=(16, 8),
        head_dropout=(0.5, 0.3, 0.2),
        preprocessing=Preprocessing(image_size=SIDE, color_mode="gray", mean=(0.5,), std=(0.25,)),
        tta_views=views,
        version="v0001",
    )
    return Predictor(model.eval(), card)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return make_predictor()


@pytest.fixture(scope="module")
def explainer(predictor: Predictor) -> Explainer:
    return Explainer.from_predictor(predictor)


def frame(seed: int, shape: tuple[int, ...] = (2 * SIDE, 2 * SIDE), dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    return rng.integers(0, top, shape, endpoint=True).astype(dtype)


def test_a_heatmap_is_a_float_map_at_each_frames_own_resolution(explainer: Explainer):
    frames = [frame(1, (48, 80)), frame(2, (70, 50, 3)), frame(3, (SIDE, SIDE), np.uint16)]
    heatmaps = explainer.explain(frames)
    assert [h.shape for h in heatmaps] == [(48, 80), (70, 50), (SIDE, SIDE)]
    for h in heatmaps:
        assert h.dtype == np.float32 and h.min() >= 0.0 and h.max() == pytest.approx(1.0)


@pytest.mark.parametrize(("view", "flip"), [("hflip", np.fliplr), ("vflip", np.flipud)])
def test_each_tta_view_is_flipped_back_onto_the_frame(view, flip):
    # Averaged over {identity, flip}, the map of a flipped frame is the flipped map of the frame; with the
    # identity view alone a (random) network is not flip-symmetric, so the property is the views' doing.
    image = frame(4)
    with_view = Explainer.from_predictor(make_predictor(("identity", view)))
    [plain], [flipped] = with_view.explain([image]), with_view.explain([np.ascontiguousarray(flip(image))])
    assert plain.max() == pytest.approx(1.0)
    np.testing.assert_allclose(flipped, flip(plain), atol=1e-4)
    identity_only = Explainer.from_predictor(make_predictor(("identity",)))
    [plain], [flipped] = identity_only.explain([image]), identity_only.explain([np.ascontiguousarray(flip(image))])
    assert np.abs(flipped - flip(plain)).max() > 0.05


def test_the_explainer_leaves_the_serving_predictor_alone(predictor: Predictor):
    image = frame(5)
    before = predictor.predict([image])[0].defect_probability
    grads_before = [p.requires_grad for p in predictor.model.parameters()]
    Explainer.from_predictor(predictor).explain([image])
    assert predictor.predict([image])[0].defect_probability == before
    assert [p.requires_grad for p in predictor.model.parameters()] == grads_before
    assert all(not m._forward_hooks for m in predictor.model.modules())


def test_a_checkpoint_gives_the_same_maps_as_its_predictor(tmp_path: Path, predictor: Predictor, explainer):
    path = tmp_path / "model.pt"
    save_checkpoint(path, predictor.model, predictor.card)
    loaded = Explainer.load(path)
    assert loaded.version == "v0001" and loaded.predictor.tta_views == ("identity", "hflip")
    images = [frame(6), frame(7, (90, 60))]
    for a, b in zip(loaded.explain(images), explainer.explain(images), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert Explainer.load(path, tta_views=("identity",)).predictor.tta_views == ("identity",)


def test_overlay_paints_evidence_red_and_raw_keeps_16_bits():
    image = np.full((20, 30), 128, np.uint8)
    heatmap = np.zeros((20, 30), np.float32)
    heatmap[:, 15:] = 1.0
    overlay = decode_image(overlay_png(image, heatmap))
    assert overlay.shape == (20, 30, 3) and overlay.dtype == np.uint8
    hot, cold = overlay[10, 25].astype(int), overlay[10, 5].astype(int)
    assert hot[0] > hot[2] + 50 and cold[2] > cold[0] + 50  # JET: red where the map is 1, blue where 0
    assert np.array_equal(render_overlay(image, heatmap, opacity=0.0), np.full((20, 30, 3), 255, np.uint8))
    gradient = np.linspace(0, 1, 600, dtype=np.float32).reshape(20, 30)
    raw = decode_image(raw_png(gradient))
    assert raw.dtype == np.uint16 and np.array_equal(raw, np.round(gradient * 65535).astype(np.uint16))
    assert render("raw", image, gradient) == raw_png(gradient)


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda p: Explainer(p, method="occlusion"), "gradcam, gradcam++, xgradcam, hirescam, layercam"),
        (lambda p: Explainer(p, stages=("layer5",)), "layer1, layer2, layer3, layer4"),
        (lambda p: Explainer(p, stages="layer4"), "non-empty list"),
        (lambda p: Explainer(SimpleNamespace(card=p.card, model=None)), "needs the torch model"),
        (lambda _: overlay_png(np.zeros((4, 4), np.uint8), np.zeros((4, 5))), "does not match"),
        (lambda _: render("jet", np.zeros((4, 4), np.uint8), np.zeros((4, 4))), "overlay, raw"),
        (lambda _: raw_png(np.zeros((4, 4, 1))), "2-D"),
    ],
)
def test_bad_requests_name_what_is_accepted(predictor: Predictor, call, needle):
    with pytest.raises(ConfigError, match=needle.replace("+", r"\+")):
        call(predictor)


def _evaluation(keys: list[str], labels: list[int], probabilities: list[float], threshold: float) -> Evaluation:
    p = np.array(probabilities)
    return Evaluation(
        model_version="v0001",
        split="test",
        keys=keys,
        labels=np.array(labels),
        probabilities=p,
        raw_probabilities=p,
        metrics={"threshold": threshold},
        sweep=[],
        ece_before=0.0,
        ece_after=0.0,
        temperature=1.0,
        latency_ms=None,
        parameters=0,
        size_bytes=None,
        readiness=[],
    )


def test_the_gallery_shows_the_most_confident_mistakes_first(tmp_path: Path, predictor: Predictor):
    # (label, p): defective frames judged OK at 0.5 are 0.40, 0.10, 0.30; OK frames judged DEFECTIVE: none
    rows = [(1, 0.40), (1, 0.10), (0, 0.20), (1, 0.90), (1, 0.30), (0, 0.45)]
    samples = []
    for i, (label, _) in enumerate(rows):
        path = tmp_path / "frames" / f"cell{i}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(encode_png(frame(10 + i, (40, 60))))
        samples.append(Sample(key=f"frames/cell{i}.png", path=path, label=label))
    evaluation = _evaluation([s.key for s in samples], *zip(*rows, strict=True), threshold=0.5)
    markdown = write_gallery(predictor, samples, evaluation, tmp_path / "report", per_kind=2)
    fn_section = markdown.split("### False negatives")[1].split("### False positives")[0]
    assert fn_section.index("frames/cell1.png") < fn_section.index("frames/cell4.png")  # 0.10 before 0.30
    assert "frames/cell0.png" not in fn_section  # per_kind=2 keeps the two worst
    assert "None on this split." in markdown.split("### False positives")[1]
    assert "](gallery/false-negatives-01.png)" in markdown
    side_by_side = decode_image((tmp_path / "report" / "gallery" / "false-negatives-01.png").read_bytes())
    assert side_by_side.shape == (40, 120, 3)  # the frame, then its overlay
    with pytest.raises(ConfigError, match="not the evaluated ones"):
        write_gallery(predictor, samples[::-1], evaluation, tmp_path / "report")
