from pathlib import Path

import numpy as np
import pytest

from inspectline.config import DataConfig
from inspectline.data import CLASS_NAMES, DEFECTIVE, OK, describe, load_images, load_samples
from inspectline.errors import DataError
from inspectline.imaging import encode_png


def test_elpv_source_labels_by_probability_and_keeps_cell_type():
    samples = load_samples(DataConfig(source="elpv"))
    assert len(samples) == 2624
    probs = np.array([s.meta["defect_probability"] for s in samples])
    labels = np.array([s.label for s in samples])
    np.testing.assert_array_equal(labels, (probs >= 0.5).astype(int))
    assert set(np.round(probs, 3)) == {0.0, 0.333, 0.667, 1.0}
    assert {s.meta["cell_type"] for s in samples} == {"mono", "poly"}
    assert all(s.path.is_file() for s in samples[:20])
    strict = load_samples(DataConfig(source="elpv", defect_threshold=0.9))
    assert describe(strict)["defective"] == int((probs >= 0.9).sum()) < describe(samples)["defective"]


def test_folder_source(folder_dataset: Path):
    samples = load_samples(DataConfig(source="folder", path=folder_dataset))
    assert describe(samples) == {"ok": 24, "defective": 24}
    assert all(CLASS_NAMES[s.label] == s.path.parent.name for s in samples)
    assert all(s.key == f"{s.path.parent.name}/{s.path.name}" for s in samples)


def test_folder_source_requires_class_folders(tmp_path: Path):
    (tmp_path / "good").mkdir()
    with pytest.raises(DataError, match=r"missing \['ok', 'defective'\], found \['good'\]"):
        load_samples(DataConfig(source="folder", path=tmp_path))


def test_mvtec_source(mvtec_dataset: Path):
    samples = load_samples(DataConfig(source="mvtec", path=mvtec_dataset))
    assert describe(samples) == {"ok": 16, "defective": 10}
    defect_types = {s.meta["defect_type"] for s in samples if s.label == DEFECTIVE}
    assert defect_types == {"crack", "finger"}
    assert all(s.label == OK for s in samples if s.meta["defect_type"] == "good")


def test_manifest_source_with_groups_and_metadata(manifest_dataset: Path):
    samples = load_samples(DataConfig(source="manifest", path=manifest_dataset))
    assert len(samples) == 48 and len({s.group for s in samples}) == 12
    assert {s.meta["station"] for s in samples} == {"A", "B"}
    assert describe(samples) == {"ok": 32, "defective": 16}


def test_manifest_errors_name_row_and_accepted_values(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(encode_png(np.zeros((8, 8), np.uint8)))
    bad_label = tmp_path / "m.csv"
    bad_label.write_text("path,label\na.png,ok\na.png,scratched\n")
    with pytest.raises(DataError, match=r"m.csv:3: label 'scratched' is not one of ok, defective"):
        load_samples(DataConfig(source="manifest", path=bad_label))
    missing = tmp_path / "n.csv"
    missing.write_text("path,label\nnope.png,ok\n")
    with pytest.raises(DataError, match=r"nope.png"):
        load_samples(DataConfig(source="manifest", path=missing))
    no_header = tmp_path / "h.csv"
    no_header.write_text("file,class\na.png,ok\n")
    with pytest.raises(DataError, match="'path' and 'label'"):
        load_samples(DataConfig(source="manifest", path=no_header))


def test_corrupt_files_are_reported_by_path_never_skipped(tmp_path: Path):
    for name in ("ok", "defective"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "fine.png").write_bytes(encode_png(np.zeros((8, 8), np.uint8)))
    (tmp_path / "ok" / "truncated.png").write_bytes(encode_png(np.ones((32, 32), np.uint8) * 7)[:30])
    (tmp_path / "defective" / "empty.png").write_bytes(b"")
    samples = load_samples(DataConfig(source="folder", path=tmp_path))
    assert len(samples) == 4  # listed, not filtered
    with pytest.raises(DataError) as err:
        load_images(samples, "gray")
    message = str(err.value)
    assert "2 of 4 images could not be read" in message
    assert "truncated.png" in message and "empty.png" in message
