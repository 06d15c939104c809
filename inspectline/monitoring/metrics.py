"""Every Prometheus metric inspectline exports, in one place.

Naming follows Prometheus conventions: an ``inspect_`` prefix, base units (``_seconds``, ``_bytes``,
ratios 0-1), ``_total`` on counters, and bounded labels only (line, camera, verdict, reason, signal:
never a frame or part id). Every class takes a ``registry`` so tests and each process use their own.

* :class:`CameraMetrics`  exported by a camera adapter on its own port (``--metrics-port``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Post latencies from a camera: tens of milliseconds normally, seconds while the service recovers.
POST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class CameraMetrics:
    """What a camera adapter exports: capture, delivery, retries and its disk spool."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("line", "camera")
        self.captured = Counter("inspect_camera_frames_captured_total", "Frames the adapter took from its source.", labels, registry=self.registry)
        self.sent = Counter("inspect_camera_frames_sent_total", "Frames the service answered with a verdict.", labels, registry=self.registry)
        self.rejected = Counter(
            "inspect_camera_frames_rejected_total", "Frames the service refused for good (4xx other than 408/429), by HTTP status.",
            (*labels, "status"), registry=self.registry,
        )
        self.retries = Counter("inspect_camera_retries_total", "Posts retried after a connection error, 408, 429 or 5xx.", labels, registry=self.registry)
        self.spooled = Gauge("inspect_camera_spooled_frames", "Frames waiting in the disk spool.", labels, registry=self.registry)
        self.dropped = Counter(
            "inspect_camera_frames_dropped_total", "Frames lost because the disk spool was full (must stay 0).", labels, registry=self.registry,
        )
        self.post_seconds = Histogram(
            "inspect_camera_post_duration_seconds", "Time from sending a frame to its verdict.", labels, buckets=POST_BUCKETS, registry=self.registry,
        )
