"""The ``inspect`` command. Each subcommand parses its options and calls one library function.

    inspect train --profile demo            train, calibrate, evaluate, register
    inspect evaluate --model production     metrics JSON + Markdown report with plots
    inspect predict frame.png ...           verdicts through the Predictor (--heatmap DIR: overlays too)
    inspect models list|show|promote|rollback|shadow|set-threshold
    inspect export v0003 --format openvino --precision int8   exported engine, parity-checked
    inspect serve                           the inspection service (serve_config.yaml)
    inspect monitor                         Prometheus on loopback with the line's alert rules
    inspect camera folder|video|replay      camera adapters feeding the service
    inspect review export|import            review labels as CSV or Label Studio tasks
    inspect retrain --since last-week       fine-tune on reviewed frames; champion/challenger gate
    inspect challenge --set NAME            post a line's golden set through the service; pass or fail
    inspect audit [--since] [--verify]      the audit trail: who changed what affects verdicts, and when
    inspect store cleanup                   age-based image clean-up
    inspect demo                            the end-to-end demo behind `make demo`

Configuration: ``--profile NAME`` (a YAML shipped in ``inspectline/profiles``) or ``--config FILE``
(default ``inspect.yaml`` in the working directory when it exists), then ``--set key=value``.
Library errors are printed as one clear message with exit status 2.
"""

from __future__ import annotations

import json
import logging
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from inspectline.camera_adapters.cli import camera_app
from inspectline.config import InspectConfig, data_overrides, load_config
from inspectline.errors import ConfigError, InspectError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="inspectline: defect inspection for manufacturing lines."
)
models_app = typer.Typer(
    no_args_is_help=True, help="Model versions: list, show, promote, rollback, shadow, set-threshold."
)
review_app = typer.Typer(no_args_is_help=True, help="Review labels: export frames to label, import the labels.")
store_app = typer.Typer(no_args_is_help=True, help="The frame store: clean-up.")
tokens_app = typer.Typer(no_args_is_help=True, help="API tokens with scopes, for cameras, dashboards and reviewers.")
app.add_typer(models_app, name="models")
app.add_typer(review_app, name="review")
app.add_typer(store_app, name="store")
app.add_typer(tokens_app, name="tokens")
app.add_typer(camera_app, name="camera", help="Camera adapters: hot folder, video/RTSP capture, dataset replay.")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (default: ./inspect.yaml if present).")
]
PROFILES = resources.files("inspectline") / "profiles"


def shipped_profiles() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in PROFILES.iterdir() if p.name.endswith(".yaml"))


ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help=f"A shipped profile: {', '.join(shipped_profiles())}.")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config value, e.g. --set train.epochs=3 (repeatable).")
]
DataOpt = Annotated[str | None, typer.Option("--data", help="elpv, folder:PATH, mvtec:PATH or manifest:FILE.csv")]
ActorOpt = Annotated[
    str | None, typer.Option("--actor", help="Who makes the change, for the audit trail (default: user@host).")
]
RegistryOpt = Annotated[
    Path | None, typer.Option("--registry", help="Model registry folder (default: paths.registry).")
]
ChallengeOpt = Annotated[
    bool,
    typer.Option(help="After a promotion, run the line's after_promotion challenge sets; a failure rolls it back."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="INSPECT_API_TOKEN", show_envvar=True, help="Bearer token for the service."),
]


def resolve_config(
    config: Path | None = None, profile: str | None = None, overrides: list[str] | None = None, data: str | None = None
) -> InspectConfig:
    """Profile or file, then ``--data``, then ``--set`` overrides."""
    if config is not None and profile is not None:
        msg = "give either --config or --profile, not both"
        raise ConfigError(msg)
    if profile is not None:
        config = profile_path(profile)
    elif config is None and Path("inspect.yaml").is_file():
        config = Path("inspect.yaml")
    extra = list(overrides or [])
    if data is not None:
        extra = [*data_overrides(data), *extra]
    return load_config(config, extra)


