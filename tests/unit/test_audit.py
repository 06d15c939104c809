"""The audit trail: append-only, ordered, attributable, and tamper-evident."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from inspectline.audit import AuditLog
from inspectline.errors import ConfigError


def test_events_keep_who_what_before_after_and_why(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("promote", actor="ana", subject="production", before="v0001", after="v0002", reason="retrain W48")
    log.append("operating_point", actor="ben", subject="v0002", before={"threshold": 0.4}, after={"threshold": 0.3})
    first, second = log.read()
    assert (first.seq, first.actor, first.action, first.before, first.after, first.reason) == (
        1, "ana", "promote", "v0001", "v0002", "retrain W48",
    )  # fmt: skip
    assert second.seq == 2 and second.after == {"threshold": 0.3}
    assert "ana promote production: v0001 -> v0002 (retrain W48)" in first.summary()
    assert [e.action for e in log.read(action="operating_point")] == ["operating_point"]
    assert log.read(since=datetime.now(timezone.utc) + timedelta(seconds=5)) == []
    with pytest.raises(ConfigError, match="not one of"):
        log.read(action="delete-everything")


def test_unknown_actions_and_anonymous_changes_are_refused(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(ValueError, match="not one of"):
        log.append("rename", actor="ana", subject="x")
    with pytest.raises(ValueError, match="names its actor"):
        log.append("promote", actor=" ", subject="production")
    assert log.read() == []


def test_concurrent_writers_never_interleave_and_numbers_stay_unique(tmp_path: Path):
    path = tmp_path / "audit.jsonl"

    def write(actor: str):
        log = AuditLog(path)  # separate objects, as separate processes would have
        for i in range(40):
            log.append("label", actor=actor, subject=f"frame {i}", after="ok")

    threads = [threading.Thread(target=write, args=(f"reviewer-{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = AuditLog(path).read()
    assert [e.seq for e in events] == list(range(1, 161))
    assert AuditLog(path).verify() == []


def test_an_edited_or_removed_line_is_detected(tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for version in ("v0001", "v0002", "v0003"):
        log.append("promote", actor="ana", subject="production", after=version)
    assert log.verify() == []
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1]) | {"actor": "mallory"}
    path.write_text("\n".join([lines[0], json.dumps(edited, sort_keys=True, separators=(",", ":")), lines[2]]) + "\n")
    assert any("event 3" in p for p in log.verify())
    path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    problems = log.verify()
    assert any("changed or removed" in p for p in problems) and any("expected sequence number 2" in p for p in problems)


def test_follow_reads_only_new_events_of_the_asked_actions(tmp_path: Path):
    log = AuditLog(tmp_path / "audit.jsonl")
    assert log.follow() == ([], 0)  # no trail yet
    log.append("promote", actor="ana", subject="production", after="v0001")
    for n in range(3):
        log.append("label", actor="ana", subject=f"frame {n}", after={"label": "ok"})
    events, offset = log.follow(actions=("promote", "operating_point"))
    assert [e.action for e in events] == ["promote"] and offset == log.path.stat().st_size
    log.append("operating_point", actor="ben", subject="v0001", after={"threshold": 0.3})
    events, offset = log.follow(offset, actions=("promote", "operating_point"))
    assert [(e.seq, e.action, e.actor) for e in events] == [(5, "operating_point", "ben")]
    # a line still being written is left for the next call
    with log.path.open("a") as fh:
        fh.write('{"seq": 6, "action": "promote"')
    assert log.follow(offset, actions=("promote",)) == ([], offset)
    with pytest.raises(ConfigError, match="rename"):
        log.follow(actions=("rename",))
