"""Inspector replicas: dynamic batching over the Predictor, several model versions side by side.

Each call names the model version that must judge the frame (the gateway decides, so a promotion
switches every replica at the same request boundary). A replica keeps the versions it was asked
for in memory, up to ``max_loaded_versions``: during a promotion the old version finishes the
requests in flight while the new one takes the next ones. A version not yet in memory is loaded
in a worker thread, so batches of other versions keep flowing meanwhile.

``judge`` is a ``@serve.batch`` method: concurrent calls are gathered into one list, grouped by
version, and each group is one TTA forward (frames and their flips). The forward runs in a thread
so the replica's event loop keeps accepting frames for the next batch while the current one runs.
A frame that fails preprocessing gets its own error; its neighbours in the batch are unaffected.
Each result also carries what monitoring needs: the frame's image statistics and embedding, and
whether it was the first of its batch (batch metrics are counted once per batch).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from inspectline.config import InspectorOptions
from inspectline.errors import InspectError
from inspectline.model import DefectClassifier, ModelCard, load_checkpoint
from inspectline.monitoring.drift import image_statistics
from inspectline.predictor import Prediction, Predictor
from inspectline.registry import ModelRegistry
from inspectline.training.loop import resolve_device

log = logging.getLogger("ray.serve")


@serve.deployment(name="Inspector", max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
class Inspector:
    def __init__(self, registry: str):
        self.registry = ModelRegistry(Path(registry))
        self.options = InspectorOptions()
        self._models: OrderedDict[str, tuple[DefectClassifier, ModelCard]] = OrderedDict()
        self._predictors: dict[str, Predictor] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """Apply a new ``user_config`` in place: verdict rules, TTA and batching; models stay loaded."""
        self.options = InspectorOptions.model_validate(user_config or {})
        self.judge.set_max_batch_size(self.options.max_batch_size)
        self.judge.set_batch_wait_timeout_s(self.options.batch_wait_timeout_s)
        self._predictors = {version: self._build_predictor(*loaded) for version, loaded in self._models.items()}

    async def prepare(self, version: str) -> dict:
        """Load and warm ``version`` (if needed); returns its description."""
        return self.describe_predictor(await self._predictor(version))

    async def describe(self, version: str) -> dict:
        return self.describe_predictor(await self._predictor(version))

    def loaded_versions(self) -> list[str]:
        return list(self._models)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def judge(self, frames: list[np.ndarray], versions: list[str]) -> list[dict]:
        """Verdicts for a batch of decoded frames; each result is a dict (or has an ``error`` key)."""
        results: list[dict] = [{} for _ in frames]
        for version in dict.fromkeys(versions):
            index = [i for i, v in enumerate(versions) if v == version]
            try:
                predictor = await self._predictor(version)
            except InspectError as exc:
                for i in index:
                    results[i] = {"error": "model_unavailable", "detail": str(exc)}
                continue
            started = time.perf_counter()
            outcomes = await asyncio.to_thread(_predict_isolating_failures, predictor, [frames[i] for i in index])
            inference_ms = (time.perf_counter() - started) * 1000
            group = [frames[i] for i in index]
            stats = await asyncio.to_thread(lambda group=group: [image_statistics(f).tolist() for f in group])
            for n, (i, outcome) in enumerate(zip(index, outcomes, strict=True)):
                results[i] = _result(outcome, inference_ms, len(index), first_in_batch=n == 0, stats=stats[n])
        return results

    # --- model versions ------------------------------------------------------------------------
    async def _predictor(self, version: str) -> Predictor:
        if version in self._predictors:
            self._models.move_to_end(version)
            return self._predictors[version]
        lock = self._locks.setdefault(version, asyncio.Lock())
        async with lock:  # one load per version, however many batches ask for it at once
            if version not in self._predictors:
                model, card = await asyncio.to_thread(self._load, version)
                self._models[version] = (model, card)
                self._predictors[version] = self._build_predictor(model, card)
                await asyncio.to_thread(_warm_up, self._predictors[version])
                while len(self._models) > self.options.max_loaded_versions:
                    evicted, _ = self._models.popitem(last=False)
                    self._predictors.pop(evicted, None)
                    log.info("unloaded model %s", evicted)
                log.info("loaded model %s (%s)", version, card.arch)
        return self._predictors[version]

    def _load(self, version: str) -> tuple[DefectClassifier, ModelCard]:
        device = resolve_device(self.options.device)
        return load_checkpoint(self.registry.resolve(version), device=device)

    def _build_predictor(self, model: DefectClassifier, card: ModelCard) -> Predictor:
        o = self.options
        return Predictor(
            model,
            card,
            device=next(model.parameters()).device,
            tta_views=None if o.tta else ("identity",),
            threshold=o.threshold,
            unsure_band=o.unsure_band,
        )

    @staticmethod
    def describe_predictor(predictor: Predictor) -> dict:
        card = predictor.card
        return {
            "version": card.version,
            "arch": card.arch,
            "classes": list(card.class_names),
            "threshold": predictor.threshold,
            "unsure_band": predictor.unsure_band,
            "temperature": card.temperature,
            "tta_views": list(predictor.tta_views),
            "image_size": card.preprocessing.image_size,
            "color_mode": card.preprocessing.color_mode,
            "created_at": card.created_at,
            "parent": card.parent,
            "metrics": card.metrics,
        }


def _predict_isolating_failures(predictor: Predictor, frames: list[np.ndarray]) -> list[Prediction | Exception]:
    try:
        return list(predictor.predict(frames))
    except Exception:  # noqa: BLE001 - find the frame that failed; judge the others
        outcomes: list[Prediction | Exception] = []
        for frame in frames:
            try:
                outcomes.append(predictor.predict([frame])[0])
            except Exception as exc:  # noqa: BLE001 - reported to that frame's caller only
                outcomes.append(exc)
        return outcomes


def _result(
    outcome: Prediction | Exception, inference_ms: float, batch_size: int, *, first_in_batch: bool, stats: list[float]
) -> dict:
    if isinstance(outcome, Exception):
        return {"error": "unprocessable_image", "detail": f"the model could not process this frame: {outcome}"}
    return {
        "first_in_batch": first_in_batch,
        "stats": stats,
        "embedding": outcome.embedding,
        "verdict": outcome.verdict,
        "defect_probability": outcome.defect_probability,
        "confidence": outcome.confidence,
        "threshold": outcome.threshold,
        "model_version": outcome.model_version,
        "views": outcome.view_probabilities,
        "inference_ms": inference_ms,
        "batch_size": batch_size,
    }


def _warm_up(predictor: Predictor) -> None:
    """One forward at the model's input size, so the first real frame does not pay for lazy init."""
    size = predictor.card.preprocessing.image_size
    predictor.predict([np.zeros((size, size), dtype=np.uint8)])
