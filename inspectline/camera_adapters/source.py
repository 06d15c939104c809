"""What every camera source hands the uploader: frames with their ids, and a way to hear how each ended.

A source is an object with two methods:

* ``frames(stop)`` yields :class:`Frame` objects in capture order until the source is exhausted (a
  replayed dataset, a video file) or ``stop`` is set (a hot folder and a live stream never end alone);
* ``settle(frame, outcome)`` is called once per frame, in capture order, after the service answered
  (or the frame was dropped), so a folder source can move its file to ``done/`` and a replay can
  remember how far it got.

Frame ids must be stable: a frame that is sent again after a timeout or an adapter restart keeps its
id, so the service answers it from memory instead of judging it twice. ``safe_id`` turns any name into
an id the service accepts, :class:`SourceState` keeps the small amount of progress a source needs
across restarts (a replay's position, a stream's sequence number) in a JSON file, replaced atomically,
and :class:`Pace` spaces frames at a frame rate.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from inspectline.errors import ConfigError
from inspectline.files import atomic_write_json

# The gateway accepts 1-64 letters, digits, "_ . : -" starting with a letter or digit.
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


class Settings(BaseModel):
    """Base of every adapter settings model: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class Frame:
    """One encoded image on its way to the service.

    ``seq`` is given by the adapter when it takes the frame (capture order across restarts);
    ``origin`` is what ``settle`` acts on (a file path, a dataset position) and survives the spool.
    """

    frame_id: str
    camera_id: str
    captured_at: datetime
    image: bytes = field(repr=False)
    content_type: str
    part_id: str | None = None
    origin: str | None = None
    seq: int = -1


@dataclass(frozen=True)
class Outcome:
    """How a frame ended: judged (with the service's verdict), rejected for good, quarantined, or dropped."""

    kind: Literal["judged", "rejected", "quarantined", "dropped"]
    status: int | None = None
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        if self.kind == "judged":
            return "judged"
        if self.kind == "dropped":
            return "dropped: the disk spool is full"
        if self.kind == "quarantined":
            return f"quarantined: {self.body.get('detail', '')}"
        return f"HTTP {self.status} {self.body.get('error', '?')}: {self.body.get('detail', '')}"


class FrameSource(Protocol):
    """The interface the adapter runner drives (see the module docstring)."""

    def frames(self, stop: threading.Event) -> Iterator[Frame]: ...

    def settle(self, frame: Frame, outcome: Outcome) -> None: ...


def safe_id(name: str) -> str:
    """``name`` as a service id: odd characters become ``_``; names over 64 characters keep a hash."""
    cleaned = re.sub(r"[^A-Za-z0-9_.:\-]", "_", name).strip("_.:-") or "frame"
    if len(cleaned) > 64:
        digest = hashlib.sha1(name.encode()).hexdigest()[:12]
        cleaned = f"{cleaned[:51].rstrip('_.:-')}-{digest}"
    if not cleaned[0].isalnum():
        cleaned = "f" + cleaned[:63]
    return cleaned


def content_type_for(path: Path) -> str | None:
    """The HTTP content type of an image file by its suffix, or None for files that are not images we send."""
    return CONTENT_TYPES.get(path.suffix.lower())


class SourceState:
    """A small JSON document of source progress in the spool folder, replaced atomically on each save."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            msg = f"source state {self.path} cannot be read ({exc}); delete it to start the source afresh"
            raise ConfigError(msg) from None
        return data if isinstance(data, dict) else {}

    def save(self, data: dict[str, Any]) -> None:
        atomic_write_json(self.path, data, indent=None)


class Pace:
    """Hands out slots at ``fps`` on a fixed schedule (no drift from the time spent between slots)."""

    def __init__(self, fps: float | None):
        self.interval = 1.0 / fps if fps else 0.0
        # The schedule starts at the first slot taken, not here: a source slow to give its first frame
        # (OpenCV opening a file, a network share) must not have its next frames sent at once to catch up.
        self.next: float | None = None

    def wait(self, stop: threading.Event) -> bool:
        """Sleep until the next slot; False when ``stop`` was set meanwhile."""
        now = time.monotonic()
        if self.next is None:
            self.next = now
        if self.next - now > 0 and stop.wait(self.next - now):
            return False
        # A consumer that fell more than a second behind restarts the schedule instead of bursting.
        self.next = max(self.next, time.monotonic() - 1.0) + self.interval
        return not stop.is_set()
