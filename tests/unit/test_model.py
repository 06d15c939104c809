from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from inspectline.data import Preprocessing
from inspectline.errors import CheckpointError
from inspectline.model import (
    GeneralizedMeanPool,
    ModelCard,
    build_model,
    load_backbone_weights,
    load_checkpoint,
    read_card,
    save_checkpoint,
)

PRE = Preprocessing(image_size=32, color_mode="gray", mean=(0.5,), std=(0.2,))


def _card(**kw) -> ModelCard:
    return ModelCard(
        arch="resnet18",
        class_names=("ok", "defective"),
        head_dims=(32, 16),
        head_dropout=(0.5, 0.3, 0.2),
        preprocessing=PRE,
        **kw,
    )


def test_deep_head_structure_matches_the_recipe():
    model = build_model("resnet50", in_channels=3)
    layers = [*model.neck, *model.classifier]
    kinds = [type(m).__name__ for m in layers]
    assert kinds == [
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.5, 0.3, 0.2]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(2048, 512), (512, 256), (256, 2)]


@pytest.mark.parametrize(("arch", "features"), [("resnet18", 512), ("resnet34", 512)])
def test_small_backbones_and_gray_input(arch, features):
    model = build_model(arch, in_channels=1).eval()
    assert model.feature_dim == features
    x = torch.randn(2, 1, 32, 32)
    logits, embedding = model.forward_with_embedding(x)
    assert logits.shape == (2, 2) and embedding.shape == (2, 256)
    assert torch.allclose(model(x), logits)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path):
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16)).eval()
    card = _card(temperature=1.7, threshold=0.31)
    save_checkpoint(tmp_path / "m.pt", model, card)
    loaded, loaded_card = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(3, 1, 32, 32)
    assert torch.allclose(model(x), loaded(x))
    assert loaded_card == card and read_card(tmp_path / "m.pt").threshold == 0.31
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


def test_refuses_missing_truncated_and_foreign_files(tmp_path: Path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16))
    save_checkpoint(tmp_path / "m.pt", model, _card())
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not a torch file"):
        load_checkpoint(tmp_path / "truncated.pt")
    torch.save(model.state_dict(), tmp_path / "plain_state_dict.pt")
    with pytest.raises(CheckpointError, match="was not written by inspectline"):
        load_checkpoint(tmp_path / "plain_state_dict.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pt")


def test_refuses_pickled_code(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "inspectline.checkpoint/1", "card": Evil(), "state_dict": {}}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")


def test_local_imagenet_style_weights_load_into_gray_backbone(tmp_path: Path):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    model = build_model("resnet18", in_channels=1, init_weights=tmp_path / "resnet18.pth")
    expected = reference.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.backbone.conv1.weight, expected)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_backbone_weights(build_model("resnet50", in_channels=3), tmp_path / "resnet18.pth")


