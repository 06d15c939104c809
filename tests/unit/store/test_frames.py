"""Frame rows: round trips, idempotent frame ids, queries and the review queue order, labels, shadow verdicts."""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from inspectline.config import StoreConfig
from inspectline.errors import FrameNotFoundError, InvalidLabelError, StoreError
from inspectline.store import FrameKey, FrameStore, ShadowVerdict, check_record
from inspectline.store.schema import frames
from tests.unit.store.factories import T0, png, record


def test_round_trip_keeps_every_field(store):
    sent = record("f1", verdict="UNSURE", p=0.55, part_id=None, views={"identity": 0.5, "hflip": 0.6})
    assert store.add_frames([sent]) == 1

    got = store.find("line-a", "cam1", "f1")
    assert got == store.get(got.id)
    for name in (
        "camera_id",
        "frame_id",
        "line_id",
        "part_id",
        "captured_at",
        "received_at",
        "verdict",
        "defect_probability",
        "confidence",
        "threshold",
        "model_version",
        "views",
    ):
        assert getattr(got, name) == getattr(sent, name), name
    assert got.received_at.tzinfo == timezone.utc
    assert got.image_format == "png" and len(got.image_sha256) == 64
    assert (got.label, got.labelled_by, got.labelled_at) == (None, None, None)
    assert got.uncertainty == pytest.approx(0.05)

    doc = json.loads(json.dumps(got.to_dict()))
    assert doc["received_at"] == "2025-03-03T08:00:00+00:00"
    assert doc["uncertainty"] == pytest.approx(0.05) and doc["views"] == {"identity": 0.5, "hflip": 0.6}


def test_other_time_zones_are_stored_as_the_same_instant(store):
    cet = timezone(timedelta(hours=1))
    store.add_frames([record("f1", received_at=datetime(2025, 3, 3, 9, 0, tzinfo=cet))])
    assert store.find("line-a", "cam1", "f1").received_at == T0
    assert store.count(since=datetime(2025, 3, 3, 8, 0)) == 1  # a naive bound is read as UTC


def test_a_repeated_camera_frame_pair_is_counted_once_and_the_first_is_kept(store):
    assert store.add_frames([record("f1", verdict="DEFECTIVE", p=0.9)]) == 1
    # The camera retries f1 (judged differently this time) in a batch with a new frame and a repeat of it.
    again = [record("f1", verdict="OK", p=0.1), record("f2", p=0.7), record("f2", verdict="OK", p=0.2)]
    assert store.add_frames(again) == 1
    assert store.find("line-a", "cam1", "f1").verdict == "DEFECTIVE"
    assert store.find("line-a", "cam1", "f2").defect_probability == 0.7
    assert store.count() == 2
    assert store.add_frames(again) == 0


def test_the_same_frame_id_from_two_cameras_is_two_frames(store):
    assert store.add_frames([record("f1", camera_id="cam1"), record("f1", camera_id="cam2")]) == 2
    assert store.find("line-a", "cam2", "f1").camera_id == "cam2"
    assert store.find("line-a", "cam3", "f1") is None


def test_an_invalid_record_refuses_the_batch_before_anything_is_written(store):
    with pytest.raises(StoreError, match=r"'maybe'.*OK, DEFECTIVE, UNSURE"):
        store.add_frames([record("f1"), record("f2", verdict="maybe")])
    with pytest.raises(StoreError, match=r"'gif'.*png, jpeg, bmp, tiff"):
        store.add_frames([record("f3", image_format="gif")])
    assert store.count() == 0


def test_frames_survive_reopening_the_store(make_store):
    make_store().add_frames([record("f1")])
    assert make_store().find("line-a", "cam1", "f1") is not None  # tables exist: opened, not recreated


def _queue_fixture(store):
    store.add_frames(
        [
            record("a", p=0.52, minutes=0, line_id="line-a", camera_id="cam1", verdict="UNSURE"),
            record("b", p=0.95, minutes=1, line_id="line-a", camera_id="cam2", verdict="DEFECTIVE"),
            record("c", p=0.10, minutes=2, line_id="line-b", camera_id="cam1", verdict="OK", model_version="v0002"),
            record("d", p=0.40, minutes=3, line_id="line-b", camera_id="cam2", verdict="OK", model_version="v0002"),
        ]
    )
    return {f.frame_id: f.id for f in store.query(limit=10)}


