"""The replay source: a recorded dataset (ELPV, a folder, a manifest) played to the service as a camera.

For commissioning and demos. Samples come from ``inspectline.data.load_samples`` in dataset order (or
a seeded shuffle), at ``fps`` on a fixed schedule, each with a part id (the manifest's group, else the
file name). From frame ``shift_from`` of a run on, a shift can be injected to show what drift looks
like on the dashboards: ``brightness`` (scale by 1 + strength), ``blur`` (Gaussian, sigma = strength
pixels) or ``noise`` (Gaussian, sigma = strength of full scale, seeded by position so a resent frame
is the same image).

Positions count through the dataset and on into later cycles (position ``p`` is sample ``p mod n`` of
cycle ``p div n``). The position after the last settled frame is kept in the spool folder: a restart
resumes there, and a finished replay run again starts a new cycle. Frame ids are the dataset key, with
``:CYCLE`` added from the second cycle on, so a resent frame keeps its id while a new cycle is judged
afresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import Field, model_validator

from inspectline.camera_adapters.source import Frame, Outcome, Pace, Settings, SourceState, content_type_for, safe_id
from inspectline.config import DataConfig
from inspectline.data import Sample, load_samples
from inspectline.errors import ConfigError
from inspectline.imaging import decode_image, encode_png

log = logging.getLogger(__name__)

Shift = Literal["none", "brightness", "blur", "noise"]
DEFAULT_STRENGTH = {"none": 0.0, "brightness": 0.4, "blur": 2.0, "noise": 0.08}


class ReplaySettings(Settings):
    """Which dataset to replay, how fast, and which shift to inject."""

    data: DataConfig = DataConfig()
    fps: float = Field(5.0, gt=0, le=1000)
    limit: int | None = Field(None, ge=1, description="frames this run sends at most")
    loop: bool = Field(False, description="start over at the end (a new cycle, new frame ids) until stopped")
    shuffle_seed: int | None = Field(
        None, description="play each cycle in a seeded random order instead of dataset order"
    )
    shift: Shift = "none"
    shift_from: int = Field(0, ge=0, description="frames of this run before the shift starts")
    shift_strength: float | None = Field(
        None, description="brightness: scale - 1; blur: sigma in pixels; noise: sigma / full scale"
    )

    @model_validator(mode="after")
    def _strength_fits(self) -> ReplaySettings:
        strength = self.strength
        if self.shift == "brightness" and strength <= -1:
            msg = (
                f"shift_strength {strength} for brightness would make every pixel black; use a value "
                "above -1 (e.g. 0.4 brighter, -0.3 darker)"
            )
            raise ValueError(msg)
        if self.shift in ("blur", "noise") and strength <= 0:
            msg = (
                f"shift_strength {strength} for {self.shift} must be positive (default {DEFAULT_STRENGTH[self.shift]})"
            )
            raise ValueError(msg)
        return self

    @property
    def strength(self) -> float:
        return self.shift_strength if self.shift_strength is not None else DEFAULT_STRENGTH[self.shift]


class ReplaySource:
    """Plays ``load_samples(settings.data)`` at ``settings.fps``; see the module docstring."""

    def __init__(self, settings: ReplaySettings, camera_id: str, state: SourceState):
        self.settings = settings
        self.camera_id = camera_id
        self.state = state
        self.samples: list[Sample] = load_samples(settings.data)
        unsendable = [s.key for s in self.samples if content_type_for(s.path) is None]
        if unsendable:
            msg = f"replay can send PNG, JPEG, BMP and TIFF files; {len(unsendable)} samples are not: {unsendable[:5]}"
            raise ConfigError(msg)
        self._key = f"{settings.data.source}:{settings.data.path}:{len(self.samples)}:{settings.shuffle_seed}"
        saved = state.load()
        if saved and saved.get("dataset") != self._key:
            log.info(
                "replay state in %s is for another dataset (%s); starting at the beginning",
                state.path,
                saved.get("dataset"),
            )
            saved = {}
        self.start = int(saved.get("next_position", 0))
        self._settled = self.start
        self._orders: dict[int, np.ndarray] = {}

    def frames(self, stop: threading.Event) -> Iterator[Frame]:
        n = len(self.samples)
        end = None if self.settings.loop else (self.start // n + 1) * n
        if self.start % n:
            log.info("resuming the replay at frame %d of %d (cycle %d)", self.start % n, n, self.start // n)
        pace = Pace(self.settings.fps)
        position = self.start
        sent = 0
        while (
            not stop.is_set()
            and (end is None or position < end)
            and (self.settings.limit is None or sent < self.settings.limit)
        ):
            if not pace.wait(stop):
                return
            yield self._frame(position, shifted=self.settings.shift != "none" and sent >= self.settings.shift_from)
            position += 1
            sent += 1

    def settle(self, frame: Frame, outcome: Outcome) -> None:
        """Remember the position after the last settled frame (delivery is in order, so it only grows)."""
        if frame.origin is None or outcome.kind == "dropped":
            return
        position = int(frame.origin)
        if position + 1 > self._settled:
            self._settled = position + 1
            self.state.save({"dataset": self._key, "next_position": self._settled})

    def _frame(self, position: int, *, shifted: bool) -> Frame:
        captured_at = datetime.now(timezone.utc)  # the frame's slot, not after reading and shifting it
        cycle, index = divmod(position, len(self.samples))
        sample = self.samples[self._order(cycle)[index]]
        key_id = safe_id(sample.key)
        frame_id = key_id if cycle == 0 else f"{key_id[:58]}:{cycle}"
        data = sample.path.read_bytes()
        content_type = content_type_for(sample.path) or "image/png"
        if shifted:
            image = decode_image(data, name=str(sample.path))
            data = encode_png(apply_shift(image, self.settings.shift, self.settings.strength, seed=position))
            content_type = "image/png"
        return Frame(
            frame_id=frame_id,
            camera_id=self.camera_id,
            captured_at=captured_at,
            image=data,
            content_type=content_type,
            part_id=safe_id(sample.group) if sample.group else safe_id(Path(sample.key).stem),
            origin=str(position),
        )

    def _order(self, cycle: int) -> np.ndarray:
        if cycle not in self._orders:
            n = len(self.samples)
            seed = self.settings.shuffle_seed
            self._orders = {
                cycle: np.arange(n) if seed is None else np.random.default_rng([seed, cycle]).permutation(n)
            }
        return self._orders[cycle]


def apply_shift(image: np.ndarray, shift: Shift, strength: float, *, seed: int = 0) -> np.ndarray:
    """A copy of ``image`` (uint8 or uint16, gray or colour) with the shift applied, same dtype and shape."""
    if shift == "none":
        return image.copy()
    full = 65535.0 if image.dtype == np.uint16 else 255.0
    values = image.astype(np.float32)
    if shift == "brightness":
        values = values * (1.0 + strength)
    elif shift == "blur":
        values = cv2.GaussianBlur(values, (0, 0), sigmaX=strength)
    elif shift == "noise":
        values = values + np.random.default_rng(seed).normal(0.0, strength * full, values.shape).astype(np.float32)
    else:
        msg = f"shift {shift!r} is not one of none, brightness, blur, noise"
        raise ConfigError(msg)
    return np.clip(values, 0, full).astype(image.dtype).reshape(image.shape)
