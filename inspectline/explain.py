"""Heatmaps that show why the classifier judged a frame: class activation maps (Grad-CAM and relatives).

A heatmap is computed exactly as the verdict was: the frame goes through the model's own preprocessing
(:meth:`Predictor.preprocess`) and through every TTA view the verdict averaged over; each view's map is
flipped back onto the frame and the maps are averaged, then resized to the frame's resolution. The
CAM target is the defect log-odds (the defect logit against the others), so red means "evidence
for DEFECTIVE" whatever the verdict was. Maps are relative, per frame: the hottest region is 1.

The CAM methods come from the ``grad-cam`` package (``pytorch_grad_cam``). The default, HiResCAM on the
backbone's third stage, was chosen by measurement on frames with known cracks, where the last stage
(layer4) is too coarse to follow a crack (see ``DEFAULT_METHOD`` and ``benchmarks/heatmap_methods.py``;
``benchmarks/heatmap_cost.py`` measures the cost).

    explainer = Explainer.from_predictor(predictor)    # or Explainer.load(checkpoint)
    [heatmap] = explainer.explain([frame])             # float32 (H, W) in [0, 1], the frame's resolution
    overlay_png(frame, heatmap)                        # colormap over the frame, PNG bytes
    raw_png(heatmap)                                   # the map as a 16-bit gray PNG

:func:`write_gallery` renders the worst false negatives and false positives of an evaluation with their
heatmaps for the evaluation report.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from torch import nn

from inspectline.data.sources import Sample
from inspectline.errors import ConfigError
from inspectline.imaging import encode_png, read_image, to_model_image
from inspectline.model import DefectClassifier, load_checkpoint
from inspectline.predictor import TTA_VIEWS, Predictor  # one table of views; each is its own inverse

if TYPE_CHECKING:  # training imports this module for the report's gallery
    from inspectline.training.evaluation import Evaluation

METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
}
STAGES = ("layer1", "layer2", "layer3", "layer4")
KINDS = ("overlay", "raw")
# Measured on frames with known cracks (benchmarks/heatmap_methods.py, ResNet18 @ 128): every method on
# layer4 (a 4x4 map at 128 px, 7x7 at 224) puts about 2x a flat map's share of its mass on the crack;
# on layer3 (8x8 / 14x14) HiResCAM puts 4.1x, the best of the five, and its peak is on the crack in 65 %
# of frames against 50 % for layer4. layer4 stays one argument away: stages=("layer4",).
DEFAULT_METHOD = "hirescam"
DEFAULT_STAGES = ("layer3",)


def check_recipe(method: str, stages: Sequence[str]) -> None:
    """ConfigError unless ``method`` is a known CAM method and ``stages`` a non-empty list of backbone stages."""
    if method not in METHODS:
        msg = f"heatmap method {method!r} is not one of {', '.join(METHODS)}"
        raise ConfigError(msg)
    unknown = [s for s in stages if s not in STAGES]
    if isinstance(stages, str) or not stages or unknown:
        msg = f"heatmap stages {stages!r} are not a non-empty list of {', '.join(STAGES)}"
        raise ConfigError(msg)


class _DefectLogOdds:
    """Grad-CAM target: the defect logit minus the log-sum-exp of the others (for two classes, their
    difference), which is what the calibrated defect probability is a monotone function of."""

    def __init__(self, defect_index: int) -> None:
        self.k = defect_index

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:  # (K,) logits of one image
        others = torch.cat([logits[: self.k], logits[self.k + 1 :]])
        return logits[self.k] - torch.logsumexp(others, dim=0)


class Explainer:
    """Grad-CAM heatmaps for one model version, with the preprocessing and TTA views of its predictor.

    The explainer works on its own copy of the torch model (hooks and gradients never touch the
    predictor that serves verdicts) and serialises its calls: it is safe to share between threads.
    """

    def __init__(
        self,
        predictor: Predictor,
        model: nn.Module | None = None,
        *,
        method: str = DEFAULT_METHOD,
        stages: Sequence[str] = DEFAULT_STAGES,
        batch_size: int = 8,
    ) -> None:
        check_recipe(method, stages)
        source = model if model is not None else getattr(predictor, "model", None)
        if not isinstance(source, DefectClassifier):
            msg = (
                f"Grad-CAM needs the torch model; the predictor holds {type(source).__name__}: "
                "pass model= or use Explainer.load(checkpoint)"
            )
            raise ConfigError(msg)
        self.predictor = predictor
        self.method = method
        self.stages = tuple(stages)
        self.batch_size = batch_size
        self.model = copy.deepcopy(source).float().to(memory_format=torch.contiguous_format).eval()
        # Only the target stages need gradients: backward then stops there instead of running to conv1.
        self.model.requires_grad_(False)
        layers = [getattr(self.model.backbone, s) for s in self.stages]
        for layer in layers:
            layer.requires_grad_(True)
        self._cam = METHODS[method](model=self.model, target_layers=layers)
        self._target = _DefectLogOdds(predictor.card.defect_index)
        self._lock = threading.Lock()

    @classmethod
    def from_predictor(cls, predictor: Predictor, **kwargs) -> Explainer:
        """An explainer for the model a predictor serves (its torch model, copied)."""
        return cls(predictor, **kwargs)

    @classmethod
    def load(cls, checkpoint: Path, *, tta_views: Sequence[str] | None = None, **kwargs) -> Explainer:
        """An explainer straight from a checkpoint, with the card's TTA views unless ``tta_views`` is given."""
        model, card = load_checkpoint(Path(checkpoint))
        return cls(Predictor(model, card, tta_views=tta_views, channels_last=False), model, **kwargs)

    @property
    def version(self) -> str | None:
        return self.predictor.version

    def explain(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One heatmap per decoded frame: float32 ``(H, W)`` in [0, 1] at that frame's resolution."""
        out: list[np.ndarray] = []
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            maps = self._explain_batch(torch.stack([self.predictor.preprocess(f) for f in chunk]))
            out += [_to_frame_size(m, f.shape[:2]) for m, f in zip(maps, chunk, strict=True)]
        return out

    def _explain_batch(self, batch: torch.Tensor) -> np.ndarray:
        """``(B, C, S, S)`` preprocessed frames -> ``(B, S, S)`` maps averaged over the TTA views."""
        views = self.predictor.tta_views
        b = batch.shape[0]
        stacked = torch.cat([TTA_VIEWS[v](batch) for v in views])  # (V*B, C, S, S), the verdict's layout
        with self._lock, torch.enable_grad():
            cams = self._cam(input_tensor=stacked, targets=[self._target] * len(stacked))  # (V*B, S, S)
        cams = torch.from_numpy(np.ascontiguousarray(cams)).reshape(len(views), b, *cams.shape[-2:])
        # Flip each view's map back onto the frame (every view is its own inverse), then average.
        unflipped = torch.stack([TTA_VIEWS[v](cams[i]) for i, v in enumerate(views)])  # (V, B, S, S)
        return unflipped.mean(dim=0).numpy()


def _to_frame_size(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a model-resolution map to the frame's ``(H, W)`` and rescale it so its peak is 1."""
    h, w = shape
    resized = cv2.resize(heatmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    resized = np.clip(resized, 0.0, None)
    peak = float(resized.max())
    return (resized / peak if peak > 0 else resized).astype(np.float32)


def render_overlay(frame: np.ndarray, heatmap: np.ndarray, *, opacity: float = 0.45) -> np.ndarray:
    """The heatmap as a JET colormap over the frame: uint8 RGB ``(H, W, 3)``; ``opacity`` of the colours."""
    _check_pair(frame, heatmap)
    if not 0.0 <= opacity <= 1.0:
        msg = f"overlay opacity {opacity} must be in [0, 1]"
        raise ConfigError(msg)
    base = to_model_image(frame, "rgb").astype(np.float32) / 255.0
    return show_cam_on_image(base, np.clip(heatmap, 0.0, 1.0), use_rgb=True, image_weight=1.0 - opacity)


def overlay_png(frame: np.ndarray, heatmap: np.ndarray, *, opacity: float = 0.45) -> bytes:
    """:func:`render_overlay` as PNG bytes."""
    return encode_png(render_overlay(frame, heatmap, opacity=opacity))


def raw_png(heatmap: np.ndarray) -> bytes:
    """The map itself as a 16-bit gray PNG: 0 is no evidence, 65535 the frame's strongest."""
    if heatmap.ndim != 2:
        msg = f"a heatmap is a 2-D (H, W) array; got shape {heatmap.shape}"
        raise ConfigError(msg)
    return encode_png(np.round(np.clip(heatmap, 0.0, 1.0) * 65535).astype(np.uint16))


def render(kind: str, frame: np.ndarray, heatmap: np.ndarray) -> bytes:
    """PNG bytes of one kind: ``overlay`` (colormap over the frame) or ``raw`` (16-bit map)."""
    if kind == "overlay":
        return overlay_png(frame, heatmap)
    if kind == "raw":
        return raw_png(heatmap)
    msg = f"heatmap kind {kind!r} is not one of {', '.join(KINDS)}"
    raise ConfigError(msg)


def _check_pair(frame: np.ndarray, heatmap: np.ndarray) -> None:
    if heatmap.shape != frame.shape[:2]:
        msg = f"heatmap shape {heatmap.shape} does not match the frame's {frame.shape[:2]}"
        raise ConfigError(msg)


# --- the evaluation report's gallery ---------------------------------------------------------------
def worst_mistakes(evaluation: Evaluation, per_kind: int) -> dict[str, list[int]]:
    """Indices of the most confident false negatives (lowest p among defective frames judged OK) and
    false positives (highest p among OK frames judged DEFECTIVE), at the evaluation's threshold."""
    p, labels, t = evaluation.probabilities, evaluation.labels, evaluation.metrics["threshold"]
    fn = np.flatnonzero((labels == 1) & (p < t))
    fp = np.flatnonzero((labels == 0) & (p >= t))
    return {
        "false_negatives": fn[np.argsort(p[fn], kind="stable")][:per_kind].tolist(),
        "false_positives": fp[np.argsort(-p[fp], kind="stable")][:per_kind].tolist(),
    }


def write_gallery(
    predictor: Predictor,
    samples: Sequence[Sample],
    evaluation: Evaluation,
    out_dir: Path,
    *,
    images: Sequence[np.ndarray] | None = None,
    per_kind: int = 6,
    explainer: Explainer | None = None,
) -> str:
    """Write frame | heatmap images of the worst mistakes under ``out_dir/gallery`` and return the
    Markdown section that shows them (paths relative to ``out_dir``, where the report lives)."""
    if [s.key for s in samples] != list(evaluation.keys):
        msg = "the gallery's samples are not the evaluated ones (keys differ or are in another order)"
        raise ConfigError(msg)
    picked = worst_mistakes(evaluation, per_kind)
    wanted = sorted({i for ids in picked.values() for i in ids})
    frames = {i: images[i] if images is not None else read_image(samples[i].path) for i in wanted}
    explainer = explainer or Explainer.from_predictor(predictor)
    heatmaps = dict(zip(wanted, explainer.explain([frames[i] for i in wanted]), strict=True))
    folder = Path(out_dir) / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    stages = "+".join(explainer.stages)
    lines = [
        "",
        "## Worst mistakes, with heatmaps",
        "",
        f"The most confident errors on this split at threshold {evaluation.metrics['threshold']:.3f}: the cases to "
        f"look at before trusting the model. Each image is the frame and its heatmap ({explainer.method} on "
        f"{stages}, averaged over the TTA views {', '.join(predictor.tta_views)}); red is evidence for DEFECTIVE.",
    ]
    titles = {
        "false_negatives": "False negatives (defective, judged OK)",
        "false_positives": "False positives (OK, judged DEFECTIVE)",
    }
    for kind, ids in picked.items():
        lines += ["", f"### {titles[kind]}", ""]
        if not ids:
            lines.append("None on this split.")
            continue
        lines += ["| # | frame | p(defect) | frame · heatmap |", "|---|---|---|---|"]
        for rank, i in enumerate(ids, start=1):
            name = f"{kind.replace('_', '-')}-{rank:02d}.png"
            side_by_side = np.hstack([to_model_image(frames[i], "rgb"), render_overlay(frames[i], heatmaps[i])])
            (folder / name).write_bytes(encode_png(side_by_side))
            key = samples[i].key.replace("|", "\\|")
            lines.append(f"| {rank} | `{key}` | {evaluation.probabilities[i]:.4f} | ![{key}](gallery/{name}) |")
    return "\n".join(lines) + "\n"
