import numpy as np
import pytest
import torch

from inspectline.data import Preprocessing
from inspectline.imaging import decode_image, encode_png
from inspectline.model import ModelCard, build_model
from inspectline.predictor import DEFECTIVE, OK, UNSURE, Predictor

PRE = Preprocessing(image_size=32, color_mode="gray", mean=(0.5,), std=(0.2,))


def _predictor(**kw) -> Predictor:
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16))
    card_kw = {k: kw.pop(k) for k in ("temperature", "threshold") if k in kw}
    card = ModelCard(
        arch="resnet18",
        class_names=("ok", "defective"),
        head_dims=(32, 16),
        head_dropout=(0.5, 0.3, 0.2),
        preprocessing=PRE,
        version="v0042",
        **card_kw,
    )
    return Predictor(model, card, **kw)


def _frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (40, 40), dtype=np.uint8)


def test_prediction_fields_and_confidence_definition():
    predictor = _predictor(threshold=0.5)
    [p] = predictor.predict([_frame()])
    assert p.model_version == "v0042" and p.threshold == 0.5
    assert set(p.view_probabilities) == {"identity", "hflip"}
    assert 0 <= p.defect_probability <= 1
    assert p.verdict == (DEFECTIVE if p.defect_probability >= 0.5 else OK)
    assert p.confidence == pytest.approx(p.defect_probability if p.verdict == DEFECTIVE else 1 - p.defect_probability)
    assert p.embedding.shape == (16,)


def test_flip_tta_is_invariant_to_a_flipped_frame():
    predictor = _predictor(tta_views=("identity", "hflip"))
    frame = _frame(1)
    [a, b] = predictor.predict([frame, frame[:, ::-1].copy()])
    assert a.defect_probability == pytest.approx(b.defect_probability, abs=1e-5)
    assert a.view_probabilities["identity"] == pytest.approx(b.view_probabilities["hflip"], abs=1e-5)


def test_batched_equals_one_by_one_and_any_input_layout_works():
    predictor = _predictor()
    frames = [_frame(i) for i in range(5)]
    batched = [p.defect_probability for p in predictor.predict(frames)]
    single = [predictor.predict([f])[0].defect_probability for f in frames]
    np.testing.assert_allclose(batched, single, atol=1e-5)
    rgb = np.dstack([frames[0]] * 3)
    rgba = np.dstack([rgb, np.full((40, 40), 255, np.uint8)])
    sixteen = frames[0].astype(np.uint16) << 8
    for layout in (rgb, rgba, sixteen, decode_image(encode_png(frames[0]))):
        assert predictor.predict([layout])[0].defect_probability == pytest.approx(batched[0], abs=1e-4)


def test_temperature_is_applied_to_the_averaged_logits():
    sharp, soft = _predictor(temperature=1.0), _predictor(temperature=4.0)
    frame = _frame(3)
    out = sharp.forward(torch.stack([sharp.preprocess(frame)]))
    logits = out.view_logits.mean(dim=0)[0]
    expected = torch.softmax(logits / 4.0, dim=-1)[1].item()
    assert soft.predict([frame])[0].defect_probability == pytest.approx(expected, abs=1e-5)


def test_threshold_and_unsure_band():
    predictor = _predictor(threshold=0.4, unsure_band=0.05)
    assert predictor.verdict(0.41) == UNSURE and predictor.verdict(0.36) == UNSURE
    assert predictor.verdict(0.46) == DEFECTIVE and predictor.verdict(0.34) == OK
    with pytest.raises(ValueError, match="TTA views"):
        _predictor(tta_views=("identity", "mirror"))
