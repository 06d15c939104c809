"""Inspector replicas: decode, preprocess and judge frames where the CPUs are, with dynamic batching.

The gateway sends the *encoded* bytes (an :class:`InspectJob`), never a decoded array: a 5 MP colour
frame is 15 MB decoded and a few MB encoded. Here each job is decoded and preprocessed in a worker thread
of its own (:meth:`Inspector.judge`), so one huge frame does not hold up the small ones around it; only
the model forward is batched (:meth:`Inspector._forward`, a ``@serve.batch`` method): concurrent frames
become one TTA forward over frames and their flips. A frame that fails to decode or preprocess gets its
own :class:`JudgeFailure`; its neighbours are unaffected.

Each job names the model that must judge it (a version and the operating point in force: the gateway
decides, so a promotion switches every replica at the same request boundary). A replica keeps the
versions it was asked for in memory, up to ``max_loaded_versions``; a version not yet in memory is
loaded and warmed in a worker thread while batches of other versions keep flowing. ``prepare`` is what
the gateway broadcasts to every replica before it switches.

Which engine runs a version follows one rule (:func:`inspectline.engines.choose_engine`): by default the
fastest export of that version that passed parity (``inspect export``), else the checkpoint in torch fp32;
``engine`` / ``precision`` in ``user_config`` ask for one. Each replica runs ``threads`` inference threads,
by default its ``num_cpus``. ``/v1/model`` says which engine runs and why.

16-bit frames are scaled by the camera's configured bit depth, else the PNG's sBIT, else the bit depth
the model was trained on (``imaging.decode_for_model``).

All of this is :class:`FrameJudge`; the :class:`Inspector` deployment adds only what a replica of its own
needs (its ``user_config`` and asking the running gateway what to warm at start). Where the application
is built with ``judge: gateway`` each Gateway replica holds a ``FrameJudge`` instead and there are no
Inspector replicas.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve

from inspectline.card import ModelCard
from inspectline.config import InspectorOptions
from inspectline.engines import EngineChoice, EnginePreference, InferenceEngine, choose_engine, open_engine
from inspectline.errors import (
    ImageTooLargeError,
    InspectError,
    InvalidImageError,
    ModelNotFoundError,
    UnsupportedImageError,
)
from inspectline.hardware import resolve_device
from inspectline.imaging import DEFAULT_MAX_PIXELS, decode_for_model
from inspectline.monitoring.drift import image_statistics
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry
from inspectline.serving.records import InspectJob, JudgeFailure, Judgement, ServedModel

log = logging.getLogger("ray.serve")

GATEWAY_ANSWER_S = 10.0  # a running gateway answers at once; past this the replica starts on the registry's versions


@dataclass(frozen=True)
class Prepared:
    """A decoded, preprocessed frame waiting for its batch."""

    model: ServedModel
    tensor: torch.Tensor  # (C, H, W), normalised
    stats: tuple[float, ...]


def prepare_frame(predictor: Predictor, job: InspectJob, camera_bit_depth: dict[str, int]) -> Prepared | JudgeFailure:
    """Decode (16-bit frames by their significant bits), preprocess and measure one frame; failures are values."""
    pre = predictor.card.preprocessing
    try:
        frame, _ = decode_for_model(
            job.image,
            pre.color_mode,
            bit_depth=camera_bit_depth.get(job.camera_id),
            default_bit_depth=pre.bit_depth,
            max_pixels=DEFAULT_MAX_PIXELS * 4,  # the gateway enforces max_pixels from the header
            name=job.name,
        )
        tensor = predictor.preprocess(frame)
        stats = tuple(float(v) for v in image_statistics(frame))
    except UnsupportedImageError as exc:
        return JudgeFailure("unsupported_image", str(exc))
    except ImageTooLargeError as exc:
        return JudgeFailure("image_too_large", str(exc))
    except InvalidImageError as exc:
        return JudgeFailure("undecodable_image", str(exc))
    except (ValueError, RuntimeError, MemoryError) as exc:
        return JudgeFailure("unprocessable", f"{job.name} could not be preprocessed for the model: {exc}")
    return Prepared(model=job.model, tensor=tensor, stats=stats)


def judge_prepared(predictor: Predictor, items: list[Prepared]) -> list[Judgement | JudgeFailure]:
    """One TTA forward over frames of one model: ``(B, C, H, W)`` plus flips -> a judgement per frame.

    Its CPU time is counted on the clock that sees the engine's work: this thread's for a single-thread
    engine (the replicas' default: it computes on the calling thread), the process's for an engine with
    more threads (its workers are other threads; whatever else the replica does meanwhile counts too)."""
    clock = time.thread_time if predictor.engine.threads == 1 else time.process_time
    started, cpu_started = time.perf_counter(), clock()
    try:
        predictions = predictor.predict_tensor(torch.stack([item.tensor for item in items]))
    except RuntimeError as exc:  # the batch as a whole failed: say so to each of its frames
        return [JudgeFailure("unprocessable", f"the model could not process this frame: {exc}") for _ in items]
    seconds, cpu_seconds = time.perf_counter() - started, clock() - cpu_started
    return [
        Judgement(
            verdict=p.verdict,
            defect_probability=p.defect_probability,
            confidence=p.confidence,
            threshold=p.threshold,
            model_version=p.model_version or item.model.version,
            views=p.view_probabilities,
            engine=f"{predictor.engine.name} {predictor.engine.precision}",
            embedding=tuple(float(v) for v in np.asarray(p.embedding)),
            image_stats=item.stats,
            inference_s=seconds,
            inference_cpu_s=cpu_seconds,
            batch_size=len(items),
            first_in_batch=n == 0,
        )
        for n, (item, p) in enumerate(zip(items, predictions, strict=True))
    ]


class FrameJudge:
    """Decodes, preprocesses and judges frames with the model versions they ask for: the work of an Inspector
    replica, and of a Gateway replica that judges its own frames (app args ``judge: gateway``).

    Ray-free apart from its ``@serve.batch`` forward, which needs the Serve replica it runs in.
    """

    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self.options = InspectorOptions()
        self._models: OrderedDict[str, tuple[InferenceEngine, EngineChoice, ModelCard]] = OrderedDict()
        self._predictors: dict[ServedModel, Predictor] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._configured = asyncio.Event()

    async def configure(
        self, options: InspectorOptions, first_models: Callable[[], Awaitable[list[ServedModel]]] | None = None
    ) -> None:
        """Apply ``options`` in place: verdict rules, TTA and batching; models stay loaded unless the engine,
        precision, threads or device changed (then the versions loaded reload here, warm).

        The first call also loads and warms ``first_models()``, if given. Until it returns, frames and
        ``prepare`` wait: nothing is loaded with settings about to change.
        """
        warm = list(self._predictors)
        if _engine_settings(options) != _engine_settings(self.options):
            self._models.clear()
        self.options = options
        self._forward.set_max_batch_size(self.options.max_batch_size)
        self._forward.set_batch_wait_timeout_s(self.options.batch_wait_timeout_s)
        self._predictors.clear()  # rebuilt with the new rules
        if not self._configured.is_set():
            warm = await first_models() if first_models is not None else []
        await self._warm(warm)
        self._configured.set()

    def models_in_registry(self) -> list[ServedModel]:
        """The production and shadow versions with their operating points in force (none is not an error)."""
        try:
            names = [self.registry.production(), self.registry.shadow()]
            return [ServedModel.in_force(self.registry, name) for name in dict.fromkeys(names) if name is not None]
        except Exception as exc:  # noqa: BLE001 - a replica starts whatever the registry holds
            log.warning("no model loaded at start: %s", exc)
            return []

    async def _warm(self, models: list[ServedModel]) -> None:
        """Load and warm ``models``; a failure is logged, and the frames that ask for that model get it."""
        for model in models:
            try:
                await self._predictor(model)
            except Exception as exc:  # noqa: BLE001 - judged frames report it (model_unavailable)
                log.warning("could not load model %s: %s", model, exc)

    async def prepare(self, model: ServedModel) -> dict:
        """Load and warm ``model`` (if needed); returns its description. Asked of every replica before a switch."""
        await self._configured.wait()
        return self.describe_predictor(await self._predictor(model), model)

    async def describe(self, model: ServedModel) -> dict:
        await self._configured.wait()
        return self.describe_predictor(await self._predictor(model), model)

    def loaded_versions(self) -> list[str]:
        return list(self._models)

    async def judge(self, job: InspectJob) -> Judgement | JudgeFailure:
        """Decode, preprocess and judge one encoded frame."""
        await self._configured.wait()
        try:
            predictor = await self._predictor(job.model)
        except InspectError as exc:
            return JudgeFailure("model_unavailable", str(exc))
        prepared = await asyncio.to_thread(prepare_frame, predictor, job, self.options.camera_bit_depth)
        if isinstance(prepared, JudgeFailure):
            return prepared
        return await self._forward(prepared)

    async def judge_many(self, jobs: list[InspectJob]) -> list[Judgement | JudgeFailure]:
        """Judge the frames the gateway sent in one call, each as :meth:`judge` would, answers in order."""
        return list(await asyncio.gather(*(self.judge(job) for job in jobs)))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _forward(self, items: list[Prepared]) -> list[Judgement | JudgeFailure]:
        """One TTA forward per model in the batch: ``(B, C, H, W)`` plus flips -> verdicts."""
        results: list[Judgement | JudgeFailure | None] = [None] * len(items)
        for model in dict.fromkeys(item.model for item in items):
            index = [i for i, item in enumerate(items) if item.model == model]
            predictor = self._predictors.get(model) or await self._predictor(model)
            outcomes = await asyncio.to_thread(judge_prepared, predictor, [items[i] for i in index])
            for i, outcome in zip(index, outcomes, strict=True):
                results[i] = outcome
        return results  # type: ignore[return-value]

    # --- model versions ------------------------------------------------------------------------
    async def _predictor(self, model: ServedModel) -> Predictor:
        if model in self._predictors:
            self._models.move_to_end(model.version)
            return self._predictors[model]
        lock = self._locks.setdefault(model.version, asyncio.Lock())
        async with lock:  # one load per version, however many batches ask for it at once
            if model.version not in self._models:
                loaded = await asyncio.to_thread(self._load, model.version)
                self._models[model.version] = loaded
                while len(self._models) > self.options.max_loaded_versions:
                    evicted, _ = self._models.popitem(last=False)
                    self._predictors = {m: p for m, p in self._predictors.items() if m.version != evicted}
                    log.info("unloaded model %s", evicted)
            if model not in self._predictors:
                predictor = await asyncio.to_thread(self._build_predictor, model, *self._models[model.version])
                await asyncio.to_thread(_warm_up, predictor)
                self._predictors[model] = predictor
                log.info("ready: model %s, threshold %.4f", model, predictor.threshold)
        return self._predictors[model]

    def _load(self, version: str) -> tuple[InferenceEngine, EngineChoice, ModelCard]:
        """Open ``version`` in the engine the rule picks for this replica's preference."""
        o = self.options
        registered = self.registry.get(version)
        device = resolve_device(o.device)
        preference = EnginePreference(engine=o.engine, precision=o.precision, torch_autocast=o.torch_autocast)
        choice = choose_engine(registered, preference, device=device)
        engine = open_engine(registered, choice, device=device, threads=o.threads or _replica_cpus())
        log.info("model %s runs on %s %s: %s", version, choice.engine, choice.precision, choice.reason)
        return engine, choice, registered.card

    def _build_predictor(
        self, model: ServedModel, engine: InferenceEngine, choice: EngineChoice, card: ModelCard
    ) -> Predictor:
        """The operating point: user_config's threshold override, else the version's in force, else its card's."""
        o = self.options
        point = None
        if model.operating_point_at is not None:  # exactly the one the gateway rolls out, not a newer one
            points = self.registry.get(model.version).manifest.operating_points
            point = next((p for p in reversed(points) if p.at == model.operating_point_at), None)
            if point is None:
                msg = f"model {model.version} has no operating point set at {model.operating_point_at}"
                raise ModelNotFoundError(msg)
        predictor = Predictor(
            engine,
            card,
            tta_views=None if o.tta else ("identity",),
            threshold=o.threshold if o.threshold is not None else (point.threshold if point else None),
            unsure_band=point.unsure_band if point is not None and point.unsure_band is not None else o.unsure_band,
        )
        predictor.engine_choice = choice
        return predictor

    def describe_predictor(self, predictor: Predictor, model: ServedModel) -> dict:
        card = predictor.card
        point = self.registry.operating_point(card.version) if model.operating_point_at else None
        return {
            "version": card.version,
            "arch": card.arch,
            "width": card.width,
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
            "operating_point": point.model_dump(mode="json") if point is not None else None,
            "engine": predictor.engine_choice.describe() if predictor.engine_choice else None,
        }


@serve.deployment(name="Inspector", max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
class Inspector(FrameJudge):
    """A replica of its own for judging frames, behind the gateway (app args ``judge: inspector``, the default)."""

    def __init__(self, registry: str, gateway: str | None = None):
        super().__init__(ModelRegistry(Path(registry)))
        self.gateway = gateway  # the deployment whose frames this one judges: asked what to warm at start

    async def reconfigure(self, user_config: dict[str, Any] | None, rank: Any = None) -> None:  # noqa: ARG002
        """Apply a new ``user_config`` in place (:meth:`FrameJudge.configure`).

        Serve makes the first call before the replica takes any frame, with or without a ``user_config``
        (it always calls a ``reconfigure`` that takes ``rank``). That call loads and warms the models the
        frames will ask for, so a replica that starts later than the others, a restarted one or an
        autoscaled one never answers its first frames after a model load: what the running gateway serves
        (a version it is pinned to, ``model: vNNNN``, included) and its shadow, or the registry's production
        and shadow versions when no gateway is running yet (the first deploy, when they all start together).
        """
        await self.configure(InspectorOptions.model_validate(user_config or {}), self._first_models)

    async def _first_models(self) -> list[ServedModel]:
        return await self._served_by_gateway() or await asyncio.to_thread(self.models_in_registry)

    async def _served_by_gateway(self) -> list[ServedModel]:
        """The models the running gateway serves, or none when it is not running (it is not waited for)."""
        if self.gateway is None:
            return []
        try:
            app = serve.get_replica_context().app_name
            status = await asyncio.to_thread(serve.status)
            gateway = status.applications[app].deployments.get(self.gateway)
            if gateway is None or gateway.status != "HEALTHY":
                return []
            handle = serve.get_deployment_handle(self.gateway, app_name=app)
            served = await asyncio.wait_for(handle.models_in_service.remote(), timeout=GATEWAY_ANSWER_S)
        except Exception as exc:  # noqa: BLE001 - the registry's versions are the fallback
            log.info("the gateway did not say what it serves (%s); warming the registry's versions", exc)
            return []
        log.info("the gateway serves %s", ", ".join(map(str, served)) or "nothing yet")
        return list(served)


def _engine_settings(options: InspectorOptions) -> tuple:
    return options.engine, options.precision, options.torch_autocast, options.threads, options.device


def _replica_cpus() -> int | None:
    """The replica's CPUs: Ray sets OMP_NUM_THREADS to an actor's ``num_cpus``."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def _warm_up(predictor: Predictor) -> None:
    """One forward at the model's input size, so the first real frame does not pay for lazy init."""
    size = predictor.card.preprocessing.image_size
    predictor.predict([np.zeros((size, size), dtype=np.uint8)])
