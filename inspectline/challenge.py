"""Challenge runs: a labelled golden set posted through the running service, as a line camera would.

A line keeps challenge sets with its config (``plant.lines.<line>.challenges.<name>.path``: a folder
with ``ok/`` and ``defective/`` sub-folders, or a CSV manifest ``path,label``). ``inspect challenge
--set NAME`` posts every sample to the service with the camera adapter's uploader (same transport,
retries and error rules) as the set's camera of that line, and the run **passes only if every sample
gets its expected verdict**: ``ok`` -> OK, ``defective`` -> DEFECTIVE (UNSURE fails either). Frames
carry fresh ids (so the service judges them, never answers from memory) and no part id (so they never
become part verdicts sent to the PLC).

Each run is stored beside the model versions it judges, in the registry folder every process shares:
``<registry>/challenges/<set>/<UTC time>.json`` (every sample's verdict and probability) and
``latest.json`` (replaced atomically; :func:`last_results` reads these for the service's metrics), and
appended to the audit trail (``action="challenge"``).

After a promotion (``inspect models promote``, ``inspect retrain``) :func:`challenge_after_promotion`
waits until the service serves the promoted version, runs every set with ``after_promotion: true``,
and rolls production back if one fails (the rollback is in the audit trail with the reason). A run
that cannot reach the service is an error, not a failure: the promotion stands, and says so.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from inspectline.audit import AuditLog
from inspectline.camera_adapters.source import Frame, Outcome, content_type_for, safe_id
from inspectline.camera_adapters.uploader import Uploader, UploadSettings, backoff_delay
from inspectline.config import ChallengeSetConfig, DataConfig, PlantConfig
from inspectline.errors import ConfigError, DataError
from inspectline.files import atomic_write_json
from inspectline.monitoring.metrics import ChallengeMetrics
from inspectline.registry import ModelRegistry

log = logging.getLogger(__name__)
CHALLENGES_DIR = "challenges"
EXPECTED = ("OK", "DEFECTIVE")  # by label index: 0 ok, 1 defective


@dataclass(frozen=True)
class SampleResult:
    """One golden sample and what the service said about it."""

    key: str
    expected: str
    verdict: str | None
    defect_probability: float | None
    model_version: str | None
    frame_id: str
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.verdict == self.expected


@dataclass
class ChallengeResult:
    """One challenge run: ``status`` is passed, failed (a wrong verdict) or error (no verdict to judge by)."""

    set_name: str
    line_id: str
    camera_id: str
    status: str
    started_at: str
    finished_at: str
    expected_version: str | None = None
    samples: list[SampleResult] = field(default_factory=list)
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def correct(self) -> int:
        return sum(s.passed for s in self.samples)

    @property
    def model_versions(self) -> list[str]:
        return sorted({s.model_version for s in self.samples if s.model_version})

    def summary(self) -> str:
        versions = ", ".join(self.model_versions) or "no model"
        head = f"challenge {self.set_name} on {self.line_id}/{self.camera_id}: {self.status.upper()}"
        detail = f"; {self.message}" if self.message else ""
        return f"{head} — {self.correct}/{len(self.samples)} as expected ({versions}){detail}"

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc.update(passed=self.passed, correct=self.correct, model_versions=self.model_versions)
        return doc


def load_challenge_set(name: str, settings: ChallengeSetConfig) -> list[tuple[str, Path, str]]:
    """``(key, image path, expected verdict)`` per sample of the set, in a stable order."""
    from inspectline.data.sources import load_samples

    path = settings.path
    if not path.exists():
        msg = f"challenge set {name!r}: {path} does not exist (a folder with ok/ and defective/, or a CSV manifest)"
        raise ConfigError(msg)
    source = "manifest" if path.is_file() else "folder"
    try:
        samples = load_samples(DataConfig(source=source, path=path))
    except DataError as exc:
        msg = f"challenge set {name!r}: {exc}"
        raise ConfigError(msg) from None
    if not samples:
        msg = f"challenge set {name!r} at {path} holds no samples"
        raise ConfigError(msg)
    return [(s.key, s.path, EXPECTED[s.label]) for s in sorted(samples, key=lambda s: s.key)]


def run_challenge(
    plant: PlantConfig,
    name: str,
    *,
    registry_root: Path,
    actor: str,
    url: str | None = None,
    token: str | None = None,
    expect_version: str | None = None,
    audit: AuditLog | None = None,
    transport: httpx.BaseTransport | None = None,
) -> ChallengeResult:
    """Post set ``name`` through the service, store the result, audit it; see the module docstring."""
    line_id, settings = plant.challenge(name)
    camera_id = settings.camera or plant.lines[line_id].stations[0].cameras[0]
    samples = load_challenge_set(name, settings)
    started = datetime.now(timezone.utc)
    result = ChallengeResult(name, line_id, camera_id, "error", started.isoformat(), "", expect_version)
    upload = UploadSettings(url=url or plant.service_url, token=token, timeout_s=30)
    deadline = time.monotonic() + settings.timeout_s
    uploader = Uploader(upload, line_id, transport=transport)
    try:
        if expect_version is not None:
            _wait_for_version(uploader, expect_version, deadline)
        run_id = f"{started:%Y%m%dT%H%M%S}"
        for index, (key, path, expected) in enumerate(samples):
            frame = Frame(
                frame_id=safe_id(f"challenge-{name}-{run_id}-{index:04d}"),
                camera_id=camera_id,
                captured_at=datetime.now(timezone.utc),
                image=path.read_bytes(),
                content_type=content_type_for(path) or "application/octet-stream",
            )
            result.samples.append(_judge(uploader, frame, key, expected, deadline))
        wrong_version = [s for s in result.samples if expect_version and s.model_version not in (None, expect_version)]
        result.status = "passed" if all(s.passed for s in result.samples) and not wrong_version else "failed"
        failed = [s for s in result.samples if not s.passed]
        if failed:
            result.message = "wrong: " + ", ".join(
                f"{s.key} {s.verdict or s.error} (expected {s.expected})" for s in failed[:5]
            )
        elif wrong_version:
            result.message = f"judged by {wrong_version[0].model_version}, not the promoted {expect_version}"
    except _Unreachable as exc:
        result.status, result.message = "error", str(exc)
    finally:
        uploader.close()
        result.finished_at = datetime.now(timezone.utc).isoformat()
    _store(registry_root, result)
    (audit or AuditLog(registry_root / "audit.jsonl")).append(
        "challenge",
        actor=actor,
        subject=f"{line_id}/{name}",
        after={
            "status": result.status,
            "correct": result.correct,
            "samples": len(samples),
            "model_versions": result.model_versions,
        },
        reason=result.message,
    )
    log.info("%s", result.summary())
    return result


@dataclass
class PromotionCheck:
    """What :func:`challenge_after_promotion` did: the runs, and the version production went back to."""

    version: str
    results: list[ChallengeResult]
    rolled_back_to: str | None = None

    def lines(self) -> list[str]:
        out = [r.summary() for r in self.results]
        if self.rolled_back_to:
            out.append(f"{self.version} ROLLED BACK: production is {self.rolled_back_to} again")
        return out


def challenge_after_promotion(
    plant: PlantConfig,
    registry: ModelRegistry,
    version: str,
    *,
    actor: str,
    url: str | None = None,
    token: str | None = None,
    transport: httpx.BaseTransport | None = None,
) -> PromotionCheck:
    """Run every ``after_promotion`` set against the promoted ``version``; roll back when one fails."""
    check = PromotionCheck(version, [])
    for line in plant.lines.values():
        for name, settings in line.challenges.items():
            if not settings.after_promotion:
                continue
            check.results.append(
                run_challenge(
                    plant,
                    name,
                    registry_root=registry.root,
                    actor=actor,
                    url=url,
                    token=token,
                    expect_version=version,
                    audit=registry.audit,
                    transport=transport,
                )
            )
    failed = [r for r in check.results if r.status == "failed"]
    if failed and registry.production() == version:
        reason = f"challenge {failed[0].set_name} failed after promoting {version}: {failed[0].message}"
        check.rolled_back_to = registry.rollback(reason=reason, actor=actor)["version"]
    return check


def last_results(registry_root: Path) -> list[dict]:
    """The latest run of every challenge set (``latest.json`` documents), for the service's metrics."""
    folder = Path(registry_root) / CHALLENGES_DIR
    found = []
    for path in sorted(folder.glob("*/latest.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", path, exc)
    return found


def export_last_results(registry_root: Path, metrics: ChallengeMetrics) -> None:
    """Set the challenge gauges from :func:`last_results` (the monitor calls this periodically)."""
    for doc in last_results(registry_root):
        labels = (doc["line_id"], doc["set_name"])
        metrics.passed.labels(*labels).set(1.0 if doc["passed"] else 0.0)
        total = len(doc["samples"])
        metrics.correct_ratio.labels(*labels).set(doc["correct"] / total if total else 0.0)
        metrics.last_run.labels(*labels).set(datetime.fromisoformat(doc["finished_at"]).timestamp())


class _Unreachable(Exception):
    """The service gave no verdict within the run's time (down, or still on another model)."""


def _wait_for_version(uploader: Uploader, version: str, deadline: float) -> None:
    """Wait until the service's readiness names ``version`` (running services follow promotions in seconds)."""
    seen = None
    while time.monotonic() < deadline:
        try:
            response = uploader.client.get("/readyz")
            seen = response.json().get("model_version") if response.status_code == 200 else seen
        except (httpx.TransportError, ValueError):
            pass
        if seen == version:
            return
        time.sleep(0.5)
    msg = f"the service at {uploader.settings.url} did not serve {version} in time (last seen: {seen or 'nothing'})"
    raise _Unreachable(msg)


def _judge(uploader: Uploader, frame: Frame, key: str, expected: str, deadline: float) -> SampleResult:
    failures = 0
    while True:
        answer = uploader.post(frame)
        if isinstance(answer, Outcome):
            break
        failures += 1
        wait = backoff_delay(failures, uploader.settings, answer.retry_after_s)
        if time.monotonic() + wait > deadline:
            msg = f"no verdict for {key} from {uploader.settings.url} in time: {answer.reason}"
            raise _Unreachable(msg)
        time.sleep(wait)
    body = answer.body
    return SampleResult(
        key=key,
        expected=expected,
        verdict=body.get("verdict") if answer.kind == "judged" else None,
        defect_probability=body.get("defect_probability"),
        model_version=body.get("model_version"),
        frame_id=frame.frame_id,
        error=None if answer.kind == "judged" else answer.reason,
    )


def _store(registry_root: Path, result: ChallengeResult) -> Path:
    folder = Path(registry_root) / CHALLENGES_DIR / result.set_name
    stamp = datetime.fromisoformat(result.started_at)
    path = folder / f"{stamp:%Y%m%dT%H%M%S%f}Z.json"
    doc = result.to_dict()
    atomic_write_json(path, doc)
    atomic_write_json(folder / "latest.json", doc, sync_dir=True)
    return path
