"""Inference without Ray: model card -> preprocessing -> one engine call over frames and flips -> verdicts.

The service's inspector replicas, ``inspect predict``, evaluation, calibration and export parity all
go through this class, so a frame is judged the same way everywhere, whatever engine runs the
network (PyTorch on the checkpoint, or an exported OpenVINO / ONNX Runtime model; see
:mod:`inspectline.engines`). Preprocessing, TTA views, temperature and threshold come from the
version's model card and are applied here, never inside an engine.

TTA: a batch of B frames becomes one engine call on V*B images (the frames and their flips). Logits
are averaged over views, divided by the calibration temperature and passed through a softmax; the
defect probability is compared with the operating threshold.

    predictor = Predictor.load(Path("models/v0001/model.pt"))                  # torch fp32
    predictor = Predictor.from_version(registry.get("v0001"), EnginePreference())  # fastest passed export
    [pred] = predictor.predict([decode_image(png_bytes)])
    pred.verdict, pred.defect_probability
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from inspectline.data.presets import build_eval_preset
from inspectline.engines.base import InferenceEngine
from inspectline.engines.torch_engine import TorchEngine
from inspectline.errors import EngineError
from inspectline.imaging import to_model_image
from inspectline.model import DefectClassifier, ModelCard, load_checkpoint

if TYPE_CHECKING:
    from inspectline.engines.choice import EngineChoice, EnginePreference
    from inspectline.registry import ModelVersion

OK, DEFECTIVE, UNSURE = "OK", "DEFECTIVE", "UNSURE"

TTA_VIEWS = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot180": lambda x: x.flip(-2, -1),
}


@dataclass(frozen=True)
class Prediction:
    """One frame's verdict.

    ``confidence`` is the calibrated probability that the OK/DEFECTIVE decision is right:
    ``p`` when ``p >= threshold`` and ``1 - p`` otherwise. ``verdict`` is UNSURE when the probability
    lies within ``unsure_band`` of the threshold.
    """

    verdict: str
    defect_probability: float
    confidence: float
    threshold: float
    view_probabilities: dict[str, float]
    model_version: str | None
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class BatchOutput:
    """Raw results of one TTA forward: what calibration and monitoring need besides verdicts."""

    view_logits: torch.Tensor  # (V, B, K), before temperature
    embeddings: torch.Tensor  # (B, D) penultimate activations of the identity view


class Predictor:
    """Judges decoded frames with one model version, through one inference engine.

    ``model`` is the checkpoint's module (run by a :class:`TorchEngine` built here with ``device``,
    ``channels_last``, ``precision`` and ``threads``) or any :class:`InferenceEngine`, e.g. an
    exported model.
    """

    def __init__(
        self,
        model: DefectClassifier | InferenceEngine,
        card: ModelCard,
        *,
        device: str | torch.device = "cpu",
        tta_views: Sequence[str] | None = None,
        threshold: float | None = None,
        unsure_band: float = 0.0,
        channels_last: bool = True,
        precision: str = "fp32",
        threads: int | None = None,
    ):
        views = tuple(tta_views) if tta_views is not None else card.tta_views
        unknown = [v for v in views if v not in TTA_VIEWS]
        if not views or unknown:
            msg = f"TTA views {list(views)} are not a non-empty subset of {list(TTA_VIEWS)}"
            raise ValueError(msg)
        if not 0 <= unsure_band < 0.5:
            msg = f"unsure_band {unsure_band} must be in [0, 0.5)"
            raise ValueError(msg)
        self.card = card
        self.tta_views = views
        self.threshold = card.threshold if threshold is None else float(threshold)
        self.unsure_band = unsure_band
        self.engine = (
            model
            if isinstance(model, InferenceEngine)
            else TorchEngine(model, precision=precision, device=device, channels_last=channels_last, threads=threads)
        )
        self.engine_choice: EngineChoice | None = None  # set by from_version: which engine, and why
        self._transform = build_eval_preset(card.preprocessing)

    @classmethod
    def load(cls, path: Path, **kwargs) -> Predictor:
        """Load a checkpoint file into the torch engine (see :mod:`inspectline.registry` to resolve versions)."""
        model, card = load_checkpoint(path, device=kwargs.get("device", "cpu"))
        return cls(model, card, **kwargs)

    @classmethod
    def from_version(
        cls,
        version: ModelVersion,
        preference: EnginePreference | None = None,
        *,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        **kwargs,
    ) -> Predictor:
        """A predictor for a registered version through the engine :func:`~inspectline.engines.choose_engine`
        picks for ``preference`` (default: the fastest export that passed parity, else torch)."""
        from inspectline.engines.choice import choose_engine, open_engine

        choice = choose_engine(version, preference, device=device)
        engine = open_engine(version, choice, device=device, threads=threads)
        predictor = cls(engine, version.card, **kwargs)
        predictor.engine_choice = choice
        return predictor

    @property
    def version(self) -> str | None:
        return self.card.version

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def model(self) -> DefectClassifier:
        """The PyTorch module, for callers that train or inspect it (torch engine only)."""
        if not isinstance(self.engine, TorchEngine):
            msg = f"this predictor runs the {self.engine.name} engine, which has no PyTorch module"
            raise EngineError(msg)
        return self.engine.model

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """A decoded frame of any supported layout -> normalised ``(C, H, W)`` float tensor."""
        return self._transform(image=to_model_image(image, self.card.preprocessing.color_mode))["image"]

    def forward(self, batch: torch.Tensor) -> BatchOutput:
        """One engine call over all views: ``(B, C, H, W)`` -> logits ``(V, B, K)`` and embeddings ``(B, D)``."""
        b = batch.shape[0]
        out = self.engine.run(self.view_batch(batch))  # logits (V*B, K), embeddings (V*B, D)
        return BatchOutput(
            view_logits=torch.from_numpy(out.logits).reshape(len(self.tta_views), b, -1),
            embeddings=torch.from_numpy(out.embeddings[:b]),
        )

    def view_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """The frames in every TTA view, view-major: ``(B, C, H, W)`` -> ``(V*B, C, H, W)``."""
        return torch.cat([TTA_VIEWS[v](batch) for v in self.tta_views])

    def calibrated_probabilities(self, view_logits: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Defect probability per frame ``(B,)`` and per view ``(V, B)``, temperature applied."""
        t = self.card.temperature
        k = self.card.defect_index
        mean = torch.softmax(view_logits.mean(dim=0) / t, dim=-1)[:, k]
        per_view = torch.softmax(view_logits / t, dim=-1)[..., k]
        return mean.numpy(), per_view.numpy()

    def verdict(self, probability: float) -> str:
        if self.unsure_band and abs(probability - self.threshold) < self.unsure_band:
            return UNSURE
        return DEFECTIVE if probability >= self.threshold else OK

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Judge decoded frames in one batched TTA forward."""
        if not images:
            return []
        batch = torch.stack([self.preprocess(image) for image in images])
        return self.predict_tensor(batch)

    def predict_tensor(self, batch: torch.Tensor) -> list[Prediction]:
        """Judge an already preprocessed batch ``(B, C, H, W)``."""
        out = self.forward(batch)
        probs, per_view = self.calibrated_probabilities(out.view_logits)
        embeddings = out.embeddings.numpy()
        predictions = []
        for i, p in enumerate(probs.tolist()):
            predictions.append(
                Prediction(
                    verdict=self.verdict(p),
                    defect_probability=p,
                    confidence=p if p >= self.threshold else 1.0 - p,
                    threshold=self.threshold,
                    view_probabilities={v: float(per_view[j, i]) for j, v in enumerate(self.tta_views)},
                    model_version=self.version,
                    embedding=embeddings[i],
                )
            )
        return predictions
