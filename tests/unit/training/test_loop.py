import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from inspectline.data import FrameDataset, Preprocessing, build_eval_preset, create_loader, load_images, load_samples
from inspectline.model import build_model
from inspectline.training.loop import (
    CollapseDetector,
    EarlyStopping,
    build_optimizer,
    evaluate,
    fit,
    mixup,
    train_one_epoch,
)
from inspectline.training.metrics import best_f1
from tests.helpers import tiny_config

TINY = Preprocessing(image_size=32, color_mode="gray", mean=(0.5,), std=(0.2,))


def _tiny_frames(cfg) -> FrameDataset:
    """The tiny folder dataset of ``cfg``, every split, preprocessed for evaluation at 32 px."""
    samples = load_samples(cfg.data)
    return FrameDataset(samples, build_eval_preset(TINY), "gray", load_images(samples, "gray"))


def test_mixup_mixes_inputs_with_beta_weight():
    x = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    y = torch.tensor([0, 1])
    mixed, y_a, y_b, lam = mixup(x, y, 0.2, np.random.default_rng(0))
    assert 0 <= lam <= 1 and torch.equal(y_a, y)
    for i in range(2):
        expected = lam * x[i] + (1 - lam) * x[int(y_b[i])]  # y equals the index here, so y_b is the permutation
        assert torch.allclose(mixed[i], expected)


def test_early_stopping_keeps_the_best_state():
    model = torch.nn.Linear(1, 1)
    stopper = EarlyStopping(patience=2)
    assert not stopper.step(0.5, 1, model)
    with torch.no_grad():
        model.weight.fill_(3.0)
    assert not stopper.step(0.7, 2, model)
    assert not stopper.step(0.6, 3, model)
    assert stopper.step(0.6, 4, model)
    assert stopper.best_epoch == 2 and stopper.best_state["weight"].item() == 3.0


def test_early_stopping_waits_for_min_epochs():
    model = torch.nn.Linear(1, 1)
    stopper = EarlyStopping(patience=1, min_epochs=5)
    stopper.step(0.9, 1, model)
    assert [stopper.step(0.1, e, model) for e in range(2, 7)] == [False, False, False, True, True]


def test_collapse_detector_warns_then_stops_after_patience(caplog):
    detector = CollapseDetector(share=0.95, patience=2, warmup=1)
    with caplog.at_level(logging.WARNING):
        assert not detector.step(0.99, 1)  # warm-up
        assert not detector.step(0.60, 2)  # recovered: streak resets
        assert not detector.step(0.99, 3)
        assert detector.step(1.00, 4)
    assert sum("prediction collapse" in r.message for r in caplog.records) == 3


def test_fit_stops_a_collapsed_model(folder_dataset: Path, tmp_path: Path):
    """A model that predicts OK for everything must be stopped by the collapse detector."""
    cfg = tiny_config(
        folder_dataset,
        tmp_path,
        train={"epochs": 10, "lr": 1e-9, "collapse_patience": 2, "collapse_warmup": 1, "patience": 50},
    )
    data = _tiny_frames(cfg)
    loader = create_loader(data, batch_size=8, train=True, seed=0)
    val = create_loader(data, batch_size=16, train=False)
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16))
    with torch.no_grad():
        model.classifier[-1].bias.copy_(torch.tensor([50.0, -50.0]))  # always "ok"
    result = fit(model, loader, val, cfg.train, torch.device("cpu"), history_path=tmp_path / "h.jsonl", progress=False)
    assert result.stop_reason == "collapse"
    assert result.epochs_run == 2
    assert all(row["prediction_diversity"] == 1.0 for row in result.history)
    assert len((tmp_path / "h.jsonl").read_text().splitlines()) == 2


