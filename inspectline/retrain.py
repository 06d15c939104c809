"""``inspect retrain --since last-week``: turn reviewed line frames into a new model version that is
promoted only if it beats the current one.

Stages, top to bottom:

1. collect   labelled frames received since ``--since`` from the frame store; an immutable snapshot
             manifest records exactly which frames, labels and images were used.
2. assemble  the newest labelled parts are held out for evaluation (group-aware by part id); the rest
             plus a replay sample of the champion's own training data (no forgetting) is the
             training pool, from which validation is carved.
3. fine-tune warm-start from the production model with the same recipe (``retrain.epochs``/``lr``).
4. evaluate  champion and challenger on the golden set (the first retrain fixes it to the base
             model's test split, then it never changes) and on the newest labelled frames.
5. gate      per set in ``retrain.gate_sets``: challenger defect recall >= champion's - tolerance,
             F1 and ROC-AUC >= champion's.
6. register  the challenger always (with its parent and the gate outcome); promote it only when the
             gate passes and this is not a ``--dry-run``. Running services switch by themselves.
7. report    a side-by-side table (``retrain.md``), evaluation reports, and the outcome pushed to a
             Prometheus Pushgateway when one is configured.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import stat
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from inspectline.config import DataConfig, InspectConfig, merge_config
from inspectline.data import DEFECTIVE, OK, Sample, Splits, holdout, load_samples, load_split_manifest
from inspectline.errors import DataError
from inspectline.monitoring.metrics import RetrainMetrics
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry, open_registry
from inspectline.store import FrameStore, StoredFrame
from inspectline.training import evaluate_predictor, train_model, write_report
from inspectline.training.run import new_run_dir

log = logging.getLogger(__name__)

GATE_METRICS = ("recall", "f1", "roc_auc")
SUMMARY_NAME = "retrain-summary.log"


@dataclass
class GateResult:
    passed: bool
    checks: list[dict] = field(default_factory=list)  # {set, metric, champion, challenger, rule, passed}


@dataclass
class RetrainOutcome:
    status: str  # "promoted", "rejected", "dry_run" or "nothing_to_learn"
    since: datetime
    champion: str | None = None
    challenger: str | None = None
    labelled_frames: int = 0
    gate: GateResult | None = None
    scores: dict = field(default_factory=dict)  # {set: {"champion": metrics, "challenger": metrics}}
    run_dir: Path | None = None
    report: Path | None = None
    snapshot: Path | None = None
    seconds: float = 0.0
    message: str = ""


def retrain(cfg: InspectConfig, since: datetime, *, dry_run: bool = False, progress: bool = True) -> RetrainOutcome:
    """The whole retrain cycle; see the module docstring."""
    started = time.perf_counter()
    registry = open_registry(cfg.paths.registry, syslog=cfg.audit.syslog)
    champion = registry.get(registry.resolve("production").parent.name)
    store = FrameStore(cfg.store)
    try:
        frames = [f for f in store.labelled(since=since) if f.image_sha256 is not None]
        if not frames:
            msg = (
                f"no labelled frames with images received since {since.isoformat(timespec='seconds')}; "
                "label frames with "
                "PUT /v1/frames/{id}/label or `inspect review import`, or widen --since"
            )
            return RetrainOutcome(
                status="nothing_to_learn",
                since=since,
                champion=champion.name,
                message=msg,
                seconds=time.perf_counter() - started,
            )

        base_data = DataConfig.model_validate(champion.card.config["data"])
        run_cfg = merge_config(cfg, [f"train.epochs={cfg.retrain.epochs}", f"train.lr={cfg.retrain.lr}"]).model_copy(
            update={"data": base_data}
        )
        run_dir = new_run_dir(cfg.paths.runs, f"retrain-{champion.name}")
        snapshot_dir = Path(cfg.paths.snapshots) / run_dir.name
        new_samples = {f.id: _frame_sample(store, f, snapshot_dir / "images") for f in frames}
        newest, learn = _split_newest(frames, cfg.retrain.newest_share, cfg.retrain.min_newest)
        replay = _replay(
            champion,
            base_data,
            store,
            snapshot_dir / "images",
            n=min(cfg.retrain.max_replay, math.ceil(cfg.retrain.replay_ratio * len(learn))),
            seed=cfg.retrain.seed,
        )
        golden = _golden_set(registry, champion, base_data)
        train, val = holdout([new_samples[f.id] for f in learn] + replay, cfg.retrain.val_share, cfg.retrain.seed)
        newest_samples = [new_samples[f.id] for f in newest]
        snapshot = _write_snapshot(snapshot_dir, since, champion.name, learn, newest, replay, golden)
        store.create_snapshot(snapshot_dir.name, [f.id for f in frames])
        log.info(
            "retrain: %d new labelled frames (%d held out as newest), %d replayed, golden set %d",
            len(frames),
            len(newest),
            len(replay),
            len(golden),
        )

        run = train_model(
            run_cfg,
            Splits(train=train, val=val, test=golden),
            run_dir=run_dir,
            init_from=champion.checkpoint,
            parent=champion.name,
            progress=progress,
        )
        sets = {"golden": golden, "newest": newest_samples}
        models = {"champion": Predictor.load(champion.checkpoint), "challenger": Predictor.load(run.checkpoint)}
        scores: dict[str, dict[str, dict]] = {}
        for set_name, samples in sets.items():
            if not samples:
                continue
            scores[set_name] = {}
            for role, predictor in models.items():
                ev = evaluate_predictor(predictor, samples, cfg.readiness, split=set_name, measure_latency=False)
                scores[set_name][role] = ev.metrics
                if role == "challenger" and set_name == "newest":
                    write_report(
                        ev,
                        run_dir / "report_newest",
                        title=f"challenger on the newest labelled frames since {since.date()}",
                    )
        result = gate(scores, cfg.retrain.gate_sets, cfg.retrain.recall_tolerance)
        status = "dry_run" if dry_run else ("promoted" if result.passed else "rejected")
        outcome = RetrainOutcome(
            status=status,
            since=since,
            champion=champion.name,
            labelled_frames=len(frames),
            gate=result,
            scores=scores,
            run_dir=run_dir,
            snapshot=snapshot,
        )
        outcome.seconds = time.perf_counter() - started
        outcome.report = run_dir / "retrain.md"
        _write_outcome(outcome)  # goes into the version, which is immutable once registered
        version = registry.register(run.checkpoint, parent=champion.name)
        outcome.challenger = version.name
        if status == "promoted":
            registry.promote(
                version.name,
                reason=f"inspect retrain --since {since.isoformat(timespec='seconds')}: gate passed",
                actor="inspect retrain",
            )
        _write_outcome(outcome)  # the run folder's copy names the new version
        if cfg.retrain.pushgateway:
            push_outcome(cfg.retrain.pushgateway, outcome)
        return outcome
    finally:
        store.close()


def gate(scores: dict[str, dict[str, dict]], sets: tuple[str, ...], recall_tolerance: float) -> GateResult:
    """Champion/challenger checks per evaluation set; metrics undefined on a set are skipped and noted."""
    checks = []
    for set_name in sets:
        if set_name not in scores:
            checks.append(
                {
                    "set": set_name,
                    "metric": "-",
                    "champion": None,
                    "challenger": None,
                    "rule": "no frames in this set",
                    "passed": True,
                }
            )
            continue
        champ, chall = scores[set_name]["champion"], scores[set_name]["challenger"]
        for metric in GATE_METRICS:
            a, b = champ.get(metric), chall.get(metric)
            tolerance = recall_tolerance if metric == "recall" else 0.0
            rule = f">= champion - {tolerance}" if tolerance else ">= champion"
            if a is None or b is None:
                checks.append(
                    {
                        "set": set_name,
                        "metric": metric,
                        "champion": a,
                        "challenger": b,
                        "rule": "undefined on this set (one class)",
                        "passed": True,
                    }
                )
                continue
            checks.append(
                {
                    "set": set_name,
                    "metric": metric,
                    "champion": a,
                    "challenger": b,
                    "rule": rule,
                    "passed": b >= a - tolerance - 1e-12,
                }
            )
    return GateResult(passed=all(c["passed"] for c in checks), checks=checks)


def side_by_side(outcome: RetrainOutcome) -> str:
    """The Markdown table an engineer reads to see why a challenger was or was not promoted."""
    lines = [
        f"# Retrain since {outcome.since.isoformat(timespec='seconds')}",
        "",
        f"Champion **{outcome.champion}** vs challenger "
        f"**{outcome.challenger or '(not registered yet)'}** — outcome: **{outcome.status.upper()}**; "
        f"{outcome.labelled_frames} labelled line frames; {outcome.seconds:.0f} s.",
        "",
        "| set | metric | champion | challenger | rule | result |",
        "|---|---|---|---|---|---|",
    ]
    for c in outcome.gate.checks if outcome.gate else []:
        lines.append(
            f"| {c['set']} | {c['metric']} | {_fmt(c['champion'])} | {_fmt(c['challenger'])} | "
            f"{c['rule']} | {'pass' if c['passed'] else 'FAIL'} |"
        )
    lines += [
        "",
        "| set | model | n | accuracy | precision | recall | F1 | ROC-AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for set_name, by_model in outcome.scores.items():
        for role, m in by_model.items():
            lines.append(
                f"| {set_name} | {role} | {m['n']} | {_fmt(m['accuracy'])} | {_fmt(m['precision'])} | "
                f"{_fmt(m['recall'])} | {_fmt(m['f1'])} | {_fmt(m['roc_auc'])} |"
            )
    if outcome.snapshot:
        lines += ["", f"Snapshot manifest: `{outcome.snapshot}`"]
    return "\n".join(lines) + "\n"


def summary_line(outcome: RetrainOutcome, extra: dict[str, object] | None = None) -> str:
    """One ``key=value`` line an operator can alert on (``status=rejected``, a stale ``at=`` ...)."""
    fields: dict[str, object] = {
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": outcome.status,
        "champion": outcome.champion or "-",
        "challenger": outcome.challenger or "-",
        "labelled": outcome.labelled_frames,
        "gate": "-" if outcome.gate is None else ("passed" if outcome.gate.passed else "failed"),
        "seconds": round(outcome.seconds),
        "since": outcome.since.isoformat(timespec="seconds"),
        **(extra or {}),
    }
    return "inspect-retrain " + " ".join(f"{k}={str(v).replace(' ', '_')}" for k, v in fields.items())


def write_summary(line: str, registry_root: Path) -> Path:
    """Append the summary line to ``<registry>/retrain-summary.log`` (the file scheduled runs leave behind)."""
    path = Path(registry_root) / SUMMARY_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def push_outcome(address: str, outcome: RetrainOutcome) -> None:
    """Push the outcome to a Pushgateway; a failed push is logged, never fatal."""
    from prometheus_client import push_to_gateway

    m = RetrainMetrics()
    m.last_run.set(time.time())
    m.duration.set(outcome.seconds)
    m.labelled.set(outcome.labelled_frames)
    m.promoted.set(int(outcome.status == "promoted"))
    m.passed.set(int(bool(outcome.gate and outcome.gate.passed)))
    for set_name, by_model in outcome.scores.items():
        for role, metrics in by_model.items():
            for metric in GATE_METRICS:
                if metrics.get(metric) is not None:
                    m.score.labels(role, set_name, metric).set(metrics[metric])
    try:
        push_to_gateway(address, job="inspect_retrain", registry=m.registry, timeout=10)
    except OSError as exc:
        log.warning("could not push the retrain outcome to %s: %s", address, exc)


# --- data assembly ------------------------------------------------------------------------------
def _frame_sample(store: FrameStore, frame: StoredFrame, cache_dir: Path) -> Sample:
    return Sample(
        key=f"frame:{frame.id}",
        path=store.local_image_path(frame, cache_dir),
        label=DEFECTIVE if frame.label == "defective" else OK,
        group=f"part:{frame.part_id}" if frame.part_id else f"frame:{frame.id}",
        meta={"line": frame.line_id, "camera": frame.camera_id},
    )


def _split_newest(
    frames: list[StoredFrame], share: float, min_newest: int
) -> tuple[list[StoredFrame], list[StoredFrame]]:
    """Hold out the most recently seen parts (whole parts, never split) as the newest evaluation set."""
    if len(frames) < max(min_newest, 2):
        return [], frames
    by_part: dict[str, list[StoredFrame]] = defaultdict(list)
    for f in frames:
        by_part[f.part_id or f"frame:{f.id}"].append(f)
    newest_first = sorted(by_part.values(), key=lambda group: max(f.received_at for f in group), reverse=True)
    held: list[StoredFrame] = []
    for group in newest_first:
        if len(held) >= share * len(frames):
            break
        held += group
    if len(held) == len(frames):  # one part only: nothing left to learn from
        return [], frames
    kept_ids = {f.id for f in held}
    return held, [f for f in frames if f.id not in kept_ids]


def line_frame_samples(keys: list[str], store: FrameStore, cache_dir: Path) -> dict[str, Sample]:
    """``frame:ID`` keys of a saved split -> samples of those stored frames (labelled, image kept).

    Other keys, unknown ids and frames whose image or label is gone are left out: the caller
    decides whether that is an error (evaluation) or not (replay draws what is still there).
    """
    ids = {}
    for key in keys:
        prefix, _, number = key.partition(":")
        if prefix == "frame" and number.isdigit():
            ids[int(number)] = key
    found = store.get_many(ids)
    return {
        ids[i]: _frame_sample(store, frame, cache_dir)
        for i, frame in found.items()
        if frame.image_sha256 is not None and frame.label is not None
    }


def _resolve_keys(keys: list[str], base: dict[str, Sample], store: FrameStore, cache_dir: Path) -> list[Sample]:
    """Sample keys of a saved split -> samples: base-source keys, or ``frame:ID`` from the store."""
    line = line_frame_samples([k for k in keys if k not in base], store, cache_dir)
    return [base[k] if k in base else line[k] for k in keys if k in base or k in line]


def _replay(champion, base_data: DataConfig, store: FrameStore, cache_dir: Path, *, n: int, seed: int) -> list[Sample]:
    """A seeded sample of the champion's own training data (base source and earlier line frames)."""
    manifest = champion.path / "splits.json"
    if n == 0 or not manifest.is_file():
        return []
    keys = [e["key"] for e in json.loads(manifest.read_text())["splits"]["train"]]
    chosen = random.Random(seed).sample(keys, min(n, len(keys)))
    return _resolve_keys(chosen, {s.key: s for s in load_samples(base_data)}, store, cache_dir)


