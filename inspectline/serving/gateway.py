"""The gateway deployment: wires Ray handles into the Ray-free gateway logic and serves its FastAPI app.

Everything a request does lives elsewhere and is tested without Ray: the routes, response models and
error table in :mod:`inspectline.serving.http`, idempotent judging, the monitor outbox and the model
follower in :mod:`inspectline.serving.judging`. Here each of them gets its Ray-backed callables:

    inspect(job)          -> an inspector replica; jobs arriving together share one call
                             (handle.judge_many, see serving.coalesce), backpressure -> 503 overloaded;
                             or, where the gateway judges its own frames, its FrameJudge (below)
    prepare_everywhere(m) -> every inspector replica loads and warms m (handle.broadcast), or it raises
    send(batch)           -> the line monitor (handle.observe); acknowledged once the frames are durable
    lookup(key)           -> the frame store (the authority on frame ids judged before)
    heatmap(frame, kind)  -> the heatmap worker (handle.render), for the review station's pages
    line_status()         -> the line monitor's live windows and drift state (handle.line_status)

and it answers one call of the inspectors': ``models_in_service()``, what a replica that starts later
(restarted, autoscaled) warms before its first frame, a version the gateway is pinned to included.

The two calls every frame makes (judge_many, observe) go over Ray Serve's gRPC channel between replicas
by default (``replica_calls: grpc``): the frame is sent by value instead of through a Ray actor task,
which costs the two processes about half the CPU per call (README, "Serving").

The gateway reserves no CPU: it checks headers and limits, hashes bytes and forwards encoded images;
decoding happens in the inspectors.

**The gateway judges its own frames** where the application is built with ``judge: gateway``
(``deploy/serve_config.gateway-judges.yaml``): there are no Inspector replicas, each Gateway replica
holds a :class:`~inspectline.serving.inspector.FrameJudge` configured by its ``user_config.inspector``
and reserves the CPUs its model threads use, and the front (HAProxy, or Ray's proxy) spreads posts over
the Gateway replicas. A frame then crosses one process boundary fewer: no replica call, no second
request in Serve's machinery (README, "Serving"). Each Gateway replica follows promotions on its own poll;
with ``switch_delay_s`` they all switch at the instant the registry's record of the change plus that delay
gives, each having warmed the new version by then (:func:`~inspectline.serving.records.switch_instant`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from inspectline.audit import AUDIT_NAME, AuditLog
from inspectline.config import GatewayOptions, InspectorOptions, StoreConfig
from inspectline.errors import ConfigError, NotReadyError, OverloadedError
from inspectline.registry import ModelRegistry
from inspectline.serving import line_routes, model_routes, review_routes, routes, ui
from inspectline.serving.auth import TokenTable
from inspectline.serving.coalesce import Coalescer
from inspectline.serving.http import Services, create_app
from inspectline.serving.judging import FrameService, ModelFollower, MonitorOutbox, StoreAccess
from inspectline.serving.model_book import ModelBook
from inspectline.serving.records import (
    InspectJob,
    JudgeFailure,
    Judgement,
    MonitorBatch,
    ServedModel,
    heatmap_bytes,
    switch_instant,
)
from inspectline.serving.review import ReviewServices
from inspectline.store import FrameStore, StoredFrame

log = logging.getLogger("ray.serve")


@serve.deployment(name="Gateway", max_ongoing_requests=128)
@serve.ingress()
class Gateway:
    async def __init__(
        self,
        inspector: DeploymentHandle | None,
        monitor: DeploymentHandle,
        registry: str,
        store: dict,
        spool_dir: str,
        tokens_file: str | None = None,
        heatmaps: DeploymentHandle | None = None,
    ):
        self.inspector, self.monitor, self.heatmaps = inspector, monitor, heatmaps
        self.options = GatewayOptions()
        self.registry = ModelRegistry(Path(registry))
        self.judge = None
        if inspector is None:  # no Inspector deployment: this replica judges its frames itself (judge: gateway)
            from inspectline.serving.inspector import FrameJudge  # torch and the engines, only where they run

            self.judge = FrameJudge(self.registry)
        self._route_frame_calls()
        store_config = StoreConfig.model_validate(store)
        self.store = StoreAccess(lambda: FrameStore(store_config))
        # Read here at the process edge; a tokens file that cannot be read stops the start (fail closed). The
        # file is read again whenever it changes (_follow_tokens): tokens are added and revoked without a restart.
        self.tokens = TokenTable.load(
            env_token=os.environ.get("INSPECT_API_TOKEN"), tokens_file=Path(tokens_file) if tokens_file else None
        )
        self.follower = ModelFollower(
            target=lambda: ServedModel.in_force(self.registry, self.registry.resolve(self.options.model).parent.name),
            shadow=lambda: ServedModel.in_force(self.registry, name) if (name := self.registry.shadow()) else None,
            prepare_everywhere=self._prepare_everywhere,
            switch_at=lambda model: switch_instant(
                self.registry, self.options.model, model, self.options.switch_delay_s, time.time()
            ),
        )
        self.outbox = MonitorOutbox.open(self._send, Path(spool_dir), max_memory_bytes=self.options.max_pending_bytes)
        self._inspect = Coalescer(
            self._inspect_many, window_s=self.options.inspect_window_s, max_jobs=self.options.inspect_group_max
        )
        self.frames = FrameService(
            inspect=self._inspect if self.judge is None else self.judge.judge,
            lookup=self.store.find,
            outbox=self.outbox,
            follower=self.follower,
            max_inflight=self.options.max_inflight,
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.follower.run_forever(lambda: self.options.reload_interval_s)),
            loop.create_task(self.outbox.run_forever(lambda: self.options.monitor_flush_s)),
            loop.create_task(self._remember_stored_verdicts()),
            loop.create_task(self._follow_tokens()),
        ]
        log.info("gateway: auth %s", f"on ({', '.join(self.tokens.names)})" if self.tokens.enabled else "off")

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(
            Services(
                options=lambda: self.options,
                tokens=self.tokens,
                frames=self.frames,
                store=self.store,
                audit=AuditLog(self.registry.root / AUDIT_NAME),
                describe_model=self._describe_model,
                render_metrics=lambda: self.monitor.render.remote(),
                review=ReviewServices(
                    models=ModelBook(self.registry),
                    heatmap=self._heatmap,
                    line_status=lambda: self.monitor.line_status.remote(),
                ),
            ),
            routes.router,
            review_routes.router,
            model_routes.router,
            line_routes.router,
            ui.router,
        )

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        self.options = GatewayOptions.model_validate(user_config or {})
        if self.judge is not None:
            await self.judge.configure(self.options.inspector or InspectorOptions())
            if self.follower.active is None:
                # Serve routes posts to this replica once reconfigure returns, and the front spreads them over
                # every Gateway replica: each one warms the model it serves first, as an Inspector replica does.
                await self.follower.poll_once()
        elif self.options.inspector is not None:
            msg = (
                "the Gateway's user_config sets inspector, but this application has Inspector replicas (judge: "
                "inspector): put those settings in the Inspector deployment's user_config"
            )
            raise ConfigError(msg)
        self.frames.max_inflight = self.options.max_inflight
        self.frames.retry_after_s = self.follower.retry_after_s = self.options.retry_after_s
        self.frames.recent_capacity = self.options.recent_frames
        self.outbox.max_memory_bytes = self.options.max_pending_bytes
        self._inspect.window_s, self._inspect.max_jobs = self.options.inspect_window_s, self.options.inspect_group_max
        self._route_frame_calls()

    def _route_frame_calls(self) -> None:
        """The handles of the per-frame calls, over gRPC or as Ray actor calls (``replica_calls``)."""
        by_reference = self.options.replica_calls == "ray"
        if self.inspector is not None:
            self._judge_many = self.inspector.options(method_name="judge_many", _by_reference=by_reference)
        self._observe = self.monitor.options(method_name="observe", _by_reference=by_reference)

    async def _follow_tokens(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_interval_s)
            try:
                self.tokens.reload_if_changed()  # a stat, and a small file read when it changed
            except Exception:  # the tokens in force stay; the loop must outlive any surprise
                log.exception("auth: checking the tokens file failed")

    # --- what the gateway logic calls ------------------------------------------------------------------
    async def _inspect_many(self, jobs: list[InspectJob]) -> list[Judgement | JudgeFailure]:
        try:
            return await self._judge_many.remote(jobs)
        except BackPressureError:
            msg = "the inspectors' queues are full; retry shortly"
            raise OverloadedError(msg, headers={"Retry-After": str(self.options.retry_after_s)}) from None

    async def _heatmap(self, frame: StoredFrame, kind: str) -> bytes:
        if self.heatmaps is None:
            msg = "this service was deployed without the Heatmaps deployment (see serve_config.yaml)"
            raise NotReadyError(msg)
        try:
            return heatmap_bytes(await self.heatmaps.render.remote(frame, kind))
        except BackPressureError:
            msg = "the heatmap worker is busy with other frames; retry shortly"
            raise OverloadedError(msg, headers={"Retry-After": str(self.options.retry_after_s)}) from None

    async def models_in_service(self) -> list[ServedModel]:
        """The models frames are judged with now (served and shadow): what an inspector replica that starts
        later warms before its first frame."""
        return self.follower.in_service()

    async def _describe_model(self, model: ServedModel) -> dict:
        if self.judge is not None:
            return await self.judge.describe(model)
        return await self.inspector.describe.remote(model)

    async def _prepare_everywhere(self, model: ServedModel) -> None:
        """Every running inspector replica loads and warms ``model``; raises if any of them cannot."""
        if self.judge is not None:
            await self.judge.prepare(model)
            log.info("model %s warm in this gateway replica", model)
            return
        results = await self.inspector.broadcast("prepare", model).results_async()
        log.info("model %s warm on %d inspector replicas", model, len(results))

    async def _send(self, batch: MonitorBatch) -> None:
        await self._observe.remote(batch)

    async def _remember_stored_verdicts(self) -> None:
        """After a restart, warm the repeated-id cache with the store's newest verdicts (the store decides misses)."""
        if not self.options.recent_frames:
            return
        try:
            stored = await self.store.call("recent", min(self.options.recent_frames, 10_000))
        except Exception as exc:  # noqa: BLE001 - a store outage must not stop the gateway from starting
            log.warning("could not read recent verdicts from the frame store: %s", exc)
            return
        self.frames.remember_stored(list(reversed(stored)))
