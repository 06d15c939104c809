"""Configuration: one tree of frozen pydantic models, loaded once from YAML and overridden by flags.

Every section has working defaults, so ``InspectConfig()`` is a valid (full ResNet50) recipe. A YAML
file sets any subset of it; ``--set train.epochs=3`` style overrides come last. The resolved tree is
written next to every training run and inside every model version, so a run can be reproduced from
its own directory.

    cfg = load_config(Path("configs/demo.yaml"), overrides=["train.epochs=2"])
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inspectline.errors import ConfigError, validation_messages
from inspectline.ids import check_id

TtaView = Literal["identity", "hflip", "vflip", "rot180"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    """Where frames come from and how they are split and sized."""

    source: Literal["elpv", "folder", "mvtec", "manifest"] = "elpv"
    path: Path | None = Field(None, description="root folder or manifest CSV; unused for elpv")
    defect_threshold: float = Field(0.5, gt=0, le=1, description="elpv: defect probability >= this is DEFECTIVE")
    image_size: int = Field(224, ge=16, le=1024, description="square side the model sees, pixels")
    color_mode: Literal["gray", "rgb"] = "gray"
    test_size: float = Field(0.25, gt=0, lt=1, description="share of all samples held out for test")
    val_size: float = Field(0.15, gt=0, lt=1, description="share of the non-test samples used for validation")
    seed: int = 42
    cache_images: bool = Field(
        True, description="decode and resize every image once and keep it in memory; augment from that cache"
    )

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataConfig:
        if self.source != "elpv" and self.path is None:
            msg = f"data.path is required for data.source={self.source!r} (only 'elpv' ships with the package)"
            raise ValueError(msg)
        return self


class AugmentConfig(_Section):
    """Probabilities of the named training augmentations (0 disables one); see ``data.presets`` for the presets."""

    preset: Literal["train", "reference", "light", "none"] = "train"
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rotate90: float = Field(0.5, ge=0, le=1)
    affine: float = Field(0.3, ge=0, le=1)
    affine_scale: float = Field(0.1, ge=0, lt=1, description="affine zoom range: 1 +- this")
    affine_translate: float = Field(0.05, ge=0, lt=0.5, description="affine shift range, share of the side")
    affine_rotate: float = Field(10.0, ge=0, le=180, description="affine rotation range, degrees +-")
    elastic: float = Field(0.2, ge=0, le=1)
    grid_distortion: float = Field(0.2, ge=0, le=1)
    clahe: float = Field(0.3, ge=0, le=1)
    brightness_contrast: float = Field(0.5, ge=0, le=1)
    noise: float = Field(0.3, ge=0, le=1)
    blur: float = Field(0.2, ge=0, le=1)
    coarse_dropout: float = Field(0.3, ge=0, le=1)


class ModelConfig(_Section):
    """Backbone and the deep BatchNorm/dropout head."""

    arch: Literal["resnet18", "resnet34", "resnet50"] = "resnet50"
    head_dims: tuple[int, ...] = (512, 256)
    head_dropout: tuple[float, ...] = (0.5, 0.3, 0.2)
    pooling: Literal["avg", "max", "gem"] = Field(
        "avg",
        description="how the backbone's last feature map becomes one vector: avg (torchvision's), max, or gem "
        "(generalized mean with a learnt exponent, between the two): a defect covers a few of the map's cells, "
        "which an average over all of them dilutes",
    )
    width: float = Field(
        1.0,
        ge=0.125,
        le=2.0,
        description="scale of the backbone's channels in every stage (1.0: torchvision's ResNet; 0.5: half the "
        "channels, a quarter of the multiply-adds, so a larger image for the same time); ImageNet weights need 1.0",
    )
    init_weights: Literal["imagenet"] | Path | None = Field(
        None,
        description="None: from scratch; 'imagenet': torchvision's ImageNet weights (downloaded once to torch's "
        "cache when online); or a local torchvision state dict file",
    )

    @model_validator(mode="after")
    def _dropout_per_layer(self) -> ModelConfig:
        if len(self.head_dropout) != len(self.head_dims) + 1:
            msg = (
                f"model.head_dropout needs one rate per head layer plus one before the output "
                f"({len(self.head_dims) + 1} values for head_dims={list(self.head_dims)}), got "
                f"{list(self.head_dropout)}"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _pretrained_at_full_width(self) -> ModelConfig:
        if self.init_weights is not None and self.width != 1.0:
            msg = (
                f"model.init_weights={str(self.init_weights)!r} loads a full-width torchvision ResNet, which does not "
                f"fit model.width={self.width}: set model.width to 1.0, or init_weights to null to train from scratch"
            )
            raise ValueError(msg)
        return self


class TrainConfig(_Section):
    """The training recipe.

    ``precision``: ``auto`` trains with mixed precision where the hardware does it natively (AMP on CUDA;
    bf16 autocast on a CPU with AMX or AVX512-BF16, see ``inspectline.hardware``) and in fp32 elsewhere;
    ``fp32`` never autocasts; ``bf16`` always does (slow where bf16 is emulated: for tests and benchmarks).
    """

    epochs: int = Field(60, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0, description="peak learning rate of the OneCycle schedule")
    weight_decay: float = Field(0.05, ge=0)
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw",
        description="adamw (decoupled weight decay) or sgd (Nesterov momentum 0.9, cycled by OneCycle; weight decay "
        "as L2): the classic from-scratch ResNet optimizer, which wants a peak lr near 0.05 and weight decay near 5e-4",
    )
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    soft_labels: bool = Field(
        False,
        description="train towards the annotators' defect probability where a sample has one (ELPV: 0, 1/3, 2/3, "
        "1) instead of its 0/1 label; validation and every metric keep the 0/1 labels",
    )
    mixup_alpha: float = Field(0.2, ge=0, description="Beta(alpha, alpha) mixing; 0 disables mixup")
    mixup_prob: float = Field(0.5, ge=0, le=1, description="share of batches that are mixed")
    grad_clip: float = Field(1.0, gt=0)
    balanced_sampling: bool = True
    patience: int = Field(12, ge=1, description="early stopping: epochs without a better validation F1")
    keep: Literal["best", "last"] = Field(
        "best",
        description="weights to keep: the epoch with the best validation F1, or the last epoch (every epoch is run; "
        "OneCycle ends annealed, and the best of many noisy validation scores can be a lucky early epoch)",
    )
    early_stopping_start: float = Field(
        0.5,
        ge=0,
        le=1,
        description="share of the epochs before early stopping may stop: OneCycle's high-LR phase is noisy",
    )
    collapse_share: float = Field(
        0.95, gt=0.5, le=1, description="share of one predicted class that counts as collapse"
    )
    collapse_patience: int = Field(5, ge=1, description="collapsed epochs in a row before training stops")
    collapse_warmup: int = Field(3, ge=0, description="epochs before the collapse detector may stop training")
    weight_averaging: Literal["none", "ema", "swa"] = Field(
        "none", description="validate and keep an average of the weights: exponential (ema) or SWA"
    )
    ema_decay: float = Field(0.999, gt=0, lt=1, description="per-step decay of the exponential moving average")
    swa_start: float = Field(0.75, ge=0, lt=1, description="share of the epochs after which SWA averages each epoch")
    num_workers: int | Literal["auto"] = Field(
        "auto", description="loader processes; auto: none on a small machine, a quarter of the cores on a big one"
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    tensorboard: bool = Field(True, description="write TensorBoard event files into the run folder")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _amp_flag(cls, data: Any) -> Any:
        # Configs written before `precision` existed say `amp: true|false`: true meant "auto".
        if isinstance(data, dict) and "amp" in data:
            data = dict(data)
            amp = data.pop("amp")
            data.setdefault("precision", "auto" if amp else "fp32")
        return data


class CalibrationConfig(_Section):
    """Temperature scaling, the operating threshold and test-time augmentation."""

    threshold_policy: Literal["max_f1", "target_recall"] = "max_f1"
    target_recall: float = Field(0.95, gt=0, le=1, description="defect recall on validation for target_recall")
    tta_views: tuple[TtaView, ...] = ("identity", "hflip")

    @model_validator(mode="after")
    def _identity_first(self) -> CalibrationConfig:
        if not self.tta_views or self.tta_views[0] != "identity":
            msg = f"calibration.tta_views must start with 'identity', got {list(self.tta_views)}"
            raise ValueError(msg)
        return self


class ReadinessConfig(_Section):
    """Deployment-readiness checks in the evaluation report."""

    min_defect_recall: float = Field(0.85, ge=0, le=1)
    min_roc_auc: float = Field(0.90, ge=0, le=1)
    max_ece: float = Field(0.10, ge=0, le=1)
    max_latency_ms: float = Field(250.0, gt=0, description="CPU latency per frame with TTA, batch of one")


class StoreConfig(_Section):
    """Where judged frames are kept: a database for rows, object storage for image bytes."""

    database_url: str = Field(
        "sqlite:///data/frames.db", description="SQLAlchemy URL: sqlite:///... or postgresql+psycopg://..."
    )
    storage_url: str = Field(
        "data/images", description="fsspec URL or folder for image bytes: a path, file://, s3://bucket/prefix ..."
    )
    keep_ok_images: float = Field(
        0.1, ge=0, le=1, description="share of OK frames whose image is kept; DEFECTIVE/UNSURE always are"
    )
    max_age_days: int | None = Field(
        90, ge=1, description="clean-up removes older images unless labelled or in a training snapshot"
    )

    def resolved(self, base: Path) -> StoreConfig:
        """A copy whose local SQLite file and image folder are absolute (relative to ``base``)."""
        database_url, storage_url = self.database_url, self.storage_url
        prefix = "sqlite:///"
        if (
            database_url.startswith(prefix)
            and not database_url.startswith(prefix + "/")
            and ":memory:" not in database_url
        ):
            database_url = prefix + str((base / database_url[len(prefix) :]).resolve())
        if "://" not in storage_url and not Path(storage_url).is_absolute():
            storage_url = str((base / storage_url).resolve())
        return self.model_copy(update={"database_url": database_url, "storage_url": storage_url})


class RetrainConfig(_Section):
    """``inspect retrain``: what to learn from, how to fine-tune, and the champion/challenger gate."""

    epochs: int = Field(15, ge=1, description="fine-tuning epochs from the production model")
    lr: float = Field(3e-4, gt=0, description="peak learning rate of the fine-tuning OneCycle schedule")
    replay_ratio: float = Field(
        1.0, ge=0, description="samples replayed from the champion's training data per new labelled frame"
    )
    max_replay: int = Field(2000, ge=0)
    newest_share: float = Field(
        0.25, gt=0, lt=1, description="share of the new labelled frames (newest parts) held out to evaluate on"
    )
    val_share: float = Field(
        0.2, gt=0, lt=1, description="share of the training pool used for early stopping and calibration"
    )
    min_newest: int = Field(
        8, ge=0, description="below this many new labelled frames, all of them train and only the golden set gates"
    )
    recall_tolerance: float = Field(
        0.02, ge=0, le=1, description="challenger defect recall may be at most this much below the champion's"
    )
    gate_sets: tuple[Literal["golden", "newest"], ...] = ("golden", "newest")
    pushgateway: str | None = Field(
        None, description="Prometheus Pushgateway address for the outcome, e.g. localhost:9091"
    )
    seed: int = 0


# --- the line: stations, result outputs, challenge sets (``plant`` in inspect.yaml) ---------------------
# The service and the CLI read the same file, so what a line expects is declared once.
_OUTPUT_BACKOFF = "retries of an output wait from backoff_initial_s, doubling up to backoff_max_s"


def _check_ids(values: Iterable[str], what: str) -> None:
    for value in values:
        check_id(value, what)


class StationConfig(_Section):
    """One inspection point of a line: the cameras that see each part there, and when its verdict is due."""

    name: str = "main"
    cameras: tuple[str, ...] = Field(min_length=1, description="camera ids whose frames show a part here")
    required: tuple[str, ...] | None = Field(
        None, description="cameras (views) every part needs; None: all of them. Other cameras' views still count"
    )
    deadline_ms: float = Field(
        1000.0, gt=0, le=600_000, description="after the first view of a part, its verdict is out by then"
    )

    @model_validator(mode="after")
    def _views_are_cameras(self) -> StationConfig:
        _check_ids((self.name, *self.cameras), f"station {self.name!r}: id")
        if len(set(self.cameras)) != len(self.cameras):
            msg = f"station {self.name!r}: cameras {list(self.cameras)} name a camera twice"
            raise ValueError(msg)
        unknown = sorted(set(self.required or ()) - set(self.cameras))
        if unknown or self.required == ():
            msg = (
                f"station {self.name!r}: required views {list(self.required or ())} must be a non-empty subset "
                f"of its cameras {list(self.cameras)} (not cameras: {unknown})"
            )
            raise ValueError(msg)
        return self

    @property
    def required_views(self) -> tuple[str, ...]:
        return self.required if self.required is not None else self.cameras


class MqttOutput(_Section):
    """Part verdicts published to an MQTT broker (QoS 1), one topic per line."""

    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic: str = Field("inspectline/{line}/parts", description="may use {line} and {station}; no wildcards")
    retain: bool = Field(False, description="the broker keeps the last verdict for subscribers that join later")
    client_id: str | None = Field(None, description="default: inspectline-<line>")
    username: str | None = None
    password_env: str | None = Field(None, description="environment variable holding the password")
    tls: bool = False
    keepalive_s: int = Field(30, ge=5)
    timeout_s: float = Field(5.0, gt=0, description="a publish not acknowledged (PUBACK) by then is retried")

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        try:
            value.format(line="line", station="station")
        except (KeyError, IndexError, ValueError):
            msg = f"topic {value!r} may only use the placeholders {{line}} and {{station}}"
            raise ValueError(msg) from None
        if not value or "#" in value or "+" in value:
            msg = f"topic {value!r} must be a non-empty topic name without the wildcards '+' and '#'"
            raise ValueError(msg)
        return value


class OpcUaOutput(_Section):
    """An OPC UA server the line's PLC reads part verdicts from, with a result-ready / acknowledge handshake."""

    endpoint: str = Field("opc.tcp://0.0.0.0:4840/inspectline/", description="where the server listens")
    namespace: str = "urn:inspectline"
    ack_timeout_s: float = Field(
        5.0, gt=0, description="a result the PLC has not acknowledged by then counts as a failed delivery"
    )

    @field_validator("endpoint")
    @classmethod
    def _opc_tcp(cls, value: str) -> str:
        if not value.startswith("opc.tcp://") or len(value) <= len("opc.tcp://"):
            msg = f"endpoint {value!r} must be an opc.tcp://HOST:PORT/PATH address"
            raise ValueError(msg)
        return value


