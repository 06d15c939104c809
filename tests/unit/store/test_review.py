"""Review files: CSV and Label Studio exports that come back as labels, all or nothing."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

import pytest

from inspectline.errors import InvalidLabelError
from inspectline.store import (
    CSV_COLUMNS,
    LABEL_STUDIO_CONFIG,
    export_csv,
    export_label_studio,
    import_csv,
    import_label_studio,
)
from tests.unit.store.factories import record


@pytest.fixture
def reviewed(store):
    store.add_frames(
        [
            record("f1", p=0.51, verdict="UNSURE"),
            record("f2", p=0.90, camera_id="cam2"),
            record("f3", p=0.20, verdict="OK", minutes=1),
            record("f4", p=0.45, verdict="OK", shade=None, image_format=None),
        ]
    )
    return store


def _read(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path, rows, columns=CSV_COLUMNS):
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def test_csv_export_lists_the_queue_with_image_links(reviewed, tmp_path):
    out = tmp_path / "review.csv"
    assert export_csv(reviewed, out, base_url="http://inspect:8000/", labelled=False) == 4
    rows = _read(out)
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["frame_id"] for r in rows] == ["f1", "f4", "f3", "f2"]  # most uncertain first
    first = reviewed.find("line-a", "cam1", "f1")
    assert rows[0]["image_url"] == f"http://inspect:8000/v1/frames/{first.id}/image"
    assert rows[1]["image_url"] == ""  # f4's image was never sent
    assert rows[0]["received_at"] == first.received_at.isoformat() and rows[0]["label"] == ""
    assert export_csv(reviewed, out, camera="cam2") == 1


def test_csv_round_trip_applies_filled_labels_and_leaves_empty_rows_alone(reviewed, tmp_path):
    out = tmp_path / "review.csv"
    export_csv(reviewed, out)
    rows = _read(out)
    by_frame = {r["frame_id"]: r for r in rows}
    by_frame["f1"]["label"] = "Defective"
    by_frame["f2"].update(label="ok", labelled_by="ben@plant")
    _write(out, rows)

    report = import_csv(reviewed, out, reviewer_default="ana@plant")
    assert (report.applied, report.unchanged, report.skipped) == (2, 0, 2)
    f1, f2, f3 = (reviewed.find("line-a", *pair) for pair in (("cam1", "f1"), ("cam2", "f2"), ("cam1", "f3")))
    assert (f1.label, f1.labelled_by) == ("defective", "ana@plant")
    assert (f2.label, f2.labelled_by) == ("ok", "ben@plant")
    assert f3.label is None

    export_csv(reviewed, out)  # now carries the labels: importing it again changes nothing
    assert import_csv(reviewed, out).unchanged == 2
    assert reviewed.get(f1.id).labelled_at == f1.labelled_at


def test_csv_rows_can_name_frames_by_camera_and_frame_id(reviewed, tmp_path):
    path = tmp_path / "labels.csv"
    _write(
        path,
        [{"camera_id": "cam2", "frame_id": "f2", "label": "DEFECTIVE", "labelled_by": "ana"}],
        columns=("camera_id", "frame_id", "label", "labelled_by"),
    )
    assert import_csv(reviewed, path).applied == 1
    assert reviewed.find("line-a", "cam2", "f2").label == "defective"


def test_a_csv_with_any_bad_row_applies_nothing_and_names_every_problem(reviewed, tmp_path):
    f1, f3 = reviewed.find("line-a", "cam1", "f1"), reviewed.find("line-a", "cam1", "f3")
    path = tmp_path / "labels.csv"
    _write(
        path,
        [
            {"id": f1.id, "label": "ok", "labelled_by": "ana"},  # row 2: fine
            {"id": f3.id, "label": "scratched", "labelled_by": "ana"},  # row 3: not a label
            {"id": 9999, "label": "ok", "labelled_by": "ana"},  # row 4: unknown frame
            {"id": f3.id, "label": "ok"},  # row 5: nobody labelled it
            {
                "id": f1.id,
                "camera_id": "cam9",
                "frame_id": "f1",
                "label": "ok",
                "labelled_by": "ana",
            },  # row 6: other store
            {"id": f1.id, "label": "defective", "labelled_by": "ben"},  # row 7: contradicts row 2
        ],
    )
    with pytest.raises(InvalidLabelError) as caught:
        import_csv(reviewed, path)
    message = str(caught.value)
    assert "5 problem(s), nothing was imported" in message
    for expected in (
        "row 3: label 'scratched' is not one of ok, defective",
        "row 4: no stored frame has id 9999",
        "row 5: no reviewer",
        "row 6: id",
        "another store",
        "row 7: frame",
    ):
        assert expected in message
    assert "row 2:" not in message
    assert reviewed.count(labelled=True) == 0


def test_a_csv_without_label_or_frame_columns_is_refused(reviewed, tmp_path):
    path = tmp_path / "labels.csv"
    _write(path, [{"frame_id": "f1", "label": "ok"}], columns=("frame_id", "label"))
    with pytest.raises(InvalidLabelError, match="either 'id' or both 'camera_id' and 'frame_id'"):
        import_csv(reviewed, path)


def test_label_studio_tasks_carry_the_image_and_the_model_verdict(reviewed):
    tasks = export_label_studio(reviewed, "http://inspect:8000")
    assert [t["data"]["frame_id"] for t in tasks] == ["f1", "f3", "f2"]  # f4 has no image to look at
    f1 = reviewed.find("line-a", "cam1", "f1")
    task = tasks[0]
    assert task["id"] == task["data"]["store_id"] == f1.id
    assert task["data"]["image"] == f"http://inspect:8000/v1/frames/{f1.id}/image"
    assert (task["data"]["line_id"], task["data"]["camera_id"], task["data"]["frame_id"]) == ("line-a", "cam1", "f1")
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == "v0001" and prediction["score"] == f1.confidence
    assert prediction["result"] == [
        {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": ["Defective"]}}
    ]
    assert tasks[1]["predictions"][0]["result"][0]["value"]["choices"] == ["OK"]


def test_the_label_studio_config_matches_the_tasks():
    view = ET.fromstring(LABEL_STUDIO_CONFIG)
    image = view.find("Image")
    choices = view.find("Choices")
    assert (image.get("name"), image.get("value")) == ("image", "$image")
    assert (choices.get("name"), choices.get("toName")) == ("verdict", "image")
    assert [c.get("value") for c in choices.findall("Choice")] == ["OK", "Defective"]


def _annotation(choice, *, by=1, at="2025-03-04T10:00:00.000000Z", cancelled=False, ident=1):
    return {
        "id": ident,
        "completed_by": by,
        "was_cancelled": cancelled,
        "created_at": at,
        "updated_at": at,
        "result": [
            {"id": "x", "from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}
        ],
    }


def _as_exported_by_label_studio(tasks, annotations):
    """What Label Studio's JSON export returns: its own task ids, our data, the annotations made."""
    return [
        {"id": 100 + i, "data": t["data"], "annotations": annotations.get(t["data"]["frame_id"], []), "predictions": []}
        for i, t in enumerate(tasks)
    ]


