"""Seeded, stratified, group-aware train/validation/test splits, saved with every run.

The test split is carved first (``data.test_size`` of all samples, 25 % by default: the protocol of
the ELPV literature), then validation from the rest (``data.val_size``). Splits stratify on
``Sample.stratum`` (label, and cell type for ELPV). When samples carry a group (a part, a module, a
wafer) the split is made with scikit-learn's ``StratifiedGroupKFold`` so that no group lands in two
splits; the fraction is then approximate, since whole groups move together.

The manifest written by :func:`save_split_manifest` lists sample keys per split; reading it back
against the same source reproduces the exact split on any machine. A retrained version's manifest
also holds line frames from the frame store (``frame:ID`` keys): :func:`load_split` takes a
``resolve`` callable for keys the source does not have (``inspectline.retrain.line_frame_samples``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from inspectline.data.sources import CLASS_NAMES, Sample, describe
from inspectline.errors import DataError

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]

    def __getitem__(self, name: str) -> list[Sample]:
        if name not in SPLIT_NAMES:
            msg = f"split {name!r} is not one of {', '.join(SPLIT_NAMES)}"
            raise DataError(msg)
        return getattr(self, name)


def split_samples(samples: Sequence[Sample], *, test_size: float, val_size: float, seed: int) -> Splits:
    """Split into train/val/test; group-aware when any sample has a group."""
    samples = list(samples)
    grouped = any(s.group is not None for s in samples)
    rest, test = _split(samples, test_size, seed, grouped)
    train, val = _split(rest, val_size, seed + 1, grouped)
    for name, part in (("train", train), ("val", val), ("test", test)):
        missing = [c for c, n in describe(part).items() if n == 0]
        if missing:
            msg = (
                f"the {name} split has no {missing} samples ({len(samples)} samples in all); "
                "add samples of every class or lower data.test_size / data.val_size"
            )
            raise DataError(msg)
    return Splits(train=train, val=val, test=test)


def holdout(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """One stratified (group-aware when groups exist) split: ``(kept, held_out)``."""
    samples = list(samples)
    return _split(samples, fraction, seed, any(s.group is not None for s in samples))


def _split(samples: list[Sample], fraction: float, seed: int, grouped: bool) -> tuple[list[Sample], list[Sample]]:
    if grouped:
        return _group_split(samples, fraction, seed)
    index = np.arange(len(samples))
    for strata in ([s.stratum for s in samples], [s.label for s in samples]):
        try:
            keep, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=strata)
            break
        except ValueError:
            continue  # a stratum too small for the fraction: fall back to the label alone
    else:
        counts = describe(samples)
        msg = (
            f"cannot make a stratified {fraction:.0%} split of {len(samples)} samples with class counts {counts}: "
            "every class needs samples on both sides; add samples or lower data.test_size / data.val_size"
        )
        raise DataError(msg)
    return [samples[i] for i in sorted(keep)], [samples[i] for i in sorted(held)]


def _group_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    # Ungrouped samples are their own group, so a manifest with a partly filled group column still works.
    groups = [s.group if s.group is not None else f"__sample__{s.key}" for s in samples]
    strata = [s.stratum for s in samples]
    n_splits = max(2, round(1 / fraction))
    if len(set(groups)) < n_splits:
        msg = f"{len(set(groups))} groups are too few for a {fraction:.0%} group-aware split (need {n_splits})"
        raise DataError(msg)
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    keep, held = next(folds.split(np.zeros(len(samples)), strata, groups))
    return [samples[i] for i in sorted(keep)], [samples[i] for i in sorted(held)]


def save_split_manifest(splits: Splits, path: Path, *, source: dict, seed: int) -> None:
    """Write the split as JSON: keys and labels per split, with the source it was drawn from."""
    doc = {
        "source": source,
        "seed": seed,
        "grouped": any(s.group is not None for s in splits.train),
        "counts": {name: describe(splits[name]) for name in SPLIT_NAMES},
        "splits": {
            name: [{"key": s.key, "label": CLASS_NAMES[s.label], "group": s.group} for s in splits[name]]
            for name in SPLIT_NAMES
        },
    }
    path.write_text(json.dumps(doc, indent=1))


KeyResolver = Callable[[list[str]], dict[str, Sample]]


def split_keys(path: Path, name: str) -> list[str]:
    """The sample keys of one split of a saved manifest, in order."""
    if name not in SPLIT_NAMES:
        msg = f"split {name!r} is not one of {', '.join(SPLIT_NAMES)}"
        raise DataError(msg)
    return [e["key"] for e in json.loads(Path(path).read_text())["splits"][name]]


def load_split(path: Path, samples: Sequence[Sample], name: str, *, resolve: KeyResolver | None = None) -> list[Sample]:
    """One saved split rebuilt from the source's samples by key; ``resolve`` supplies keys the source lacks."""
    keys = split_keys(path, name)
    by_key = {s.key: s for s in samples}
    unknown = [k for k in keys if k not in by_key]
    if unknown and resolve is not None:
        by_key |= resolve(unknown)
    missing = [k for k in keys if k not in by_key]
    if missing:
        msg = f"split manifest {path}: {len(missing)} {name} samples are not in the data source, e.g. {missing[:5]}"
        if any(k.startswith("frame:") for k in missing):
            msg += " (frame:ID keys are line frames of a retrained version: they are read from the frame store)"
        raise DataError(msg)
    return [by_key[k] for k in keys]


def load_split_manifest(path: Path, samples: Sequence[Sample], *, resolve: KeyResolver | None = None) -> Splits:
    """Rebuild a saved split from the same source's samples, matching by key."""
    return Splits(**{name: load_split(path, samples, name, resolve=resolve) for name in SPLIT_NAMES})
