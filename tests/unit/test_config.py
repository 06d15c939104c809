from pathlib import Path

import pytest

from inspectline.config import InspectConfig, build_config, load_config, merge_config
from inspectline.errors import ConfigError


def test_defaults_are_the_full_resnet50_recipe():
    cfg = InspectConfig()
    assert cfg.model.arch == "resnet50"
    assert cfg.model.head_dims == (512, 256) and cfg.model.head_dropout == (0.5, 0.3, 0.2)
    assert cfg.train.patience == 12 and cfg.data.test_size == 0.25
    assert 0.2 <= cfg.train.mixup_alpha <= 0.3 and cfg.train.label_smoothing > 0


def test_yaml_then_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 5\nmodel:\n  arch: resnet18\n")
    cfg = load_config(path, ["train.epochs=7", "data.image_size=64", "calibration.tta_views=[identity, vflip]"])
    assert cfg.train.epochs == 7 and cfg.model.arch == "resnet18" and cfg.data.image_size == 64
    assert cfg.calibration.tta_views == ("identity", "vflip")


def test_unknown_key_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        load_config(None, ["train.epochz=3"])


def test_bad_value_names_key_and_accepted_values():
    with pytest.raises(ConfigError) as err:
        build_config({"model": {"arch": "vgg16"}})
    assert "model.arch" in str(err.value) and "resnet50" in str(err.value)


def test_path_required_for_non_elpv_sources():
    with pytest.raises(ConfigError, match=r"data.path is required"):
        build_config({"data": {"source": "folder"}})


def test_head_dropout_must_match_head_dims():
    with pytest.raises(ConfigError, match="head_dropout"):
        build_config({"model": {"head_dims": [64], "head_dropout": [0.5, 0.3, 0.2]}})


def test_config_is_frozen_and_round_trips_through_yaml(tmp_path: Path):
    cfg = merge_config(InspectConfig(), ["train.epochs=3"])
    with pytest.raises(ValueError):
        cfg.train.epochs = 4  # type: ignore[misc]
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


def test_malformed_override_and_missing_file():
    with pytest.raises(ConfigError, match=r"section.key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Path("/nonexistent.yaml"))


def test_every_shipped_profile_loads_and_the_cli_names_each_one():
    from typer.testing import CliRunner

    from inspectline.cli import app as cli
    from inspectline.cli import profile_path, shipped_profiles

    names = shipped_profiles()
    assert {"demo", "elpv-budget", "elpv-cpu", "elpv-cpu-long", "elpv-gpu", "elpv-resnet50"} <= set(names)
    for name in names:
        load_config(profile_path(name), [])
    # the inspection profiles ship at the plant's recall, not at max F1
    for name in ("elpv-cpu", "elpv-cpu-narrow", "elpv-cpu-long", "elpv-gpu", "elpv-resnet50"):
        calibration = load_config(profile_path(name), []).calibration
        assert (calibration.threshold_policy, calibration.target_recall) == ("target_recall", 0.95), name
    result = CliRunner().invoke(cli, ["train", "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert f"A shipped profile: {', '.join(names)}." in result.output
    with pytest.raises(ConfigError, match="available: " + ", ".join(names)):
        profile_path("elpv-fast")


def test_width_is_bounded_and_pretrained_weights_need_full_width():
    assert build_config({"model": {"width": 0.5}}).model.width == 0.5
    with pytest.raises(ConfigError, match=r"model\.width"):
        build_config({"model": {"width": 0.05}})
    with pytest.raises(ConfigError, match=r"model\.width=0\.5") as err:
        build_config({"model": {"width": 0.5, "init_weights": "imagenet"}})
    assert "init_weights" in str(err.value) and "1.0" in str(err.value)