def profile_path(name: str) -> Path:
    path = Path(str(PROFILES / f"{name}.yaml"))
    if not path.is_file():
        msg = f"profile {name!r} does not exist; available: {', '.join(shipped_profiles())}"
        raise ConfigError(msg)
    return path


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@app.command()
def train(
    config: ConfigOpt = None,
    profile: ProfileOpt = None,
    overrides: SetOpt = None,
    data: DataOpt = None,
    register: Annotated[bool, typer.Option(help="Register the trained model as a new version.")] = True,
    promote: Annotated[bool, typer.Option(help="Also promote it to production.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train, calibrate and evaluate a model; register it as a new version."""
    from inspectline.audit import default_actor
    from inspectline.registry import ModelRegistry
    from inspectline.training import run_training

    cfg = resolve_config(config, profile, overrides, data)
    run = run_training(cfg, progress=not quiet)
    _print_evaluation(run.evaluation.summary())
    typer.echo(f"run folder: {run.run_dir}\nreport:     {run.report}")
    if register:
        registry = ModelRegistry(cfg.paths.registry)
        version = registry.register(run.checkpoint)
        typer.echo(f"registered {version.name} in {registry.root}")
        if promote:
            registry.promote(version.name, reason="inspect train --promote", actor=default_actor())
            typer.echo(f"promoted {version.name} to production")


@app.command()
def evaluate(
    model: Annotated[
        str, typer.Option("--model", "-m", help="production, latest, vNNNN or a checkpoint path.")
    ] = "production",
    split: Annotated[str, typer.Option(help="train, val, test (the model's saved split) or all.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Output folder (default: paths.reports/<version>-<split>).")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    data: DataOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Evaluate a model and write metrics JSON plus a Markdown report with plots."""
    from inspectline.evaluate import evaluate_model

    cfg = resolve_config(config, None, overrides, data)
    result = evaluate_model(
        cfg, model_ref=model, split=split, out_dir=out, registry_root=registry, data_given=data is not None
    )
    _print_evaluation(result.evaluation.summary())
    typer.echo(f"report: {result.report}")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, BMP, TIFF).")],
    model: Annotated[str, typer.Option("--model", "-m")] = "production",
    tta: Annotated[bool, typer.Option(help="Flip test-time augmentation as stored with the model.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    heatmap: Annotated[
        Path | None, typer.Option("--heatmap", help="Write each file's heatmap overlay (<stem>.heatmap.png) here.")
    ] = None,
    config: ConfigOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Judge image files: verdict, calibrated defect probability and confidence for each."""
    from inspectline.evaluate import predict_files

    cfg = resolve_config(config)
    results = predict_files(
        images, model_ref=model, registry_root=registry or cfg.paths.registry, tta=tta, heatmap_dir=heatmap
    )
    failed = 0
    for result in results:
        path, outcome = result.path, result.outcome
        if isinstance(outcome, InspectError):
            failed += 1
            typer.echo(
                json.dumps({"path": str(path), "error": str(outcome)}) if as_json else f"{path}: ERROR {outcome}",
                err=not as_json,
            )
            continue
        row = {
            "path": str(path),
            "verdict": outcome.verdict,
            "defect_probability": round(outcome.defect_probability, 4),
            "confidence": round(outcome.confidence, 4),
            "threshold": round(outcome.threshold, 4),
            "model_version": outcome.model_version,
        }
        if result.heatmap is not None:
            row["heatmap"] = str(result.heatmap)
        typer.echo(
            json.dumps(row)
            if as_json
            else f"{path}: {row['verdict']:<9} p(defect)={row['defect_probability']:.4f} "
            f"confidence={row['confidence']:.4f}" + (f" heatmap={result.heatmap}" if result.heatmap else "")
        )
    if failed:
        raise typer.Exit(code=1)


@app.command()
def demo(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    serve_config: Annotated[Path, typer.Option(help="Ray Serve config used for the service step.")] = Path(
        "serve_config.yaml"
    ),
    frames: Annotated[int, typer.Option(help="Test-split cells posted to the service.")] = 200,
) -> None:
    """Train a quick model on ELPV, register it, export it for this CPU, serve it and post frames to it."""
    from inspectline.demo import run_demo

    cfg = resolve_config(config, None if config else "demo", overrides)
    run_demo(cfg, serve_config=serve_config, frames=frames)


@app.command("export")
def export_model(
    version: Annotated[str, typer.Argument(help="vNNNN, production or latest.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="onnx or openvino.")],
    precision: Annotated[
        str, typer.Option(help="fp32, fp16 (OpenVINO), bf16 (OpenVINO, CPUs with native bf16) or int8.")
    ] = "fp32",
    max_drop: Annotated[
        float | None,
        typer.Option(
            "--max-drop",
            min=0.0,
            max=1.0,
            help="INT8 only: keep sensitive layers in floating point until verdict agreement with the checkpoint "
            "on the validation split drops by at most this much (e.g. 0.01).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Record the export even if parity is below the bound.")
    ] = False,
    min_agreement: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Parity bound on test-split verdict agreement (default 0.99 int8, else 0.999).",
        ),
    ] = None,
    calibration_frames: Annotated[int, typer.Option(min=1, help="INT8: training-split frames to calibrate on.")] = 300,
    threads: Annotated[
        int | None, typer.Option(min=1, help="Engine threads while checking (default: the runtime's).")
    ] = None,
    actor: ActorOpt = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export VERSION as an ONNX or OpenVINO model inside it, with parity against the checkpoint."""
    from inspectline.audit import default_actor
    from inspectline.export import ExportRequest, export_version
    from inspectline.registry import ModelRegistry

    reg = ModelRegistry(registry or resolve_config(config).paths.registry)
    name = reg.resolve(version).parent.name  # production, latest, v0003 or 3 -> the version folder
    request = ExportRequest(
        format=fmt,
        precision=precision,
        max_drop=max_drop,
        force=force,
        min_agreement=min_agreement,
        calibration_frames=calibration_frames,
        threads=threads,
    )
    result = export_version(reg, name, request, actor=actor or default_actor())
    r = result.record
    typer.echo(result.table)
    speed = (
        f"{r.images_per_s:.1f} images/s, {r.speedup:.2f}× torch fp32 on {r.measured_on}"
        if r.speedup
        else "speed not measured"
    )
    verdict = "parity passed" if r.passed else "parity BELOW the bound, recorded because of --force"
    typer.echo(f"exported {name} as {r.format}-{r.precision}: {r.path} ({verdict}; {speed})")


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="Ray Serve config file.")] = Path("serve_config.yaml"),
    address: Annotated[
        str | None,
        typer.Option(
            "--address", "-a", help="Deploy to this Ray cluster and return; default: a local Ray in the foreground."
        ),
    ] = None,
    ingress: Annotated[
        str,
        typer.Option(
            "--ingress",
            envvar="INSPECT_INGRESS",
            help="The local Ray's HTTP front: haproxy (HAProxy straight to the Gateway: cheaper per post), ray "
            "(Ray Serve's proxy), or auto: haproxy where it is installed, else ray.",
        ),
    ] = "auto",
) -> None:
    """Run the inspection service (the same deploy as `serve run serve_config.yaml`)."""
    from inspectline.serving.deploy import serve_until_interrupted

    def ready(url: str, _health: dict) -> None:
        if address is not None:
            typer.echo(f"deployed {config} to {address}; the service answers at {url} on the cluster's HTTP proxy")
            return
        typer.echo(f"service up at {url}  (OpenAPI: {url}/docs, readiness: {url}/readyz); Ctrl-C stops it")

    serve_until_interrupted(config, address=address, on_ready=ready, report=typer.echo, ingress=ingress)


@app.command()
def monitor(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Prometheus config: scrape targets and alert rules.")
    ] = Path("grafana/prometheus/prometheus.yml"),
    port: Annotated[
        int, typer.Option(help="Port on 127.0.0.1 (Grafana's provisioned data source expects 9090).")
    ] = 9090,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Folder for Prometheus' time series database.")] = Path(
        "runs/prometheus"
    ),
) -> None:
    """Run Prometheus on loopback with the line's scrape config and alert rules, until Ctrl-C."""
    from inspectline.monitoring.prometheus import PrometheusServer, run_prometheus_until_interrupted

    def ready(server: PrometheusServer) -> None:
        typer.echo(
            f"Prometheus up at {server.url} (targets: {server.url}/targets, alerts: {server.url}/alerts); "
            "Ctrl-C stops it"
        )

    if run_prometheus_until_interrupted(config, data_dir=data_dir, port=port, on_ready=ready) != 0:
        raise typer.Exit(code=1)


@models_app.command("list")
def models_list(registry: RegistryOpt = None, config: ConfigOpt = None) -> None:
    """All versions, oldest first; * marks production."""
    from inspectline.registry import ModelRegistry

    reg = ModelRegistry(registry or resolve_config(config).paths.registry)
    production = reg.production()
    versions = reg.list()
    if not versions:
        typer.echo(f"no model versions in {reg.root}")
        return
    typer.echo(
        f"  {'version':<8} {'created':<26} {'arch':<14} {'parent':<7} {'F1':>6} {'recall':>7} "
        f"{'ROC-AUC':>8} {'threshold':>9}"
    )
    for v in versions:
        m = v.card.metrics
        mark = "*" if v.name == production else " "
        typer.echo(
            f"{mark} {v.name:<8} {v.card.created_at or '':<26} {v.card.backbone:<14} {v.card.parent or '-':<7} "
            f"{_num(m.get('f1'))} {_num(m.get('recall'), 7)} {_num(m.get('roc_auc'), 8)} {v.card.threshold:>9.3f}"
        )


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="vNNNN, production or latest.")] = "production",
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """A version's model card (architecture, preprocessing, calibration, metrics, lineage) and operating point."""
    from inspectline.model import read_card
    from inspectline.registry import ModelRegistry

    reg = ModelRegistry(registry or resolve_config(config).paths.registry)
    path = reg.resolve(version)
    card = read_card(path).model_dump(mode="json")
    card.pop("config", None)
    exports = reg.get(card["version"]).manifest.exports if card.get("version") in reg.names() else ()
    doc = {"checkpoint": str(path), **card, "exports": [_export_summary(e) for e in exports]}
    if path.parent.name in reg.names() and path.parent.parent.resolve() == reg.root.resolve():
        point = reg.operating_point(path.parent.name)
        doc["operating_point_in_force"] = (
            point.model_dump(mode="json")
            if point is not None
            else {"threshold": card["threshold"], "basis": f"model card ({card['threshold_policy']})"}
        )
    typer.echo(json.dumps(doc, indent=2))


@models_app.command("set-threshold")
def models_set_threshold(
    version: Annotated[str, typer.Argument(help="vNNNN (or production / latest).")],
    reason: Annotated[str, typer.Option(help="Why, for the audit trail (required).")],
    recall: Annotated[
        float | None, typer.Option(help="Target defect recall on the version's validation split, e.g. 0.97.")
    ] = None,
    threshold: Annotated[float | None, typer.Option(help="A threshold on the calibrated defect probability.")] = None,
    band: Annotated[
        float | None, typer.Option(help="UNSURE band around the threshold (default: the service's).")
    ] = None,
    actor: ActorOpt = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """A new operating point for VERSION without retraining; running services pick it up like a promotion."""
    from inspectline.audit import default_actor
    from inspectline.registry import ModelRegistry
    from inspectline.training.operating_point import ThresholdRequest, choose_operating_point, describe_point

    cfg = resolve_config(config, None, overrides)
    request = ThresholdRequest(
        recall=recall, threshold=threshold, unsure_band=band, reason=reason, actor=actor or default_actor()
    )
    reg = ModelRegistry(registry or cfg.paths.registry)
    name = reg.resolve(version).parent.name
    point = choose_operating_point(reg, name, request, store=cfg.store)
    typer.echo(f"{name}: {describe_point(point, point.threshold)}")


@models_app.command("promote")
def models_promote(
    version: str,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
    actor: ActorOpt = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
    challenge: ChallengeOpt = True,
    token: TokenOpt = None,
) -> None:
    """Make VERSION the production model (running services switch to it).

    Then the line's challenge sets marked after_promotion run through the service; a failure rolls the
    promotion back. Exit status: 0 promoted, 1 rolled back after a failed challenge, 3 promoted but a
    challenge could not run (service unreachable).
    """
    from inspectline.audit import default_actor

    cfg = resolve_config(config)
    reg = _registry(cfg, registry)
    who = actor or default_actor()
    pointer = reg.promote(version, reason=reason, actor=who)
    typer.echo(
        f"production is now {pointer['version']} (previous: "
        f"{pointer['previous'][-1] if pointer['previous'] else 'none'})"
    )
    if challenge:
        _exit_after_challenges(_challenge_promotion(cfg, reg, pointer["version"], who, token), {1: 1, 3: 3})


@models_app.command("rollback")
def models_rollback(
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
    actor: ActorOpt = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Return production to the previous version."""
    from inspectline.audit import default_actor

    reg = _registry(resolve_config(config), registry)
    pointer = reg.rollback(reason=reason, actor=actor or default_actor())
    typer.echo(f"production rolled back to {pointer['version']}")


@models_app.command("shadow")
def models_shadow(
    version: Annotated[str | None, typer.Argument(help="vNNNN to judge frames in shadow; omit with --off.")] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop shadowing.")] = False,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
    actor: ActorOpt = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Run a version in shadow: it judges every frame too; its verdicts are stored and compared, never returned."""
    from inspectline.audit import default_actor

    if (version is None) == (not off):
        msg = "give a VERSION to shadow, or --off to stop shadowing"
        raise ConfigError(msg)
    reg = _registry(resolve_config(config), registry)
    name = reg.set_shadow(None if off else version, reason=reason, actor=actor or default_actor())
    typer.echo(f"shadow model: {name}" if name else "shadow model: off")


@review_app.command("export")
def review_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file, or JSON for --format label-studio.")],
    fmt: Annotated[str, typer.Option("--format", help="csv or label-studio.")] = "csv",
    since: Annotated[str | None, typer.Option(help="last-week, 36h, 2026-11-15, ...")] = None,
    line: Annotated[str | None, typer.Option()] = None,
    camera: Annotated[str | None, typer.Option()] = None,
    verdict: Annotated[str | None, typer.Option(help="OK, DEFECTIVE or UNSURE.")] = None,
    unlabelled: Annotated[bool, typer.Option("--unlabelled", help="Only frames still to review.")] = False,
    limit: Annotated[int | None, typer.Option(help="At most this many, least sure first.")] = None,
    base_url: Annotated[str, typer.Option(help="Service URL for the image links.")] = "http://localhost:8000",
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Export stored frames for review, least sure first: CSV, or Label Studio tasks."""
    from inspectline.store import FrameStore, export_csv, export_label_studio
    from inspectline.timeparse import parse_since

    cfg = resolve_config(config, None, overrides)
    filters = {
        "since": parse_since(since) if since else None,
        "line": line,
        "camera": camera,
        "verdict": verdict.upper() if verdict else None,
        "labelled": False if unlabelled else None,
    }
    if limit is not None:
        filters["limit"] = limit
    with FrameStore(cfg.store) as store:
        if fmt == "csv":
            count = export_csv(store, out, base_url=base_url, **filters)
        elif fmt == "label-studio":
            tasks = export_label_studio(store, base_url, **filters)
            out.write_text(json.dumps(tasks, indent=1))
            count = len(tasks)
        else:
            msg = f"--format {fmt!r} is not one of csv, label-studio"
            raise ConfigError(msg)
    typer.echo(f"exported {count} frames to {out}")


@review_app.command("import")
def review_import(
    path: Annotated[Path, typer.Argument(help="A reviewed CSV, or a Label Studio JSON export.")],
    reviewer: Annotated[str | None, typer.Option(help="Reviewer for rows that do not name one.")] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Import review labels (all or nothing: a bad row names itself and nothing is applied)."""
    from inspectline.store import FrameStore, import_csv, import_label_studio

    cfg = resolve_config(config, None, overrides)
    with FrameStore(cfg.store) as store:
        if path.suffix.lower() == ".json":
            report = import_label_studio(store, json.loads(path.read_text()), reviewer_default=reviewer)
        else:
            report = import_csv(store, path, reviewer_default=reviewer)
    typer.echo(report.summary())


@app.command()
def retrain(
    since: Annotated[
        str, typer.Option(help="last-week, yesterday, today, 7d, 36h, or an ISO date/time.")
    ] = "last-week",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Train, evaluate and register, but never promote.")
    ] = False,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    challenge: ChallengeOpt = True,
    token: TokenOpt = None,
) -> None:
    """Fine-tune on frames labelled since SINCE; promote only if the challenger beats production.

    A promotion is followed by the line's after_promotion challenge sets; a failure rolls it back. The
    last line printed (also appended to <registry>/retrain-summary.log) is a one-line summary to alert on.
    Exit status: 0 promoted (or --dry-run), 3 nothing to learn, 4 the gate refused the challenger,
    5 promoted but rolled back after a failed challenge, 6 promoted but a challenge could not run.
    """
    from inspectline.retrain import retrain as run_retrain
    from inspectline.retrain import summary_line, write_summary
    from inspectline.timeparse import parse_since

    cfg = resolve_config(config, None, overrides)
    outcome = run_retrain(cfg, parse_since(since), dry_run=dry_run, progress=not quiet)
    check = None
    if outcome.status == "nothing_to_learn":
        typer.echo(outcome.message)
    else:
        typer.echo(outcome.report.read_text())
        typer.echo(
            f"challenger {outcome.challenger} registered (parent {outcome.champion}); outcome: "
            f"{outcome.status}; report: {outcome.report}"
        )
        if outcome.status == "promoted" and challenge:
            reg = _registry(cfg, None)
            check = _challenge_promotion(cfg, reg, outcome.challenger, "inspect retrain", token)
    extra = {}
    if check is not None and check.results:
        extra["challenges"] = ",".join(f"{r.set_name}:{r.status}" for r in check.results)
        extra["rolled_back_to"] = check.rolled_back_to or "-"
    line = summary_line(outcome, extra)
    write_summary(line, cfg.paths.registry)
    typer.echo(line)
    if outcome.status == "nothing_to_learn":
        raise typer.Exit(code=3)
    if outcome.status == "rejected":
        raise typer.Exit(code=4)
    if check is not None:
        _exit_after_challenges(check, {1: 5, 3: 6})


@app.command("challenge")
def challenge_run(
    set_name: Annotated[str, typer.Option("--set", help="A challenge set of a line (plant.lines.*.challenges).")],
    url: Annotated[str | None, typer.Option(help="Service URL (default: plant.service_url).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The whole result as JSON.")] = False,
    actor: ActorOpt = None,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Post a line's golden set through the running service; pass only if every sample gets its expected verdict.

    The result is stored under <registry>/challenges/SET/ and in the audit trail. Exit status: 0 passed,
    1 failed (a sample got another verdict), 3 the service could not be reached in time.
    """
    from inspectline.audit import default_actor
    from inspectline.challenge import run_challenge

    cfg = resolve_config(config)
    reg = _registry(cfg, None)
    result = run_challenge(
        cfg.plant,
        set_name,
        registry_root=reg.root,
        actor=actor or default_actor(),
        url=url,
        token=token,
        audit=reg.audit,
    )
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.summary())
    if not result.passed:
        raise typer.Exit(code=1 if result.status == "failed" else 3)


@app.command("audit")
def audit_show(
    since: Annotated[str | None, typer.Option(help="last-week, yesterday, 36h, 2026-11-15, ...")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action: promote, rollback, challenge, ...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check that no line was edited, removed or reordered.")
    ] = False,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The audit trail: every change that affects verdicts, with who, when, before/after and why.

    With --verify, exit status 1 when the trail was changed after the fact.
    """
    from inspectline.timeparse import parse_since

    log = _registry(resolve_config(config), registry).audit
    for event in log.read(since=parse_since(since) if since else None, action=action):
        typer.echo(event.to_json() if as_json else event.summary())
    if verify:
        problems = log.verify()
        for problem in problems:
            typer.echo(f"TAMPERED: {problem}", err=True)
        typer.echo(f"audit trail {log.path}: {'intact' if not problems else f'{len(problems)} problems'}", err=True)
        if problems:
            raise typer.Exit(code=1)


@store_app.command("cleanup")
def store_cleanup(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Remove images older than store.max_age_days, except labelled or snapshotted frames (rows stay)."""
    from inspectline.store import FrameStore

    cfg = resolve_config(config, None, overrides)
    with FrameStore(cfg.store) as store:
        report = store.cleanup()
    typer.echo(
        f"removed {report.images_deleted} images ({report.bytes_freed / 2**20:.1f} MiB) from frames "
        f"received before {report.cutoff}; "
        f"kept {report.kept_labelled} labelled and {report.kept_in_snapshot} snapshotted"
    )


def _registry(cfg: InspectConfig, root: Path | None):
    """The model registry (``--registry`` or ``paths.registry``) with the configured audit forwarding."""
    from inspectline.registry import open_registry

    return open_registry(root or cfg.paths.registry, syslog=cfg.audit.syslog)


def _challenge_promotion(cfg: InspectConfig, reg, version: str, actor: str, token: str | None):
    from inspectline.challenge import challenge_after_promotion

    check = challenge_after_promotion(cfg.plant, reg, version, actor=actor, token=token)
    for line in check.lines():
        typer.echo(line)
    return check


def _exit_after_challenges(check, codes: dict[int, int]) -> None:
    """Exit with ``codes[1]`` when a challenge rolled the promotion back, ``codes[3]`` when one could not run."""
    if check.rolled_back_to:
        raise typer.Exit(code=codes[1])
    if any(r.status == "error" for r in check.results):
        typer.echo("the promotion stands, but not every challenge could run; run `inspect challenge --set NAME`")
        raise typer.Exit(code=codes[3])


def _export_summary(record) -> dict:
    """One line of ``models show``'s exports: what, where, parity and speed."""
    test = record.parity.get("test", {})
    return {
        "format": record.format,
        "precision": record.precision,
        "path": record.path,
        "parity": "passed" if record.passed else "below the bound (forced)",
        "agreement": test.get("agreement"),
        "max_abs_dp": test.get("max_abs_dp"),
        "roc_auc_change": test.get("roc_auc_change"),
        "images_per_s": record.images_per_s,
        "speedup_vs_torch_fp32": round(record.speedup, 2) if record.speedup else None,
        "measured_on": record.measured_on,
        "runtime": record.runtime,
        "at": record.at,
    }


def _print_evaluation(summary: dict) -> None:
    m = summary["metrics"]
    typer.echo(
        f"{summary['split']}: accuracy {m['accuracy']:.4f}  defect F1 {m['f1']:.4f}  recall {m['recall']:.4f}  "
        f"precision {m['precision']:.4f}  ROC-AUC {_num(m['roc_auc'])}  ECE {summary['ece_after']:.4f}  "
        f"latency {_num(summary['latency_ms'], 1)} ms  -> {'READY' if summary['ready'] else 'NOT READY'}"
    )


def _num(value: float | None, width: int = 6) -> str:
    return f"{value:>{width}.4f}" if isinstance(value, float) else f"{'-':>{width}}"


@tokens_app.command("add")
def tokens_add(
    name: Annotated[str, typer.Argument(help="Who uses the token: a camera, a dashboard, a person (the audit actor).")],
    scope: Annotated[
        list[str], typer.Option("--scope", "-s", help="frames:write, read, review or admin (repeatable).")
    ],
    config: ConfigOpt = None,
) -> None:
    """Create a named token in service.tokens_file and print it once (the file keeps only its hash)."""
    from inspectline.serving.auth import add_token

    path = _tokens_file(config)
    secret = add_token(path, name, scope)
    typer.echo(f"token for {name} ({', '.join(scope)}), shown only now:\n{secret}")
    typer.echo(_TOKENS_TAKE_EFFECT)


@tokens_app.command("list")
def tokens_list(config: ConfigOpt = None) -> None:
    """The named tokens in service.tokens_file and their scopes (secrets are never stored)."""
    from inspectline.serving.auth import read_tokens_file

    path = _tokens_file(config)
    if not path.is_file():
        typer.echo(f"{path}: no such file yet; `inspect tokens add` creates it (the service does not start without it)")
        return
    tokens = read_tokens_file(path).tokens
    typer.echo(f"{path}: {len(tokens)} token{'' if len(tokens) == 1 else 's'}")
    for entry in tokens:
        typer.echo(f"  {entry.name:<24} {', '.join(entry.scopes)}")


@tokens_app.command("remove")
def tokens_remove(
    name: Annotated[str, typer.Argument(help="The token to revoke (see `inspect tokens list`).")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a named token: the running service refuses it within reload_interval_s."""
    from inspectline.serving.auth import remove_token

    path = _tokens_file(config)
    removed = remove_token(path, name)
    typer.echo(f"removed token {removed.name} ({', '.join(removed.scopes)}) from {path}")
    typer.echo(_TOKENS_TAKE_EFFECT)


_TOKENS_TAKE_EFFECT = (
    "a running service reads the tokens file again when it changes: this takes effect within the gateway's "
    "reload_interval_s (1 s by default), without a restart"
)


def _tokens_file(config: Path | None) -> Path:
    cfg = resolve_config(config)
    if cfg.service.tokens_file is None:
        msg = "service.tokens_file is not set in inspect.yaml; set it (e.g. tokens.yaml) so the service reads it too"
        raise ConfigError(msg)
    return cfg.service.tokens_file


def main() -> None:
    try:
        app()
    except InspectError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