def test_label_studio_round_trip_takes_the_latest_uncancelled_annotation(reviewed):
    tasks = export_label_studio(reviewed)
    exported = _as_exported_by_label_studio(
        tasks,
        {
            "f1": [
                _annotation("OK", by={"id": 3, "email": "ana@plant"}, at="2025-03-04T09:00:00Z", ident=1),
                _annotation("Defective", by={"id": 3, "email": "ana@plant"}, at="2025-03-04T11:00:00Z", ident=2),
                _annotation("OK", by=4, at="2025-03-04T12:00:00Z", cancelled=True, ident=3),
            ],
            "f2": [_annotation("ok", by=7)],
        },
    )
    del exported[2]["data"]["store_id"]  # f2 is found by camera_id + frame_id instead

    report = import_label_studio(reviewed, exported)
    assert (report.applied, report.unchanged, report.skipped) == (2, 0, 1)
    f1, f2 = reviewed.find("line-a", "cam1", "f1"), reviewed.find("line-a", "cam2", "f2")
    assert (f1.label, f1.labelled_by, f1.labelled_at) == (
        "defective",
        "ana@plant",
        datetime(2025, 3, 4, 11, tzinfo=timezone.utc),
    )
    assert (f2.label, f2.labelled_by) == ("ok", "label-studio-user-7")
    assert reviewed.find("line-a", "cam1", "f3").label is None

    assert import_label_studio(reviewed, exported, reviewer_default="ben").applied == 1  # f2's author becomes ben
    assert reviewed.find("line-a", "cam2", "f2").labelled_by == "ben"