def _golden_set(registry: ModelRegistry, champion, base_data: DataConfig) -> list[Sample]:
    """The fixed yardstick: fixed at the first retrain to the champion's test split of its base data."""
    path = registry.root / "golden.json"
    if not path.is_file():
        test = load_split_manifest(champion.path / "splits.json", load_samples(base_data)).test
        doc = {
            "data": base_data.model_dump(mode="json"),
            "keys": [s.key for s in test],
            "fixed_from": champion.name,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        path.write_text(json.dumps(doc, indent=1))
    doc = json.loads(path.read_text())
    source = {s.key: s for s in load_samples(DataConfig.model_validate(doc["data"]))}
    missing = [k for k in doc["keys"] if k not in source]
    if missing:
        msg = f"golden set {path}: {len(missing)} samples are no longer in its data source, e.g. {missing[:3]}"
        raise DataError(msg)
    return [source[k] for k in doc["keys"]]


def _write_snapshot(
    folder: Path,
    since: datetime,
    champion: str,
    learn: list[StoredFrame],
    newest: list[StoredFrame],
    replay: list[Sample],
    golden: list[Sample],
) -> Path:
    """An immutable record of exactly what the challenger learnt from and was judged on."""
    folder.mkdir(parents=True, exist_ok=True)

    def frame_entry(f: StoredFrame, role: str) -> dict:
        return {
            "store_id": f.id,
            "line_id": f.line_id,
            "camera_id": f.camera_id,
            "frame_id": f.frame_id,
            "part_id": f.part_id,
            "label": f.label,
            "labelled_by": f.labelled_by,
            "image_sha256": f.image_sha256,
            "content_sha256": f.content_sha256,
            "received_at": f.received_at.isoformat(),
            "role": role,
        }

    doc = {
        "since": since.isoformat(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "champion": champion,
        "frames": [frame_entry(f, "train") for f in learn] + [frame_entry(f, "newest") for f in newest],
        "replay_keys": [s.key for s in replay],
        "golden_keys": [s.key for s in golden],
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(doc, indent=1))
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    return path


def _write_outcome(outcome: RetrainOutcome) -> None:
    doc = asdict(outcome)
    doc["since"] = outcome.since.isoformat()
    (outcome.run_dir / "retrain.json").write_text(json.dumps(doc, indent=2, default=str))
    outcome.report.write_text(side_by_side(outcome))


def _fmt(value: object) -> str:
    return "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
