"""The ``inspect`` command. Each subcommand parses its options and calls one library function.

    inspect train --profile demo            train, calibrate, evaluate, register
    inspect evaluate --model production     metrics JSON + Markdown report with plots
    inspect predict frame.png ...           verdicts through the Predictor
    inspect models list|show|promote|rollback|shadow|set-threshold
    inspect serve                           the inspection service (serve_config.yaml)
    inspect monitor                         Prometheus on loopback with the line's alert rules
    inspect camera folder|video|replay      camera adapters feeding the service
    inspect review export|import            review labels as CSV or Label Studio tasks
    inspect retrain --since last-week       fine-tune on reviewed frames; champion/challenger gate
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
app.add_typer(models_app, name="models")
app.add_typer(review_app, name="review")
app.add_typer(store_app, name="store")
app.add_typer(camera_app, name="camera", help="Camera adapters: hot folder, video/RTSP capture, dataset replay.")

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML config file (default: ./inspect.yaml if present).")
]
ProfileOpt = Annotated[
    str | None, typer.Option("--profile", help="A shipped profile: demo, elpv-budget, elpv-resnet50.")
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
    folder = resources.files("inspectline") / "profiles"
    path = Path(str(folder / f"{name}.yaml"))
    if not path.is_file():
        available = sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))
        msg = f"profile {name!r} does not exist; available: {', '.join(available)}"
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
    config: ConfigOpt = None,
    registry: RegistryOpt = None,
) -> None:
    """Judge image files: verdict, calibrated defect probability and confidence for each."""
    from inspectline.evaluate import predict_files

    cfg = resolve_config(config)
    results = predict_files(images, model_ref=model, registry_root=registry or cfg.paths.registry, tta=tta)
    failed = 0
    for path, outcome in results:
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
        typer.echo(
            json.dumps(row)
            if as_json
            else f"{path}: {row['verdict']:<9} p(defect)={row['defect_probability']:.4f} "
            f"confidence={row['confidence']:.4f}"
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
    """Train a quick model on ELPV, register it, serve it and post frames to it."""
    from inspectline.demo import run_demo

    cfg = resolve_config(config, None if config else "demo", overrides)
    run_demo(cfg, serve_config=serve_config, frames=frames)


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="Ray Serve config file.")] = Path("serve_config.yaml"),
    address: Annotated[
        str | None,
        typer.Option(
            "--address", "-a", help="Deploy to this Ray cluster and return; default: a local Ray in the foreground."
        ),
    ] = None,
) -> None:
    """Run the inspection service (the same deploy as `serve run serve_config.yaml`)."""
    from inspectline.serving.deploy import serve_until_interrupted

    def ready(url: str, _health: dict) -> None:
        if address is not None:
            typer.echo(f"deployed {config} to {address}; the service answers at {url} on the cluster's HTTP proxy")
            return
        typer.echo(f"service up at {url}  (OpenAPI: {url}/docs, readiness: {url}/readyz); Ctrl-C stops it")

    serve_until_interrupted(config, address=address, on_ready=ready)


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
        f"  {'version':<8} {'created':<26} {'arch':<9} {'parent':<7} {'F1':>6} {'recall':>7} "
        f"{'ROC-AUC':>8} {'threshold':>9}"
    )
    for v in versions:
        m = v.card.metrics
        mark = "*" if v.name == production else " "
        typer.echo(
            f"{mark} {v.name:<8} {v.card.created_at or '':<26} {v.card.arch:<9} {v.card.parent or '-':<7} "
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
    doc = {"checkpoint": str(path), **card}
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
) -> None:
    """Make VERSION the production model (running services switch to it)."""
    from inspectline.audit import default_actor
    from inspectline.registry import ModelRegistry

    reg = ModelRegistry(registry or resolve_config(config).paths.registry)
    pointer = reg.promote(version, reason=reason, actor=actor or default_actor())
    typer.echo(
        f"production is now {pointer['version']} (previous: "
        f"{pointer['previous'][-1] if pointer['previous'] else 'none'})"
    )


@models_app.command("rollback")
def models_rollback(
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
    actor: ActorOpt = None,
    registry: RegistryOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Return production to the previous version."""
    from inspectline.audit import default_actor
    from inspectline.registry import ModelRegistry

    reg = ModelRegistry(registry or resolve_config(config).paths.registry)
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
    from inspectline.registry import ModelRegistry

    if (version is None) == (not off):
        msg = "give a VERSION to shadow, or --off to stop shadowing"
        raise ConfigError(msg)
    reg = ModelRegistry(registry or resolve_config(config).paths.registry)
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
) -> None:
    """Fine-tune on frames labelled since SINCE; promote only if the challenger beats production.

    Exit status: 0 promoted (or --dry-run), 3 nothing to learn, 4 the gate refused the challenger.
    """
    from inspectline.retrain import retrain as run_retrain
    from inspectline.timeparse import parse_since

    cfg = resolve_config(config, None, overrides)
    outcome = run_retrain(cfg, parse_since(since), dry_run=dry_run, progress=not quiet)
    if outcome.status == "nothing_to_learn":
        typer.echo(outcome.message)
        raise typer.Exit(code=3)
    typer.echo(outcome.report.read_text())
    typer.echo(
        f"challenger {outcome.challenger} registered (parent {outcome.champion}); outcome: "
        f"{outcome.status}; report: {outcome.report}"
    )
    if outcome.status == "rejected":
        raise typer.Exit(code=4)


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


def _print_evaluation(summary: dict) -> None:
    m = summary["metrics"]
    typer.echo(
        f"{summary['split']}: accuracy {m['accuracy']:.4f}  defect F1 {m['f1']:.4f}  recall {m['recall']:.4f}  "
        f"precision {m['precision']:.4f}  ROC-AUC {_num(m['roc_auc'])}  ECE {summary['ece_after']:.4f}  "
        f"latency {_num(summary['latency_ms'], 1)} ms  -> {'READY' if summary['ready'] else 'NOT READY'}"
    )


def _num(value: float | None, width: int = 6) -> str:
    return f"{value:>{width}.4f}" if isinstance(value, float) else f"{'-':>{width}}"


def main() -> None:
    try:
        app()
    except InspectError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