def test_a_label_studio_export_with_any_bad_task_applies_nothing(reviewed):
    tasks = export_label_studio(reviewed)
    exported = _as_exported_by_label_studio(
        tasks, {"f1": [_annotation("Defective")], "f3": [_annotation("Maybe")], "f2": [_annotation("OK")]}
    )
    exported[2]["data"]["store_id"] = 9999
    with pytest.raises(InvalidLabelError) as caught:
        import_label_studio(reviewed, exported)
    message = str(caught.value)
    assert "task 2 (Label Studio id 101): choice ['Maybe'] is not exactly one of OK, Defective" in message
    assert "task 3 (Label Studio id 102): no stored frame has id 9999" in message
    assert "task 1" not in message
    assert reviewed.count(labelled=True) == 0


@pytest.fixture
def two_lines(store):
    """cam1/f1 on line-a and on line-b (a camera id reused across lines), and cam2/f2 on line-a only."""
    store.add_frames([record("f1", line_id="line-a"), record("f1", line_id="line-b"), record("f2", camera_id="cam2")])
    return store


def test_csv_rows_name_frames_by_line_camera_and_frame_id(two_lines, tmp_path):
    path = tmp_path / "labels.csv"
    rows = [
        {"line_id": "line-b", "camera_id": "cam1", "frame_id": "f1", "label": "ok", "labelled_by": "ana"},
        {"line_id": "", "camera_id": "cam2", "frame_id": "f2", "label": "defective", "labelled_by": "ana"},  # unique
    ]
    _write(path, rows, columns=("line_id", "camera_id", "frame_id", "label", "labelled_by"))
    assert import_csv(two_lines, path).applied == 2
    assert two_lines.find("line-b", "cam1", "f1").label == "ok"
    assert two_lines.find("line-a", "cam1", "f1").label is None
    assert two_lines.find("line-a", "cam2", "f2").label == "defective"


def test_a_row_without_line_matching_frames_on_two_lines_is_a_problem_not_a_guess(two_lines, tmp_path):
    path = tmp_path / "labels.csv"
    b = two_lines.find("line-b", "cam1", "f1")
    rows = [
        {"camera_id": "cam1", "frame_id": "f1", "label": "ok", "labelled_by": "ana"},  # row 2: which line?
        {"line_id": "line-c", "camera_id": "cam1", "frame_id": "f1", "label": "ok", "labelled_by": "ana"},  # row 3
        {"id": b.id, "line_id": "line-a", "label": "ok", "labelled_by": "ana"},  # row 4: id and line disagree
    ]
    _write(path, rows, columns=("id", "line_id", "camera_id", "frame_id", "label", "labelled_by"))
    with pytest.raises(InvalidLabelError) as caught:
        import_csv(two_lines, path)
    message = str(caught.value)
    assert "3 problem(s), nothing was imported" in message
    assert "row 2: camera 'cam1' sent frame_id 'f1' on 2 lines ('line-a', 'line-b'); add a line_id column" in message
    assert "row 3: no stored frame from line 'line-c', camera 'cam1' has frame_id 'f1'" in message
    assert f"row 4: id {b.id} is frame line-b/cam1/f1 in this store, not line-a/cam1/f1" in message
    assert two_lines.count(labelled=True) == 0


def test_label_studio_tasks_without_a_store_id_are_found_by_their_line(two_lines):
    tasks = export_label_studio(two_lines)
    exported = _as_exported_by_label_studio(tasks, {"f1": [_annotation("Defective")]})
    for task in exported:
        del task["data"]["store_id"]
    report = import_label_studio(two_lines, exported, reviewer_default="ana")
    assert report.applied == 2  # both lines' f1, each by its own line_id
    assert {two_lines.find(line, "cam1", "f1").label for line in ("line-a", "line-b")} == {"defective"}

    for task in exported:
        del task["data"]["line_id"]
    with pytest.raises(
        InvalidLabelError,
        match=r"2 problem\(s\)(?s:.*)task 2 \(Label Studio id 101\): camera 'cam1' sent frame_id 'f1' on 2",
    ):
        import_label_studio(two_lines, exported, reviewer_default="ana")
