"""The gateway's HTTP app wired to real, Ray-free parts: a real (tiny, untrained) model judging in process,
a real frame store on SQLite, the real journal and recorder, the real heatmap service and model book. Only
Ray's hops are replaced by calls; the line monitor's live windows are whatever a test puts in ``live``.

    client = gateway.client(token="...")       # a TestClient; auth as configured on the gateway
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CONTENT_TYPE_LATEST

from inspectline.audit import AuditLog
from inspectline.config import GatewayOptions, StoreConfig
from inspectline.data import Preprocessing
from inspectline.heatmap_cache import HeatmapCache
from inspectline.model import ModelCard, build_model, save_checkpoint
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry
from inspectline.serving import line_routes, model_routes, review_routes, routes, ui
from inspectline.serving.auth import TokenEntry, TokenTable
from inspectline.serving.heatmaps import HeatmapService
from inspectline.serving.http import Services, create_app
from inspectline.serving.inspector import judge_prepared, prepare_frame
from inspectline.serving.journal import Journal
from inspectline.serving.judging import FrameService, ModelFollower, MonitorOutbox, StoreAccess
from inspectline.serving.model_book import ModelBook
from inspectline.serving.recorder import FrameRecorder
from inspectline.serving.records import (
    ErrorObservation,
    FrameObservation,
    InspectJob,
    JudgeFailure,
    Judgement,
    MonitorBatch,
    ServedModel,
    ShadowObservation,
    StreamStatus,
    heatmap_bytes,
)
from inspectline.serving.review import ReviewServices
from inspectline.store import FrameStore, StoredFrame

ROUTERS = (routes.router, review_routes.router, model_routes.router, line_routes.router, ui.router)

TOKENS = {
    "camera": ("cam-line1", "frames:write"),
    "viewer": ("dashboard", "read"),
    "reviewer": ("ana", "review"),
    "admin": ("it-admin", "admin"),
}


def secret(role: str) -> str:
    return f"secret-of-{role}"


def make_tiny_registry(root: Path) -> ModelRegistry:
    """A registry under ``root`` with one tiny, untrained gray ResNet18 at 32 px, promoted: fast and deterministic."""
    root.mkdir(parents=True, exist_ok=True)
    card = ModelCard(
        arch="resnet18",
        class_names=("ok", "defective"),
        head_dims=(16,),
        head_dropout=(0.0, 0.0),
        preprocessing=Preprocessing(image_size=32, color_mode="gray", mean=(0.5,), std=(0.25,)),
        threshold=0.5,
    )
    save_checkpoint(
        root / "model.pt", build_model("resnet18", in_channels=1, head_dims=(16,), head_dropout=(0.0, 0.0)), card
    )
    registry = ModelRegistry(root / "models")
    registry.register(root / "model.pt")
    registry.promote("v0001")
    return registry


@pytest.fixture(scope="session")
def tiny_registry(tmp_path_factory) -> ModelRegistry:
    return make_tiny_registry(tmp_path_factory.mktemp("tiny-model"))


class InProcessInspector:
    """The inspector replica's decode/preprocess/batch logic, called directly (no Ray, no batching wait)."""

    def __init__(self, registry: ModelRegistry, camera_bit_depth: dict[str, int] | None = None):
        self.registry = registry
        self.camera_bit_depth = camera_bit_depth or {}
        self._predictors: dict[str, Predictor] = {}
        self.jobs = 0

    def predictor(self, model: ServedModel) -> Predictor:
        if model.version not in self._predictors:
            self._predictors[model.version] = Predictor.load(self.registry.resolve(model.version))
        return self._predictors[model.version]

    async def judge(self, job: InspectJob) -> Judgement | JudgeFailure:
        self.jobs += 1
        predictor = self.predictor(job.model)
        prepared = await asyncio.to_thread(prepare_frame, predictor, job, self.camera_bit_depth)
        if isinstance(prepared, JudgeFailure):
            return prepared
        return (await asyncio.to_thread(judge_prepared, predictor, [prepared]))[0]

    async def describe(self, model: ServedModel) -> dict:
        p = self.predictor(model)
        return {
            "version": p.card.version,
            "arch": p.card.arch,
            "width": p.card.width,
            "classes": list(p.card.class_names),
            "threshold": p.threshold,
            "unsure_band": p.unsure_band,
            "temperature": p.card.temperature,
            "tta_views": list(p.tta_views),
            "image_size": p.card.preprocessing.image_size,
            "color_mode": p.card.preprocessing.color_mode,
            "created_at": p.card.created_at,
            "parent": p.card.parent,
            "metrics": p.card.metrics,
            "operating_point": None,
        }


