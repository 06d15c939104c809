"""A scripted stand-in for the inspection service, reached through ``httpx.MockTransport``.

It answers like the real gateway (verdict JSON, ``duplicate`` for a repeated ``(camera_id, frame_id)``,
the JSON error envelope) and can be told to fail: ``script`` holds what the next requests meet, one
entry per request, before normal answers resume. It records every request so tests can count how
often each frame was judged.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import numpy as np

from inspectline.camera_adapters.source import Frame


@dataclass
class FakeService:
    script: list[str | tuple[int, str] | tuple[int, str, dict]] = field(default_factory=list)
    down: bool = False
    requests: list[httpx.Request] = field(default_factory=list)
    judged: Counter = field(default_factory=Counter)
    verdicts: dict[tuple[str, str], dict] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request)
            step = self.script.pop(0) if self.script else None
        if self.down or step == "connect":
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if step == "judge-then-timeout":  # the service judged it, but the answer never arrived
            self._judge(request)
            raise httpx.ReadTimeout("timed out", request=request)
        if isinstance(step, tuple):
            status, body, *headers = step
            if body.startswith("{"):
                return httpx.Response(
                    status,
                    content=body.encode(),
                    headers={"Content-Type": "application/json", **(headers[0] if headers else {})},
                )
            return httpx.Response(status, text=body, headers=headers[0] if headers else {})
        return httpx.Response(200, json=self._judge(request))

    def _judge(self, request: httpx.Request) -> dict:
        params = request.url.params
        key = (params["camera_id"], params["frame_id"])
        with self.lock:
            if key in self.verdicts:
                return {**self.verdicts[key], "duplicate": True}
            self.judged[params["frame_id"]] += 1
            verdict = {
                "frame_id": params["frame_id"],
                "line_id": params["line_id"],
                "camera_id": params["camera_id"],
                "part_id": params.get("part_id"),
                "verdict": "OK",
                "defect_probability": 0.1,
                "confidence": 0.9,
                "threshold": 0.5,
                "model_version": "v0001",
                "views": {"identity": 0.1},
                "latency_ms": 1.0,
                "captured_at": params.get("captured_at"),
                "received_at": datetime.now(timezone.utc).isoformat(),
                "duplicate": False,
            }
            self.verdicts[key] = verdict
            return verdict

    def frame_ids(self) -> list[str]:
        """Frame ids of every request, in the order they arrived."""
        return [r.url.params["frame_id"] for r in self.requests]


class ListSource:
    """A source over ready frames, optionally paced, that records how each frame was settled.

    ``endless`` keeps it open after the last frame until the adapter is stopped, like a camera.
    """

    def __init__(self, frames: list[Frame], interval_s: float = 0.0, endless: bool = False):
        self.items = frames
        self.interval_s = interval_s
        self.endless = endless
        self.settled: list[tuple[str, str]] = []
        self.exhausted = threading.Event()  # set once every frame has been handed out

    def frames(self, stop: threading.Event):
        for frame in self.items:
            if stop.is_set():
                return
            yield frame
            if self.interval_s:
                stop.wait(self.interval_s)
        self.exhausted.set()
        if self.endless:
            stop.wait()

    def settle(self, frame: Frame, outcome) -> None:
        self.settled.append((frame.frame_id, outcome.kind))


def make_frames(n: int, camera_id: str = "cam-1", prefix: str = "f", size: int = 200) -> list[Frame]:
    rng = np.random.default_rng(0)
    return [
        Frame(
            frame_id=f"{prefix}{i:03d}",
            camera_id=camera_id,
            captured_at=datetime.now(timezone.utc),
            image=rng.integers(0, 255, size, dtype=np.uint8).tobytes(),
            content_type="image/png",
            part_id=f"p{i}",
        )
        for i in range(n)
    ]
