"""The disk spool: capture order by sequence number, durable across restarts, bounded."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from inspectline.camera_adapters.spool import Spool
from tests.unit.camera_adapters.fakes import make_frames


def numbered(n: int, prefix: str = "f"):
    return [replace(frame, seq=i) for i, frame in enumerate(make_frames(n, prefix=prefix))]


def drain(spool: Spool) -> list[str]:
    ids = []
    while (frame := spool.head()) is not None:
        ids.append(frame.frame_id)
        spool.remove(frame)
    return ids


def test_head_is_always_the_lowest_sequence_number(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**6)
    frames = numbered(6)
    for frame in frames[3:] + frames[:3]:  # older frames spilled after newer ones were spooled
        assert spool.put(frame)
    assert spool.head_seq() == 0 and spool.max_seq() == 5 and len(spool) == 6
    assert drain(spool) == [f.frame_id for f in frames]
    assert len(spool) == 0 and spool.total_bytes == 0 and list((tmp_path / "frames").iterdir()) == []


def test_frames_survive_a_restart_byte_for_byte(tmp_path):
    frames = numbered(4)
    spool = Spool(tmp_path, max_bytes=10**6)
    for frame in frames:
        spool.put(frame)
    spool.remove(spool.head())
    reopened = Spool(tmp_path, max_bytes=10**6)
    assert len(reopened) == 3 and "f001" in reopened and "f000" not in reopened
    restored = reopened.head()
    assert restored == frames[1]  # every field, the image bytes and the capture time included
    assert reopened.total_bytes == spool.total_bytes


def test_torn_writes_are_discarded_and_corrupt_files_set_aside(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=10**6)
    for frame in numbered(2):
        spool.put(frame)
    (tmp_path / "tmp" / "000000000009.frame").write_bytes(b'{"frame_id": "half')  # crash while writing
    victim = tmp_path / "frames" / "000000000001.frame"
    victim.write_bytes(victim.read_bytes()[:-10])  # the header says more image bytes than there are
    reopened = Spool(tmp_path, max_bytes=10**6)
    assert [f for f in drain(reopened)] == ["f000"]
    assert list((tmp_path / "tmp").iterdir()) == []
    assert (tmp_path / "corrupt" / "000000000001.frame").is_file()
    assert "unreadable" in caplog.text


def test_a_full_spool_refuses_frames(tmp_path):
    frames = numbered(5)
    probe = Spool(tmp_path / "probe", max_bytes=10**6)
    probe.put(frames[0])
    spool = Spool(tmp_path / "spool", max_bytes=2 * probe.total_bytes + 50)  # room for two frames
    assert spool.put(frames[0]) and spool.put(frames[1])
    assert not spool.put(frames[2])
    assert len(spool) == 2
    spool.remove(spool.head())
    assert spool.put(frames[2])


def test_putting_a_frame_twice_keeps_one_copy(tmp_path):
    spool = Spool(tmp_path, max_bytes=10**6)
    frame = numbered(1)[0]
    assert spool.put(frame) and spool.put(frame)
    assert len(spool) == 1 and len(os.listdir(tmp_path / "frames")) == 1


def test_unnumbered_frames_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no sequence number"):
        Spool(tmp_path, max_bytes=10**6).put(make_frames(1)[0])
