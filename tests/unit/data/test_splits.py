from pathlib import Path

import numpy as np
import pytest

from inspectline.config import DataConfig
from inspectline.data import describe, load_samples, load_split_manifest, save_split_manifest, split_samples
from inspectline.errors import DataError


def _keys(samples):
    return {s.key for s in samples}


def test_elpv_default_protocol_is_25_percent_stratified_by_label_and_cell_type():
    samples = load_samples(DataConfig())
    splits = split_samples(samples, test_size=0.25, val_size=0.15, seed=42)
    assert len(splits.test) == 656  # 25 % of 2,624
    assert not (_keys(splits.train) & _keys(splits.val)) and not (_keys(splits.train) & _keys(splits.test))
    assert len(splits.train) + len(splits.val) + len(splits.test) == len(samples)
    for part in (splits.train, splits.val, splits.test):
        for stratum in ("0/mono", "1/mono", "0/poly", "1/poly"):
            share_all = np.mean([s.stratum == stratum for s in samples])
            share_part = np.mean([s.stratum == stratum for s in part])
            assert abs(share_part - share_all) < 0.01, (stratum, share_part, share_all)


def test_splits_are_seeded(folder_dataset: Path):
    samples = load_samples(DataConfig(source="folder", path=folder_dataset))
    a = split_samples(samples, test_size=0.25, val_size=0.2, seed=1)
    b = split_samples(samples, test_size=0.25, val_size=0.2, seed=1)
    c = split_samples(samples, test_size=0.25, val_size=0.2, seed=2)
    assert _keys(a.test) == _keys(b.test) and _keys(a.val) == _keys(b.val)
    assert _keys(a.test) != _keys(c.test)
    assert describe(a.test) == {"ok": 6, "defective": 6}


def test_group_aware_split_never_puts_a_group_in_two_splits(manifest_dataset: Path):
    samples = load_samples(DataConfig(source="manifest", path=manifest_dataset))
    for seed in range(5):
        splits = split_samples(samples, test_size=0.25, val_size=0.25, seed=seed)
        groups = [{s.group for s in part} for part in (splits.train, splits.val, splits.test)]
        assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
        assert sum(len(g) for g in groups) == 12
        assert all(describe(part)["defective"] > 0 for part in (splits.train, splits.val, splits.test))


def test_manifest_round_trip_reproduces_the_split(folder_dataset: Path, tmp_path: Path):
    samples = load_samples(DataConfig(source="folder", path=folder_dataset))
    splits = split_samples(samples, test_size=0.25, val_size=0.2, seed=5)
    save_split_manifest(splits, tmp_path / "splits.json", source={"source": "folder"}, seed=5)
    again = load_split_manifest(tmp_path / "splits.json", list(reversed(samples)))
    for name in ("train", "val", "test"):
        assert [s.key for s in again[name]] == [s.key for s in splits[name]]


def test_manifest_against_other_data_is_refused(folder_dataset: Path, tmp_path: Path):
    samples = load_samples(DataConfig(source="folder", path=folder_dataset))
    splits = split_samples(samples, test_size=0.25, val_size=0.2, seed=5)
    save_split_manifest(splits, tmp_path / "splits.json", source={}, seed=5)
    with pytest.raises(DataError, match="not in the data source"):
        load_split_manifest(tmp_path / "splits.json", samples[:10])


def test_too_few_samples_for_a_class_gives_a_clear_error(folder_dataset: Path):
    samples = load_samples(DataConfig(source="folder", path=folder_dataset))
    few = [s for s in samples if s.label == 0] + [s for s in samples if s.label == 1][:2]
    with pytest.raises(DataError, match=r"class counts .'ok': 18, 'defective': 1.*add samples"):
        split_samples(few, test_size=0.25, val_size=0.25, seed=0)


def test_line_frame_keys_are_resolved_by_the_given_resolver(folder_dataset: Path, tmp_path: Path):
    from inspectline.data import Sample, Splits, load_split

    samples = load_samples(DataConfig(source="folder", path=folder_dataset))
    line = [Sample(key=f"frame:{i}", path=tmp_path / f"{i}.png", label=i % 2) for i in (7, 8)]
    splits = Splits(train=samples[:10] + line, val=samples[10:20] + line[:1], test=samples[20:])
    save_split_manifest(splits, tmp_path / "splits.json", source={}, seed=0)
    asked = []

    def resolve(keys):
        asked.append(keys)
        return {s.key: s for s in line if s.key in keys}

    assert load_split(tmp_path / "splits.json", samples, "test") == samples[20:]  # no line frames: no store needed
    train = load_split(tmp_path / "splits.json", samples, "train", resolve=resolve)
    assert [s.key for s in train[-2:]] == ["frame:7", "frame:8"] and asked == [["frame:7", "frame:8"]]
    with pytest.raises(DataError, match="read from the frame store"):
        load_split(tmp_path / "splits.json", samples, "train")
    with pytest.raises(DataError, match="not one of train, val, test"):
        load_split(tmp_path / "splits.json", samples, "holdout")
