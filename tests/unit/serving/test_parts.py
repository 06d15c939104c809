"""Part verdicts: the rule as a table, deadlines on an injected clock, late views, bounded memory."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from inspectline.config import StoreConfig, build_config
from inspectline.errors import ConfigError
from inspectline.serving.parts import FrameVerdict, PartAggregator
from inspectline.store import FrameStore

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def plant(**line_changes):
    line = {
        "stations": [
            {"name": "final", "cameras": ["top", "bottom", "side"], "required": ["top", "bottom"], "deadline_ms": 500},
            {"name": "entry", "cameras": ["entry"], "deadline_ms": 200},
        ],
        **line_changes,
    }
    return build_config({"plant": {"lines": {"line-1": line}}}).plant


def frame(camera: str, verdict: str = "OK", part: str | None = "P1", frame_id: str | None = None, p: float = 0.1):
    return FrameVerdict(
        line_id="line-1",
        camera_id=camera,
        part_id=part,
        frame_id=frame_id or f"{camera}-{part}",
        verdict=verdict,
        defect_probability=p,
        received_at=T0,
        heatmap=f"/v1/frames/{camera}-{part}/heatmap",
        model_version="v0003",
    )


def aggregator(clock: Clock, **changes) -> PartAggregator:
    return PartAggregator(plant(**changes.pop("line", {})).lines, clock=clock, now=lambda: T0, **changes)


# (views that arrive before the deadline, expected verdict, decided on arrival?, deadline missed?)
CASES = [
    ([("top", "OK"), ("bottom", "OK")], "OK", True, False),
    ([("top", "OK"), ("side", "OK"), ("bottom", "OK")], "OK", True, False),
    ([("top", "DEFECTIVE"), ("bottom", "OK")], "DEFECTIVE", True, False),
    ([("top", "UNSURE"), ("bottom", "DEFECTIVE")], "DEFECTIVE", True, False),
    ([("top", "OK"), ("bottom", "UNSURE")], "UNSURE", True, False),
    ([("side", "DEFECTIVE"), ("top", "OK"), ("bottom", "OK")], "DEFECTIVE", True, False),  # optional view counts
    ([("top", "OK")], "NO_RESULT", False, True),
    ([("top", "OK"), ("side", "OK")], "NO_RESULT", False, True),  # an optional view does not stand in
    ([("top", "DEFECTIVE")], "DEFECTIVE", False, True),  # a defect seen is a defect, even with a view missing
    ([("top", "UNSURE")], "UNSURE", False, True),
]


@pytest.mark.parametrize(("views", "verdict", "on_arrival", "missed"), CASES)
def test_the_part_rule(views, verdict, on_arrival, missed):
    clock = Clock()
    parts = aggregator(clock)
    decided = []
    for camera, frame_verdict in views:
        decided += parts.add(frame(camera, frame_verdict, p=0.9 if frame_verdict != "OK" else 0.1))
    if not on_arrival:
        assert decided == [] and parts.open_parts == 1
        clock.t += 0.499
        assert parts.expire() == []
        clock.t += 0.002
        decided = parts.expire()
    assert len(decided) == 1 and parts.open_parts == 0
    part = decided[0]
    assert (part.verdict, part.deadline_missed, part.station, part.part_id) == (verdict, missed, "final", "P1")
    assert [v.camera_id for v in part.views] == [camera for camera, _ in views]
    assert part.missing == tuple(sorted({"top", "bottom"} - {c for c, _ in views}))
    assert part.seconds == pytest.approx(0.0 if on_arrival else 0.501)


def test_views_keep_their_verdict_probability_and_heatmap_and_the_reason_names_the_view():
    parts = aggregator(Clock())
    parts.add(frame("top", "DEFECTIVE", p=0.91))
    (part,) = parts.add(frame("bottom", "OK", p=0.12))
    top = part.views[0]
    assert (top.frame_id, top.verdict, top.defect_probability) == ("top-P1", "DEFECTIVE", 0.91)
    assert top.heatmap == "/v1/frames/top-P1/heatmap" and top.model_version == "v0003"
    assert part.reason == "DEFECTIVE in view top p=0.910"
    doc = part.to_dict()
    assert doc["views"][1]["received_at"] == T0.isoformat() and doc["decided_at"] == T0.isoformat()


def test_the_store_keeps_each_views_ids_verdict_probability_model_and_time(tmp_path):
    clock = Clock()
    parts = aggregator(clock)
    parts.add(frame("top", "DEFECTIVE", p=0.91))
    clock.t += 0.25
    (part,) = parts.add(frame("bottom", "OK", p=0.12))
    with FrameStore(
        StoreConfig(database_url=f"sqlite:///{tmp_path / 'frames.db'}", storage_url=str(tmp_path))
    ) as store:
        assert store.add_parts([part.store_record()]) == 1
        [stored] = store.find_part("P1", line="line-1")
    assert (stored.station, stored.verdict, stored.disposition) == ("final", "DEFECTIVE", "reject")
    assert stored.reason == "DEFECTIVE in view top p=0.910" and stored.decision_seconds == pytest.approx(0.25)
    assert stored.views[0] == {
        "camera_id": "top",
        "frame_id": "top-P1",
        "verdict": "DEFECTIVE",
        "defect_probability": 0.91,
        "model_version": "v0003",
        "received_at": T0.isoformat(),
    }


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, {"OK": "pass", "DEFECTIVE": "reject", "UNSURE": "reject", "NO_RESULT": "reject"}),
        ({"no_result": "pass", "unsure": "pass"}, {"UNSURE": "pass", "NO_RESULT": "pass"}),
    ],
)
def test_the_line_says_what_each_verdict_means_at_the_reject_gate(changes, expected):
    clock = Clock()
    parts = aggregator(clock, line=changes)
    assert parts.add(frame("top", "OK", part="A")) + parts.add(frame("top", "UNSURE", part="B")) == []
    clock.t += 1
    by_part = {p.part_id: p for p in parts.expire()}
    assert by_part["A"].verdict == "NO_RESULT" and by_part["A"].disposition == expected["NO_RESULT"]
    assert by_part["B"].verdict == "UNSURE" and by_part["B"].disposition == expected["UNSURE"]


def test_late_views_are_counted_and_never_change_a_decided_part():
    clock = Clock()
    parts = aggregator(clock)
    parts.add(frame("top", "OK"))
    clock.t += 0.6
    (part,) = parts.expire()
    assert part.verdict == "NO_RESULT"
    assert parts.add(frame("bottom", "DEFECTIVE", p=0.99)) == []
    assert parts.late_views == {"line-1": 1} and parts.open_parts == 0


def test_an_overdue_part_is_decided_before_a_view_arriving_after_its_deadline():
    clock = Clock()
    parts = aggregator(clock)
    parts.add(frame("top", "OK"))
    clock.t += 0.7  # nobody called expire() in time
    decided = parts.add(frame("bottom", "OK"))
    assert [(p.verdict, p.deadline_missed) for p in decided] == [("NO_RESULT", True)]
    assert parts.late_views == {"line-1": 1}


def test_stations_have_their_own_deadlines_and_parts():
    clock = Clock()
    parts = aggregator(clock)
    (entry,) = parts.add(frame("entry", "OK"))  # one camera, required: decided at once
    assert (entry.station, entry.verdict) == ("entry", "OK")
    parts.add(frame("top", "OK"))
    assert parts.seconds_to_next_deadline() == pytest.approx(0.5)
    clock.t += 0.2
    assert parts.seconds_to_next_deadline() == pytest.approx(0.3)


def test_frames_that_cannot_belong_to_a_part_are_counted_and_ignored():
    parts = aggregator(Clock())
    assert parts.add(frame("top", part=None)) == []
    assert parts.add(frame("unknown-cam")) == []
    assert parts.add(FrameVerdict("line-9", "top", "P1", "f", "OK", 0.1, T0)) == []
    parts.add(frame("top", frame_id="same"))
    parts.add(frame("top", frame_id="same"))  # a repeated frame id, e.g. a resend answered as duplicate
    assert parts.ignored == {"no_part_id": 1, "unknown_camera": 1, "unknown_line": 1, "repeated_frame": 1}
    assert parts.open_parts == 1


def test_memory_is_bounded():
    clock = Clock()
    parts = aggregator(clock, max_open_parts=3, remember_decided=2)
    decided = []
    for i in range(5):
        decided += parts.add(frame("top", part=f"P{i}"))
    assert parts.open_parts == 3 and parts.evicted == 2
    assert [(p.part_id, p.verdict, p.deadline_missed) for p in decided] == [
        ("P0", "NO_RESULT", True),
        ("P1", "NO_RESULT", True),
    ]
    parts.add(frame("top", part="P0"))  # remembered as decided: a late view
    assert parts.late_views == {"line-1": 1}
    for i in range(5, 8):
        parts.add(frame("top", part=f"P{i}"))
    assert len(parts._decided) == 2  # only the newest decided keys are kept


def test_a_frame_verdict_must_be_one_of_the_three():
    with pytest.raises(ValueError, match="not one of OK, DEFECTIVE, UNSURE"):
        frame("top", "NO_RESULT")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"stations": []}, "at least one station"),
        ({"stations": [{"cameras": ["a"], "required": ["b"]}]}, "subset of its cameras"),
        ({"stations": [{"cameras": ["a", "a"]}]}, "name a camera twice"),
        ({"stations": [{"name": "x", "cameras": ["a"]}, {"name": "y", "cameras": ["a"]}]}, "a camera sees one"),
        ({"stations": [{"cameras": ["cam 1"]}]}, "not a valid id"),
        ({"stations": [{"cameras": ["a"], "deadline_ms": 0}]}, "greater than 0"),
        ({"stations": [{"cameras": ["a"]}], "no_result": "maybe"}, "'reject' or 'pass'"),
        ({"stations": [{"cameras": ["a"]}], "outputs": {"mqtt": {"topic": "a/#"}}}, "without the wildcards"),
        ({"stations": [{"cameras": ["a"]}], "outputs": {"mqtt": {"topic": "{plant}/x"}}}, "placeholders"),
        ({"stations": [{"cameras": ["a"]}], "outputs": {"opcua": {"endpoint": "tcp://x"}}}, "opc.tcp://"),
        ({"stations": [{"cameras": ["a"]}], "outputs": {"webhook": {"url": "ftp://x"}}}, "http:// or https://"),
        ({"stations": [{"cameras": ["a"]}], "challenges": {"s": {"path": "g", "camera": "b"}}}, "not one of the line"),
    ],
)
def test_line_config_errors_name_the_bad_value(line, message):
    with pytest.raises(ConfigError, match=message):
        build_config({"plant": {"lines": {"line-1": line}}})


def test_challenge_set_names_are_unique_across_lines_and_looked_up_by_name():
    line = {"stations": [{"cameras": ["a"]}], "challenges": {"shift-start": {"path": "golden"}}}
    with pytest.raises(ConfigError, match="declared by lines"):
        build_config({"plant": {"lines": {"line-1": line, "line-2": line}}})
    cfg = build_config({"plant": {"lines": {"line-1": line}}}).plant
    assert cfg.challenge("shift-start")[0] == "line-1"
    with pytest.raises(ConfigError, match=r"not configured.*shift-start"):
        cfg.challenge("night")
