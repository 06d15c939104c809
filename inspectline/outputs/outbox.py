"""The durable outbox: part verdicts wait here, per line and output, until the output confirms them.

Delivery to the line is at-least-once and in order per line. A verdict is committed to a SQLite file
(WAL journal, ``synchronous=FULL``: a commit is on disk before ``put`` returns) and numbered with the
line's next sequence number; each output of the line (``mqtt``, ``opcua``, ``webhook``) has a cursor,
the highest sequence number it has confirmed. An output only ever takes the verdict right after its
cursor, so a broker or PLC that is down holds back the verdicts after it, and gets every one of them,
in order, when it is back; a restart of the service resumes from the cursors. A verdict an output
refused for good (a webhook answering 400) is recorded in ``refused`` with the reason and skipped.
Rows every output of a line has passed are deleted.

    outbox = Outbox(Path("data/outbox.sqlite3"), outputs={"line-1": ["mqtt", "opcua"]})
    item = outbox.put("line-1", part.to_dict())          # seq 1, 2, ... per line, across restarts
    nxt = outbox.next("line-1", "mqtt"); ...; outbox.delivered("line-1", "mqtt", nxt.seq)
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from inspectline.errors import ConfigError, InspectError

SCHEMA = """
CREATE TABLE IF NOT EXISTS lines (line_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    line_id TEXT NOT NULL, seq INTEGER NOT NULL, created_at REAL NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (line_id, seq));
CREATE TABLE IF NOT EXISTS cursors (
    line_id TEXT NOT NULL, output TEXT NOT NULL, delivered INTEGER NOT NULL, PRIMARY KEY (line_id, output));
CREATE TABLE IF NOT EXISTS refused (
    line_id TEXT NOT NULL, output TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, reason TEXT NOT NULL,
    payload TEXT NOT NULL);
