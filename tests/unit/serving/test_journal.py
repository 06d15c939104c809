"""The gateway's journal: what is appended survives the process; acknowledged records are forgotten."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from inspectline.serving.journal import Journal, adopt_orphans
from inspectline.serving.records import ErrorObservation, FrameMeta


def test_unacknowledged_records_come_back_in_order_and_acknowledged_ones_do_not(tmp_path: Path):
    journal = Journal(tmp_path / "j", segment_bytes=300)  # small segments: several roll-overs
    positions = [journal.append(ErrorObservation(code=f"e{i}")) for i in range(20)]
    assert [r.code for _, r in journal.unacked()] == [f"e{i}" for i in range(20)]
    journal.ack(positions[11])
    assert [r.code for _, r in journal.unacked()] == [f"e{i}" for i in range(12, 20)]
    assert [r.code for _, r in journal.unacked(after=positions[15])] == [f"e{i}" for i in range(16, 20)]
    journal.ack(positions[-1])
    assert list(journal.unacked()) == []
    assert len(list((tmp_path / "j").glob("*.seg"))) == 1  # delivered segments are deleted
    journal.close()


def test_a_killed_writer_loses_nothing_it_appended(tmp_path: Path):
    # A separate process appends and is killed without closing anything: the records are on disk.
    script = textwrap.dedent(
        f"""
        import os, signal
        from inspectline.serving.journal import Journal
        from inspectline.serving.records import ErrorObservation
        j = Journal({str(tmp_path / "j")!r})
        for i in range(50):
            j.append(ErrorObservation(code=f"e{{i}}"))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=False)
    orphan_parent = tmp_path
    own = Journal(tmp_path / "own")
    assert adopt_orphans(orphan_parent, own) == 50
    assert [r.code for _, r in own.unacked()] == [f"e{i}" for i in range(50)]
    assert not (tmp_path / "j").exists()
    own.close()


def test_a_live_journal_is_not_adopted_and_cannot_be_opened_twice(tmp_path: Path):
    live = Journal(tmp_path / "a")
    live.append(ErrorObservation(code="x"))
    with pytest.raises(RuntimeError, match="in use"):
        Journal(tmp_path / "a")
    own = Journal(tmp_path / "b")
    assert adopt_orphans(tmp_path, own) == 0
    assert [r.code for _, r in live.unacked()] == ["x"]
    live.close()
    own.close()


def test_records_keep_their_types_and_a_foreign_pickle_is_refused(tmp_path: Path):
    journal = Journal(tmp_path / "j")
    meta = FrameMeta(line_id="l", camera_id="c", frame_id="f", captured_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    journal.append(meta)
    # a record that would construct an arbitrary object is skipped, never executed
    evil = pickle.dumps(subprocess.Popen)
    with open(next((tmp_path / "j").glob("*.seg")), "ab") as fh:
        fh.write(len(evil).to_bytes(8, "big") + evil)
    journal.append(ErrorObservation(code="after"))
    records = [r for _, r in journal.unacked()]
    assert records == [meta, ErrorObservation(code="after")]
    journal.close()


def test_a_torn_last_record_is_ignored(tmp_path: Path):
    journal = Journal(tmp_path / "j")
    journal.append(ErrorObservation(code="whole"))
    journal.close()
    segment = next((tmp_path / "j").glob("*.seg"))
    with segment.open("ab") as fh:
        fh.write((1000).to_bytes(8, "big") + b"only part of it")
    reopened = Journal(tmp_path / "j")
    assert [r.code for _, r in reopened.unacked()] == ["whole"]
    reopened.close()
