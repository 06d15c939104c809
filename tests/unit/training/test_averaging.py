"""Weight averaging: the EMA and SWA copies hold the averages they promise."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from inspectline.training.averaging import WeightAverager, warmed_decay


def _set(model: nn.Linear, value: float) -> None:
    with torch.no_grad():
        model.weight.fill_(value)
        model.bias.fill_(value)


def test_ema_follows_the_weights_with_its_warmed_decay():
    model = nn.Linear(2, 1)
    _set(model, 0.0)
    averager = WeightAverager(model, "ema", epochs=4, ema_decay=0.5)
    averager.after_step(model)  # the first update copies the weights
    _set(model, 1.0)
    averager.after_step(model)  # decay min(0.5, 2/11): 2/11 * 0 + 9/11 * 1
    averaged = averager.model_to_validate(model)
    assert averaged is not model and averager.active
    assert torch.allclose(averaged.weight, torch.full_like(averaged.weight, 9 / 11))
    for _ in range(20):  # once warmed up the configured decay holds: 0.5 * w + 0.5 * 1
        averager.after_step(model)
    _set(model, 3.0)
    averager.after_step(model)
    assert torch.allclose(averaged.weight, torch.full_like(averaged.weight, 2.0), atol=1e-4)


def test_ema_decay_warms_up_to_the_configured_value():
    assert warmed_decay(0.999, 0) == pytest.approx(0.1)
    assert warmed_decay(0.999, 90) == pytest.approx(0.91)
    assert warmed_decay(0.999, 100_000) == 0.999
    decays = [warmed_decay(0.999, n) for n in range(0, 20_000, 50)]
    assert decays == sorted(decays)


def test_ema_of_a_fresh_network_is_not_stuck_at_its_initial_weights():
    """After 200 steps of a moving model the average is near the recent weights, not the start."""
    model = nn.Linear(2, 1)
    _set(model, 0.0)
    averager = WeightAverager(model, "ema", epochs=10, ema_decay=0.999)
    for _ in range(200):
        _set(model, 1.0)
        averager.after_step(model)
    assert averager.model_to_validate(model).weight.mean().item() > 0.9


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
