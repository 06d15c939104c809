"""Model versions: an append-only directory of immutable versions and an atomically replaced pointer.

    models/
      v0001/            model.pt (weights + card), card.json, config.yaml, splits.json,
      v0002/            history.jsonl, report/ ... files are made read-only once registered
      production.json   {"version": "v0002", "previous": ["v0001"], ...}  (written via rename)
      shadow.json       {"version": "v0003"}: judges the same frames in shadow (optional)
      audit.jsonl       the audit trail (``inspectline.audit``): promotions, rollbacks, shadow changes,
                        operating points, exports ... with who, when, before/after and why

Registered files never change. What is derived from a version later is recorded in its
``manifest.json`` (replaced atomically, under the registry lock):

      vNNNN/manifest.json   {"operating_points": [...], "exports": [...]}

* an **operating point** is a threshold (and UNSURE band) chosen for the version after training,
  with who chose it, why and what it is expected to give; the newest one is in force, and running
  services pick it up as they pick up a promotion;
* an **export** is a derived engine (ONNX, OpenVINO ...) stored under ``vNNNN/exports/`` with its
  parity results against the checkpoint.

A version is built in a staging folder and renamed into place, so a reader never sees half of one.
``production.json`` is replaced with ``os.replace`` under a file lock, so concurrent promotions
serialise and a reader sees either the old pointer or the new one. Running services watch this file
and switch models when it changes.

References accepted wherever a model is named: ``production``, ``latest``, ``v0003`` (or ``3``), a
version folder, or a path to a ``.pt`` checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from inspectline.audit import AUDIT_NAME, AuditLog
from inspectline.card import ModelCard
from inspectline.errors import ModelNotFoundError
from inspectline.files import atomic_write_json

# What a report written before registration calls the model; register() writes the version in.
PENDING_VERSION = "(named at registration)"

_VERSION = re.compile(r"^v(\d{4,})$")
CHECKPOINT_NAME = "model.pt"
POINTER_NAME = "production.json"
SHADOW_NAME = "shadow.json"
MANIFEST_NAME = "manifest.json"
SYSTEM_ACTOR = "system"
_RUN_FILES = ("config.yaml", "splits.json", "history.jsonl", "drift_reference.npz", "retrain.json", "retrain.md")


class OperatingPoint(BaseModel):
    """A threshold (and UNSURE band) chosen for a version, with who chose it, why, and what it should give."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(gt=0, lt=1)
    unsure_band: float | None = Field(None, ge=0, lt=0.5, description="None: the service's configured band")
    basis: str = Field(description="how it was chosen, e.g. 'target recall 0.97 on validation' or 'manual'")
    expected: dict[str, float] = Field(default_factory=dict, description="recall, precision ... where it was chosen")
    actor: str
    reason: str = ""
    at: str = ""


class ExportRecord(BaseModel):
    """A derived engine of a version (``vNNNN/exports/<path>``) and its parity with the checkpoint.

    ``passed`` says whether parity was within the bound; an export below it is only recorded when it
    was forced (``forced``), and is then never chosen automatically. The speed fields are measured
    when exporting, on ``measured_on``, against the checkpoint in PyTorch fp32 in the same run.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    format: str
    precision: str
    path: str = Field(description="the model file, relative to the version folder")
    passed: bool = Field(description="parity within the configured bound")
    forced: bool = Field(False, description="recorded although parity was below the bound (--force)")
    parity: dict = Field(default_factory=dict)
    runtime: str = Field("", description="runtime and version that wrote and checked it, e.g. 'openvino 2026.4.1'")
    quantization: dict = Field(default_factory=dict, description="INT8: calibration frames, split, max_drop ...")
    images_per_s: float | None = None
    torch_fp32_images_per_s: float | None = None
    measured_on: str = Field("", description="the CPU the speed was measured on")
    actor: str = SYSTEM_ACTOR
    at: str = ""

    @property
    def speedup(self) -> float | None:
        """Images/s over the checkpoint's in PyTorch fp32, as measured when exporting."""
        if not self.images_per_s or not self.torch_fp32_images_per_s:
            return None
        return self.images_per_s / self.torch_fp32_images_per_s


