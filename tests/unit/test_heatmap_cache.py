"""Heatmaps of stored frames: computed from the stored image on demand, cached beside it, precomputed."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from inspectline.config import StoreConfig
from inspectline.errors import ConfigError, ModelNotFoundError, StoreError
from inspectline.explain import Explainer, render
from inspectline.heatmap_cache import HeatmapCache, pending_frames
from inspectline.imaging import decode_image, encode_png
from inspectline.model import save_checkpoint
from inspectline.registry import ModelRegistry
from inspectline.store import FrameRecord, FrameStore
from tests.unit.test_explain import make_predictor

T0 = datetime(2025, 3, 3, 8, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    """A registry holding one random-initialised model as v0001."""
    root = tmp_path_factory.mktemp("heatmap-registry")
    predictor = make_predictor()
    save_checkpoint(root / "run" / "model.pt", predictor.model, predictor.card)
    registry = ModelRegistry(root / "models")
    registry.register(root / "run" / "model.pt")
    return registry


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    storage = str(tmp_path / "images") if request.param == "local" else f"memory://heatmaps-{uuid.uuid4().hex}"
    cfg = StoreConfig(
        database_url=f"sqlite:///{tmp_path / 'frames.db'}", storage_url=storage, keep_ok_images=0.0, max_age_days=30
    )
    with FrameStore(cfg) as store:
        yield store


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 72), dtype=np.uint8)


def add(store: FrameStore, frame_id: str, verdict: str, *, seed: int = 0, version: str = "v0001", days: float = 0):
    p = {"OK": 0.1, "UNSURE": 0.5, "DEFECTIVE": 0.9}[verdict]
    store.add_frames(
        [
            FrameRecord(
                camera_id="cam1",
                frame_id=frame_id,
                line_id="line-a",
                part_id=None,
                captured_at=None,
                received_at=T0 + timedelta(days=days),
                verdict=verdict,
                defect_probability=p,
                confidence=max(p, 1 - p),
                threshold=0.5,
                model_version=version,
                views={"identity": p},
                image=encode_png(image(seed)),
                image_format="png",
            )
        ]
    )
    return store.find("line-a", "cam1", frame_id)


def test_a_heatmap_is_computed_from_the_stored_image_then_served_from_the_cache(store, registry):
    frame = add(store, "f1", "DEFECTIVE", seed=1)
    cache = HeatmapCache.from_registry(store, registry)
    overlay = cache.png(frame, "overlay")
    [expected] = Explainer.load(registry.resolve("v0001")).explain([image(1)])
    assert overlay == render("overlay", image(1), expected)
    raw = decode_image(cache.png(frame, "raw"))
    assert raw.dtype == np.uint16 and raw.shape == (48, 72) and raw.max() == 65535
    # both kinds sit in the store's storage, named by image hash, model version, CAM recipe and kind
    files = cache.files
    names = sorted(p.rsplit("/", 1)[-1] for p in files.fs.find(files.root))
    assert names == [f"{frame.image_sha256}.v0001.hirescam-layer3.{k}.png" for k in ("overlay", "raw")]
    assert cache.is_cached(frame)
    # a second request reads the file: replace it and the replacement is what comes back
    path = files.path(frame.image_sha256, "v0001.hirescam-layer3.overlay.png")
    if files.is_local:
        os.chmod(path, 0o644)
    files.fs.pipe_file(path, b"cached bytes")
    assert cache.png(frame, "overlay") == b"cached bytes"


def test_recipe_and_version_are_part_of_the_key(store, registry):
    frame = add(store, "f1", "DEFECTIVE", seed=1)
    HeatmapCache.from_registry(store, registry).png(frame)
    other = HeatmapCache.from_registry(store, registry, method="layercam", stages=("layer3", "layer4"))
    assert not other.is_cached(frame)
    other.png(frame)
    assert other.is_cached(frame)
    names = {p.rsplit("/", 1)[-1].split(".", 1)[1] for p in other.files.fs.find(other.files.root)}
    assert "v0001.layercam-layer3+layer4.overlay.png" in names and "v0001.hirescam-layer3.overlay.png" in names


def test_frames_without_an_image_or_a_model_are_refused_by_name(store, registry):
    kept = add(store, "f1", "DEFECTIVE")
    not_kept = add(store, "f2", "OK")  # keep_ok_images=0: no image stored
    cache = HeatmapCache.from_registry(store, registry)
    with pytest.raises(StoreError, match=r"frame \d+ \(cam1/f2, OK\) has no stored image"):
        cache.png(not_kept)
    with pytest.raises(ConfigError, match="overlay, raw"):
        cache.png(kept, "jet")
    gone = add(store, "f3", "DEFECTIVE", version="v0042")
    with pytest.raises(ModelNotFoundError, match="v0042"):
        cache.png(gone)
    with pytest.raises(ConfigError, match="heatmap method"):
        HeatmapCache.from_registry(store, registry, method="nope")


def test_precompute_covers_defective_and_unsure_frames_and_skips_failures(store, registry):
    frames = [
        add(store, "d1", "DEFECTIVE", seed=1),
        add(store, "u1", "UNSURE", seed=2),
        add(store, "o1", "OK", seed=3),  # not kept, and OK frames are not precomputed anyway
        add(store, "d2", "DEFECTIVE", seed=4, version="v0042"),  # its model is gone
        add(store, "d3", "DEFECTIVE", seed=5, days=2),
    ]
    cache = HeatmapCache.from_registry(store, registry)
    pending = list(pending_frames(store, until=T0 + timedelta(days=1)))
    assert sorted(f.frame_id for f in pending) == ["d1", "d2", "u1"]
    report = cache.precompute(pending, batch_size=2)
    assert (report.computed, report.cached, report.failed) == (2, 0, 1)
    assert cache.is_cached(frames[0]) and cache.is_cached(frames[1]) and not cache.is_cached(frames[4])
    report = cache.precompute(pending_frames(store))
    assert (report.computed, report.cached, report.failed) == (1, 2, 1)


def test_prune_removes_heatmaps_whose_image_the_clean_up_removed(store, registry):
    old = add(store, "old", "DEFECTIVE", seed=1)
    labelled = add(store, "labelled", "DEFECTIVE", seed=2)
    store.set_label(labelled.id, "defective", reviewer="ana@plant")
    cache = HeatmapCache.from_registry(store, registry)
    cache.precompute([old, labelled])
    assert cache.prune() == 0
    store.cleanup(now=T0 + timedelta(days=60))  # the unlabelled frame's image goes, the labelled one stays
    assert cache.prune() == 2
    assert cache.is_cached(labelled)
    assert all(p.rsplit("/", 1)[-1].startswith(labelled.image_sha256) for p in cache.files.fs.find(cache.files.root))
