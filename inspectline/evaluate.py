"""Evaluate a registered model on a dataset, and judge image files: the library side of
``inspect evaluate`` and ``inspect predict``.

``inspect predict --heatmap DIR`` also writes each file's heatmap overlay into ``DIR``.

Without ``--data``, a model is evaluated on its *own* data source and saved split (``splits.json`` in
its version folder), so ``inspect evaluate --split test`` reproduces the test numbers of training
exactly. A retrained version's split also names line frames (``frame:ID``): they are read from the
frame store (``store`` in the config). With ``--data``, the given source is split with the configured
seed (or taken whole with ``--split all``).

A registered version is judged at its operating point in force (``inspect models set-threshold``),
as the service judges frames; the report shows that point beside the card's ``max_f1`` and
``target_recall`` points, and the training curves from the version's ``history.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from inspectline.config import DataConfig, InspectConfig, StoreConfig
from inspectline.data import Sample, load_samples, load_split, split_samples
from inspectline.data.splits import split_keys
from inspectline.errors import DataError, InspectError
from inspectline.explain import Explainer, overlay_png, write_gallery
from inspectline.files import atomic_write
from inspectline.imaging import read_image
from inspectline.predictor import Prediction, Predictor
from inspectline.registry import ModelRegistry
from inspectline.training.evaluation import Evaluation, evaluate_predictor
from inspectline.training.report import write_report

SPLITS = ("train", "val", "test", "all")


@dataclass
class EvaluationRun:
    evaluation: Evaluation
    report: Path


def evaluate_model(
    cfg: InspectConfig,
    *,
    model_ref: str = "production",
    split: str = "test",
    out_dir: Path | None = None,
    registry_root: Path | None = None,
    data_given: bool = False,
) -> EvaluationRun:
    """Evaluate one model version on one split and write ``metrics.json`` + ``report.md``."""
    if split not in SPLITS:
        msg = f"split {split!r} is not one of {', '.join(SPLITS)}"
        raise DataError(msg)
    registry = ModelRegistry(registry_root or cfg.paths.registry)
    checkpoint = registry.resolve(model_ref)
    point = _operating_point(registry, checkpoint)
    predictor = Predictor.load(checkpoint, threshold=point.threshold if point else None)
    card = predictor.card
    trained_on = DataConfig.model_validate(card.config["data"]) if card.config.get("data") else cfg.data
    data_cfg = cfg.data if data_given else trained_on
    manifest = checkpoint.parent / "splits.json"
    same_source = (data_cfg.source, data_cfg.path) == (trained_on.source, trained_on.path)
    with contextlib.ExitStack() as stack:  # line frames' image copies live until the gallery is written
        if split == "all":
            samples = load_samples(data_cfg)
        elif same_source and manifest.is_file():
            samples = stack.enter_context(split_samples_of(manifest, data_cfg, split, store=cfg.store))
        else:
            samples = split_samples(
                load_samples(data_cfg), test_size=data_cfg.test_size, val_size=data_cfg.val_size, seed=data_cfg.seed
            )[split]
        evaluation = evaluate_predictor(
            predictor,
            samples,
            cfg.readiness,
            split=split,
            size_bytes=checkpoint.stat().st_size,
            in_force=point.basis if point else None,
        )
        name = card.version or checkpoint.stem
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        out_dir = out_dir or cfg.paths.reports / f"{name}-{split}-{stamp}"
        report = write_report(
            evaluation,
            out_dir,
            history=_history(checkpoint.parent / "history.jsonl"),
            title=f"{name} ({card.backbone}) on {data_cfg.source} / {split}",
        )
        with report.open("a") as fh:  # the gallery of worst mistakes with heatmaps, after the report's sections
            fh.write(write_gallery(predictor, samples, evaluation, report.parent))
    return EvaluationRun(evaluation=evaluation, report=report)


@dataclass(frozen=True)
class PredictedFile:
    """One file judged by ``inspect predict``: its verdict or the error that kept it from one, and where
    its heatmap overlay went when heatmaps were asked for."""

    path: Path
    outcome: Prediction | InspectError
    heatmap: Path | None = None


@contextlib.contextmanager
def split_samples_of(
    manifest: Path, data: DataConfig, split: str, *, store: StoreConfig | None = None
) -> Iterator[list[Sample]]:
    """One split of a saved manifest; ``frame:ID`` keys (retrained versions) come from the frame store.

    Line frames are copied out of the store into a temporary folder that lives as long as the ``with``
    block: the samples name files in it, and nothing is left behind in the machine's temp space.
    """
    if not any(k.startswith("frame:") for k in split_keys(manifest, split)):
        yield load_split(manifest, load_samples(data), split)
        return
    if store is None:
        msg = f"split {split!r} of {manifest} holds line frames (frame:ID keys): a frame store config is needed"
        raise DataError(msg)
    from inspectline.retrain import line_frame_samples
    from inspectline.store import FrameStore

    with tempfile.TemporaryDirectory(prefix="inspect-evaluate-frames-") as cache_dir:
        with FrameStore(store) as frames:
            samples = load_split(
                manifest,
                load_samples(data),
                split,
                resolve=lambda keys: line_frame_samples(keys, frames, Path(cache_dir)),
            )
        yield samples


def _operating_point(registry: ModelRegistry, checkpoint: Path):
    """The operating point in force when ``checkpoint`` is a version of ``registry`` (else None)."""
    folder = checkpoint.parent
    if folder.parent.resolve() != registry.root.resolve() or folder.name not in registry.names():
        return None
    return registry.operating_point(folder.name)


def _history(path: Path) -> list[dict] | None:
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def predict_files(
    paths: Sequence[Path],
    *,
    model_ref: str = "production",
    registry_root: Path,
    tta: bool = True,
    batch_size: int = 32,
    heatmap_dir: Path | None = None,
) -> list[PredictedFile]:
    """Judge files in batches; an unreadable file gets its error, the others still get verdicts.

    With ``heatmap_dir``, each judged file also gets ``<stem>.heatmap.png`` there: the Grad-CAM overlay
    computed with the same preprocessing and TTA views as its verdict (see :mod:`inspectline.explain`).
    """
    checkpoint = ModelRegistry(registry_root).resolve(model_ref)
    predictor = Predictor.load(checkpoint, tta_views=None if tta else ("identity",))
    explainer = Explainer.from_predictor(predictor) if heatmap_dir is not None else None
    results: dict[int, Prediction | InspectError] = {}
    heatmaps: dict[int, Path] = {}
    names = _heatmap_names(paths)
    decoded: list[tuple[int, np.ndarray]] = []
    for i, path in enumerate(paths):
        try:
            decoded.append((i, read_image(path)))
        except InspectError as exc:
            results[i] = exc
    for start in range(0, len(decoded), batch_size):
        chunk = decoded[start : start + batch_size]
        images = [image for _, image in chunk]
        for (i, _), prediction in zip(chunk, predictor.predict(images), strict=True):
            results[i] = prediction
        if explainer is not None:
            for (i, image), heatmap in zip(chunk, explainer.explain(images), strict=True):
                heatmaps[i] = Path(heatmap_dir) / names[i]
                atomic_write(heatmaps[i], overlay_png(image, heatmap), sync=False)
    return [PredictedFile(path, results[i], heatmaps.get(i)) for i, path in enumerate(paths)]


def _heatmap_names(paths: Sequence[Path]) -> list[str]:
    """``<stem>.heatmap.png`` per input; a stem seen before gets ``-2``, ``-3`` ... so none overwrites another."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.heatmap.png" if seen[stem] == 1 else f"{stem}-{seen[stem]}.heatmap.png")
    return names
