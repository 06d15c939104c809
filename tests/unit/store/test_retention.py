"""Retention: which images are kept at write time; age-based clean-up sparing labelled and snapshotted frames."""

from __future__ import annotations

from datetime import timedelta

import pytest

from inspectline.errors import FrameNotFoundError, StoreError
from inspectline.store import keeps_image
from tests.unit.store.factories import T0, files_under, png, record


def test_ok_images_are_sampled_by_frame_identity_at_the_configured_share():
    keys = [(f"line-{n}", f"cam{c}", f"frame-{i}") for n in "ab" for c in range(2) for i in range(2500)]
    kept = [k for k in keys if keeps_image(*k, "OK", 0.1)]
    assert 0.09 < len(kept) / len(keys) < 0.11
    assert kept == [k for k in keys if keeps_image(*k, "OK", 0.1)]  # the same frame is always decided the same way
    assert all(keeps_image(*k, v, 0.0) for k in keys[:100] for v in ("DEFECTIVE", "UNSURE"))
    assert not any(keeps_image(*k, "OK", 0.0) for k in keys[:100])
    assert all(keeps_image(*k, "OK", 1.0) for k in keys[:100])


def test_two_lines_same_camera_and_frame_ids_are_sampled_independently():
    pairs = [("cam-1", f"f{i}") for i in range(4000)]
    line_a = [keeps_image("line-a", *p, "OK", 0.5) for p in pairs]
    line_b = [keeps_image("line-b", *p, "OK", 0.5) for p in pairs]
    # Independent fair coins agree about half the time; one decision per (camera, frame) would agree always.
    assert 0.45 < sum(a == b for a, b in zip(line_a, line_b, strict=True)) / len(pairs) < 0.55
    # And the line is its own field: ("line-a", "cam-1", ...) and ("line-", "acam-1", ...) are not the same key.
    assert [keeps_image("line-", "acam-1", f, "OK", 0.5) for _, f in pairs] != line_a


def test_the_store_keeps_every_row_but_only_sampled_ok_images(make_store):
    store = make_store(keep_ok_images=0.25)
    # One shared image keeps this cheap: what is measured is which rows point at it.
    ok = [record(f"ok-{i}", verdict="OK", p=0.1, shade=1) for i in range(200)]
    others = [record(f"bad-{i}", verdict=v, p=0.6, shade=1) for i, v in enumerate(["DEFECTIVE", "UNSURE"] * 10)]
    assert store.add_frames(ok + others) == 220

    assert store.count() == 220
    assert (
        store.count(verdict="DEFECTIVE", has_image=True) == 10 and store.count(verdict="UNSURE", has_image=True) == 10
    )
    kept = {f.frame_id for f in store.query(verdict="OK", has_image=True, limit=500)}
    assert 30 <= len(kept) <= 70  # 25% of 200, sampling noise allowed
    assert kept == {r.frame_id for r in ok if keeps_image(*r.key, "OK", 0.25)}

    # A camera re-sending its frames changes nothing; a second store with the same setting decides the same.
    assert store.add_frames(ok) == 0
    again = make_store(keep_ok_images=0.25, database_url=f"sqlite:///{store.config.storage_url}-second.db")
    again.add_frames(ok)
    assert {f.frame_id for f in again.query(has_image=True, limit=500)} == kept


@pytest.fixture
def aged(make_store, tmp_path):
    """Frames 100 days old in every situation clean-up must tell apart, and one young frame."""
    store = make_store(max_age_days=90)
    store.add_frames(
        [
            record("plain", shade=1),  # old, unlabelled: image goes
            record("labelled", shade=2),  # old, labelled: kept
            record("snapshotted", shade=3),  # old, in a training snapshot: kept
            record("shares-labelled", shade=2),  # old, unlabelled, same bytes as "labelled": reference goes, file stays
            record("shares-young", shade=4),  # old, unlabelled, same bytes as a young frame: file stays
            record("young", shade=4, minutes=100 * 24 * 60 - 60),
        ]
    )
    ids = {f.frame_id: f.id for f in store.query(limit=10)}
    store.set_label(ids["labelled"], "defective", "ana")
    store.create_snapshot("retrain-v0002", [ids["snapshotted"]])
    return store, ids, tmp_path / "images"


def test_cleanup_removes_old_unprotected_images_and_nothing_else(aged):
    store, ids, root = aged
    now = T0 + timedelta(days=100)
    report = store.cleanup(now=now)

    assert report.cutoff == now - timedelta(days=90)
    assert (report.images_deleted, report.bytes_freed) == (1, len(png(1)))
    assert report.frames_cleared == 3  # plain, shares-labelled, shares-young
    assert (report.kept_labelled, report.kept_in_snapshot, report.failed_deletes) == (1, 1, 0)

    after = {name: store.get(i) for name, i in ids.items()}
    assert store.count() == 6  # rows are never deleted
    assert {n for n, f in after.items() if f.image_sha256 is None} == {"plain", "shares-labelled", "shares-young"}
    assert store.image(ids["labelled"])[0] == png(2)
    assert store.image(ids["snapshotted"])[0] == png(3)
    assert store.image(ids["young"])[0] == png(4)
    assert sorted(p.name for p in files_under(root)) == sorted(
        f"{after[n].image_sha256}.png" for n in ("labelled", "snapshotted", "young")
    )

    again = store.cleanup(now=now)
    assert (again.images_deleted, again.frames_cleared, again.kept_labelled, again.kept_in_snapshot) == (0, 0, 1, 1)


def test_cleanup_is_off_without_max_age(make_store):
    store = make_store(max_age_days=None)
    store.add_frames([record("f1")])
    report = store.cleanup(now=T0 + timedelta(days=10_000))
    assert report.cutoff is None and report.images_deleted == 0
    assert store.find("line-a", "cam1", "f1").image_sha256 is not None


def test_snapshots_are_named_once_and_hold_only_stored_frames(aged):
    store, ids, _ = aged
    with pytest.raises(StoreError, match="'retrain-v0002' already exists"):
        store.create_snapshot("retrain-v0002", [ids["plain"]])
    with pytest.raises(FrameNotFoundError, match="9999"):
        store.create_snapshot("retrain-v0003", [ids["plain"], 9999])
    assert isinstance(store.create_snapshot("retrain-v0003", [ids["plain"], ids["plain"]]), int)
    assert store.cleanup(now=T0 + timedelta(days=100)).kept_in_snapshot == 2
