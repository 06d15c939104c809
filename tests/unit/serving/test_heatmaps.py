"""The heatmap worker's Ray-free part: one computation per frame however many ask, failures as values,
and precompute passes that follow the newest DEFECTIVE/UNSURE frames."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from inspectline.config import StoreConfig
from inspectline.errors import ModelNotFoundError
from inspectline.explain import Explainer
from inspectline.heatmap_cache import HeatmapCache, PrecomputeReport
from inspectline.serving.heatmaps import HeatmapService
from inspectline.serving.records import HeatmapFailure, heatmap_bytes
from inspectline.store import FrameStore
from tests.unit.store.factories import record

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    config = StoreConfig(
        database_url=f"sqlite:///{tmp_path / 'frames.db'}", storage_url=str(tmp_path / "images"), keep_ok_images=1.0
    )
    with FrameStore(config) as store:
        yield store


def add(store: FrameStore, frame_id: str, verdict: str, *, hours_ago: float, **fields) -> int:
    received = NOW - timedelta(hours=hours_ago)
    shade = sum(frame_id.encode()) % 250
    p = {"OK": 0.1, "UNSURE": 0.5, "DEFECTIVE": 0.9}[verdict]
    store.add_frames([record(frame_id, verdict=verdict, p=p, shade=shade, received_at=received, **fields)])
    return store.find("line-a", "cam1", frame_id).id


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """How many frames Explainer.explain was given, call by call."""
    calls: list[int] = []
    explain = Explainer.explain

    def counting(self, images, *args, **kwargs):
        calls.append(len(images))
        return explain(self, images, *args, **kwargs)

    monkeypatch.setattr(Explainer, "explain", counting)
    return calls


def test_reviewers_opening_the_same_frame_at_once_share_one_computation(store, tiny_registry, counted):
    service = HeatmapService(HeatmapCache.from_registry(store, tiny_registry))
    frame = store.get(add(store, "f1", "DEFECTIVE", hours_ago=1))

    async def three_reviewers():
        return await asyncio.gather(*(service.render(frame, kind) for kind in ("overlay", "overlay", "raw")))

    overlay, again, raw = asyncio.run(three_reviewers())
    assert counted == [1] and overlay == again and overlay != raw
    assert overlay.startswith(b"\x89PNG") and raw.startswith(b"\x89PNG")


def test_a_frame_of_a_model_no_longer_registered_is_a_failure_value_that_becomes_a_404(store, tiny_registry):
    service = HeatmapService(HeatmapCache.from_registry(store, tiny_registry))
    frame = store.get(add(store, "old", "DEFECTIVE", hours_ago=1, model_version="v0042"))
    failure = asyncio.run(service.render(frame, "overlay"))
    assert isinstance(failure, HeatmapFailure) and failure.kind == "model_not_found" and "v0042" in failure.detail
    with pytest.raises(ModelNotFoundError, match="v0042"):
        heatmap_bytes(failure)
    assert heatmap_bytes(b"\x89PNG...") == b"\x89PNG..."


def test_precompute_passes_cover_new_defective_and_unsure_frames_within_the_lookback(store, tiny_registry, counted):
    service = HeatmapService(HeatmapCache.from_registry(store, tiny_registry), lookback=timedelta(hours=24))
    add(store, "too-old", "DEFECTIVE", hours_ago=30)
    add(store, "ok", "OK", hours_ago=2)
    add(store, "defective", "DEFECTIVE", hours_ago=2)
    add(store, "unsure", "UNSURE", hours_ago=1)
    assert service.precompute_pass(now=NOW) == PrecomputeReport(computed=2)
    assert sum(counted) == 2
    # the next pass looks back a little before the last one started, so late frames are not missed
    add(store, "late", "UNSURE", hours_ago=0.01)
    assert service.precompute_pass(now=NOW + timedelta(minutes=1)) == PrecomputeReport(computed=1)
    assert service.precompute_pass(now=NOW + timedelta(minutes=2)) == PrecomputeReport(cached=1)
    assert sum(counted) == 3
