"""Model versions: an append-only directory of immutable versions and an atomically replaced pointer.

    models/
      v0001/            model.pt (weights + card), card.json, config.yaml, splits.json,
      v0002/            history.jsonl, report/ ... files are made read-only once registered
      production.json   {"version": "v0002", "previous": ["v0001"], ...}  (written via rename)
      shadow.json       {"version": "v0003"}: judges the same frames in shadow (optional)
      promotions.jsonl  audit log: one line per promote / rollback

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

from inspectline.errors import ModelNotFoundError
from inspectline.model import ModelCard, load_checkpoint, read_card, save_checkpoint

# What a report written before registration calls the model; register() writes the version in.
PENDING_VERSION = "(named at registration)"

_VERSION = re.compile(r"^v(\d{4,})$")
CHECKPOINT_NAME = "model.pt"
POINTER_NAME = "production.json"
SHADOW_NAME = "shadow.json"
_RUN_FILES = ("config.yaml", "splits.json", "history.jsonl", "drift_reference.npz", "retrain.json", "retrain.md")


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
            self._card = (
                ModelCard.model_validate_json(card_file.read_text())
                if card_file.is_file()
                else read_card(self.checkpoint)
            )
        return self._card


class ModelRegistry:
    """A folder of model versions; see the module docstring for the layout."""

    def __init__(self, root: Path):
        self.root = Path(root)

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

    def promote(self, name: str, *, reason: str = "") -> dict:
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
            self._audit(
                {
                    "action": "promote",
                    "version": version.name,
                    "from": current,
                    "reason": reason,
                    "at": new["updated_at"],
                }
            )
        return new

    def rollback(self, *, reason: str = "") -> dict:
        """Return production to the version before the current one."""
        with self._locked():
            pointer = self._read_pointer() or {}
            previous = list(pointer.get("previous", []))
            if not previous:
                msg = (
                    f"no earlier production version to roll back to in {self.root} (production: "
                    f"{pointer.get('version')})"
                )
                raise ModelNotFoundError(msg)
            target = previous.pop()
            self.get(target)  # still there?
            new = {"version": target, "previous": previous, "updated_at": _now(), "reason": reason or "rollback"}
            self._write_pointer(new)
            self._audit(
                {
                    "action": "rollback",
                    "version": target,
                    "from": pointer.get("version"),
                    "reason": reason,
                    "at": new["updated_at"],
                }
            )
        return new

    def shadow(self) -> str | None:
        """The version judging frames in shadow (its verdicts are stored and compared, never returned)."""
        path = self.root / SHADOW_NAME
        return json.loads(path.read_text()).get("version") if path.is_file() else None

    def set_shadow(self, name: str | None, *, reason: str = "") -> str | None:
        """Run ``name`` in shadow next to production, or stop shadowing with ``None``."""
        version = self.get(name).name if name is not None else None
        with self._locked():
            self._write_json(SHADOW_NAME, {"version": version, "updated_at": _now(), "reason": reason})
            self._audit({"action": "shadow", "version": version, "reason": reason, "at": _now()})
        return version

    def history(self) -> list[dict]:
        path = self.root / "promotions.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

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

    def _write_pointer(self, pointer: dict) -> None:
        self._write_json(POINTER_NAME, pointer)

    def _write_json(self, name: str, doc: dict) -> None:
        """Replace ``name`` atomically: readers see the old file or the new one, never a mix."""
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.root / name)

    def _audit(self, event: dict) -> None:
        with open(self.root / "promotions.jsonl", "a") as fh:
            fh.write(json.dumps(event) + "\n")


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