def test_generalized_mean_pool_lies_between_the_average_and_the_max():
    # non-negative, as after the backbone's ReLU; channel scales from 0.2 up, since a channel scaled near zero
    # raised to the 20th power below underflows fp32 (0.01 ** 20), which is the test's input, not GeM's range
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(2, 8, 5, 5, generator=generator) * (0.2 + 0.8 * torch.rand(2, 8, 1, 1, generator=generator))
    gem = GeneralizedMeanPool(p=1.0)
    assert torch.allclose(gem(features), nn.AdaptiveAvgPool2d(1)(features), atol=1e-5)
    gem = GeneralizedMeanPool(p=3.0)
    pooled = gem(features)
    assert pooled.shape == (2, 8, 1, 1)
    assert (pooled >= nn.AdaptiveAvgPool2d(1)(features) - 1e-6).all()
    assert (pooled <= nn.AdaptiveMaxPool2d(1)(features) + 1e-6).all()
    sharper = GeneralizedMeanPool(p=20.0)(features)  # a larger exponent moves towards the max
    assert (sharper >= pooled - 1e-6).all() and (sharper <= nn.AdaptiveMaxPool2d(1)(features) + 1e-6).all()
    pooled.sum().backward()  # the exponent is learnt
    assert gem.p.grad is not None and torch.isfinite(gem.p.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # computed in fp32, returned in the input's dtype
        assert gem(features.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize(("pooling", "module"), [("avg", nn.AdaptiveAvgPool2d), ("max", nn.AdaptiveMaxPool2d)])
def test_pooling_is_chosen_by_name(pooling, module):
    assert isinstance(build_model("resnet18", in_channels=1, pooling=pooling).backbone.avgpool, module)
    with pytest.raises(ValueError, match="avg, max, gem"):
        build_model("resnet18", in_channels=1, pooling="median")


def test_checkpoint_keeps_the_pooling_and_its_learnt_exponent(tmp_path: Path):
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16), pooling="gem").eval()
    with torch.no_grad():
        model.backbone.avgpool.p.fill_(4.25)
    save_checkpoint(tmp_path / "m.pt", model, _card(pooling="gem"))
    loaded, card = load_checkpoint(tmp_path / "m.pt")
    assert card.pooling == "gem" and isinstance(loaded.backbone.avgpool, GeneralizedMeanPool)
    assert loaded.backbone.avgpool.p.item() == 4.25
    x = torch.randn(3, 1, 32, 32)
    assert torch.allclose(model(x), loaded(x))
    # a card written before pooling was configurable is torchvision's average pooling
    assert _card().model_dump().pop("pooling") == "avg"
    legacy = _card().model_dump(mode="json")
    del legacy["pooling"]
    assert ModelCard.model_validate(legacy).pooling == "avg"


@pytest.mark.parametrize(
    ("arch", "width", "stages"), [("resnet18", 0.5, (32, 64, 128, 256)), ("resnet50", 0.25, (16, 32, 64, 128))]
)
def test_width_scales_every_stage_and_keeps_the_depth(arch, width, stages):
    full = build_model(arch, in_channels=1, head_dims=(32, 16))
    narrow = build_model(arch, in_channels=1, head_dims=(32, 16), width=width)
    backbone = narrow.backbone
    assert backbone.conv1.in_channels == 1 and backbone.conv1.out_channels == stages[0]
    expansion = 4 if arch == "resnet50" else 1
    for i, planes in enumerate(stages, start=1):
        layer, full_layer = getattr(backbone, f"layer{i}"), getattr(full.backbone, f"layer{i}")
        assert len(layer) == len(full_layer)  # the depth is the architecture's
        assert layer[-1].conv1.out_channels == planes and layer[0].conv1.stride == full_layer[0].conv1.stride
    assert narrow.feature_dim == stages[-1] * expansion == full.feature_dim * width
    assert sum(p.numel() for p in backbone.parameters()) < 0.3 * sum(p.numel() for p in full.backbone.parameters())
    # initialised as torchvision initialises its ResNets, not left at PyTorch's layer defaults
    assert backbone.layer2[0].bn1.weight.eq(1).all() and backbone.layer2[0].bn1.bias.eq(0).all()
    conv = backbone.layer3[0].conv2
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]  # kaiming normal, fan-out mode
    assert conv.weight.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)
    logits, embedding = narrow.eval().forward_with_embedding(torch.randn(2, 1, 64, 64))
    assert logits.shape == (2, 2) and embedding.shape == (2, 16)


def test_width_travels_in_the_checkpoint_and_old_cards_are_full_width(tmp_path: Path):
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16), width=0.5).eval()
    save_checkpoint(tmp_path / "m.pt", model, _card(width=0.5))
    loaded, card = load_checkpoint(tmp_path / "m.pt")
    assert card.width == 0.5 and loaded.backbone.layer4[0].conv1.out_channels == 256
    assert card.backbone == "resnet18 x0.5" and _card().backbone == "resnet18"  # what lists and reports show
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(model(x), loaded(x))
    legacy = _card().model_dump(mode="json")
    del legacy["width"]
    assert ModelCard.model_validate(legacy).width == 1.0
    # a narrow checkpoint's card cannot be loaded into a full-width model, or the reverse
    save_checkpoint(tmp_path / "wrong.pt", model, _card())
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "wrong.pt")
