"""Posting one frame to the inspection service and deciding what its answer means.

``Uploader.post`` makes one attempt and returns either an :class:`Outcome` (a verdict, or a final
rejection) or a :class:`Retry` (try again later). The rules, which the adapter runner relies on:

* a 2xx JSON body with a ``verdict`` is a verdict (``"duplicate": true`` included: the service answered
  a frame id it had judged before with that first verdict);
* our JSON error envelope ``{"error", "detail"}`` with 400/401/403/413/415/422 (any 4xx but 408 and
  429) is final: sending the same frame again cannot help;
* 409 ``frame_id_conflict`` (the service judged this frame id before, for other image bytes) is to be
  quarantined at once (``Outcome("quarantined")``): sending it again gets the same answer, and a person
  must find out why a camera reused an id, so the image is kept with the reason, not only logged;
* 408, 429, 5xx, connection errors and timeouts are retried, and so is any answer *without* our JSON
  envelope: while Ray Serve (re)deploys, its HTTP proxy answers 404 or 503 in plain text, which means
  "the service is not there yet", not "this frame is wrong";
* among the retried answers, a 5xx *with* our envelope other than 503 (``server_error``) says the
  service failed on this frame; the runner quarantines a frame that keeps getting those, so one bad
  frame cannot hold its camera up for ever (503 means busy or starting, never the frame's fault).

``backoff_delay`` gives the wait before the next attempt: exponential with jitter, never shorter than
the service's ``Retry-After``. The frame id travels with every attempt, so a retry of a frame the
service did judge (its answer lost to a timeout) is answered from the service's memory, not judged
again.
"""

from __future__ import annotations

import email.utils
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import httpx
from pydantic import Field, field_validator

from inspectline.camera_adapters.source import Frame, Outcome, Settings

RETRY_STATUSES = {408, 429}
QUARANTINE_ERRORS = {409: "frame_id_conflict"}  # final answers whose frame a person must look at


class UploadSettings(Settings):
    """Where frames go and how hard the adapter tries."""

    url: str = Field("http://127.0.0.1:8000", description="base URL of the inspection service")
    token: str | None = Field(None, repr=False, description="bearer token; None sends no Authorization header")
    connect_timeout_s: float = Field(3.0, gt=0)
    timeout_s: float = Field(30.0, gt=0, description="read/write timeout of one post")
    backoff_initial_s: float = Field(0.2, gt=0, description="first retry waits about this long")
    backoff_max_s: float = Field(
        10.0, gt=0, description="retries never wait longer than this (unless Retry-After says so)"
    )
    retry_after_max_s: float = Field(60.0, gt=0, description="a longer Retry-After from the service is capped to this")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parsed = httpx.URL(value)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            msg = f"url {value!r} must be an http:// or https:// address of the inspection service, e.g. http://127.0.0.1:8000"
            raise ValueError(msg)
        return value.rstrip("/")


@dataclass(frozen=True)
class Retry:
    """The service did not settle the frame; try again after ``retry_after_s`` at the earliest."""

    reason: str
    retry_after_s: float | None = None
    status: int | None = None  # None: no HTTP answer (connection error, timeout)
    server_error: bool = False  # the service's own 5xx (not 503) for this frame: counts towards quarantine


class Uploader:
    """One httpx client posting frames for one line; ``transport`` is injectable for tests."""

    def __init__(self, settings: UploadSettings, line_id: str, *, transport: httpx.BaseTransport | None = None):
        self.settings = settings
        self.line_id = line_id
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
        timeout = httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
        self.client = httpx.Client(base_url=settings.url, headers=headers, timeout=timeout, transport=transport)

    def post(self, frame: Frame) -> Outcome | Retry:
        """One attempt: POST the frame to ``/v1/frames`` and classify the answer."""
        params = {
            "line_id": self.line_id,
            "camera_id": frame.camera_id,
            "frame_id": frame.frame_id,
            "captured_at": frame.captured_at.isoformat(),
        }
        if frame.part_id:
            params["part_id"] = frame.part_id
        try:
            response = self.client.post(
                "/v1/frames", content=frame.image, params=params, headers={"Content-Type": frame.content_type}
            )
        except httpx.TransportError as exc:  # connection refused/reset, timeouts, protocol errors
            return Retry(f"{type(exc).__name__}: {exc or 'no detail'}")
        return classify(response)

    def close(self) -> None:
        self.client.close()


def classify(response: httpx.Response) -> Outcome | Retry:
    """Turn one HTTP answer into a verdict, a final rejection or a retry (rules in the module docstring)."""
    status = response.status_code
    body = _json_object(response)
    if response.is_success and body is not None and "verdict" in body:
        return Outcome("judged", status, body)
    if body is None or "error" not in body:
        text = response.text[:200].strip()
        return Retry(
            f"HTTP {status} without the service's JSON answer ({text!r}): the service is not (yet) there",
            retry_after(response),
            status=status,
        )
    if status in RETRY_STATUSES or status >= 500:
        return Retry(
            f"HTTP {status} {body.get('error')}: {body.get('detail', '')}",
            retry_after(response),
            status=status,
            server_error=status >= 500 and status != 503,
        )
    if QUARANTINE_ERRORS.get(status) == body.get("error"):
        return Outcome("quarantined", status, body)
    if 400 <= status < 500:
        return Outcome("rejected", status, body)
    reason = f"HTTP {status} is not an answer the adapter understands: {body}"
    return Retry(reason, retry_after(response), status=status)


def retry_after(response: httpx.Response, *, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def backoff_delay(
    failures: int, settings: UploadSettings, retry_after_s: float | None = None, rng: random.Random | None = None
) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row (1 for the first).

    Exponential growth capped at ``backoff_max_s``, with "equal jitter": a random wait in the upper half
    of the step, so adapters that lost the service at the same moment do not return in lockstep, yet
    never retry at once. A ``Retry-After`` from the service is a lower bound (capped at
    ``retry_after_max_s``).
    """
    rng = rng or random
    step = min(settings.backoff_max_s, settings.backoff_initial_s * 2 ** max(0, failures - 1))
    delay = step / 2 + rng.uniform(0, step / 2)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, settings.retry_after_max_s))
    return delay


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
