"""Which precision training uses, and that a forced bf16 step really runs in bf16 on any CPU."""

import numpy as np
import pytest
import torch

from inspectline.config import TrainConfig
from inspectline.data import FrameDataset, Preprocessing, Sample, build_eval_preset, create_loader
from inspectline.model import build_model
from inspectline.training import precision as precision_module
from inspectline.training.loop import train_one_epoch
from inspectline.training.precision import resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_follows_the_detected_cpu(monkeypatch, native_bf16, expected):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: native_bf16)
    chosen = resolve_precision("auto", CPU)
    assert chosen.dtype is expected
    assert chosen.name == ("bf16" if native_bf16 else "fp32")
    assert not chosen.needs_scaler


def test_forced_settings_ignore_the_cpu(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("fp32", CPU).dtype is None
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("bf16", CPU).dtype is torch.bfloat16


@pytest.mark.parametrize(("bf16_gpu", "dtype", "scaler"), [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_cuda_uses_amp(monkeypatch, bf16_gpu, dtype, scaler):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_gpu)
    chosen = resolve_precision("auto", torch.device("cuda"))
    assert chosen.dtype is dtype and chosen.needs_scaler is scaler


def test_unknown_setting_names_the_choices():
    with pytest.raises(ValueError, match="auto, fp32, bf16"):
        resolve_precision("fp8", CPU)


def test_old_amp_flag_still_loads():
    assert TrainConfig.model_validate({"amp": False}).precision == "fp32"
    assert TrainConfig.model_validate({"amp": True}).precision == "auto"


def test_a_forced_bf16_step_runs_in_bf16_and_keeps_fp32_weights(tmp_path):
    """One tiny optimiser step under bf16 autocast, on whatever CPU runs the tests (emulated: slow but exact)."""
    torch.manual_seed(0)
    samples = [Sample(key=str(i), path=tmp_path / f"{i}.png", label=i % 2) for i in range(4)]
    images = [np.full((16, 16, 1), 60 + 120 * (i % 2), np.uint8) for i in range(4)]
    pre = Preprocessing(image_size=16, color_mode="gray", mean=(0.5,), std=(0.25,))
    loader = create_loader(FrameDataset(samples, build_eval_preset(pre), "gray", images), batch_size=4, train=True)
    model = build_model("resnet18", in_channels=1, head_dims=(8,), head_dropout=(0.0, 0.0))
    seen: list[torch.dtype] = []
    model.backbone.conv1.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    before = model.classifier[-1].weight.detach().clone()
    cfg = TrainConfig(mixup_alpha=0, label_smoothing=0, channels_last=False, precision="bf16")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    out = train_one_epoch(
        model,
        loader,
        torch.nn.CrossEntropyLoss(),
        optimizer,
        scheduler,
        cfg,
        CPU,
        np.random.default_rng(0),
        precision=resolve_precision("bf16", CPU),
        progress=False,
    )
    assert seen == [torch.bfloat16]  # the convolution ran under bf16 autocast
    assert np.isfinite(out["loss"]) and out["images"] == 4
    weight = model.classifier[-1].weight
    assert weight.dtype == torch.float32 and not torch.equal(weight.detach(), before)
