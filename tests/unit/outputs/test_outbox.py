"""The durable outbox: sequence numbers per line, one cursor per output, restarts, refusals, clean-up."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from inspectline.outputs.outbox import Outbox


def drain(outbox: Outbox, line: str, output: str) -> list[int]:
    seqs = []
    while (item := outbox.next(line, output)) is not None:
        seqs.append(item.seq)
        outbox.delivered(line, output, item.seq)
    return seqs


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]


def test_each_output_gets_every_verdict_of_its_line_in_order(tmp_path):
    outbox = Outbox(tmp_path / "o.db", outputs={"line-1": ["mqtt", "webhook"], "line-2": ["mqtt"]})
    for i in range(3):
        assert outbox.put("line-1", {"part_id": f"A{i}"}).seq == i + 1
    assert outbox.put("line-2", {"part_id": "B0"}).seq == 1  # numbered per line
    item = outbox.next("line-1", "mqtt")
    assert item.document == {"seq": 1, "part_id": "A0"} and item.created_at > 0
    assert outbox.backlog() == {("line-1", "mqtt"): 3, ("line-1", "webhook"): 3, ("line-2", "mqtt"): 1}
    assert drain(outbox, "line-1", "mqtt") == [1, 2, 3]
    assert outbox.backlog()[("line-1", "mqtt")] == 0 and outbox.backlog()[("line-1", "webhook")] == 3
    assert rows(tmp_path / "o.db") == 4  # kept until the webhook has them too
    assert drain(outbox, "line-1", "webhook") == [1, 2, 3]
    assert rows(tmp_path / "o.db") == 1


def test_a_restart_resumes_from_the_cursors_and_keeps_numbering(tmp_path):
    path = tmp_path / "o.db"
    outbox = Outbox(path, outputs={"line-1": ["mqtt"]})
    for i in range(5):
        outbox.put("line-1", {"n": i})
    outbox.delivered("line-1", "mqtt", 1)
    outbox.delivered("line-1", "mqtt", 2)
    outbox.close()
    again = Outbox(path, outputs={"line-1": ["mqtt"]})
    assert again.last_delivered("line-1", "mqtt") == 2
    assert again.put("line-1", {"n": 5}).seq == 6
    assert [again.next("line-1", "mqtt").payload["n"]] == [2]
    assert drain(again, "line-1", "mqtt") == [3, 4, 5, 6]


def test_confirming_out_of_order_is_a_bug_and_is_refused(tmp_path):
    outbox = Outbox(tmp_path / "o.db", outputs={"line-1": ["mqtt"]})
    outbox.put("line-1", {})
    outbox.put("line-1", {})
    with pytest.raises(ValueError, match="confirmed seq 2, but the next one due is 1"):
        outbox.delivered("line-1", "mqtt", 2)
    assert outbox.last_delivered("line-1", "mqtt") == 0


def test_refused_verdicts_are_kept_with_the_reason_and_skipped(tmp_path):
    outbox = Outbox(tmp_path / "o.db", outputs={"line-1": ["webhook"]})
    outbox.put("line-1", {"part_id": "A"})
    outbox.put("line-1", {"part_id": "B"})
    outbox.refused("line-1", "webhook", 1, "HTTP 400: bad schema")
    assert outbox.next("line-1", "webhook").payload == {"part_id": "B"}
    (refusal,) = outbox.refusals("line-1")
    assert (refusal["seq"], refusal["output"], refusal["reason"]) == (1, "webhook", "HTTP 400: bad schema")


def test_an_output_added_later_starts_with_the_next_verdict_and_a_removed_one_stops_holding_rows(tmp_path):
    path = tmp_path / "o.db"
    outbox = Outbox(path, outputs={"line-1": ["mqtt", "webhook"]})
    for _ in range(3):
        outbox.put("line-1", {})
    drain(outbox, "line-1", "mqtt")
    outbox.close()
    assert rows(path) == 3  # the webhook has not taken them

    changed = Outbox(path, outputs={"line-1": ["mqtt", "opcua"]})  # webhook removed, opcua added
    assert rows(path) == 0
    assert changed.next("line-1", "opcua") is None and changed.last_delivered("line-1", "opcua") == 3
    changed.put("line-1", {"part_id": "new"})
    assert changed.next("line-1", "opcua").seq == 4


def test_a_line_without_outputs_cannot_be_queued(tmp_path):
    outbox = Outbox(tmp_path / "o.db", outputs={"line-1": ["mqtt"]})
    with pytest.raises(ValueError, match="line 'line-2' has no outputs"):
        outbox.put("line-2", {})


def test_an_unusable_path_is_a_config_error(tmp_path):
    from inspectline.errors import ConfigError

    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot open the outbox"):
        Outbox(tmp_path / "file" / "o.db", outputs={})
