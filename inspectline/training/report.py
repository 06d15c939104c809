"""Write an evaluation to disk: ``metrics.json``, ``report.md`` and PNG plots beside it.

The report is what a quality engineer reads before a model goes on the line: per-class precision,
recall and F1, the confusion matrix, ROC and PR curves, the training curves with the train-val gap,
a threshold sweep, calibration before and after temperature scaling, size and latency, and the
deployment-readiness checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import precision_recall_curve, roc_curve

from inspectline.registry import PENDING_VERSION
from inspectline.training.evaluation import Evaluation


def write_report(
    evaluation: Evaluation, out_dir: Path, *, history: list[dict] | None = None, title: str = "Evaluation report"
) -> Path:
    """Write metrics JSON, plots and the Markdown report; returns the report's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(evaluation.summary(), indent=2))
    plots = {
        "confusion": _confusion_plot(evaluation, out_dir / "confusion.png"),
        "curves": _roc_pr_plot(evaluation, out_dir / "roc_pr.png"),
        "reliability": _reliability_plot(evaluation, out_dir / "reliability.png"),
    }
    if history:
        plots["training"] = _training_plot(history, out_dir / "training_curves.png")
    report = out_dir / "report.md"
    report.write_text(_markdown(evaluation, plots, history, title))
    return report


def _markdown(ev: Evaluation, plots: dict[str, Path], history: list[dict] | None, title: str) -> str:
    m = ev.metrics
    ready = all(c["passed"] for c in ev.readiness)
    lines = [
        f"# {title}",
        "",
        f"Model version: **{ev.model_version or PENDING_VERSION}** · split: **{ev.split}** · {m['n']} frames · "
        f"threshold {m['threshold']:.3f} · temperature {ev.temperature:.3f}",
        "",
        f"Deployment readiness: **{'READY' if ready else 'NOT READY'}**",
        "",
        "| check | value | rule | limit | result |",
        "|---|---|---|---|---|",
        *[
            f"| {c['check']} | {_fmt(c['value'])} | {c['rule']} | {_fmt(c['limit'])} | "
            f"{'pass' if c['passed'] else 'FAIL'} |"
            for c in ev.readiness
        ],
        "",
        "## Headline metrics",
        "",
        "| accuracy | balanced accuracy | defect precision | defect recall | defect F1 | macro F1 | "
        "weighted F1 | ROC-AUC | PR-AUC |",
        "|---|---|---|---|---|---|---|---|---|",
        "| "
        + " | ".join(
            _fmt(m[k])
            for k in (
                "accuracy",
                "balanced_accuracy",
                "precision",
                "recall",
                "f1",
                "f1_macro",
                "f1_weighted",
                "roc_auc",
                "pr_auc",
            )
        )
        + " |",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {_fmt(c['precision'])} | {_fmt(c['recall'])} | {_fmt(c['f1'])} | {c['support']} |"
            for name, c in m["per_class"].items()
        ],
        "",
        f"Confusion (rows true, columns predicted): OK→OK {m['confusion']['tn']}, OK→DEFECTIVE {m['confusion']['fp']}, "
        f"DEFECTIVE→OK {m['confusion']['fn']}, DEFECTIVE→DEFECTIVE {m['confusion']['tp']}.",
        "",
        f"![confusion matrix]({plots['confusion'].name})",
        "",
        f"![ROC and PR curves]({plots['curves'].name})",
        "",
        "## Threshold sweep",
        "",
        "| threshold | precision | recall | F1 | false-positive rate | share flagged |",
        "|---|---|---|---|---|---|",
        *[
            f"| {r['threshold']:.2f} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} | "
            f"{_fmt(r['false_positive_rate'])} | {_fmt(r['flagged_share'])} |"
            for r in ev.sweep
        ],
        "",
        "## Calibration",
        "",
        f"Expected calibration error (15 bins): {ev.ece_before:.4f} before temperature scaling, "
        f"{ev.ece_after:.4f} after (T = {ev.temperature:.3f}).",
        "",
        f"![reliability diagram]({plots['reliability'].name})",
        "",
        "## Model",
        "",
        f"- parameters: {ev.parameters:,}",
        f"- checkpoint size: {_size(ev.size_bytes)}",
        f"- CPU latency per frame (batch of one, with TTA, median): {_fmt(ev.latency_ms, 1)} ms",
    ]
    for name, rows in ev.breakdown.items():
        cols = list(rows[0])
        lines += ["", f"## Breakdown by {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    if history:
        best = max(history, key=lambda r: r["val_best_f1"])
        last = history[-1]
        lines += [
            "",
            "## Training",
            "",
            f"{len(history)} epochs; best validation F1 {best['val_best_f1']:.4f} at epoch {best['epoch']}; "
            f"final train-val accuracy gap {last['gap_accuracy']:+.4f}, loss gap {last['gap_loss']:+.4f}.",
            "",
            f"![training curves]({plots['training'].name})",
        ]
    return "\n".join(lines) + "\n"


def _confusion_plot(ev: Evaluation, path: Path) -> Path:
    c = ev.metrics["confusion"]
    matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > matrix.max() / 2 else "black")
    ax.set_xticks([0, 1], ["OK", "DEFECTIVE"])
    ax.set_yticks([0, 1], ["OK", "DEFECTIVE"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    return _save(fig, path)


def _roc_pr_plot(ev: Evaluation, path: Path) -> Path:
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4))
    if len(np.unique(ev.labels)) == 2:
        fpr, tpr, _ = roc_curve(ev.labels, ev.probabilities)
        roc_ax.plot(fpr, tpr, label=f"AUC {ev.metrics['roc_auc']:.3f}")
        precision, recall, _ = precision_recall_curve(ev.labels, ev.probabilities)
        pr_ax.plot(recall, precision, label=f"AP {ev.metrics['pr_auc']:.3f}")
    roc_ax.plot([0, 1], [0, 1], "--", color="grey")
    roc_ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    roc_ax.legend(loc="lower right")
    pr_ax.legend(loc="lower left")
    return _save(fig, path)


