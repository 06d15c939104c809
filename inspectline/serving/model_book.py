"""The model page's facts, read from the registry and the audit trail: versions, lineage, reports, history.

    book = ModelBook(registry)
    book.overview(served="v0003")      # production, shadow, every version in short, recent history
    book.version("v0003")              # card, metrics, operating points, exports with parity, lineage, report
    book.report_file("v0003", "roc_pr.png")   # a file of the version's evaluation report (plots, gallery)

The evaluation report (``vNNNN/report/report.md``, written by training) is rendered to HTML here with
markdown-it (raw HTML in the Markdown is escaped, never passed through). Its images point at
``GET /v1/models/{version}/report/{file}`` through a ``data-src`` attribute, because the page loads images
with its bearer token (a plain ``src`` cannot send one).

History comes from the audit trail (promotions, rollbacks, shadow changes, operating points, exports). The
trail also holds every review label, so it can be long: :meth:`AuditLog.follow` reads only what was
appended since the last call and skips other actions' lines unparsed.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

from inspectline.audit import AuditEvent
from inspectline.errors import ModelNotFoundError
from inspectline.registry import ModelRegistry, ModelVersion

HISTORY_ACTIONS = ("promote", "rollback", "shadow", "operating_point", "export")
REPORT_DIR = "report"
REPORT_FILE = "report.md"
REPORT_MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
REPORT_PATH = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}(/[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}){0,3}$"
VERSION_PATTERN = r"^v[0-9]{4,9}$"
_MAX_LINEAGE = 50
_HISTORY_SHOWN = 100
SUMMARY_METRICS = ("accuracy", "roc_auc", "f1", "recall", "precision", "ece")


class ModelBook:
    """Reads what the model page shows; thread-safe (the routes call it from worker threads)."""

    def __init__(self, registry: ModelRegistry):
        self.registry = registry
        self._events: list[AuditEvent] = []
        self._offset = 0
        self._lock = threading.Lock()
        self._markdown = MarkdownIt("commonmark", {"html": False}).enable("table")
        self._markdown.add_render_rule("image", _image_by_data_src)

    def history(self) -> list[AuditEvent]:
        """Every promotion, rollback, shadow change, operating point and export, oldest first."""
        with self._lock:
            path = self.registry.audit.path
            if path.is_file() and path.stat().st_size < self._offset:  # a new trail: read it from the start
                self._events, self._offset = [], 0
            new, self._offset = self.registry.audit.follow(self._offset, actions=HISTORY_ACTIONS)
            self._events += new
            return list(self._events)

    def overview(self, served: str | None) -> dict[str, Any]:
        """Production, shadow and the served version; each version in short, newest first; recent history."""
        versions = [_summary(v) for v in reversed(self.registry.list())]
        return {
            "production": self.registry.production(),
            "shadow": self.registry.shadow(),
            "served": served,
            "versions": versions,
            "history": [_event(e) for e in reversed(self.history()[-_HISTORY_SHOWN:])],
        }

    def version(self, name: str) -> dict[str, Any]:
        """Everything the model page shows about one version."""
        version = self.registry.get(name)
        card, manifest = version.card, version.manifest
        point = manifest.operating_point
        return _summary(version) | {
            "classes": list(card.class_names),
            "image_size": card.preprocessing.image_size,
            "color_mode": card.preprocessing.color_mode,
            "temperature": card.temperature,
            "threshold_policy": card.threshold_policy,
            "tta_views": list(card.tta_views),
            "card_threshold": card.threshold,
            "metrics": dict(card.metrics),
            "operating_point": point.model_dump(mode="json") if point is not None else None,
            "operating_points": [p.model_dump(mode="json") for p in reversed(manifest.operating_points)],
            "exports": [e.model_dump(mode="json") for e in manifest.exports],
            "lineage": self.lineage(version),
            "report_html": self.report_html(version),
            "history": [_event(e) for e in reversed(self.history()) if _concerns(e, version.name)],
        }

    def in_force(self, name: str) -> tuple[float, float]:
        """(threshold, UNSURE band) the registry puts in force for a version: its operating point, else its card."""
        version = self.registry.get(name)
        point = version.manifest.operating_point
        if point is not None:
            return point.threshold, point.unsure_band or 0.0
        return version.card.threshold, 0.0

    def lineage(self, version: ModelVersion) -> list[dict[str, Any]]:
        """The version and its ancestors (parent, grandparent ...), each in short; a missing one ends the chain."""
        chain, seen = [], set()
        current: ModelVersion | None = version
        while current is not None and current.name not in seen and len(chain) < _MAX_LINEAGE:
            seen.add(current.name)
            chain.append(_summary(current))
            parent = current.card.parent
            try:
                current = self.registry.get(parent) if parent else None
            except ModelNotFoundError:
                chain.append({"version": parent, "missing": True})
                current = None
        return chain

    def report_html(self, version: ModelVersion) -> str | None:
        """The version's evaluation report as HTML, or None when it has none."""
        path = version.path / REPORT_DIR / REPORT_FILE
        if not path.is_file():
            return None
        return self._markdown.render(path.read_text(), {"version": version.name})

    def report_file(self, name: str, relative: str) -> tuple[Path, str]:
        """A file of the version's report (a plot, a gallery image) and its media type; ModelNotFoundError else."""
        version = self.registry.get(name)
        media = REPORT_MEDIA.get(Path(relative).suffix.lower())
        folder = (version.path / REPORT_DIR).resolve()
        path = (folder / relative).resolve()
        if media is None or not re.match(REPORT_PATH, relative) or folder not in path.parents or not path.is_file():
            msg = (
                f"model {version.name}'s report has no file {relative!r} (report files are its plots and gallery "
                f"images: {', '.join(REPORT_MEDIA)})"
            )
            raise ModelNotFoundError(msg)
        return path, media


def _summary(version: ModelVersion) -> dict[str, Any]:
    card, manifest = version.card, version.manifest
    point = manifest.operating_point
    return {
        "version": version.name,
        "arch": card.arch,
        "width": card.width,
        "created_at": card.created_at,
        "parent": card.parent,
        "threshold": point.threshold if point is not None else card.threshold,
        "unsure_band": point.unsure_band if point is not None else None,
        "metrics": {k: v for k, v in card.metrics.items() if k in SUMMARY_METRICS},
        "export_count": len(manifest.exports),
    }


def _event(e: AuditEvent) -> dict[str, Any]:
    return {
        "at": e.at.isoformat(),
        "action": e.action,
        "subject": e.subject,
        "before": e.before,
        "after": e.after,
        "actor": e.actor,
        "reason": e.reason,
    }


def _concerns(event: AuditEvent, version: str) -> bool:
    return version in (event.subject, event.after, event.before)


def _image_by_data_src(renderer, tokens, idx, options, env) -> str:
    """Report images: a relative ``src`` becomes ``data-src`` on the report-file route, loaded with the token."""
    token = tokens[idx]
    src = str(token.attrs.get("src", ""))
    if not re.match(r"^[a-z]+:|^/", src):
        token.attrs.pop("src", None)
        token.attrs["data-src"] = f"/v1/models/{env['version']}/report/{src}"
    return renderer.image(tokens, idx, options, env)
