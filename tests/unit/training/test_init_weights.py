"""``model.init_weights``: ImageNet through torchvision's weights API or a local file, never the network in tests."""

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from inspectline.config import ModelConfig
from inspectline.errors import CheckpointError
from inspectline.model import build_model, imagenet_state_dict


def _marked_resnet18() -> dict[str, torch.Tensor]:
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"].fill_(0.25)
    return state


def test_config_takes_imagenet_or_a_path():
    assert ModelConfig(init_weights="imagenet").init_weights == "imagenet"
    assert ModelConfig(init_weights="/data/resnet18.pth").init_weights == Path("/data/resnet18.pth")


def test_imagenet_goes_through_the_weights_api_and_loads_the_backbone():
    calls = []

    def fake_hub(url, **kwargs):
        calls.append((url, kwargs))
        return _marked_resnet18()

    model = build_model(
        "resnet18",
        in_channels=1,
        init_weights="imagenet",
        fetch_imagenet=lambda a: imagenet_state_dict(a, load_url=fake_hub),
    )
    assert torch.all(model.backbone.layer1[0].conv1.weight == 0.25)
    assert model.backbone.conv1.weight.shape[1] == 1  # the RGB kernel summed for gray input
    url, kwargs = calls[0]
    assert url == torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    assert kwargs["weights_only"] is True and kwargs["check_hash"] is True


def test_offline_without_a_cached_file_names_both_ways():
    def offline(url, **kwargs):
        raise URLError("Temporary failure in name resolution")

    with pytest.raises(CheckpointError) as err:
        imagenet_state_dict("resnet50", load_url=offline)
    text = str(err.value)
    assert "ResNet50_Weights" in text and "online" in text and "local path" in text
    assert "model.init_weights" in text and "Temporary failure" in text


def test_a_local_file_still_works(tmp_path: Path):
    path = tmp_path / "resnet18.pth"
    torch.save(_marked_resnet18(), path)
    model = build_model("resnet18", in_channels=3, init_weights=path)
    assert torch.all(model.backbone.layer1[0].conv1.weight == 0.25)