"""


class DeliveryError(InspectError):
    """An output could not deliver a verdict now (broker down, no acknowledge, 5xx): retry it later."""


class DeliveryRefused(InspectError):
    """The receiver refused a verdict for good (for example a webhook's 400): record it and move on."""


@dataclass(frozen=True)
class OutboxItem:
    """One verdict waiting for an output; ``document`` is what every output sends."""

    line_id: str
    seq: int
    created_at: float  # Unix time it entered the outbox
    payload: dict[str, Any]

    @property
    def document(self) -> dict[str, Any]:
        return {"seq": self.seq, **self.payload}


class Output(Protocol):
    """What the dispatcher drives: ``deliver`` returns once the receiver confirmed, or raises."""

    name: str

    def deliver(self, item: OutboxItem) -> None: ...

    def close(self) -> None: ...


class Outbox:
    """Part verdicts per line in a SQLite file; one cursor per (line, output). Thread-safe."""

    def __init__(self, path: Path, *, outputs: Mapping[str, Iterable[str]]):
        self.path = Path(path)
        self.outputs = {line: tuple(names) for line, names in outputs.items()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            msg = f"cannot open the outbox {self.path}: {exc}; check plant.outbox and the folder's permissions"
            raise ConfigError(msg) from None
        self._lock = threading.Lock()
        self.changed = threading.Condition()  # notified on every put, for the dispatcher's threads
        self._configure()

    # --- writing -------------------------------------------------------------------------------
    def put(self, line_id: str, payload: dict[str, Any]) -> OutboxItem:
        """Commit one verdict for every output of the line; returns it with its sequence number."""
        if not self.outputs.get(line_id):
            msg = f"line {line_id!r} has no outputs in the outbox (lines with outputs: {sorted(self.outputs)})"
            raise ValueError(msg)
        created = time.time()
        text = json.dumps(payload, sort_keys=True, default=str)
        with self._lock, self._transaction() as db:
            seq = self._last_seq(db, line_id) + 1
            db.execute("UPDATE lines SET last_seq = ? WHERE line_id = ?", (seq, line_id))
            db.execute("INSERT INTO results VALUES (?, ?, ?, ?)", (line_id, seq, created, text))
        with self.changed:
            self.changed.notify_all()
        return OutboxItem(line_id, seq, created, json.loads(text))

    def delivered(self, line_id: str, output: str, seq: int) -> None:
        """The output confirmed ``seq``: move its cursor on and forget what every output has passed."""
        with self._lock, self._transaction() as db:
            self._advance(db, line_id, output, seq)

    def refused(self, line_id: str, output: str, seq: int, reason: str) -> None:
        """The receiver refused ``seq`` for good: keep it with the reason, and move on."""
        with self._lock, self._transaction() as db:
            row = db.execute("SELECT payload FROM results WHERE line_id = ? AND seq = ?", (line_id, seq)).fetchone()
            db.execute(
                "INSERT INTO refused VALUES (?, ?, ?, ?, ?, ?)",
                (line_id, output, seq, time.time(), reason, row[0] if row else "{}"),
            )
            self._advance(db, line_id, output, seq)

    # --- reading -------------------------------------------------------------------------------
    def next(self, line_id: str, output: str) -> OutboxItem | None:
        """The verdict right after the output's cursor, or None when it is up to date."""
        with self._lock:
            row = self._db.execute(
                "SELECT r.seq, r.created_at, r.payload FROM results r JOIN cursors c "
                "ON c.line_id = r.line_id AND c.output = ? WHERE r.line_id = ? AND r.seq = c.delivered + 1",
                (output, line_id),
            ).fetchone()
        return OutboxItem(line_id, row[0], row[1], json.loads(row[2])) if row else None

    def last_delivered(self, line_id: str, output: str) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT delivered FROM cursors WHERE line_id = ? AND output = ?", (line_id, output)
            ).fetchone()
        return row[0] if row else 0

    def backlog(self) -> dict[tuple[str, str], int]:
        """Verdicts waiting per (line, output)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT c.line_id, c.output, l.last_seq - c.delivered FROM cursors c JOIN lines l USING (line_id)"
            ).fetchall()
        return {(line, output): count for line, output, count in rows}

    def refusals(self, line_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT line_id, output, seq, at, reason FROM refused WHERE ? IS NULL OR line_id = ? ORDER BY at",
                (line_id, line_id),
            ).fetchall()
        return [dict(zip(("line_id", "output", "seq", "at", "reason"), row, strict=True)) for row in rows]

    def wait(self, timeout: float) -> None:
        """Sleep until something is put (or ``timeout`` seconds)."""
        with self.changed:
            self.changed.wait(timeout)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- internals -----------------------------------------------------------------------------
    def _configure(self) -> None:
        """Cursors for the configured outputs; a new output starts with the next verdict, a removed one goes."""
        with self._lock, self._transaction() as db:
            known = set(db.execute("SELECT line_id, output FROM cursors").fetchall())
            wanted = {(line, output) for line, names in self.outputs.items() for output in names}
            for line, output in sorted(wanted - known):
                db.execute(
                    "INSERT INTO cursors VALUES (?, ?, ?)", (line, output, self._last_seq(db, line))
                )  # an output added later gets verdicts from now on
            for line, output in known - wanted:
                db.execute("DELETE FROM cursors WHERE line_id = ? AND output = ?", (line, output))
            for line in {line for line, _ in known | wanted}:
                self._purge(db, line)

    def _advance(self, db: sqlite3.Connection, line_id: str, output: str, seq: int) -> None:
        current = db.execute(
            "SELECT delivered FROM cursors WHERE line_id = ? AND output = ?", (line_id, output)
        ).fetchone()
        if current is None or seq != current[0] + 1:
            msg = f"{output} of line {line_id!r} confirmed seq {seq}, but the next one due is {(current or [0])[0] + 1}"
            raise ValueError(msg)
        db.execute("UPDATE cursors SET delivered = ? WHERE line_id = ? AND output = ?", (seq, line_id, output))
        self._purge(db, line_id)

    @staticmethod
    def _last_seq(db: sqlite3.Connection, line_id: str) -> int:
        row = db.execute("SELECT last_seq FROM lines WHERE line_id = ?", (line_id,)).fetchone()
        if row is None:
            db.execute("INSERT INTO lines VALUES (?, 0)", (line_id,))
            return 0
        return row[0]

    @staticmethod
    def _purge(db: sqlite3.Connection, line_id: str) -> None:
        low = db.execute("SELECT MIN(delivered) FROM cursors WHERE line_id = ?", (line_id,)).fetchone()[0]
        if low is None:  # no output reads this line any more
            db.execute("DELETE FROM results WHERE line_id = ?", (line_id,))
        else:
            db.execute("DELETE FROM results WHERE line_id = ? AND seq <= ?", (line_id, low))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when the block raises."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
