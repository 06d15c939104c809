"""Time windows typed by people: ``--since last-week`` for retraining, ``?since=36h`` for review.

Accepted: ``last-week`` (now - 7 days), ``yesterday`` and ``today`` (calendar days in UTC), a
duration back from now (``90m``, ``36h``, ``7d``, ``2w``), or an ISO 8601 date or date-time (a
date or naive time is taken as UTC). Results are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from inspectline.errors import ConfigError

SINCE_FORMS = (
    "last-week, yesterday, today, a duration such as 7d, 36h, 90m or 2w, or an ISO date/time such as 2026-11-15"
)
_DURATION = re.compile(r"^(\d{1,6}(?:\.\d+)?)\s*([wdhm])$")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes"}


def parse_since(text: str, now: datetime | None = None, *, name: str = "--since") -> datetime:
    """A point in time from one of ``SINCE_FORMS``; :class:`ConfigError` names the accepted forms."""
    now = now or datetime.now(timezone.utc)
    value = text.strip().lower()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    named = {"last-week": now - timedelta(days=7), "today": midnight, "yesterday": midnight - timedelta(days=1)}
    if value in named:
        return named[value]
    try:
        if match := _DURATION.match(value):
            return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        parsed = datetime.fromisoformat(text.strip())
        return parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except ValueError:
        msg = f"{name} {text!r} is not understood; use {SINCE_FORMS}"
        raise ConfigError(msg) from None
    except OverflowError:
        msg = f"{name} {text!r} is outside the range of dates this service can handle"
        raise ConfigError(msg) from None