def _reliability_plot(ev: Evaluation, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    for probs, name in (
        (ev.raw_probabilities, f"before (ECE {ev.ece_before:.3f})"),
        (ev.probabilities, f"after (ECE {ev.ece_after:.3f})"),
    ):
        frac, mean = calibration_curve(ev.labels, probs, n_bins=10, strategy="uniform")
        ax.plot(mean, frac, marker="o", label=name)
    ax.set(xlabel="predicted defect probability", ylabel="observed defect share", title="Reliability")
    ax.legend(loc="upper left")
    return _save(fig, path)


def _training_plot(history: list[dict], path: Path) -> Path:
    epochs = [r["epoch"] for r in history]
    fig, (loss_ax, score_ax, gap_ax) = plt.subplots(1, 3, figsize=(13, 3.8))
    loss_ax.plot(epochs, [r["train_loss"] for r in history], label="train")
    loss_ax.plot(epochs, [r["val_loss"] for r in history], label="validation")
    loss_ax.set(xlabel="epoch", title="Loss")
    score_ax.plot(epochs, [r["val_best_f1"] for r in history], label="val F1 (best threshold)")
    score_ax.plot(epochs, [r["val_roc_auc"] or np.nan for r in history], label="val ROC-AUC")
    score_ax.plot(epochs, [r["val_accuracy"] for r in history], label="val accuracy")
    score_ax.set(xlabel="epoch", title="Validation", ylim=(0, 1.02))
    gap_ax.plot(epochs, [r["gap_accuracy"] for r in history], label="accuracy gap (train - val)")
    gap_ax.plot(epochs, [r["gap_loss"] for r in history], label="loss gap (val - train)")
    gap_ax.axhline(0, color="grey", lw=0.8)
    gap_ax.set(xlabel="epoch", title="Train-val gap")
    for ax in (loss_ax, score_ax, gap_ax):
        ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _size(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f} MiB"