class VersionManifest(BaseModel):
    """What was derived from a version after registration; the newest operating point is in force."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    operating_points: tuple[OperatingPoint, ...] = ()
    exports: tuple[ExportRecord, ...] = ()

    @property
    def operating_point(self) -> OperatingPoint | None:
        return self.operating_points[-1] if self.operating_points else None


@dataclass
class ModelVersion:
    """A registered version; its card is read from the small ``card.json`` on first use."""

    name: str
    path: Path
    _card: ModelCard | None = None

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def card(self) -> ModelCard:
        if self._card is None:
            card_file = self.path / "card.json"
            if card_file.is_file():
                self._card = ModelCard.model_validate_json(card_file.read_text())
            else:
                from inspectline.model import read_card  # torch: only for a version without card.json

                self._card = read_card(self.checkpoint)
        return self._card

    @property
    def manifest(self) -> VersionManifest:
        """Operating points and exports derived from this version (read afresh: they change)."""
        path = self.path / MANIFEST_NAME
        return VersionManifest.model_validate_json(path.read_text()) if path.is_file() else VersionManifest()


class ModelRegistry:
    """A folder of model versions; see the module docstring for the layout."""

    def __init__(self, root: Path, *, audit: AuditLog | None = None):
        self.root = Path(root)
        self.audit = audit or AuditLog(self.root / AUDIT_NAME)

    # --- reading -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p.name for p in self.root.iterdir() if _VERSION.match(p.name) and (p / CHECKPOINT_NAME).is_file()]
        return sorted(found, key=lambda n: int(n[1:]))

    def get(self, name: str) -> ModelVersion:
        name = _normalise(name)
        path = self.root / name
        if not (path / CHECKPOINT_NAME).is_file():
            available = ", ".join(self.names()) or "none"
            msg = f"model version {name!r} is not in registry {self.root} (available: {available})"
            raise ModelNotFoundError(msg)
        return ModelVersion(name=name, path=path)

    def list(self) -> list[ModelVersion]:
        return [self.get(n) for n in self.names()]

    def production(self) -> str | None:
        """Name of the production version, or None when nothing has been promoted."""
        pointer = self._read_pointer()
        return pointer.get("version") if pointer else None

    def pointer(self) -> dict:
        """The whole production pointer (version, previous versions, when and why)."""
        return self._read_pointer() or {}

    def resolve(self, ref: str | Path) -> Path:
        """Checkpoint path for a reference (see module docstring)."""
        text = str(ref)
        if text == "production":
            name = self.production()
            if name is None:
                msg = f"no model is in production in {self.root}; promote one with `inspect models promote VERSION`"
                raise ModelNotFoundError(msg)
            return self.get(name).checkpoint
        if text == "latest":
            names = self.names()
            if not names:
                msg = f"registry {self.root} holds no model versions; train one with `inspect train`"
                raise ModelNotFoundError(msg)
            return self.get(names[-1]).checkpoint
        path = Path(text)
        if path.suffix == ".pt" or path.is_file():
            if not path.is_file():
                msg = f"no checkpoint at {path}"
                raise ModelNotFoundError(msg)
            return path
        if path.is_dir() and (path / CHECKPOINT_NAME).is_file():
            return path / CHECKPOINT_NAME
        return self.get(text).checkpoint

    # --- writing -------------------------------------------------------------------------------
    def register(
        self, checkpoint: Path, *, parent: str | None = None, extra_files: dict[str, Path] | None = None
    ) -> ModelVersion:
        """Copy a trained checkpoint (and its run files) into a new immutable version.

        Run files next to the checkpoint (``config.yaml``, ``splits.json``, ``history.jsonl``,
        ``report/``) are copied along. The stored card names the new version and its parent.
        """
        from inspectline.model import load_checkpoint, save_checkpoint  # torch: readers of the registry need none

        checkpoint = Path(checkpoint)
        model, card = load_checkpoint(checkpoint)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))
        try:
            run_dir = checkpoint.parent
            for name in _RUN_FILES:
                if (run_dir / name).is_file():
                    shutil.copy2(run_dir / name, staging / name)
            for report in ("report", "report_newest"):
                if (run_dir / report).is_dir():
                    shutil.copytree(run_dir / report, staging / report)
            for name, src in (extra_files or {}).items():
                shutil.copy2(src, staging / name)
            with self._locked():
                name = self._claim_next_name()
                card = card.model_copy(
                    update={"version": name, "parent": parent if parent is not None else card.parent}
                )
                for report in staging.glob("report*/report.md"):
                    report.write_text(report.read_text().replace(f"**{PENDING_VERSION}**", f"**{name}**", 1))
                save_checkpoint(staging / CHECKPOINT_NAME, model, card)
                (staging / "card.json").write_text(json.dumps(card.model_dump(mode="json"), indent=2))
                _make_read_only(staging)
                os.rename(staging, self.root / name)  # replaces the empty claimed folder atomically
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return ModelVersion(name=name, path=self.root / name, _card=card)

    def promote(self, name: str, *, reason: str = "", actor: str = SYSTEM_ACTOR) -> dict:
        """Point production at ``name``; the current one is remembered for rollback."""
        version = self.get(name)
        with self._locked():
            pointer = self._read_pointer() or {}
            current = pointer.get("version")
            previous = list(pointer.get("previous", []))
            if current and current != version.name:
                previous.append(current)
            new = {"version": version.name, "previous": previous, "updated_at": _now(), "reason": reason or "promote"}
            self._write_pointer(new)
            self.audit.append(
                "promote", actor=actor, subject="production", before=current, after=version.name, reason=reason
            )
        return new

    def rollback(self, *, reason: str = "", actor: str = SYSTEM_ACTOR) -> dict:
        """Return production to the version before the current one."""
        with self._locked():
            pointer = self._read_pointer() or {}
            previous = list(pointer.get("previous", []))
            if not previous:
                msg = (
                    f"no earlier production version to roll back to in {self.root} "
                    f"(production: {pointer.get('version')})"
                )
                raise ModelNotFoundError(msg)
            target = previous.pop()
            self.get(target)  # still there?
            new = {"version": target, "previous": previous, "updated_at": _now(), "reason": reason or "rollback"}
            self._write_pointer(new)
            self.audit.append(
                "rollback",
                actor=actor,
                subject="production",
                before=pointer.get("version"),
                after=target,
                reason=reason,
            )
        return new

    def shadow(self) -> str | None:
        """The version judging frames in shadow (its verdicts are stored and compared, never returned)."""
        path = self.root / SHADOW_NAME
        return json.loads(path.read_text()).get("version") if path.is_file() else None

    def set_shadow(self, name: str | None, *, reason: str = "", actor: str = SYSTEM_ACTOR) -> str | None:
        """Run ``name`` in shadow next to production, or stop shadowing with ``None``."""
        version = self.get(name).name if name is not None else None
        with self._locked():
            before = self.shadow()
            self._write_json(SHADOW_NAME, {"version": version, "updated_at": _now(), "reason": reason})
            self.audit.append("shadow", actor=actor, subject="shadow", before=before, after=version, reason=reason)
        return version

    def history(self) -> list[dict]:
        """Production and shadow changes, oldest first: ``{action, version, from, actor, reason, at}``."""
        return [
            {
                "action": e.action,
                "version": e.after,
                "from": e.before,
                "actor": e.actor,
                "reason": e.reason,
                "at": e.at.isoformat(),
            }
            for e in self.audit.read()
            if e.action in ("promote", "rollback", "shadow")
        ]

    # --- derived from a version: operating points and exports ------------------------------------
    def operating_point(self, name: str) -> OperatingPoint | None:
        """The operating point in force for version ``name`` (None: the threshold in its model card)."""
        return self.get(name).manifest.operating_point

    def set_operating_point(self, name: str, point: OperatingPoint) -> OperatingPoint:
        """Put a new operating point in force for ``name``; running services pick it up like a promotion."""
        version = self.get(name)
        point = point.model_copy(update={"at": point.at or _now()})
        with self._locked():
            manifest = version.manifest
            current = manifest.operating_point
            before = (
                current.model_dump(include={"threshold", "unsure_band"})
                if current is not None
                else {"threshold": version.card.threshold, "unsure_band": None}
            )
            updated = manifest.model_copy(update={"operating_points": (*manifest.operating_points, point)})
            self._write_manifest(version, updated)
            self.audit.append(
                "operating_point",
                actor=point.actor,
                subject=version.name,
                before=before,
                after=point.model_dump(include={"threshold", "unsure_band", "basis"}),
                reason=point.reason,
            )
        return point

    def record_export(self, name: str, record: ExportRecord) -> ExportRecord:
        """Add an export (whose files are already under ``vNNNN/exports/``) to the version's manifest."""
        version = self.get(name)
        record = record.model_copy(update={"at": record.at or _now()})
        with self._locked():
            manifest = version.manifest
            kept = tuple(e for e in manifest.exports if (e.format, e.precision) != (record.format, record.precision))
            self._write_manifest(version, manifest.model_copy(update={"exports": (*kept, record)}))
            self.audit.append(
                "export",
                actor=record.actor,
                subject=version.name,
                after={
                    "format": record.format,
                    "precision": record.precision,
                    "passed": record.passed,
                    "forced": record.forced,
                },
            )
        return record

    # --- internals -----------------------------------------------------------------------------
    def _claim_next_name(self) -> str:
        taken = [int(m.group(1)) for p in self.root.iterdir() if (m := _VERSION.match(p.name))]
        number = max(taken, default=0) + 1
        while True:
            name = f"v{number:04d}"
            try:
                (self.root / name).mkdir()
                return name
            except FileExistsError:
                number += 1

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read_pointer(self) -> dict | None:
        path = self.root / POINTER_NAME
        if not path.is_file():
            return None
        return json.loads(path.read_text())

    def _write_manifest(self, version: ModelVersion, manifest: VersionManifest) -> None:
        atomic_write_json(version.path / MANIFEST_NAME, manifest.model_dump(mode="json"))

    def _write_pointer(self, pointer: dict) -> None:
        self._write_json(POINTER_NAME, pointer)

    def _write_json(self, name: str, doc: dict) -> None:
        """Replace ``name`` atomically: readers see the old file or the new one, never a mix."""
        atomic_write_json(self.root / name, doc)


def open_registry(root: Path, *, syslog: str | None = None) -> ModelRegistry:
    """A registry whose audit events also go to syslog when ``audit.syslog`` is configured."""
    return ModelRegistry(root, audit=AuditLog(Path(root) / AUDIT_NAME, syslog=syslog))


def _normalise(name: str) -> str:
    text = str(name).strip()
    if text.isdigit():
        return f"v{int(text):04d}"
    return text


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _make_read_only(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
