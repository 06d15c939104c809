"""Write an evaluation to disk: ``metrics.json``, ``report.md`` and PNG plots beside it.

The report is what a quality engineer reads before a model goes on the line: the deployment-readiness
checks, the operating points side by side (the threshold in force, max F1 and the target recall:
recall, precision, false-reject rate and escapes per 10,000 parts), per-class precision, recall and
F1, the confusion matrix, ROC and PR curves, a threshold sweep, calibration before and after
temperature scaling, size and latency, the 4-class breakdown where the data has annotated defect
probabilities (ELPV), and the training curves with the train-val gap.
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
        *_operating_points(ev),
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
    lines += _four_class(ev)
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
            "",
            "| epoch | train loss | val loss | loss gap (val - train) | train accuracy | val accuracy "
            "| accuracy gap (train - val) | val ROC-AUC |",
            "|---|---|---|---|---|---|---|---|",
            *[
                f"| {r['epoch']} | {r['train_loss']:.4f} | {r['val_loss']:.4f} | {r['gap_loss']:+.4f} | "
                f"{r['train_accuracy']:.3f} | {r['val_accuracy']:.3f} | {r['gap_accuracy']:+.3f} | "
                f"{_fmt(r['val_roc_auc'], 3)} |"
                for r in _thinned(history)
            ],
        ]
    return "\n".join(lines) + "\n"


def _thinned(history: list[dict], rows: int = 12) -> list[dict]:
    """About ``rows`` epochs spread over the run, always with the last one."""
    step = max(1, round(len(history) / rows))
    picked = history[step - 1 :: step]
    return picked if picked and picked[-1] is history[-1] else [*picked, history[-1]]


def _operating_points(ev: Evaluation) -> list[str]:
    """The threshold in force beside the card's max-F1 and target-recall points: validation vs this split."""
    if not ev.operating_points:
        return []
    prevalence = ev.operating_points[0]["measured"]["prevalence"]
    whose = "validation's" if any(row["expected"] for row in ev.operating_points) else "this split's"
    lines = [
        "",
        "## Operating points",
        "",
        f"What each threshold gives: expected on validation (where it was chosen) and measured on this split. "
        f"Escapes (defective parts passed) and false rejects (good parts rejected) are per 10,000 parts at "
        f"a defect prevalence of {prevalence:.1%} ({whose}).",
        "",
        "| point | chosen by | threshold | recall val / here | precision val / here | false-reject rate val / here "
        "| escapes per 10k val / here | false rejects per 10k here |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in ev.operating_points:
        e, m = row["expected"], row["measured"]
        lines.append(
            f"| {row['point']} | {row['basis']} | {m['threshold']:.3f} | {_pair(e, m, 'recall')} | "
            f"{_pair(e, m, 'precision')} | {_pair(e, m, 'false_reject_rate')} | "
            f"{_pair(e, m, 'escapes_per_10k', 0)} | {_fmt(m['false_rejects_per_10k'], 0)} |"
        )
    return lines


def _pair(expected: dict, measured: dict, key: str, digits: int = 3) -> str:
    return f"{_fmt(expected.get(key), digits) if expected else '–'} / {_fmt(measured.get(key), digits)}"


def _four_class(ev: Evaluation) -> list[str]:
    """4-class results (ELPV's annotated defect probabilities 0, ⅓, ⅔, 1) when the samples carry them."""
    fc = ev.four_class
    if not fc:
        return []
    names = ["0", "⅓", "⅔", "1"]
    lines = [
        "",
        "## Four classes (annotated defect probability 0, ⅓, ⅔, 1)",
        "",
        f"4-class accuracy {_fmt(fc['accuracy'])}: the calibrated defect probability taken at the nearest annotated "
        "level. Rows: annotated level; columns: predicted level.",
        "",
        "| annotated | " + " | ".join(names) + " | support | recall |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    rows = zip(names, fc["confusion"], fc["support"], fc["recall_per_level"], strict=True)
    for name, counts, support, recall in rows:
        lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + f" | {support} | {_fmt(recall, 3)} |")
    return lines


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