def test_fit_with_ema_outside_a_terminal_logs_a_line_per_epoch_and_returns_the_average(
    folder_dataset: Path, tmp_path: Path, caplog, capsys
):
    cfg = tiny_config(folder_dataset, tmp_path, train={"epochs": 2, "weight_averaging": "ema", "ema_decay": 0.5})
    data = _tiny_frames(cfg)
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16), head_dropout=(0.0, 0.0, 0.0))
    called = []  # which module ran each forward: the hook travels with the averaged copy (a deep copy)
    model.register_forward_hook(lambda m, _i, _o: called.append(m))
    with caplog.at_level(logging.INFO):
        result = fit(
            model,
            create_loader(data, batch_size=8, train=True, seed=0),
            create_loader(data, batch_size=16, train=False),
            cfg.train,
            torch.device("cpu"),
            tensorboard_dir=tmp_path / "tb",
            progress=True,  # stderr is not a terminal under pytest: log lines, no bars
        )
    assert "\r" not in capsys.readouterr().err
    # one "epoch N/M: ..." line each (a collapse warning of a random-init model also starts "epoch N:")
    epoch_lines = [r.getMessage() for r in caplog.records if re.match(r"epoch \d+/\d+:", r.getMessage())]
    assert [line.split(":")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert "training precision: fp32" in caplog.text
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert result.epochs_run == 2 and all(row["images_per_s"] > 0 for row in result.history)
    val_batches = 3  # 48 frames in batches of 16
    assert all(m is not model and not m.training for m in called[-val_batches:])  # the average was validated
    assert any(m is model for m in called[:-val_batches])


def test_soft_targets_of_certain_cells_train_exactly_as_their_labels(folder_dataset: Path, tmp_path: Path):
    """Soft labels change only what the annotators were unsure of: 0/1 probabilities give the same step."""
    cfg = tiny_config(folder_dataset, tmp_path, train={"epochs": 1, "mixup_alpha": 0.0, "label_smoothing": 0.0})
    samples = load_samples(cfg.data)[:16]
    images = load_images(samples, "gray")
    results = []
    for soft in (False, True):
        torch.manual_seed(0)
        model = build_model("resnet18", in_channels=1, head_dims=(32, 16), head_dropout=(0.0, 0.0, 0.0))
        data = FrameDataset(samples, build_eval_preset(TINY), "gray", images, soft_targets=soft)
        loader = create_loader(data, batch_size=8, train=True, balanced=False, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        stats = train_one_epoch(
            model,
            loader,
            torch.nn.CrossEntropyLoss(),
            optimizer,
            scheduler,
            cfg.train,
            torch.device("cpu"),
            np.random.default_rng(0),
            progress=False,
        )
        results.append((stats, [p.detach().clone() for p in model.parameters()]))
    (hard, hard_weights), (soft, soft_weights) = results
    assert hard["images"] == soft["images"] == 16
    assert soft["loss"] == pytest.approx(hard["loss"], rel=1e-5)
    assert soft["accuracy"] == hard["accuracy"]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(hard_weights, soft_weights, strict=True))


@pytest.mark.parametrize("keep", ["best", "last"])
def test_fit_keeps_the_best_or_the_last_epoch(folder_dataset: Path, tmp_path: Path, keep: str):
    """keep: last runs every epoch even where early stopping would stop, and returns the last weights."""
    cfg = tiny_config(
        folder_dataset,
        tmp_path,
        train={"epochs": 4, "patience": 1, "early_stopping_start": 0.0, "collapse_patience": 10, "keep": keep},
    )
    data = _tiny_frames(cfg)
    val = create_loader(data, batch_size=16, train=False)
    torch.manual_seed(0)
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16), head_dropout=(0.0, 0.0, 0.0))
    result = fit(model, create_loader(data, batch_size=8, train=True, seed=0), val, cfg.train, torch.device("cpu"))
    scores = [row["val_best_f1"] for row in result.history]
    if keep == "last":
        assert result.epochs_run == 4 and result.stop_reason == "completed"
        assert result.kept_epoch == 4 and result.kept_val_f1 == scores[-1]
    else:
        assert result.kept_epoch == result.best_epoch and result.kept_val_f1 == max(scores)
    # the returned model is the kept epoch's: validating it again gives that epoch's score
    again = evaluate(model, val, torch.nn.CrossEntropyLoss(), torch.device("cpu"), channels_last=True)
    prob = torch.softmax(again["logits"].float(), dim=1)[:, 1].numpy()
    assert best_f1(again["labels"], prob) == pytest.approx(result.kept_val_f1, abs=1e-6)


def test_sgd_recipe_runs_nesterov_momentum_under_onecycle_and_learns(folder_dataset: Path, tmp_path: Path):
    """train.optimizer: sgd gets the recipe's lr and weight decay, OneCycle cycles its momentum, and it learns."""
    cfg = tiny_config(folder_dataset, tmp_path, train={"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4})
    model = build_model("resnet18", in_channels=1, head_dims=(32, 16), head_dropout=(0.0, 0.0, 0.0))
    optimizer = build_optimizer(model, cfg.train)
    assert isinstance(optimizer, torch.optim.SGD)
    expected = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
    assert {key: optimizer.defaults[key] for key in expected} == expected
    assert isinstance(build_optimizer(model, tiny_config(folder_dataset, tmp_path).train), torch.optim.AdamW)

    data = _tiny_frames(cfg)
    torch.manual_seed(0)
    result = fit(
        model,
        create_loader(data, batch_size=4, train=True, seed=0),
        create_loader(data, batch_size=16, train=False),
        cfg.train,
        torch.device("cpu"),
    )
    lrs = [row["lr"] for row in result.history]
    assert lrs[0] < max(lrs) <= 0.05  # the schedule drives SGD's learning rate
    # learnt, not guessed (as in the integration test of training): class-balanced batches mostly right late on
    late = [row["train_accuracy"] for row in result.history[len(result.history) // 2 :]]
    assert sum(late) / len(late) >= 0.7, late
