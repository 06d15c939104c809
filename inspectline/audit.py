"""The audit trail: an append-only log of every change that affects verdicts.

Auditors ask who changed the model or the threshold, when, from what to what, and why. Every such
change — promotion, rollback, shadow on/off, an operating point (threshold, UNSURE band), an export
put into service, a review label set or changed, a service configuration reloaded, a challenge run —
is appended here as one JSON line:

    {"seq": 17, "at": "2026-11-30T08:02:11+00:00", "actor": "ana", "action": "promote",
     "subject": "production", "before": "v0003", "after": "v0004", "reason": "retrain 2026-W48",
     "prev": "<sha256 of line 16>"}

The file lives beside the model registry (``models/audit.jsonl``), the one folder the CLI, the service
and scheduled jobs all share. Appends take an exclusive ``flock``, are written with ``O_APPEND`` and
fsynced, so concurrent writers never interleave and an acknowledged event survives a crash. Each line
carries the SHA-256 of the line before it: :meth:`AuditLog.verify` finds any line that was edited,
removed or reordered afterwards. Events can also be forwarded to syslog (``syslog=``), where plants
collect logs centrally.

    log = AuditLog(Path("models/audit.jsonl"))
    log.append("operating_point", actor="ana", subject="v0004", before={"threshold": 0.41},
               after={"threshold": 0.33}, reason="recall 0.97 on validation")
    for event in log.read(since=datetime(2026, 11, 1, tzinfo=timezone.utc)): ...
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import logging
import logging.handlers
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inspectline.errors import ConfigError, InspectError

ACTIONS = (
    "promote",
    "rollback",
    "shadow",
    "operating_point",
    "export",
    "engine",
    "label",
    "config_reload",
    "challenge",
)
AUDIT_NAME = "audit.jsonl"
_GENESIS = "0" * 64


def default_actor() -> str:
    """Who runs a command when nobody says: ``user@host`` (the CLI's default for ``--actor``)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


class AuditError(InspectError):
    """The audit trail cannot be written, or it was changed after the fact."""


@dataclass(frozen=True)
class AuditEvent:
    """One change that affects verdicts."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: str
    before: Any = None
    after: Any = None
    reason: str = ""
    prev: str = _GENESIS

    def to_json(self) -> str:
        doc = asdict(self) | {"at": self.at.isoformat(timespec="milliseconds")}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)

    def summary(self) -> str:
        change = f"{_short(self.before)} -> {_short(self.after)}" if self.before is not None else _short(self.after)
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.subject}: {change}{why}"


class AuditLog:
    """Append-only JSON-lines audit trail; see the module docstring."""

    def __init__(self, path: Path, *, syslog: str | None = None):
        self.path = Path(path)
        self._syslog = _syslog_logger(syslog) if syslog else None

    def append(
        self,
        action: str,
        *,
        actor: str,
        subject: str,
        before: Any = None,
        after: Any = None,
        reason: str = "",
    ) -> AuditEvent:
        """Append one event and return it as written (with its sequence number and chain hash)."""
        if action not in ACTIONS:
            msg = f"audit action {action!r} is not one of {', '.join(ACTIONS)}"
            raise ValueError(msg)
        if not actor or not actor.strip():
            msg = "every audit event names its actor (a token name, a user or a job); got an empty actor"
            raise ValueError(msg)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as fd:
            seq, prev = _tail(self.path)
            event = AuditEvent(
                seq=seq + 1,
                at=datetime.now(timezone.utc),
                actor=actor.strip(),
                action=action,
                subject=subject,
                before=_plain(before),
                after=_plain(after),
                reason=reason,
                prev=prev,
            )
            os.write(fd, (event.to_json() + "\n").encode())
            os.fsync(fd)
        if self._syslog is not None:
            self._syslog.info("inspectline audit: %s", event.to_json())
        return event

    def read(self, *, since: datetime | None = None, action: str | None = None) -> list[AuditEvent]:
        """Events in order, optionally only those at or after ``since`` and of one ``action``."""
        if action is not None and action not in ACTIONS:
            msg = f"audit action {action!r} is not one of {', '.join(ACTIONS)}"
            raise ConfigError(msg)
        events = [event for _, event in self._lines()]
        return [e for e in events if (since is None or e.at >= since) and (action is None or e.action == action)]

    def follow(self, offset: int = 0, *, actions: tuple[str, ...] = ACTIONS) -> tuple[list[AuditEvent], int]:
        """Events of ``actions`` appended after byte ``offset``, and the offset to follow from next time.

        For readers that poll a long trail (the review station's model history, among every label): only
        the new lines are read, and lines of other actions are skipped before they are parsed. An offset
        past the end (a trail replaced by a shorter one) starts again from the beginning.
        """
        unknown = sorted(set(actions) - set(ACTIONS))
        if unknown:
            msg = f"audit actions {unknown} are not among {', '.join(ACTIONS)}"
            raise ConfigError(msg)
        if not self.path.is_file():
            return [], 0
        wanted = tuple(f'"action":"{a}"'.encode() for a in actions)
        with self.path.open("rb") as fh:
            if offset > fh.seek(0, os.SEEK_END):
                offset = 0
            fh.seek(offset)
            events = []
            for raw in fh:
                if not raw.endswith(b"\n"):  # a line being appended right now: read it next time
                    break
                if any(w in raw for w in wanted):
                    events.append(_parse(raw.decode().rstrip("\n"), self.path, f"byte {offset}"))
                offset += len(raw)
        return events, offset

    def verify(self) -> list[str]:
        """Problems with the chain (empty when intact): edited, removed or reordered lines."""
        problems, prev, expected_seq = [], _GENESIS, 1
        for line, event in self._lines():
            if event.prev != prev:
                problems.append(f"event {event.seq}: the line before it was changed or removed")
            if event.seq != expected_seq:
                problems.append(f"event {event.seq}: expected sequence number {expected_seq}")
            prev, expected_seq = _digest(line), event.seq + 1
        return problems

    def _lines(self) -> Iterator[tuple[str, AuditEvent]]:
        if not self.path.is_file():
            return
        with self.path.open() as fh:
            for number, line in enumerate(fh, 1):
                line = line.rstrip("\n")
                if line:
                    yield line, _parse(line, self.path, number)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            msg = f"cannot open the audit trail {self.path} for appending: {exc.strerror or exc}"
            raise AuditError(msg) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # closing releases the lock


def _tail(path: Path) -> tuple[int, str]:
    """Sequence number and digest of the last line (0 and the genesis digest for an empty trail)."""
    size = path.stat().st_size
    if size == 0:
        return 0, _GENESIS
    with path.open("rb") as fh:
        fh.seek(max(0, size - 65536))
        last = fh.read().rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
    return json.loads(last)["seq"], _digest(last)


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


def _parse(line: str, path: Path, number: int | str) -> AuditEvent:
    try:
        doc = json.loads(line)
        return AuditEvent(**(doc | {"at": datetime.fromisoformat(doc["at"])}))
    except (ValueError, TypeError, KeyError) as exc:
        msg = f"{path}:{number} is not an audit event ({exc})"
        raise AuditError(msg) from None


def _plain(value: Any) -> Any:
    """JSON-safe copy (datetimes and paths as strings)."""
    return json.loads(json.dumps(value, default=str)) if value is not None else None


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _syslog_logger(address: str) -> logging.Logger:
    """A logger to syslog: ``/dev/log`` (a socket path) or ``host:port`` (UDP)."""
    host, sep, port = address.rpartition(":")
    target: str | tuple[str, int] = (host, int(port)) if sep and port.isdigit() else address
    logger = logging.getLogger(f"inspectline.audit.syslog.{address}")
    if not logger.handlers:
        logger.addHandler(logging.handlers.SysLogHandler(address=target))
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger
