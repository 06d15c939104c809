"""The heatmap worker: the review station's heatmaps, computed where the model is and off every request path.

    GET /v1/frames/{id}/heatmap -> gateway (auth, 404s) -> Heatmaps replica: HeatmapService.render(frame, kind)
                                                            cached beside the image? read it : explain, write both
    precompute (user_config)    -> the same replica, in the background: new DEFECTIVE/UNSURE frames, oldest first

A heatmap is a forward and a partial backward over the verdict's TTA views: on a CPU it costs about what
a few verdicts do, a second or more on a busy machine (``benchmarks/heatmap_cost.py``). So it runs in a
deployment of its own: the gateway's event loop only awaits it, ``POST /v1/frames`` never waits for it,
and the inspectors' batches never queue behind it. The replica reserves no CPU (heatmaps are asked for
by people, a few at a time) and uses ``threads`` torch threads; it loads each model version's explainer
from the registry on first use (``HeatmapCache``), so it needs no inspector replica's memory.

:class:`HeatmapService` is the Ray-free part (tested without Ray): one computation per frame at a time,
however many reviewers open it at once, and precompute passes that look back ``precompute_lookback_h``
after a start and then follow the newest frames. Failures cross the Ray boundary as values
(:class:`HeatmapFailure`); the gateway turns them back into the errors the HTTP table maps with
``records.heatmap_bytes``, so it imports nothing of this module. The worker itself loads torch and
grad-cam at the first heatmap asked for, not when it starts (most of the time no one is reviewing).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import serve

from inspectline.config import HeatmapOptions, StoreConfig
from inspectline.errors import ConfigError, InspectError, ModelNotFoundError, StoreError
from inspectline.registry import ModelRegistry
from inspectline.serving.records import HeatmapFailure
from inspectline.store import FrameStore, StoredFrame

if TYPE_CHECKING:
    from inspectline.heatmap_cache import HeatmapCache, PrecomputeReport

log = logging.getLogger("ray.serve")

# Frames reach the store a moment after they were received (the gateway's micro-batches, the recorder):
# a pass looks this far behind the previous one's start; a frame already cached costs two file checks.
_OVERLAP = timedelta(minutes=5)
_PASS_LIMIT = 64  # frames per verdict and pass; the next pass continues
_PASS_BATCH = 2  # frames explained at once: an on-demand request waits for at most this many


class HeatmapService:
    """On-demand heatmaps of stored frames with one computation per frame at a time, and precompute passes."""

    def __init__(self, cache: HeatmapCache, *, lookback: timedelta = timedelta(hours=24)):
        self.cache = cache
        self.lookback = lookback
        self._inflight: dict[int, asyncio.Future] = {}
        self._since: datetime | None = None

    async def render(self, frame: StoredFrame, kind: str) -> bytes | HeatmapFailure:
        """``kind`` (``overlay`` or ``raw``) of the frame's heatmap: cached, or computed now (both kinds at once)."""
        try:
            if not await asyncio.to_thread(self.cache.is_cached, frame):
                task = self._inflight.get(frame.id)
                if task is None:  # the first request computes; the others wait for the same result
                    task = self._inflight[frame.id] = asyncio.ensure_future(
                        asyncio.to_thread(self.cache.png, frame, "overlay")
                    )
                    task.add_done_callback(lambda _: self._inflight.pop(frame.id, None))
                await asyncio.shield(task)
            return await asyncio.to_thread(self.cache.png, frame, kind)
        except ModelNotFoundError as exc:
            return HeatmapFailure("model_not_found", f"frame {frame.id} was judged by a model no longer served: {exc}")
        except StoreError as exc:
            kind_ = "image_not_kept" if frame.image_sha256 is None else "store_unavailable"
            return HeatmapFailure(kind_, str(exc))
        except (InspectError, ValueError, RuntimeError) as exc:
            return HeatmapFailure("unprocessable", f"frame {frame.id} could not be explained: {exc}")

    def precompute_pass(self, now: datetime | None = None) -> PrecomputeReport:
        """Heatmaps for the DEFECTIVE/UNSURE frames received since the last pass (or ``lookback`` after a start)."""
        from inspectline.heatmap_cache import PRECOMPUTE_VERDICTS, pending_frames

        now = now or datetime.now(timezone.utc)
        since = self._since or now - self.lookback
        # Read the frames first: the read transaction must not stay open while they are explained.
        frames = list(pending_frames(self.cache.store, since=since, limit=_PASS_LIMIT))
        report = self.cache.precompute(frames, batch_size=_PASS_BATCH)
        # A verdict whose page was full has more frames after it: the next pass starts at the last one read.
        # Otherwise it starts a little before this pass did, for frames that reached the store late.
        pages = [[f for f in frames if f.verdict == verdict] for verdict in PRECOMPUTE_VERDICTS]
        full = [page[-1].received_at for page in pages if len(page) >= _PASS_LIMIT]
        self._since = min(full) if full else now - _OVERLAP
        return report