class WebhookOutput(_Section):
    """Part verdicts POSTed as JSON to a URL, retried until it answers 2xx."""

    url: str
    timeout_s: float = Field(5.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    token_env: str | None = Field(None, description="environment variable holding a bearer token")

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            msg = f"webhook url {value!r} must start with http:// or https://"
            raise ValueError(msg)
        return value


class OutputsConfig(_Section):
    """Where a line's part verdicts go; each configured output gets every verdict, in order."""

    mqtt: MqttOutput | None = None
    opcua: OpcUaOutput | None = None
    webhook: WebhookOutput | None = None


class ChallengeSetConfig(_Section):
    """A labelled golden set posted through the running service as one of the line's cameras."""

    path: Path = Field(description="folder with ok/ and defective/ sub-folders, or a CSV manifest path,label")
    camera: str | None = Field(None, description="camera id the samples are posted as; default the first camera")
    after_promotion: bool = Field(True, description="run after every promotion; a failure rolls it back")
    timeout_s: float = Field(120.0, gt=0, description="the whole run, including waiting for the promoted model")


class LineConfig(_Section):
    """A production line: its stations, what a part without a verdict means, its outputs and challenge sets."""

    stations: tuple[StationConfig, ...] = Field(description="at least one")
    no_result: Literal["reject", "pass"] = Field("reject", description="what the line does with a NO_RESULT part")
    unsure: Literal["reject", "pass"] = Field("reject", description="what the line does with an UNSURE part")
    outputs: OutputsConfig = OutputsConfig()
    challenges: dict[str, ChallengeSetConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_station_per_camera(self) -> LineConfig:
        if not self.stations:
            msg = "a line needs at least one station (stations: [{name: main, cameras: [cam-1]}])"
            raise ValueError(msg)
        names = [s.name for s in self.stations]
        if len(set(names)) != len(names):
            msg = f"station names {names} must be unique within a line"
            raise ValueError(msg)
        seen: dict[str, str] = {}
        for station in self.stations:
            for camera in station.cameras:
                if camera in seen:
                    msg = f"camera {camera!r} is in stations {seen[camera]!r} and {station.name!r}; a camera sees one"
                    raise ValueError(msg)
                seen[camera] = station.name
        _check_ids(self.challenges, "challenge set")
        for name, challenge in self.challenges.items():
            if challenge.camera is not None and challenge.camera not in seen:
                msg = f"challenge set {name!r}: camera {challenge.camera!r} is not one of the line's {sorted(seen)}"
                raise ValueError(msg)
        return self

    def station_of(self, camera: str) -> StationConfig | None:
        return next((s for s in self.stations if camera in s.cameras), None)

    def disposition(self, verdict: str) -> str:
        """``reject`` or ``pass``: what the reject gate does with a part of this verdict."""
        return {"OK": "pass", "DEFECTIVE": "reject", "UNSURE": self.unsure, "NO_RESULT": self.no_result}[verdict]


class PlantConfig(_Section):
    """The lines this service judges parts for, where undelivered verdicts wait, and the service's address."""

    service_url: str = Field("http://127.0.0.1:8000", description="the running service, for challenge runs")
    outbox: Path = Field(Path("data/outbox.sqlite3"), description="durable queue of part verdicts per output")
    max_open_parts: int = Field(10_000, ge=1, description="parts waiting for views; beyond it the oldest is decided")
    backoff_initial_s: float = Field(0.5, gt=0, description=_OUTPUT_BACKOFF)
    backoff_max_s: float = Field(30.0, gt=0, description=_OUTPUT_BACKOFF)
    lines: dict[str, LineConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_challenge_names(self) -> PlantConfig:
        _check_ids(self.lines, "line")
        owners: dict[str, str] = {}
        for line_id, line in self.lines.items():
            for name in line.challenges:
                if name in owners:
                    msg = f"challenge set {name!r} is declared by lines {owners[name]!r} and {line_id!r}; rename one"
                    raise ValueError(msg)
                owners[name] = line_id
        return self

    def challenge(self, name: str) -> tuple[str, ChallengeSetConfig]:
        """The line and settings of challenge set ``name``; ConfigError naming the sets there are."""
        for line_id, line in self.lines.items():
            if name in line.challenges:
                return line_id, line.challenges[name]
        known = [n for line in self.lines.values() for n in line.challenges]
        msg = f"challenge set {name!r} is not configured (plant.lines.*.challenges: {', '.join(known) or 'none'})"
        raise ConfigError(msg)


class AuditConfig(_Section):
    """The audit trail (``<registry>/audit.jsonl``) and where else its events go."""

    syslog: str | None = Field(None, description="also send each event to syslog: /dev/log or host:port (UDP)")


class PathsConfig(_Section):
    """Where runs, model versions and reports live."""

    runs: Path = Path("runs")
    registry: Path = Path("models")
    reports: Path = Path("reports")
    snapshots: Path = Path("snapshots")


class InspectorOptions(_Section):
    """``user_config`` of the inspector replicas: verdict rules, TTA and dynamic batching."""

    threshold: float | None = Field(None, gt=0, lt=1, description="override the model's operating threshold")
    unsure_band: float = Field(0.0, ge=0, lt=0.5, description="verdict UNSURE within this distance of the threshold")
    tta: bool = Field(True, description="flip test-time augmentation as stored with the model")
    max_batch_size: int = Field(16, ge=1, le=512)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=1)
    device: str = Field("auto", description="'auto', 'cpu' or 'cuda'")
    max_loaded_versions: int = Field(
        3, ge=1, description="model versions kept in memory: old and new during a switch, and a shadow"
    )
    engine: Literal["auto", "torch", "openvino", "onnxruntime"] = Field(
        "auto", description="auto: the fastest export of the version that passed parity, else the checkpoint in torch"
    )
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto", description="auto: whatever the engine rule picks; or ask for one (an error if it cannot run here)"
    )
    torch_autocast: bool = Field(
        False,
        description="with precision auto, run the checkpoint in bf16/fp16 autocast where the hardware has it "
        "natively (faster, but never checked for parity like an export)",
    )
    threads: int | None = Field(
        None, ge=1, description="inference threads per replica; default: the replica's num_cpus (OMP_NUM_THREADS)"
    )
    camera_bit_depth: dict[str, int] = Field(
        default_factory=dict,
        description="significant bits of 16-bit frames per camera id (e.g. {cam-3: 12}); otherwise the PNG's sBIT, "
        "else the bit depth the model was trained on",
    )

    @field_validator("camera_bit_depth")
    @classmethod
    def _bit_depths(cls, value: dict[str, int]) -> dict[str, int]:
        bad = {camera: bits for camera, bits in value.items() if not 8 <= bits <= 16}
        if bad:
            msg = f"camera_bit_depth must be between 8 and 16 bits, got {bad}"
            raise ValueError(msg)
        return value


class GatewayOptions(_Section):
    """``user_config`` of the HTTP gateway deployment (see ``serve_config.yaml``)."""

    model: str = Field("production", description="model to serve: production (follows promotions), latest or vNNNN")
    reload_interval_s: float = Field(1.0, gt=0, description="how often the production pointer is checked")
    switch_delay_s: float = Field(
        0.0,
        ge=0,
        le=600,
        description="with several Gateway replicas (judge: gateway): every replica switches to a promoted version (or "
        "a new operating point) this long after the registry recorded the change, all at one instant, each warm by "
        "then; above reload_interval_s plus the time a version takes to load. 0: each switches once warm",
    )
    max_body_bytes: int = Field(20 * 2**20, ge=1024, description="larger request bodies get 413")
    max_pixels: int = Field(40_000_000, ge=1, description="decompression-bomb guard: larger images get 422")
    max_batch_files: int = Field(64, ge=1, description="images per POST /v1/frames/batch")
    max_inflight: int = Field(64, ge=1, description="frames being judged at once; beyond it 503 + Retry-After")
    retry_after_s: int = Field(1, ge=1)
    recent_frames: int = Field(
        100_000, ge=0, description="verdicts remembered per gateway to answer a repeated frame id"
    )
    monitor_flush_s: float = Field(0.2, gt=0, le=10, description="how often frame records are sent to the line monitor")
    inspect_window_s: float = Field(
        0.0,
        ge=0,
        le=0.1,
        description="frames arriving within this of each other go to an inspector in one call; 0: those of the same "
        "event-loop turn (the frames of one batch post)",
    )
    inspect_group_max: int = Field(8, ge=1, le=256, description="most frames in one call to an inspector replica")
    replica_calls: Literal["grpc", "ray"] = Field(
        "grpc",
        description="how frames go to the inspector replicas and records to the line monitor: grpc (Ray Serve's gRPC "
        "between replicas, by value: about half the CPU of an actor call) or ray (Ray actor calls, by reference)",
    )
    max_pending_bytes: int = Field(
        256 * 2**20,
        ge=2**20,
        description="judged frames (with their images) held in memory for the line monitor; beyond it they wait "
        "only in the gateway's journal on disk",
    )
    inspector: InspectorOptions | None = Field(
        None,
        description="where the gateway judges frames itself (the application's args: judge: gateway): the settings an "
        "Inspector replica would take (engine, threshold, TTA, batching); refused where Inspector replicas judge",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_token_in_the_serve_config(cls, values: Any) -> Any:
        if isinstance(values, dict) and "api_token" in values:
            msg = (
                "api_token is no longer read from the serve config (a secret in a deployment file); set "
                "INSPECT_API_TOKEN in the service's environment, or name tokens with scopes in "
                "service.tokens_file (`inspect tokens add`)"
            )
            raise ValueError(msg)
        return values


class MonitorOptions(_Section):
    """``user_config`` of the line monitor: drift windows and label limits."""

    drift_window: int = Field(200, ge=10, description="frames per camera in the sliding drift window")
    drift_interval: int = Field(50, ge=1, description="frames between two drift evaluations once the window is full")
    drift_alpha: float = Field(
        0.01, gt=0, lt=1, description="significance of a drift alarm (corrected over every test of a window)"
    )
    max_streams: int = Field(
        256, ge=1, description="distinct (line, camera) label pairs; more are counted under 'other'"
    )


class HeatmapOptions(_Section):
    """``user_config`` of the heatmap worker: the review station's heatmaps, on demand and precomputed."""

    method: str | None = Field(None, description="CAM method (explain.METHODS); None: explain.DEFAULT_METHOD")
    stages: tuple[str, ...] | None = Field(None, description="backbone stages to explain; None: explain's default")
    max_models: int = Field(2, ge=1, description="model versions' explainers kept in memory")
    threads: int = Field(1, ge=1, le=256, description="torch threads of the worker (it reserves no CPU of its own)")
    precompute: bool = Field(
        False, description="compute heatmaps of new DEFECTIVE/UNSURE frames in the background, before anyone asks"
    )
    precompute_interval_s: float = Field(10.0, gt=0, description="how often the worker looks for new frames")
    precompute_lookback_h: float = Field(24.0, ge=0, description="how far back the first pass after a start looks")


class ServiceConfig(_Section):
    """The inspection service's own settings in this file, so the CLI and the service agree on locations.

    Where frames are kept (``store``) and which models are served (``paths.registry``) come from this
    same file: ``serve_config.yaml`` only names it.
    """

    spool_dir: Path = Field(Path("data/spool"), description="judged frames waiting for the monitor or the store")
    tokens_file: Path | None = Field(
        None, description="YAML of named API tokens with scopes (see `inspect tokens add`); relative to this file"
    )


class InspectConfig(_Section):
    """The whole configuration tree."""

    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    readiness: ReadinessConfig = ReadinessConfig()
    plant: PlantConfig = PlantConfig()
    audit: AuditConfig = AuditConfig()
    paths: PathsConfig = PathsConfig()
    store: StoreConfig = StoreConfig()
    retrain: RetrainConfig = RetrainConfig()
    service: ServiceConfig = ServiceConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> InspectConfig:
    """Read YAML (optional), apply ``dotted.key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path)
    for item in overrides or []:
        _apply_override(raw, item)
    return build_config(raw, origin=str(path) if path else "defaults")


def build_config(raw: dict[str, Any], *, origin: str = "config") -> InspectConfig:
    """Validate a plain dict into an :class:`InspectConfig`, with readable errors."""
    try:
        return InspectConfig.model_validate(raw)
    except ValidationError as exc:
        msg = f"invalid configuration in {origin}:\n" + "\n".join(f"  {line}" for line in validation_messages(exc))
        raise ConfigError(msg) from None


def merge_config(base: InspectConfig, overrides: list[str]) -> InspectConfig:
    """Apply dotted overrides on top of an existing config (used by retraining and the CLI)."""
    raw = base.model_dump(mode="json")
    for item in overrides:
        _apply_override(raw, item)
    return build_config(raw, origin="overrides")


def data_overrides(spec: str) -> list[str]:
    """A ``--data`` spec as overrides: ``folder:/data/cells`` -> ``["data.source=folder", "data.path=/data/cells"]``."""
    kind, _, path = spec.partition(":")
    kinds = ("elpv", "folder", "mvtec", "manifest")
    if kind not in kinds:
        msg = f"--data {spec!r}: source must be one of {', '.join(kinds)} (as elpv or folder:PATH)"
        raise ConfigError(msg)
    if kind != "elpv" and not path:
        msg = f"--data {spec!r}: {kind} needs a path, as {kind}:PATH"
        raise ConfigError(msg)
    return [f"data.source={kind}"] + ([f"data.path={path}"] if path else [])


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        msg = f"config file {path} does not exist"
        raise ConfigError(msg)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        msg = f"config file {path} is not valid YAML: {exc}"
        raise ConfigError(msg) from None
    if not isinstance(data, dict):
        msg = f"config file {path} must hold a mapping at the top level, got {type(data).__name__}"
        raise ConfigError(msg)
    return data


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        msg = f"override {item!r} is not of the form section.key=value (for example train.epochs=3)"
        raise ConfigError(msg)
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            msg = f"override {item!r}: {part!r} is a value, not a section"
            raise ConfigError(msg)
        node = child
    node[leaf] = yaml.safe_load(value) if value.strip() else None