def test_query_filters_and_count_agree(store):
    ids = _queue_fixture(store)
    store.set_label(ids["b"], "defective", "ana")

    def frame_ids(**filters):
        found = {f.frame_id for f in store.query(**filters)}
        assert store.count(**filters) == len(found)
        return found

    assert frame_ids() == {"a", "b", "c", "d"}
    assert frame_ids(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3)) == {"b", "c"}  # [since, until)
    assert frame_ids(line="line-b") == {"c", "d"}
    assert frame_ids(camera="cam2") == {"b", "d"}
    assert frame_ids(verdict="ok") == {"c", "d"}
    assert frame_ids(labelled=True) == {"b"}
    assert frame_ids(labelled=False, line="line-a") == {"a"}
    assert frame_ids(model_version="v0002", camera="cam1") == {"c"}
    assert frame_ids(line="line-z") == set()


def test_query_orders_the_review_queue_most_uncertain_first(store):
    _queue_fixture(store)
    assert [f.frame_id for f in store.query()] == ["a", "d", "c", "b"]  # |p - 0.5|: .02 .10 .40 .45
    assert [f.frame_id for f in store.query(order="newest")] == ["d", "c", "b", "a"]
    assert [f.frame_id for f in store.query(order="oldest", limit=2, offset=1)] == ["b", "c"]
    assert [f.frame_id for f in store.recent(3)] == ["d", "c", "b"]


def test_invalid_query_arguments_name_what_is_accepted(store):
    with pytest.raises(StoreError, match=r"'loudest'.*uncertainty, newest, oldest"):
        store.query(order="loudest")
    with pytest.raises(StoreError, match=r"'broken'.*OK, DEFECTIVE, UNSURE"):
        store.count(verdict="broken")
    with pytest.raises(StoreError, match="limit 0"):
        store.query(limit=0)


def test_labels_are_case_insensitive_and_a_relabel_replaces_the_old_one(store):
    ids = _queue_fixture(store)
    first = store.set_label(ids["a"], " Defective ", "ana", at=T0 + timedelta(hours=1))
    assert (first.label, first.labelled_by, first.labelled_at) == ("defective", "ana", T0 + timedelta(hours=1))

    second = store.set_label(ids["a"], "OK", "ben")
    assert (second.label, second.labelled_by) == ("ok", "ben")
    assert second.labelled_at > first.labelled_at
    assert store.get(ids["a"]) == second


def test_bad_labels_and_unknown_frames_are_clear_errors(store):
    ids = _queue_fixture(store)
    with pytest.raises(InvalidLabelError, match=r"'maybe'.*ok, defective"):
        store.set_label(ids["a"], "maybe", "ana")
    with pytest.raises(InvalidLabelError, match="reviewer"):
        store.set_label(ids["a"], "ok", "  ")
    with pytest.raises(FrameNotFoundError, match="9999"):
        store.set_label(9999, "ok", "ana")
    with pytest.raises(FrameNotFoundError, match="9999"):
        store.get(9999)
    assert store.count(labelled=True) == 0


def test_labelled_lists_the_labelled_frames_of_a_window_oldest_first(store):
    ids = _queue_fixture(store)
    for name in ("d", "a", "c"):
        store.set_label(ids[name], "ok", "ana")
    assert [f.frame_id for f in store.labelled()] == ["a", "c", "d"]
    assert [f.frame_id for f in store.labelled(since=T0 + timedelta(minutes=1))] == ["c", "d"]
    assert [f.frame_id for f in store.labelled(since=T0, until=T0 + timedelta(minutes=3))] == ["a", "c"]


def test_labelled_scores_are_the_what_ifs_two_columns_of_the_labelled_frames_matching(store):
    ids = _queue_fixture(store)
    store.set_label(ids["a"], "defective", "ana")
    store.set_label(ids["c"], "ok", "ana")
    store.set_label(ids["d"], "defective", "ben")
    labels, probabilities, versions = store.labelled_scores()
    assert sorted(zip(probabilities, labels, strict=True)) == [(0.10, 0), (0.40, 1), (0.52, 1)]  # b is unlabelled
    assert versions == ["v0001", "v0002"]
    labels, probabilities, _ = store.labelled_scores(model_version="v0002", line="line-b")
    assert sorted(zip(probabilities, labels, strict=True)) == [(0.10, 0), (0.40, 1)]
    assert store.labelled_scores(since=T0 + timedelta(minutes=3)) == ([1], [0.40], ["v0002"])
    assert store.labelled_scores(camera="cam9") == ([], [], [])
    with pytest.raises(StoreError, match="colour"):
        store.labelled_scores(colour="red")


def test_active_streams_are_the_line_camera_pairs_of_the_newest_frames(store):
    store.add_frames(
        [
            record("a", minutes=0, line_id="line-a", camera_id="cam1"),
            record("b", minutes=1, line_id="line-b", camera_id="cam2", shade=1),
            record("c", minutes=2, line_id="line-a", camera_id="cam3", shade=2),
            record("d", minutes=3, line_id="line-a", camera_id="cam3", shade=3),
        ]
    )
    assert store.active_streams() == [("line-a", "cam1"), ("line-a", "cam3"), ("line-b", "cam2")]
    assert store.active_streams(recent=2) == [("line-a", "cam3")]  # the two newest are both cam3's
    assert store.active_streams(line="line-b") == [("line-b", "cam2")]
    assert store.active_streams(line="line-z") == []


