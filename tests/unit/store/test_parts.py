"""Part verdicts in the frame store: each decision kept once with its views, found by part and by filters."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from inspectline.errors import StoreError
from inspectline.store import StoredPart
from tests.unit.store.factories import T0, part_record


def test_a_part_verdict_is_kept_with_every_view_and_a_repeat_is_ignored(store):
    part = part_record("P-7", verdict="DEFECTIVE")
    assert store.add_parts([part]) == 1
    assert store.add_parts([part_record("P-7", verdict="OK")]) == 0  # a replayed decision keeps the first
    [stored] = store.find_part("P-7")
    assert isinstance(stored, StoredPart) and stored.id > 0
    assert (stored.verdict, stored.disposition, stored.station) == ("DEFECTIVE", "reject", "main")
    assert [(v["camera_id"], v["frame_id"], v["verdict"], v["defect_probability"]) for v in stored.views] == [
        ("cam1", "P-7-cam1", "DEFECTIVE", 0.9),
        ("cam2", "P-7-cam2", "DEFECTIVE", 0.9),
    ]
    assert stored.first_view_at == T0 - timedelta(seconds=0.3) and stored.decided_at == T0
    doc = stored.to_dict()
    assert doc["decided_at"] == T0.isoformat() and doc["missing"] == [] and doc["views"][0]["model_version"] == "v0001"


def test_a_part_seen_at_two_stations_and_on_two_lines_has_one_verdict_each(store):
    store.add_parts(
        [
            part_record("P-1", station="entry"),
            part_record("P-1", station="exit", verdict="NO_RESULT", minutes=1),
            part_record("P-1", line_id="line-b"),
        ]
    )
    assert [(p.line_id, p.station, p.verdict) for p in store.find_part("P-1", line="line-a")] == [
        ("line-a", "entry", "OK"),
        ("line-a", "exit", "NO_RESULT"),
    ]
    assert len(store.find_part("P-1")) == 3
    assert store.find_part("P-2") == []
    [missed] = store.find_part("P-1", line="line-a")[1:]
    assert missed.missing == ("cam2",) and missed.deadline_missed


def test_parts_are_filtered_by_line_station_verdict_and_time_and_paged(store):
    store.add_parts(
        [
            part_record("P-1", minutes=0),
            part_record("P-2", verdict="DEFECTIVE", minutes=1),
            part_record("P-3", verdict="NO_RESULT", minutes=2),
            part_record("P-4", minutes=3, station="exit"),
            part_record("P-5", minutes=4, line_id="line-b"),
        ]
    )

    def ids(**filters):
        return [p.part_id for p in store.query_parts(**filters)]

    assert ids() == ["P-5", "P-4", "P-3", "P-2", "P-1"]
    assert ids(order="oldest", limit=2, offset=1) == ["P-2", "P-3"]
    assert ids(line="line-a", station="main") == ["P-3", "P-2", "P-1"]
    assert ids(verdict="no_result") == ["P-3"]
    assert ids(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3)) == ["P-3", "P-2"]
    assert store.count_parts() == 5 and store.count_parts(line="line-a", verdict="OK") == 2


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"verdict": "BROKEN"}, r"part verdict 'BROKEN' is not one of OK, DEFECTIVE, UNSURE, NO_RESULT"),
        ({"order": "uncertainty"}, r"order 'uncertainty' is not one of newest, oldest"),
        ({"limit": 0}, r"limit 0 must be a whole number from 1"),
    ],
)
def test_bad_part_filters_are_refused_naming_what_is_accepted(store, filters, message):
    with pytest.raises(StoreError, match=message):
        store.query_parts(**filters)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"verdict": "MAYBE"}, r"verdict 'MAYBE' is not one of OK, DEFECTIVE, UNSURE, NO_RESULT"),
        ({"disposition": "hold"}, r"disposition 'hold' is not one of reject, pass"),
        ({"part_id": ""}, r"part_id '' must be a non-empty string"),
        ({"views": ({"camera_id": "cam1"},)}, r"each view must have exactly the fields camera_id, frame_id"),
    ],
)
def test_a_malformed_part_verdict_is_refused_and_nothing_is_written(store, fields, message):
    with pytest.raises(StoreError, match=message):
        store.add_parts([part_record("P-1"), replace(part_record("P-2"), **fields)])
    assert store.query_parts() == []
