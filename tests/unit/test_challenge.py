"""Challenge runs through a stand-in service on loopback: pass/fail rules, storage, audit, metrics, and the
rollback of a promotion whose challenge fails."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import yaml
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from inspectline.challenge import challenge_after_promotion, export_last_results, last_results, run_challenge
from inspectline.cli import app as cli
from inspectline.config import build_config
from inspectline.errors import ConfigError
from inspectline.monitoring.metrics import ChallengeMetrics
from inspectline.registry import ModelRegistry
from tests.helpers import write_dataset


@dataclass
class FakeLine:
    """Answers /readyz with the served version and /v1/frames with each golden image's own label."""

    labels: dict[bytes, str]
    served: str = "v0001"
    wrong: set[str] = field(default_factory=set)  # expected verdicts to answer wrongly (OK -> DEFECTIVE ...)
    unsure: bool = False
    posts: list[dict] = field(default_factory=list)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        line = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer(200, {"status": "ready", "model_version": line.served})

            def do_POST(self) -> None:
                params = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                expected = line.labels[self.rfile.read(int(self.headers["Content-Length"]))]
                verdict = {"OK": "DEFECTIVE", "DEFECTIVE": "OK"}[expected] if expected in line.wrong else expected
                line.posts.append(params)
                body = {
                    "frame_id": params["frame_id"],
                    "verdict": "UNSURE" if line.unsure else verdict,
                    "defect_probability": 0.9 if verdict == "DEFECTIVE" else 0.1,
                    "model_version": line.served,
                }
                self._answer(200, body)

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: object) -> None:
                pass

        return Handler


@pytest.fixture
def golden(tmp_path) -> dict[bytes, str]:
    files = write_dataset(tmp_path / "golden", n_per_class=3)
    return {p.read_bytes(): "DEFECTIVE" if label == "defective" else "OK" for label, ps in files.items() for p in ps}


@pytest.fixture
def line(golden) -> Iterator[tuple[FakeLine, str]]:
    fake = FakeLine(golden)
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield fake, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def plant_raw(tmp_path: Path, url: str, **challenge) -> dict:
    return {
        "service_url": url,
        "lines": {
            "line-1": {
                "stations": [{"cameras": ["top", "bottom"]}],
                "challenges": {"shift-start": {"path": str(tmp_path / "golden"), "timeout_s": 5, **challenge}},
            }
        },
    }


def registry_with(tmp_path: Path, *versions: str) -> ModelRegistry:
    """Version folders the pointer logic accepts (no weights are loaded here)."""
    registry = ModelRegistry(tmp_path / "models")
    for name in versions:
        (registry.root / name).mkdir(parents=True)
        (registry.root / name / "model.pt").write_bytes(b"")
    return registry


def test_a_run_passes_when_every_sample_gets_its_verdict_and_is_stored_audited_and_exported(tmp_path, line):
    fake, url = line
    plant = build_config({"plant": plant_raw(tmp_path, url)}).plant
    registry = registry_with(tmp_path)
    result = run_challenge(plant, "shift-start", registry_root=registry.root, actor="shift-lead")

    assert result.passed and result.correct == 6 and result.model_versions == ["v0001"]
    assert "PASSED" in result.summary() and "6/6" in result.summary()
    assert {p["camera_id"] for p in fake.posts} == {"top"} and {p["line_id"] for p in fake.posts} == {"line-1"}
    assert all("part_id" not in p for p in fake.posts)  # never a part verdict for the PLC
    assert len({p["frame_id"] for p in fake.posts}) == 6 and all(
        p["frame_id"].startswith("challenge-") for p in fake.posts
    )
    (stored,) = last_results(registry.root)
    assert (stored["set_name"], stored["line_id"], stored["passed"], stored["correct"]) == (
        "shift-start",
        "line-1",
        True,
        6,
    )
    assert len(list((registry.root / "challenges" / "shift-start").glob("2*Z.json"))) == 1
    (event,) = registry.audit.read(action="challenge")
    assert (event.actor, event.subject, event.after["status"]) == ("shift-lead", "line-1/shift-start", "passed")

    metrics = ChallengeMetrics(CollectorRegistry())
    export_last_results(registry.root, metrics)
    labels = {"line": "line-1", "set": "shift-start"}
    assert metrics.registry.get_sample_value("inspect_challenge_passed", labels) == 1.0
    assert metrics.registry.get_sample_value("inspect_challenge_correct_ratio", labels) == 1.0
    assert metrics.registry.get_sample_value("inspect_challenge_last_run_timestamp_seconds", labels) > 0


