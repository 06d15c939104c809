"""``inspect camera ...``: run one camera adapter in the foreground until it ends or Ctrl-C / SIGTERM.

    inspect camera folder /data/hot/cam-1 --camera-id cam-1 --results-log results.jsonl
    inspect camera video rtsp://10.0.0.7/stream1 --fps 5 --camera-id cam-2
    inspect camera replay --data elpv --fps 5 --limit 200 --shift brightness --shift-from 100

Each command parses its options into settings models and calls ``run_camera``; the heavy imports
(OpenCV, datasets) wait until a command runs. Errors print one line and exit with status 2. On stop,
frames not yet delivered stay in the spool folder and are sent first by the next run.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from inspectline.errors import ConfigError, InspectError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from inspectline.camera_adapters.runner import AdapterSettings

camera_app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Camera adapters: send a hot folder, a video file or stream, or a replayed dataset to the inspection service.",
)

UrlOpt = Annotated[str, typer.Option("--url", help="Base URL of the inspection service.")]
LineOpt = Annotated[str, typer.Option("--line-id", help="Production line id sent with every frame.")]
CameraOpt = Annotated[str, typer.Option("--camera-id", help="Camera id sent with every frame.")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="INSPECT_API_TOKEN", show_envvar=True, help="Bearer token for the service."),
]
SpoolOpt = Annotated[
    Path | None,
    typer.Option("--spool-dir", help="Spool folder for undelivered frames and progress (default: spool/CAMERA_ID)."),
]
MetricsOpt = Annotated[int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.")]
ResultsOpt = Annotated[
    Path | None, typer.Option("--results-log", help="Append one JSON line per verdict, in capture order.")
]
QueueOpt = Annotated[
    int, typer.Option("--queue-size", help="Frames held in memory before the spool; 0 spools every frame first.")
]
SpoolMaxOpt = Annotated[
    float, typer.Option("--spool-max-mb", help="Spool capacity in MiB; frames beyond it are dropped and counted.")
]
InFlightOpt = Annotated[
    int, typer.Option("--max-in-flight", help="Posts in flight at once; results still settle in capture order.")
]
QuarantineOpt = Annotated[
    int,
    typer.Option("--quarantine-after", help="5xx answers for one frame before it goes to SPOOL_DIR/quarantine/."),
]
LogMaxOpt = Annotated[
    float | None, typer.Option("--results-log-max-mb", help="Rotate the results log past this size (MiB).")
]
LogDailyOpt = Annotated[
    bool, typer.Option("--results-log-daily/--no-results-log-daily", help="Rotate the results log each UTC day.")
]


@camera_app.command()
def folder(
    path: Annotated[Path, typer.Argument(help="The hot folder the camera writes image files into.")],
    poll_interval: Annotated[float, typer.Option(help="Seconds between looks at the folder.")] = 0.5,
    stable_polls: Annotated[int, typer.Option(help="Polls with unchanged size and mtime before a file is taken.")] = 2,
    part_id_pattern: Annotated[
        str | None, typer.Option(help="Regex on the file name; its group 'part' (or group 1) is the part id.")
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    line_id: LineOpt = "line-1",
    camera_id: CameraOpt = "cam-1",
    token: TokenOpt = None,
    spool_dir: SpoolOpt = None,
    metrics_port: MetricsOpt = None,
    results_log: ResultsOpt = None,
    queue_size: QueueOpt = 64,
    spool_max_mb: SpoolMaxOpt = 2048,
    max_in_flight: InFlightOpt = 4,
    quarantine_after: QuarantineOpt = 8,
    results_log_max_mb: LogMaxOpt = 64,
    results_log_daily: LogDailyOpt = True,
) -> None:
    """Watch a folder; send each completely written image once; move it to done/ or failed/."""
    from inspectline.camera_adapters.folder import FolderSettings

    with _cli_errors():
        source = _build(
            FolderSettings,
            path=path,
            poll_interval_s=poll_interval,
            stable_polls=stable_polls,
            part_id_pattern=part_id_pattern,
        )
        _run(
            source,
            _adapter(locals()),
        )


@camera_app.command()
def video(
    source: Annotated[
        str, typer.Argument(help="Video file, rtsp:// or http:// stream URL, or device index (0, 1, ...).")
    ],
    fps: Annotated[
        float | None, typer.Option(help="Frames per second at most (files default to their own rate).")
    ] = None,
    live: Annotated[
        bool | None,
        typer.Option("--live/--file", help="Treat SOURCE as a live stream or as a file (default: from SOURCE)."),
    ] = None,
    max_frames: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    line_id: LineOpt = "line-1",
    camera_id: CameraOpt = "cam-1",
    token: TokenOpt = None,
    spool_dir: SpoolOpt = None,
    metrics_port: MetricsOpt = None,
    results_log: ResultsOpt = None,
    queue_size: QueueOpt = 64,
    spool_max_mb: SpoolMaxOpt = 2048,
    max_in_flight: InFlightOpt = 4,
    quarantine_after: QuarantineOpt = 8,
    results_log_max_mb: LogMaxOpt = 64,
    results_log_daily: LogDailyOpt = True,
    drain_timeout: Annotated[
        float | None,
        typer.Option(help="After a file ends, seconds to keep delivering before leaving the rest spooled."),
    ] = None,
) -> None:
    """Capture frames with OpenCV from a file, a stream or a device; reconnect when a stream drops."""
    from inspectline.camera_adapters.video import VideoSettings

    with _cli_errors():
        settings = _build(VideoSettings, source=source, fps=fps, live=live, max_frames=max_frames)
        _run(
            settings,
            _adapter(locals()),
        )


@camera_app.command()
def replay(
    data: Annotated[str, typer.Option("--data", help="elpv, folder:PATH, mvtec:PATH or manifest:FILE.csv")] = "elpv",
    fps: Annotated[float, typer.Option(help="Frames per second.")] = 5.0,
    limit: Annotated[int | None, typer.Option(help="Send at most this many frames.")] = None,
    loop: Annotated[bool, typer.Option(help="Start over at the end (new frame ids) until stopped.")] = False,
    shuffle_seed: Annotated[int | None, typer.Option(help="Play in a seeded random order.")] = None,
    shift: Annotated[str, typer.Option(help="Inject a shift: none, brightness, blur or noise.")] = "none",
    shift_from: Annotated[int, typer.Option(help="Frames of this run before the shift starts.")] = 0,
    shift_strength: Annotated[
        float | None,
        typer.Option(help="brightness: scale - 1 (0.4); blur: sigma px (2); noise: sigma / full scale (0.08)."),
    ] = None,
    url: UrlOpt = "http://127.0.0.1:8000",
    line_id: LineOpt = "line-1",
    camera_id: CameraOpt = "cam-1",
    token: TokenOpt = None,
    spool_dir: SpoolOpt = None,
    metrics_port: MetricsOpt = None,
    results_log: ResultsOpt = None,
    queue_size: QueueOpt = 64,
    spool_max_mb: SpoolMaxOpt = 2048,
    max_in_flight: InFlightOpt = 4,
    quarantine_after: QuarantineOpt = 8,
    results_log_max_mb: LogMaxOpt = 64,
    results_log_daily: LogDailyOpt = True,
    drain_timeout: Annotated[
        float | None,
        typer.Option(help="After the replay ends, seconds to keep delivering before leaving the rest spooled."),
    ] = None,
) -> None:
    """Replay a dataset as a camera at a set frame rate, optionally with an injected shift."""
    from inspectline.camera_adapters.replay import ReplaySettings
    from inspectline.config import data_overrides, load_config

    with _cli_errors():
        data_config = load_config(None, data_overrides(data)).data
        settings = _build(
            ReplaySettings,
            data=data_config,
            fps=fps,
            limit=limit,
            loop=loop,
            shuffle_seed=shuffle_seed,
            shift=shift,
            shift_from=shift_from,
            shift_strength=shift_strength,
        )
        _run(
            settings,
            _adapter(locals()),
        )


def _adapter(options: dict[str, Any]) -> AdapterSettings:
    """The adapter settings from the options every camera command shares (the command's ``locals()``)."""
    from inspectline.camera_adapters.runner import AdapterSettings
    from inspectline.camera_adapters.uploader import UploadSettings

    upload = _build(UploadSettings, url=options["url"], token=options["token"] or None)
    log_max_mb = options["results_log_max_mb"]
    return _build(
        AdapterSettings,
        line_id=options["line_id"],
        camera_id=options["camera_id"],
        upload=upload,
        spool_dir=options["spool_dir"],
        spool_max_bytes=int(options["spool_max_mb"] * 2**20),
        queue_size=options["queue_size"],
        results_log=options["results_log"],
        metrics_port=options["metrics_port"],
        drain_timeout_s=options.get("drain_timeout"),
        max_in_flight=options["max_in_flight"],
        quarantine_after=options["quarantine_after"],
        results_log_max_bytes=int(log_max_mb * 2**20) if log_max_mb else None,
        results_log_daily=options["results_log_daily"],
    )


def _run(source: Any, adapter: AdapterSettings) -> None:
    from inspectline.camera_adapters.runner import run_camera, stop_on_signals

    stop = threading.Event()
    typer.echo(
        f"camera {adapter.camera_id} on line {adapter.line_id} -> {adapter.upload.url} (spool: "
        f"{adapter.spool_dir}); Ctrl-C stops"
    )
    with stop_on_signals(stop):
        summary = run_camera(source, adapter, stop=stop)
    typer.echo(json.dumps(summary.to_dict()))


def _build(model: type, **values: Any) -> Any:
    """Validate settings; pydantic's errors become one ConfigError naming each bad option and value."""
    try:
        return model(**values)
    except ValidationError as exc:
        lines = [
            f"  {'.'.join(str(p) for p in e['loc']) or model.__name__}: {e['msg']} (got {e.get('input')!r})"
            for e in exc.errors()
        ]
        msg = f"invalid {model.__name__}:\n" + "\n".join(lines)
        raise ConfigError(msg) from None


@contextmanager
def _cli_errors() -> Iterator[None]:
    try:
        yield
    except InspectError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=2) from None
