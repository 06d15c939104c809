from datetime import datetime, timedelta, timezone

import pytest

from inspectline.errors import ConfigError
from inspectline.retrain import gate
from inspectline.timeparse import parse_since

NOW = datetime(2026, 11, 22, 15, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("last-week", NOW - timedelta(days=7)),
        ("yesterday", datetime(2026, 11, 21, tzinfo=timezone.utc)),
        ("today", datetime(2026, 11, 22, tzinfo=timezone.utc)),
        ("7d", NOW - timedelta(days=7)),
        ("36h", NOW - timedelta(hours=36)),
        ("90m", NOW - timedelta(minutes=90)),
        ("2w", NOW - timedelta(weeks=2)),
        ("1.5d", NOW - timedelta(hours=36)),
        ("2026-11-15", datetime(2026, 11, 15, tzinfo=timezone.utc)),
        ("2026-11-15T08:00:00+01:00", datetime(2026, 11, 15, 7, tzinfo=timezone.utc)),
    ],
)
def test_since_forms(text, expected):
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["last-month", "7 days ago", "", "-3d", "2026-13-40"])
def test_since_errors_name_the_accepted_forms(text):
    with pytest.raises(ConfigError, match="last-week, yesterday, today, a duration"):
        parse_since(text, NOW)


def _scores(recall: float, f1: float, auc: float | None) -> dict:
    return {"recall": recall, "f1": f1, "roc_auc": auc, "n": 100}


def test_gate_passes_only_when_every_rule_holds_on_every_set():
    champion = _scores(0.90, 0.80, 0.92)
    better = {
        "golden": {"champion": champion, "challenger": _scores(0.89, 0.81, 0.93)},
        "newest": {"champion": champion, "challenger": _scores(0.95, 0.85, 0.95)},
    }
    assert gate(better, ("golden", "newest"), recall_tolerance=0.02).passed
    worse_recall = {"golden": {"champion": champion, "challenger": _scores(0.87, 0.81, 0.93)}}
    result = gate(worse_recall, ("golden",), recall_tolerance=0.02)
    assert not result.passed and [c["metric"] for c in result.checks if not c["passed"]] == ["recall"]
    worse_f1 = {"golden": {"champion": champion, "challenger": _scores(0.95, 0.79, 0.99)}}
    assert not gate(worse_f1, ("golden",), 0.02).passed
    worse_on_newest = {**better, "newest": {"champion": champion, "challenger": _scores(0.95, 0.85, 0.90)}}
    assert not gate(worse_on_newest, ("golden", "newest"), 0.02).passed
    assert gate(worse_on_newest, ("golden",), 0.02).passed  # newest not gated when not asked


def test_gate_skips_undefined_metrics_and_missing_sets_with_a_note():
    one_class = {"golden": {"champion": _scores(1.0, 1.0, None), "challenger": _scores(1.0, 1.0, None)}}
    result = gate(one_class, ("golden", "newest"), 0.02)
    assert result.passed
    notes = {c["rule"] for c in result.checks}
    assert "undefined on this set (one class)" in notes and "no frames in this set" in notes


def test_the_summary_line_is_one_greppable_line_and_is_appended_to_the_registry(tmp_path):
    from datetime import datetime, timezone

    from inspectline.retrain import GateResult, RetrainOutcome, summary_line, write_summary

    since = datetime(2026, 11, 23, tzinfo=timezone.utc)
    outcome = RetrainOutcome(
        status="rejected", since=since, champion="v0003", challenger="v0004", labelled_frames=412,
        gate=GateResult(passed=False), seconds=1830.4,
    )  # fmt: skip
    line = summary_line(outcome, {"challenges": "shift-start:passed"})
    assert "\n" not in line and line.startswith("inspect-retrain at=")
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    assert fields["status"] == "rejected" and fields["gate"] == "failed" and fields["labelled"] == "412"
    assert (fields["champion"], fields["challenger"], fields["seconds"]) == ("v0003", "v0004", "1830")
    assert fields["since"] == "2026-11-23T00:00:00+00:00" and fields["challenges"] == "shift-start:passed"
    nothing = summary_line(RetrainOutcome(status="nothing_to_learn", since=since, champion="v0003"))
    assert "status=nothing_to_learn" in nothing and "gate=-" in nothing and "challenger=-" in nothing
    path = write_summary(line, tmp_path)
    write_summary(nothing, tmp_path)
    assert path.read_text().splitlines() == [line, nothing]