def test_a_cleared_label_puts_the_frame_back_in_the_review_queue(store):
    ids = _queue_fixture(store)
    store.set_label(ids["a"], "defective", "ana")
    cleared = store.clear_label(ids["a"])
    assert (cleared.label, cleared.labelled_by, cleared.labelled_at) == (None, None, None)
    assert ids["a"] in {f.id for f in store.query(labelled=False)}
    assert store.clear_label(ids["b"]).label is None  # an unlabelled frame stays unlabelled
    with pytest.raises(FrameNotFoundError, match="9999"):
        store.clear_label(9999)


def test_shadow_verdicts_are_kept_once_per_model_and_listed_per_frame(store):
    store.add_frames([record("f1"), record("f2")])
    shadow = [
        ShadowVerdict("line-a", "cam1", "f1", "v0002", "OK", 0.3, T0),
        ShadowVerdict("line-a", "cam1", "f1", "v0003", "DEFECTIVE", 0.7, T0),
        ShadowVerdict("line-a", "cam1", "f2", "v0002", "DEFECTIVE", 0.8, T0),
    ]
    assert store.add_shadow_verdicts(shadow) == 3
    assert store.add_shadow_verdicts([ShadowVerdict("line-a", "cam1", "f1", "v0002", "DEFECTIVE", 0.9, T0)]) == 0

    listed = store.shadow_verdicts(store.find("line-a", "cam1", "f1").id)
    assert [(s.model_version, s.verdict, s.defect_probability) for s in listed] == [
        ("v0002", "OK", 0.3),
        ("v0003", "DEFECTIVE", 0.7),
    ]
    with pytest.raises(FrameNotFoundError):
        store.shadow_verdicts(9999)


def test_an_unreachable_or_unsupported_database_is_a_store_error(tmp_path):
    unreachable = StoreConfig(
        database_url="postgresql+psycopg://inspect:secret@127.0.0.1:1/frames", storage_url=str(tmp_path)
    )
    with pytest.raises(StoreError, match=r"127.0.0.1:1") as caught:
        FrameStore(unreachable)
    assert "secret" not in str(caught.value)
    with pytest.raises(StoreError, match="sqlite, postgresql"):
        FrameStore(StoreConfig(database_url="mysql://db/frames", storage_url=str(tmp_path)))


def test_two_writers_at_once_neither_fail_nor_double_count(make_store):
    # Two stores on one database stand for the service's recorder and a second process writing at once.
    stores = [make_store(), make_store()]
    errors: list[Exception] = []

    def write(store, offset):
        try:
            for i in range(15):  # overlapping frame ids: each pair must be stored exactly once
                store.add_frames([record(f"f{i + offset}", shade=i % 3), record(f"f{i + offset + 1}", shade=i % 3)])
        except Exception as exc:  # noqa: BLE001 - surfaced below; a thread's exception would otherwise be lost
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, k * 5)) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert stores[0].count() == 21  # f0 .. f20


def test_the_database_enforces_that_rows_only_name_recorded_images(store):
    """The last line of defence behind the write order: a frame row cannot name an unknown image."""
    row = {
        "camera_id": "c",
        "frame_id": "f",
        "line_id": "l",
        "received_at": T0,
        "verdict": "OK",
        "defect_probability": 0.1,
        "confidence": 0.9,
        "threshold": 0.5,
        "uncertainty": 0.4,
        "model_version": "v1",
        "views": {},
        "image_sha256": "0" * 64,
    }
    with pytest.raises(StoreError, match=r"(?i)foreign key"), store._db.write() as conn:
        conn.execute(sa.insert(frames), row)
    if store._db.dialect == "sqlite":
        with store._db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0


# --- the natural key and the content hash ----------------------------------------------------------
def test_the_same_camera_and_frame_id_on_two_lines_are_two_frames(store):
    sent = [record("f1", line_id="line-a", shade=1), record("f1", line_id="line-b", shade=2)]
    assert store.add_frames(sent) == 2
    a, b = store.find("line-a", "cam1", "f1"), store.find("line-b", "cam1", "f1")
    assert a.id != b.id and (a.key, b.key) == (FrameKey("line-a", "cam1", "f1"), FrameKey("line-b", "cam1", "f1"))
    assert store.find("line-c", "cam1", "f1") is None
    found = store.find_many([("line-b", "cam1", "f1"), FrameKey("line-a", "cam1", "f1"), ("line-a", "cam9", "f1")])
    assert found == {a.key: a, b.key: b}
    assert store.find_by_camera([("cam1", "f1"), ("cam9", "f1")]) == {("cam1", "f1"): [a, b]}
    assert store.add_frames(sent) == 0  # each line's retry is recognised by its own key


