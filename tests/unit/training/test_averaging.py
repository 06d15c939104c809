"""Weight averaging: the EMA and SWA copies hold the averages they promise."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from inspectline.training.averaging import WeightAverager


def _set(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)


def test_ema_follows_the_weights_with_its_decay():
    model = nn.Linear(2, 1)
    _set(model, 0.0)
    averager = WeightAverager(model, "ema", epochs=4, ema_decay=0.9)
    averager.after_step(model)  # the first update copies the weights
    _set(model, 1.0)
    averager.after_step(model)
    averaged = averager.model_to_validate(model)
    assert averaged is not model and averager.active
    assert torch.allclose(averaged.weight, torch.full_like(averaged.weight, 0.1))  # 0.9 * 0 + 0.1 * 1


def test_swa_averages_epochs_after_its_start_and_validates_the_live_model_before():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    loader = DataLoader(TensorDataset(torch.randn(16, 2), torch.zeros(16, dtype=torch.long)), batch_size=8)
    averager = WeightAverager(model, "swa", epochs=4, swa_start=0.5)  # averages epochs 3 and 4
    for epoch, value in enumerate([5.0, 7.0, 1.0, 3.0], start=1):
        with torch.no_grad():
            model[0].weight.fill_(value)
        averager.after_epoch(model, epoch, loader, torch.device("cpu"))
        if epoch < 3:
            assert averager.model_to_validate(model) is model and not averager.active
    averaged = averager.model_to_validate(model)
    assert torch.allclose(averaged[0].weight, torch.full((2, 2), 2.0))  # mean of epochs 3 and 4
    assert averaged[1].num_batches_tracked > 0  # BatchNorm statistics recomputed for the averaged weights


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="none, ema, swa"):
        WeightAverager(nn.Linear(1, 1), "polyak", epochs=1)
