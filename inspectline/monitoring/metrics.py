"""Every Prometheus metric inspectline exports, in one place.

Naming follows Prometheus conventions: an ``inspect_`` prefix, base units (``_seconds``, ``_bytes``,
ratios 0-1), ``_total`` on counters, and bounded labels only (line, camera, verdict, reason, signal:
never a frame or part id). Every class takes a ``registry`` so tests and each process use their own.

* :class:`LineMetrics`    exported by the service at ``GET /metrics``: one instance in the line
                          monitor deployment, fed by every gateway, so totals are line-wide however
                          many replicas judge the frames.
* :class:`CameraMetrics`  exported by a camera adapter on its own port (``--metrics-port``).
* :class:`RetrainMetrics` pushed by ``inspect retrain`` to a Pushgateway when one is configured.
* :class:`PartMetrics`    part verdicts and their delivery to the line (MQTT, OPC UA, webhook); the
                          service registers it on the same registry as :class:`LineMetrics`.
* :class:`ChallengeMetrics` the last challenge run per line and set, read from the registry folder.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# End-to-end latencies: a few ms for a small model on a GPU, hundreds on a loaded CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
PROBABILITY_BUCKETS = (*(round(0.05 * i, 2) for i in range(1, 20)), 1.0)
CONFIDENCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
DISAGREEMENT_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)

# From a part's first view to its verdict: up to the station deadline, typically below a second or two.
PART_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# From a part verdict to an output confirming it: milliseconds normally, minutes while a broker is down.
DELIVERY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0)

# Post latencies from a camera: tens of milliseconds normally, seconds while the service recovers.
POST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class LineMetrics:
    """What the inspection service exports: throughput, verdicts, latency, confidence, model, drift."""

    def __init__(self, registry: CollectorRegistry | None = None):
        disable_created_metrics()  # the *_created series double the series count and no panel uses them
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        stream = ("line", "camera")
        self.frames = Counter(
            "inspect_frames_total",
            "Frames judged, by verdict (a repeated frame id is counted once).",
            (*stream, "verdict"),
            registry=r,
        )
        self.errors = Counter(
            "inspect_errors_total",
            "Requests or frames that got an error instead of a verdict, by reason.",
            ("reason",),
            registry=r,
        )
        self.latency = Histogram(
            "inspect_request_duration_seconds",
            "End-to-end time from receiving a frame to its verdict.",
            ("line",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "inspect_inference_duration_seconds",
            "Time of one batched TTA forward on an inspector replica.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_cpu = Counter(
            "inspect_inference_cpu_seconds_total",
            "CPU seconds of the production model's batched TTA forwards (its share of the service's CPU; "
            "a shadow model's forwards are not in it).",
            registry=r,
        )
        self.batch_size = Histogram(
            "inspect_batch_size", "Frames per batched forward.", buckets=BATCH_BUCKETS, registry=r
        )
        self.probability = Histogram(
            "inspect_defect_probability",
            "Calibrated defect probability per frame.",
            stream,
            buckets=PROBABILITY_BUCKETS,
            registry=r,
        )
        self.confidence = Histogram(
            "inspect_confidence",
            "Calibrated probability that the verdict is right.",
            stream,
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.disagreement = Histogram(
            "inspect_tta_disagreement",
            "Spread (max - min) of the defect probability across TTA views.",
            stream,
            buckets=DISAGREEMENT_BUCKETS,
            registry=r,
        )
        self.unsure_ratio = Gauge(
            "inspect_unsure_ratio", "Share of UNSURE verdicts in the current drift window.", stream, registry=r
        )
        self.defect_ratio = Gauge(
            "inspect_defect_ratio", "Share of DEFECTIVE verdicts in the current drift window.", stream, registry=r
        )
        self.model_info = Gauge(
            "inspect_model_info",
            "The model version being served (value 1), and the inference engine and precision judging with it.",
            ("version", "arch", "engine", "precision"),
            registry=r,
        )
        self.model_version = Gauge(
            "inspect_model_version",
            "Number of the served model version (v0003 -> 3); changes mark promotions.",
            registry=r,
        )
        self.threshold = Gauge("inspect_model_threshold", "Operating threshold on the defect probability.", registry=r)
        self.reference_defect_ratio = Gauge(
            "inspect_reference_defect_ratio",
            "Share the served model flags DEFECTIVE on its held-out reference frames.",
            registry=r,
        )
        self.drift_score = Gauge(
            "inspect_drift_score",
            "Drift statistic per signal (KS distance; ratio to the reference for defect_rate).",
            (*stream, "signal"),
            registry=r,
        )
        self.drift_p_value = Gauge(
            "inspect_drift_p_value",
            "Bonferroni-corrected p-value of the drift test per signal.",
            (*stream, "signal"),
            registry=r,
        )
        self.drift_alarm = Gauge(
            "inspect_drift_alarm",
            "1 when the signal's corrected p-value is below alpha.",
            (*stream, "signal"),
            registry=r,
        )
        self.drift_alpha = Gauge("inspect_drift_alpha", "Significance level of the drift alarms.", registry=r)
        self.drift_window = Gauge(
            "inspect_drift_window_frames", "Frames in the current drift window.", stream, registry=r
        )
        self.store_backlog = Gauge(
            "inspect_store_backlog_frames", "Judged frames waiting to be written to the frame store.", registry=r
        )
        self.shadow_frames = Counter(
            "inspect_shadow_frames_total",
            "Frames also judged by the shadow model, by agreement with the production verdict.",
            (*stream, "version", "agreement"),
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "inspect_shadow_agreement_ratio",
            "Share of recent frames where the shadow verdict matched production.",
            ("version",),
            registry=r,
        )
        self.shadow_skipped = Counter(
            "inspect_shadow_skipped_total",
            "Frames the shadow model did not judge because the inspectors were busy.",
            registry=r,
        )


class CameraMetrics:
    """What a camera adapter exports: capture, delivery, retries and its disk spool."""

    def __init__(self, registry: CollectorRegistry | None = None):
        disable_created_metrics()  # as in LineMetrics
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("line", "camera")
        self.captured = Counter(
            "inspect_camera_frames_captured_total",
            "Frames the adapter took from its source.",
            labels,
            registry=self.registry,
        )
        self.sent = Counter(
            "inspect_camera_frames_sent_total",
            "Frames the service answered with a verdict.",
            labels,
            registry=self.registry,
        )
        self.rejected = Counter(
            "inspect_camera_frames_rejected_total",
            "Frames the service refused for good (4xx other than 408/429), by HTTP status.",
            (*labels, "status"),
            registry=self.registry,
        )
        self.retries = Counter(
            "inspect_camera_retries_total",
            "Posts retried after a connection error, 408, 429 or 5xx.",
            labels,
            registry=self.registry,
        )
        self.spooled = Gauge(
            "inspect_camera_spooled_frames", "Frames waiting in the disk spool.", labels, registry=self.registry
        )
        self.dropped = Counter(
            "inspect_camera_frames_dropped_total",
            "Frames lost because the disk spool was full (must stay 0).",
            labels,
            registry=self.registry,
        )
        self.reconnects = Counter(
            "inspect_camera_reconnects_total",
            "Times a live stream was lost, or could not be opened, and the adapter tried again.",
            labels,
            registry=self.registry,
        )
        self.post_seconds = Histogram(
            "inspect_camera_post_duration_seconds",
            "Time from sending a frame to its verdict.",
            labels,
            buckets=POST_BUCKETS,
            registry=self.registry,
        )
        self.quarantined = Counter(
            "inspect_camera_frames_quarantined_total",
            "Frames set aside in the quarantine folder after repeated 5xx answers, so the queue moves on.",
            labels,
            registry=self.registry,
        )


class RetrainMetrics:
    """The outcome of one ``inspect retrain`` run, pushed as job ``inspect_retrain``."""

    def __init__(self, registry: CollectorRegistry | None = None):
        disable_created_metrics()  # as in LineMetrics
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.last_run = Gauge(
            "inspect_retrain_last_run_timestamp_seconds", "When the last retrain finished (Unix time).", registry=r
        )
        self.duration = Gauge("inspect_retrain_duration_seconds", "Wall time of the last retrain.", registry=r)
        self.labelled = Gauge(
            "inspect_retrain_labelled_frames",
            "Labelled line frames the last retrain learnt from or was evaluated on.",
            registry=r,
        )
        self.promoted = Gauge(
            "inspect_retrain_promoted", "1 when the last retrain's challenger was promoted to production.", registry=r
        )
        self.passed = Gauge(
            "inspect_retrain_gate_passed", "1 when the last challenger passed the champion/challenger gate.", registry=r
        )
        self.score = Gauge(
            "inspect_retrain_score",
            "Champion and challenger metrics of the last retrain, per evaluation set.",
            ("model", "set", "metric"),
            registry=r,
        )


class PartMetrics:
    """Part verdicts per line and station, and their delivery through each output's outbox."""

    def __init__(self, registry: CollectorRegistry | None = None):
        disable_created_metrics()  # as in LineMetrics
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.parts = Counter(
            "inspect_parts_total",
            "Parts decided, by part verdict (OK, DEFECTIVE, UNSURE, NO_RESULT).",
            ("line", "station", "verdict"),
            registry=r,
        )
        self.deadline_missed = Counter(
            "inspect_parts_deadline_missed_total",
            "Parts decided at their deadline with a required view missing.",
            ("line", "station"),
            registry=r,
        )
        self.decision_seconds = Histogram(
            "inspect_part_decision_seconds",
            "Time from a part's first view to its verdict.",
            ("line", "station"),
            buckets=PART_BUCKETS,
            registry=r,
        )
        self.late_views = Counter(
            "inspect_part_late_views_total",
            "Views that arrived after their part was decided (they never change it).",
            ("line",),
            registry=r,
        )
        self.open_parts = Gauge("inspect_parts_open", "Parts waiting for more views.", registry=r)
        self.backlog = Gauge(
            "inspect_outbox_backlog",
            "Part verdicts waiting in the durable outbox for an output.",
            ("line", "output"),
            registry=r,
        )
        self.delivered = Counter(
            "inspect_output_delivered_total",
            "Part verdicts an output confirmed (broker PUBACK, PLC acknowledge, webhook 2xx).",
            ("line", "output"),
            registry=r,
        )
        self.delivery_failures = Counter(
            "inspect_output_delivery_failures_total",
            "Delivery attempts that failed (retried), and verdicts an output refused for good.",
            ("line", "output", "kind"),
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "inspect_output_delivery_seconds",
            "Time from a part verdict to its confirmed delivery by an output.",
            ("output",),
            buckets=DELIVERY_BUCKETS,
            registry=r,
        )


class ChallengeMetrics:
    """The last challenge run per line and set (``inspectline.challenge.last_results``)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        disable_created_metrics()  # as in LineMetrics
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("line", "set")
        self.passed = Gauge(
            "inspect_challenge_passed", "1 when the last challenge run passed.", labels, registry=self.registry
        )
        self.correct_ratio = Gauge(
            "inspect_challenge_correct_ratio",
            "Share of the last challenge run's samples that got their expected verdict.",
            labels,
            registry=self.registry,
        )
        self.last_run = Gauge(
            "inspect_challenge_last_run_timestamp_seconds",
            "When the last challenge run finished (Unix time).",
            labels,
            registry=self.registry,
        )