def test_every_frame_records_the_hash_of_the_bytes_the_camera_sent(make_store):
    store = make_store(keep_ok_images=0.0)
    sent = [record("kept", verdict="DEFECTIVE", shade=1), record("dropped", verdict="OK", p=0.1, shade=2)]
    assert [r.content_sha256 for r in sent] == [hashlib.sha256(png(s)).hexdigest() for s in (1, 2)]
    store.add_frames(sent)
    kept, dropped = store.find("line-a", "cam1", "kept"), store.find("line-a", "cam1", "dropped")
    assert kept.content_sha256 == kept.image_sha256 == sent[0].content_sha256
    assert dropped.image_sha256 is None and dropped.content_sha256 == sent[1].content_sha256  # image not kept
    assert store.get(kept.id).to_dict()["content_sha256"] == kept.content_sha256

    # A service that does not pass the bytes on still passes their hash; a retry keeps the first frame's.
    known = hashlib.sha256(b"camera bytes").hexdigest()
    store.add_frames([record("hash-only", shade=None, image_format=None, content_sha256=known)])
    store.add_frames([record("hash-only", shade=7)])  # the same ids with other bytes: the first row stays
    assert store.find("line-a", "cam1", "hash-only").content_sha256 == known


def test_a_record_without_a_usable_content_hash_is_refused_before_anything_is_written(store):
    with pytest.raises(StoreError, match=r"'line-a'/'cam1'/'f1': neither the image nor its content_sha256"):
        store.add_frames([record("f1", shade=None, content_sha256=None)])
    with pytest.raises(StoreError, match=r"content_sha256 'ABC' is not a SHA-256 hex digest"):
        check_record(record("f2", content_sha256="ABC"))
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    with pytest.raises(StoreError, match=rf"line-a/cam1/f3: content_sha256 {wrong} is not the hash of its image"):
        store.add_frames([record("f4"), record("f3", content_sha256=wrong)])
    assert store.count() == 0


def test_shadow_verdicts_are_kept_per_line(store):
    store.add_frames([record("f1", line_id="line-a"), record("f1", line_id="line-b")])
    shadows = [
        ShadowVerdict(line, "cam1", "f1", "v0002", v, 0.3, T0) for line, v in [("line-a", "OK"), ("line-b", "UNSURE")]
    ]
    assert store.add_shadow_verdicts(shadows) == 2
    on_b = store.shadow_verdicts(store.find("line-b", "cam1", "f1").id)
    assert [(s.key, s.verdict) for s in on_b] == [(FrameKey("line-b", "cam1", "f1"), "UNSURE")]
    with pytest.raises(StoreError, match="line_id '' must be a non-empty string"):
        store.add_shadow_verdicts([ShadowVerdict("", "cam1", "f1", "v0002", "OK", 0.3, T0)])


# --- hostile values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad_id", [2**63, 2**64 + 5, -(2**63) - 1, 10**30])
def test_ids_beyond_64_bits_are_not_found_rather_than_an_overflow(store, bad_id):
    store.add_frames([record("f1")])
    known = store.find("line-a", "cam1", "f1").id
    with pytest.raises(FrameNotFoundError, match=str(bad_id)):
        store.get(bad_id)
    assert store.get_many([bad_id, known]).keys() == {known}
    with pytest.raises(FrameNotFoundError, match=str(bad_id)):
        store.set_label(bad_id, "ok", "ana")
    with pytest.raises(FrameNotFoundError, match=str(bad_id)):
        store.create_snapshot("s", [bad_id])
    with pytest.raises(FrameNotFoundError):
        store.image(bad_id)


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"limit": 2**63}, r"limit 9223372036854775808 must be a whole number from 1 to 9223372036854775807"),
        ({"offset": 2**64}, r"offset 18446744073709551616 must be a whole number from 0 to 9223372036854775807"),
        ({"offset": -1}, r"offset -1 must be a whole number from 0"),
        ({"limit": 10.5}, r"limit 10.5 must be a whole number"),
        ({"limit": True}, r"limit True must be a whole number"),
    ],
)
def test_pages_beyond_64_bits_are_a_store_error_naming_the_bound(store, arguments, named):
    with pytest.raises(StoreError, match=named):
        store.query(**arguments)
    if "limit" in arguments:
        with pytest.raises(StoreError, match=named):
            list(store.iter_query(limit=arguments["limit"]))
    assert store.query(limit=2**63 - 1, offset=2**63 - 1) == []  # the largest values are fine