@pytest.mark.parametrize(("wrong", "unsure", "correct"), [({"DEFECTIVE"}, False, 3), (set(), True, 0)])
def test_one_wrong_or_unsure_verdict_fails_the_run(tmp_path, line, wrong, unsure, correct):
    fake, url = line
    fake.wrong, fake.unsure = wrong, unsure
    plant = build_config({"plant": plant_raw(tmp_path, url)}).plant
    result = run_challenge(plant, "shift-start", registry_root=tmp_path / "models", actor="a")
    assert result.status == "failed" and result.correct == correct
    assert "wrong: " in result.message and "expected" in result.message


def test_an_unreachable_service_is_an_error_not_a_failure(tmp_path, golden):
    plant = build_config({"plant": plant_raw(tmp_path, "http://127.0.0.1:9", timeout_s=0.5)}).plant
    result = run_challenge(plant, "shift-start", registry_root=tmp_path / "models", actor="a")
    assert result.status == "error" and "no verdict" in result.message and result.samples == []


def test_a_missing_set_folder_names_the_path(tmp_path):
    plant = build_config({"plant": plant_raw(tmp_path, "http://127.0.0.1:9")}).plant
    with pytest.raises(ConfigError, match="does not exist"):
        run_challenge(plant, "shift-start", registry_root=tmp_path / "models", actor="a")


def test_a_failed_challenge_after_a_promotion_rolls_it_back_and_says_why(tmp_path, line):
    fake, url = line
    plant = build_config({"plant": plant_raw(tmp_path, url)}).plant
    registry = registry_with(tmp_path, "v0001", "v0002")
    registry.promote("v0001")
    registry.promote("v0002", actor="ana")
    fake.served, fake.wrong = "v0002", {"OK"}
    check = challenge_after_promotion(plant, registry, "v0002", actor="ana")
    assert check.rolled_back_to == "v0001" and registry.production() == "v0001"
    assert "v0002 ROLLED BACK" in check.lines()[-1]
    actions = [(e.action, e.after if e.action != "challenge" else e.after["status"]) for e in registry.audit.read()]
    assert actions[-3:] == [("promote", "v0002"), ("challenge", "failed"), ("rollback", "v0001")]
    assert "challenge shift-start failed after promoting v0002" in registry.audit.read(action="rollback")[0].reason


def test_a_passed_challenge_keeps_the_promotion_and_one_that_cannot_run_does_not_roll_back(tmp_path, line):
    fake, url = line
    plant = build_config({"plant": plant_raw(tmp_path, url)}).plant
    registry = registry_with(tmp_path, "v0001", "v0002")
    registry.promote("v0001")
    registry.promote("v0002")
    fake.served = "v0002"
    assert challenge_after_promotion(plant, registry, "v0002", actor="a").rolled_back_to is None
    fake.served = "v0001"  # the service never switches to v0002 (e.g. it failed to load there)
    slow = build_config({"plant": plant_raw(tmp_path, url, timeout_s=1.0)}).plant
    check = challenge_after_promotion(slow, registry, "v0002", actor="a")
    assert [r.status for r in check.results] == ["error"] and "did not serve v0002" in check.results[0].message
    assert check.rolled_back_to is None and registry.production() == "v0002"


def test_sets_not_marked_after_promotion_are_left_for_the_schedule(tmp_path, line):
    _, url = line
    plant = build_config({"plant": plant_raw(tmp_path, url, after_promotion=False)}).plant
    registry = registry_with(tmp_path, "v0001")
    registry.promote("v0001")
    assert challenge_after_promotion(plant, registry, "v0001", actor="a").results == []


def write_config(tmp_path: Path, url: str, **sections) -> Path:
    raw = {"paths": {"registry": str(tmp_path / "models")}, "plant": plant_raw(tmp_path, url), **sections}
    path = tmp_path / "inspect.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_challenge_and_promote_with_its_exit_statuses(tmp_path, line):
    fake, url = line
    config = write_config(tmp_path, url)
    registry = registry_with(tmp_path, "v0001", "v0002")
    registry.promote("v0001")
    runner = CliRunner()

    passed = runner.invoke(cli, ["challenge", "--set", "shift-start", "--config", str(config)])
    assert passed.exit_code == 0 and "PASSED" in passed.output
    fake.wrong = {"DEFECTIVE"}
    failed = runner.invoke(cli, ["challenge", "--set", "shift-start", "--config", str(config), "--json"])
    assert failed.exit_code == 1 and json.loads(failed.output)["status"] == "failed"

    fake.served = "v0002"
    promoted = runner.invoke(cli, ["models", "promote", "v0002", "--config", str(config), "--actor", "ana"])
    assert promoted.exit_code == 1, promoted.output
    assert "v0002 ROLLED BACK: production is v0001 again" in promoted.output
    skipped = runner.invoke(cli, ["models", "promote", "v0002", "--config", str(config), "--no-challenge"])
    assert skipped.exit_code == 0 and registry.production() == "v0002"

    unknown = runner.invoke(cli, ["challenge", "--set", "night", "--config", str(config)])
    assert unknown.exit_code != 0 and "not configured" in str(unknown.exception or unknown.output)