def build_service(registry: ModelRegistry, store: FrameStore, options: HeatmapOptions) -> HeatmapService:
    """The service a worker runs with ``options`` (method, stages, models kept, look-back)."""
    # torch, grad-cam and matplotlib load here, at the first heatmap asked for (or the first precompute pass),
    # not when the replica starts: most of the time no one is reviewing, and they hold ~500 MiB for good.
    from inspectline.explain import DEFAULT_METHOD, DEFAULT_STAGES
    from inspectline.heatmap_cache import HeatmapCache

    cache = HeatmapCache.from_registry(
        store,
        registry,
        method=options.method or DEFAULT_METHOD,
        stages=options.stages or DEFAULT_STAGES,
        max_models=options.max_models,
    )
    return HeatmapService(cache, lookback=timedelta(hours=options.precompute_lookback_h))


@serve.deployment(name="Heatmaps", num_replicas=1, max_ongoing_requests=16, ray_actor_options={"num_cpus": 0})
class HeatmapWorker:
    async def __init__(self, registry: str, store: dict):
        self.registry = ModelRegistry(Path(registry))
        self._open_store: Callable[[], FrameStore] = lambda: FrameStore(StoreConfig.model_validate(store))
        self._store: FrameStore | None = None
        self.options = HeatmapOptions()
        self.service: HeatmapService | None = None
        self._building = asyncio.Lock()  # the first requests after a start wait for one service, not build several
        self._task = asyncio.get_running_loop().create_task(self._precompute_forever())

    def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        self.options = HeatmapOptions.model_validate(user_config or {})
        self.service = None  # rebuilt on next use with the new method, stages and look-back

    async def render(self, frame: StoredFrame, kind: str) -> bytes | HeatmapFailure:
        try:
            service = await self._service()
        except StoreError as exc:
            return HeatmapFailure("store_unavailable", str(exc))
        except ConfigError as exc:
            return HeatmapFailure("unprocessable", f"the heatmap worker's configuration is invalid: {exc}")
        return await service.render(frame, kind)

    async def _service(self) -> HeatmapService:
        async with self._building:
            if self.service is None:
                if self._store is None:
                    self._store = await asyncio.to_thread(self._open_store)
                import torch

                torch.set_num_threads(self.options.threads)
                self.service = await asyncio.to_thread(build_service, self.registry, self._store, self.options)
            return self.service

    async def _precompute_forever(self) -> None:
        while True:
            await asyncio.sleep(self.options.precompute_interval_s)
            if not self.options.precompute:
                continue
            try:
                service = await self._service()
                report = await asyncio.to_thread(service.precompute_pass)
            except Exception as exc:  # noqa: BLE001 - a background pass must never end the worker; retry next time
                log.warning("heatmap precompute pass failed: %s", exc)
                continue
            if report.computed or report.failed:
                log.info("heatmaps precomputed: %s", report)
