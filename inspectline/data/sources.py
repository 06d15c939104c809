"""Dataset sources: every layout we read becomes a list of :class:`Sample` (path, label, group, metadata).

Four layouts are supported, chosen by ``data.source``:

* ``elpv``      the ``elpv-dataset`` package (2,624 electroluminescence solar cells). A cell is DEFECTIVE
                when its annotated defect probability is >= ``data.defect_threshold``; the cell type
                (mono/poly) and the probability are kept as metadata and stratify the splits.
* ``folder``    ``ROOT/ok/*`` and ``ROOT/defective/*``.
* ``mvtec``     the MVTec AD layout: ``train/good`` and ``test/good`` are OK, ``test/<defect type>`` DEFECTIVE.
* ``manifest``  a CSV with a header ``path,label[,group]`` (more columns become metadata); paths are
                relative to the CSV's folder; labels ``ok``/``defective`` (or ``0``/``1``).

``load_images`` decodes every sample once, in threads, and reports *all* unreadable files by path in
one :class:`DataError` rather than skipping them.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inspectline.config import DataConfig
from inspectline.errors import DataError, InvalidImageError
from inspectline.imaging import read_image, to_model_image

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, str] = ("ok", "defective")
OK, DEFECTIVE = 0, 1
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_LABEL_ALIASES = {"ok": OK, "0": OK, "good": OK, "defective": DEFECTIVE, "1": DEFECTIVE, "ng": DEFECTIVE}


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``key`` is the path relative to the source root: stable across machines."""

    key: str
    path: Path
    label: int
    group: str | None = None
    meta: dict[str, str | float] = field(default_factory=dict, hash=False, compare=False)

    @property
    def stratum(self) -> str:
        """What splits stratify on: the label, and the cell type where a source has one."""
        kind = self.meta.get("cell_type")
        return f"{self.label}/{kind}" if kind else str(self.label)


def load_samples(cfg: DataConfig) -> list[Sample]:
    """List the samples of the configured source (no image is decoded here)."""
    loaders = {"elpv": _elpv, "folder": _folder, "mvtec": _mvtec, "manifest": _manifest}
    samples = loaders[cfg.source](cfg)
    if not samples:
        msg = f"data source {cfg.source!r} at {cfg.path or 'elpv-dataset'} holds no images"
        raise DataError(msg)
    return samples


def source_root(cfg: DataConfig) -> Path:
    """The folder sample keys are relative to."""
    if cfg.source == "elpv":
        return _elpv_labels_file().parent
    assert cfg.path is not None
    return cfg.path.parent if cfg.source == "manifest" else cfg.path


def load_images(samples: Sequence[Sample], color_mode: str, *, max_workers: int = 4) -> list[np.ndarray]:
    """Decode every sample to uint8 ``(H, W, C)``; one error lists every unreadable file."""

    def _read(sample: Sample) -> np.ndarray | str:
        try:
            return to_model_image(read_image(sample.path), color_mode)
        except InvalidImageError as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        results = list(pool.map(_read, samples))
    failures = [r for r in results if isinstance(r, str)]
    if failures:
        shown = "\n  ".join(failures[:20])
        more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
        msg = f"{len(failures)} of {len(samples)} images could not be read:\n  {shown}{more}"
        raise DataError(msg)
    return results  # type: ignore[return-value]


def describe(samples: Sequence[Sample]) -> dict[str, int]:
    """Counts per class name, for logs and reports."""
    labels = np.array([s.label for s in samples])
    return {name: int((labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}


def _elpv_labels_file() -> Path:
    try:
        import elpv_dataset
    except ImportError:  # pragma: no cover - it is a hard dependency
        msg = "data.source='elpv' needs the elpv-dataset package (pip install elpv-dataset)"
        raise DataError(msg) from None
    return Path(elpv_dataset.__file__).parent / "data" / "labels.csv"


def _elpv(cfg: DataConfig) -> list[Sample]:
    labels_file = _elpv_labels_file()
    root = labels_file.parent
    samples = []
    for line_no, line in enumerate(labels_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rel, probability, cell_type = line.split()
            prob = float(probability)
        except ValueError:
            msg = f"{labels_file}:{line_no}: expected 'path probability type', got {line!r}"
            raise DataError(msg) from None
        label = DEFECTIVE if prob >= cfg.defect_threshold else OK
        meta = {"cell_type": cell_type, "defect_probability": round(prob, 4)}
        samples.append(Sample(key=rel, path=root / rel, label=label, meta=meta))
    return samples


def _folder(cfg: DataConfig) -> list[Sample]:
    root = _existing_dir(cfg.path)
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    missing = [name for name in CLASS_NAMES if name not in found]
    if missing:
        msg = f"{root} needs one sub-folder per class {list(CLASS_NAMES)}; missing {missing}, found {found}"
        raise DataError(msg)
    samples = []
    for index, name in enumerate(CLASS_NAMES):
        samples += [_sample(p, root, index) for p in _image_files(root / name)]
    return samples


def _mvtec(cfg: DataConfig) -> list[Sample]:
    root = _existing_dir(cfg.path)
    if not (root / "train" / "good").is_dir() or not (root / "test").is_dir():
        msg = f"{root} is not an MVTec AD category: expected train/good/ and test/<good|defect type>/"
        raise DataError(msg)
    samples = [
        _sample(p, root, OK, defect_type="good", mvtec_split="train") for p in _image_files(root / "train" / "good")
    ]
    for folder in sorted(p for p in (root / "test").iterdir() if p.is_dir()):
        label = OK if folder.name == "good" else DEFECTIVE
        samples += [_sample(p, root, label, defect_type=folder.name, mvtec_split="test") for p in _image_files(folder)]
    return samples


def _manifest(cfg: DataConfig) -> list[Sample]:
    path = cfg.path
    if path is None or not path.is_file():
        msg = f"manifest {path} does not exist"
        raise DataError(msg)
    root = path.parent
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "path" not in columns or "label" not in columns:
            msg = f"manifest {path} needs a header with 'path' and 'label' (optionally 'group'), got {columns}"
            raise DataError(msg)
        samples = []
        for row_no, row in enumerate(reader, start=2):
            raw = (row.get("label") or "").strip().lower()
            if raw not in _LABEL_ALIASES:
                msg = f"{path}:{row_no}: label {row.get('label')!r} is not one of ok, defective (or 0, 1)"
                raise DataError(msg)
            rel = (row.get("path") or "").strip()
            if not rel:
                msg = f"{path}:{row_no}: empty path"
                raise DataError(msg)
            file = (root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
            group = (row.get("group") or "").strip() or None
            meta = {k: v for k, v in row.items() if k not in ("path", "label", "group") and k and v}
            samples.append(Sample(key=rel, path=file, label=_LABEL_ALIASES[raw], group=group, meta=meta))
    missing = [s.key for s in samples if not s.path.is_file()]
    if missing:
        msg = f"manifest {path} lists {len(missing)} files that do not exist: {missing[:10]}"
        raise DataError(msg)
    return samples


def _existing_dir(path: Path | None) -> Path:
    if path is None or not path.is_dir():
        msg = f"dataset folder {path} does not exist"
        raise DataError(msg)
    return path


def _image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    ignored = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if ignored:
        log.warning("ignoring %d non-image files in %s: %s", len(ignored), folder, ignored[:5])
    return [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]


def _sample(path: Path, root: Path, label: int, **meta: str) -> Sample:
    return Sample(key=path.relative_to(root).as_posix(), path=path, label=label, meta=dict(meta))
