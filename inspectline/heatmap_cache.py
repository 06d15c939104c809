"""Heatmaps of stored frames: computed on demand from the frame store's image, cached in the same storage.

The review station asks for a frame's heatmap long after the verdict; it is never computed on the hot
path of ``POST /v1/frames``. :class:`HeatmapCache` reads the stored image, explains it with the model
version that judged the frame (its own preprocessing and TTA views) and keeps both renderings beside the
images, under the store's ``storage_url``:

    <storage_url>/heatmaps/3f/3fa9...c2.v0003.hirescam-layer3.overlay.png   colormap over the frame
    <storage_url>/heatmaps/3f/3fa9...c2.v0003.hirescam-layer3.raw.png       the map, 16-bit gray

A cached file is keyed by image sha256, model version, CAM recipe and kind, so it is never stale: a
new model version or method gets new files. Writes are atomic (the image store's own writer), so a
concurrent reader sees a whole file or none, and two requests racing on one frame write equal bytes.

    cache = HeatmapCache.from_registry(store, registry_root)
    frame = store.get(frame_id)                     # 404 / image_not_kept are the caller's, as for images
    png = cache.png(frame, "overlay")               # bytes, image/png
    cache.precompute(pending_frames(store, since))  # a background worker, off the request path

Orphans: the store's age-based clean-up removes images but does not know these files;
:meth:`HeatmapCache.prune` removes heatmaps whose image is gone.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from inspectline.errors import ConfigError, InspectError, StoreError
from inspectline.explain import DEFAULT_METHOD, DEFAULT_STAGES, KINDS, Explainer, check_recipe, render
from inspectline.imaging import decode_image
from inspectline.registry import ModelRegistry
from inspectline.store import FrameStore, StoredFrame
from inspectline.store.images import ImageStore

log = logging.getLogger(__name__)

HEATMAP_FOLDER = "heatmaps"
PRECOMPUTE_VERDICTS = ("DEFECTIVE", "UNSURE")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class PrecomputeReport:
    """What one precompute pass did."""

    computed: int = 0  # frames whose heatmaps were computed and written
    cached: int = 0  # frames that already had them
    failed: int = 0  # frames that could not be explained (image unreadable, model version gone...)


class HeatmapCache:
    """On-demand heatmaps of stored frames, cached beside their images; thread-safe."""

    def __init__(
        self,
        store: FrameStore,
        checkpoint_for: Callable[[str], Path],
        *,
        method: str = DEFAULT_METHOD,
        stages: Sequence[str] = DEFAULT_STAGES,
        max_models: int = 2,
    ) -> None:
        """``checkpoint_for(model_version)`` finds a version's checkpoint; ``max_models`` explainers stay loaded."""
        check_recipe(method, stages)
        self.store = store
        self.method, self.stages = method, tuple(stages)
        self.files = ImageStore(f"{store.config.storage_url.rstrip('/')}/{HEATMAP_FOLDER}")
        self._checkpoint_for = checkpoint_for
        self._max_models = max_models
        self._explainers: OrderedDict[str, Explainer] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_registry(cls, store: FrameStore, registry: ModelRegistry | Path, **kwargs) -> HeatmapCache:
        """Explain each frame with the registered version that judged it."""
        registry = registry if isinstance(registry, ModelRegistry) else ModelRegistry(Path(registry))
        return cls(store, registry.resolve, **kwargs)

    # --- one frame ---------------------------------------------------------------------------------
    def png(self, frame: StoredFrame, kind: str = "overlay") -> bytes:
        """The frame's heatmap as PNG bytes: from the cache, else computed now and cached (both kinds).

        Raises StoreError when the frame has no stored image (check ``frame.image_sha256`` first to
        answer 404), ModelNotFoundError when its model version is no longer in the registry.
        """
        if kind not in KINDS:
            msg = f"heatmap kind {kind!r} is not one of {', '.join(KINDS)}"
            raise ConfigError(msg)
        path = self._path(frame, kind)
        if self.files.fs.exists(path):
            return self.files.fs.cat_file(path)
        return self._compute([frame])[0][kind]

    def is_cached(self, frame: StoredFrame) -> bool:
        """Whether both renderings of the frame's heatmap are already stored (no model is loaded to tell)."""
        return all(self.files.fs.exists(self._path(frame, kind)) for kind in KINDS)

    def explainer(self, model_version: str) -> Explainer:
        """The explainer of one model version, loaded on first use (least recently used ones are dropped)."""
        with self._lock:
            if model_version in self._explainers:
                self._explainers.move_to_end(model_version)
                return self._explainers[model_version]
        checkpoint = self._checkpoint_for(model_version)  # outside the lock: loading takes a while
        explainer = Explainer.load(checkpoint, method=self.method, stages=self.stages)
        with self._lock:
            self._explainers[model_version] = explainer
            while len(self._explainers) > self._max_models:
                self._explainers.popitem(last=False)
        return explainer

    # --- off the request path ----------------------------------------------------------------------
    def precompute(self, frames: Iterable[StoredFrame], *, batch_size: int = 8) -> PrecomputeReport:
        """Compute and cache heatmaps for ``frames`` that lack them, a batch of one model version at a time.

        A frame that cannot be explained is logged and counted, never raised: a background worker goes on.
        """
        computed = cached = failed = 0
        pending: dict[str, list[StoredFrame]] = {}
        for frame in frames:
            try:
                if self.is_cached(frame):
                    cached += 1
                    continue
            except InspectError as exc:
                failed += 1
                log.warning("no heatmap for frame %s: %s", frame.id, exc)
                continue
            batch = pending.setdefault(frame.model_version, [])
            batch.append(frame)
            if len(batch) >= batch_size:
                done, bad = self._compute_logged(pending.pop(frame.model_version))
                computed, failed = computed + done, failed + bad
        for batch in pending.values():
            done, bad = self._compute_logged(batch)
            computed, failed = computed + done, failed + bad
        return PrecomputeReport(computed=computed, cached=cached, failed=failed)

    def prune(self) -> int:
        """Remove cached heatmaps whose image the store no longer holds; returns how many files went."""
        kept = {frame.image_sha256 for frame in self.store.iter_query(has_image=True, order="oldest")}
        removed = 0
        for path in self.files.fs.find(self.files.root):
            sha = path.rsplit("/", 1)[-1].split(".", 1)[0]
            if sha not in kept:
                self.files.fs.rm_file(path)
                removed += 1
        return removed

    # --- internals ---------------------------------------------------------------------------------
    def _name(self, frame: StoredFrame, kind: str) -> str:
        """``<version>.<method>-<stages>.<kind>.png`` after the image's hash; unsafe versions by their hash."""
        version = frame.model_version
        if not _SAFE_NAME.match(version):
            version = hashlib.sha256(version.encode()).hexdigest()[:32]
        recipe = f"{self.method.replace('++', 'pp')}-{'+'.join(self.stages)}"
        return f"{version}.{recipe}.{kind}.png"

    def _path(self, frame: StoredFrame, kind: str) -> str:
        if frame.image_sha256 is None:
            msg = (
                f"frame {frame.id} ({frame.camera_id}/{frame.frame_id}, {frame.verdict}) has no stored image to "
                "explain: retention keeps DEFECTIVE/UNSURE images and a sample of OK ones until clean-up"
            )
            raise StoreError(msg)
        return self.files.path(frame.image_sha256, self._name(frame, kind))

    def _compute(self, frames: list[StoredFrame]) -> list[dict[str, bytes]]:
        """Explain frames of one model version; write and return both renderings of each."""
        explainer = self.explainer(frames[0].model_version)
        decoded = [decode_image(self.store.image(f.id)[0], name=f"stored frame {f.id}") for f in frames]
        out = []
        for frame, image, heatmap in zip(frames, decoded, explainer.explain(decoded), strict=True):
            pngs = {kind: render(kind, image, heatmap) for kind in KINDS}
            for kind, data in pngs.items():
                self.files.write(frame.image_sha256, self._name(frame, kind), data)
            out.append(pngs)
        return out

    def _compute_logged(self, frames: list[StoredFrame]) -> tuple[int, int]:
        try:
            self._compute(frames)
            return len(frames), 0
        except InspectError as exc:
            if len(frames) == 1:
                log.warning("no heatmap for frame %s: %s", frames[0].id, exc)
                return 0, 1
        # One bad frame must not cost its batch: retry one by one to find it.
        results = [self._compute_logged([frame]) for frame in frames]
        return sum(r[0] for r in results), sum(r[1] for r in results)


def pending_frames(
    store: FrameStore, *, since: datetime | None = None, until: datetime | None = None, limit: int | None = None
) -> Iterator[StoredFrame]:
    """DEFECTIVE and UNSURE frames with a stored image received in ``[since, until)``, oldest first per verdict:
    what :meth:`HeatmapCache.precompute` is given when a deployment precomputes heatmaps."""
    for verdict in PRECOMPUTE_VERDICTS:
        yield from store.iter_query(
            verdict=verdict, has_image=True, since=since, until=until, order="oldest", limit=limit
        )