class DirectMonitor:
    """The line monitor's durable part: frames go through the real recorder into the real store."""

    def __init__(self, recorder: FrameRecorder):
        self.recorder = recorder
        self.errors: list[str] = []

    async def observe(self, batch: MonitorBatch) -> None:
        frames = [o.store_record() for o in batch.observations if isinstance(o, FrameObservation)]
        shadows = [o.store_record() for o in batch.observations if isinstance(o, ShadowObservation)]
        self.errors += [o.code for o in batch.observations if isinstance(o, ErrorObservation)]
        await asyncio.to_thread(self.recorder.record, frames, shadows)


@dataclass
class Gateway:
    app: object
    services: Services
    inspector: InProcessInspector
    monitor: DirectMonitor
    store_config: StoreConfig
    registry: ModelRegistry
    live: list[StreamStatus] = field(default_factory=list)  # what the line monitor would say now
    clients: list[TestClient] = field(default_factory=list)

    def client(self, role: str | None = None) -> TestClient:
        headers = {"Authorization": f"Bearer {secret(role)}"} if role else {}
        client = TestClient(self.app, headers=headers, raise_server_exceptions=False)
        self.clients.append(client)
        return client

    def store(self) -> FrameStore:
        return FrameStore(self.store_config)

    def flush(self) -> None:
        asyncio.run(self.services.frames.outbox.flush())


def build_gateway(
    tmp_path: Path, registry: ModelRegistry, *, auth: bool = True, store_dir: Path | None = None, **options
) -> Gateway:
    """A gateway with its own journal under ``tmp_path``; its store there too unless ``store_dir`` is shared."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = store_dir or tmp_path
    store_config = StoreConfig(
        database_url=f"sqlite:///{data / 'frames.db'}", storage_url=str(data / "images"), keep_ok_images=1.0
    )
    inspector = InProcessInspector(registry)
    monitor = DirectMonitor(FrameRecorder(lambda: FrameStore(store_config), spool_dir=tmp_path / "store-spool"))
    gateway_options = GatewayOptions(**options)
    follower = ModelFollower(
        target=lambda: ServedModel(registry.production()), shadow=lambda: None, prepare_everywhere=inspector.describe
    )
    follower.active = ServedModel(registry.production())
    outbox = MonitorOutbox(
        monitor.observe, Journal(tmp_path / "journal"), max_memory_bytes=gateway_options.max_pending_bytes
    )
    store = StoreAccess(lambda: FrameStore(store_config))
    frames = FrameService(
        inspect=inspector.judge,
        lookup=store.find,
        outbox=outbox,
        follower=follower,
        max_inflight=gateway_options.max_inflight,
    )
    tokens = TokenTable(
        tuple(
            TokenEntry(name=name, sha256=hashlib.sha256(secret(role).encode()).hexdigest(), scopes=(scope,))
            for role, (name, scope) in TOKENS.items()
        )
        if auth
        else ()
    )

    async def render() -> tuple[bytes, str]:
        return b"# metrics of the line monitor\n", CONTENT_TYPE_LATEST

    heatmaps = HeatmapService(HeatmapCache.from_registry(FrameStore(store_config), registry))

    async def heatmap(frame: StoredFrame, kind: str) -> bytes:
        return heatmap_bytes(await heatmaps.render(frame, kind))

    async def line_status() -> list[StreamStatus]:
        return list(gateway.live)

    services = Services(
        options=lambda: gateway_options,
        tokens=tokens,
        frames=frames,
        store=store,
        audit=AuditLog(tmp_path / "audit.jsonl"),
        describe_model=inspector.describe,
        render_metrics=render,
        review=ReviewServices(models=ModelBook(registry), heatmap=heatmap, line_status=line_status),
    )
    gateway = Gateway(create_app(services, *ROUTERS), services, inspector, monitor, store_config, registry)
    return gateway


@pytest.fixture
def gateway(tmp_path: Path, tiny_registry: ModelRegistry) -> Iterator[Gateway]:
    gw = build_gateway(tmp_path, tiny_registry)
    yield gw
    for client in gw.clients:
        client.close()
    gw.monitor.recorder.close()
    gw.services.frames.outbox.journal.close()


@pytest.fixture
def own_registry(tmp_path: Path, tiny_registry: ModelRegistry) -> ModelRegistry:
    """The tiny model in a registry of this test's own, for tests that change operating points or versions."""
    registry = ModelRegistry(tmp_path / "own-models")
    registry.register(tiny_registry.get("v0001").checkpoint)
    registry.promote("v0001")
    return registry
