"""The uploader's rules: what is a verdict, what is final, what is retried and how long to wait."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest
from pydantic import ValidationError

from inspectline.camera_adapters.source import Outcome
from inspectline.camera_adapters.uploader import Retry, Uploader, UploadSettings, backoff_delay, classify, retry_after
from tests.unit.camera_adapters.fakes import FakeService, make_frames


def response(status: int, body: dict | str, headers: dict | None = None) -> httpx.Response:
    if isinstance(body, dict):
        return httpx.Response(status, json=body, headers=headers or {})
    return httpx.Response(status, text=body, headers=headers or {})


def test_a_verdict_and_a_duplicate_are_both_verdicts():
    judged = classify(response(200, {"frame_id": "f1", "verdict": "OK", "duplicate": False}))
    again = classify(response(200, {"frame_id": "f1", "verdict": "OK", "duplicate": True}))
    assert isinstance(judged, Outcome) and judged.kind == "judged" and judged.body["verdict"] == "OK"
    assert isinstance(again, Outcome) and again.kind == "judged" and again.body["duplicate"] is True


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 415, 422])
def test_our_json_4xx_is_final(status):
    answer = classify(response(status, {"error": "invalid_request", "detail": "bad frame"}))
    assert isinstance(answer, Outcome)
    assert (answer.kind, answer.status) == ("rejected", status)
    assert "bad frame" in answer.reason and str(status) in answer.reason


def test_a_frame_id_conflict_is_to_be_quarantined_and_other_409s_are_final():
    conflict = {"error": "frame_id_conflict", "detail": "f1 was judged for other bytes", "sent_sha256": "ab"}
    answer = classify(response(409, conflict))
    assert isinstance(answer, Outcome) and (answer.kind, answer.status) == ("quarantined", 409)
    assert answer.body["sent_sha256"] == "ab"
    other = classify(response(409, {"error": "something_else", "detail": "no"}))
    assert isinstance(other, Outcome) and other.kind == "rejected"


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_408_429_and_5xx_are_retried_with_retry_after(status):
    answer = classify(response(status, {"error": "overloaded", "detail": "busy"}, {"Retry-After": "3"}))
    assert isinstance(answer, Retry)
    assert answer.retry_after_s == 3.0 and str(status) in answer.reason


@pytest.mark.parametrize(
    ("status", "body"),
    [(404, "Path '/v1/frames' not found"), (503, "Service Unavailable"), (200, "<html>hello</html>"), (500, "[1, 2]")],
)
def test_answers_without_our_envelope_mean_the_service_is_not_there(status, body):
    """Ray's proxy answers plain text while the app (re)deploys: never a final rejection."""
    answer = classify(response(status, body))
    assert isinstance(answer, Retry)
    assert "without the service's JSON answer" in answer.reason


def test_retry_after_in_seconds_or_as_an_http_date():
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert retry_after(response(503, "x", {"Retry-After": "7"})) == 7.0
    dated = response(503, "x", {"Retry-After": format_datetime(now + timedelta(seconds=42), usegmt=True)})
    assert retry_after(dated, now=now) == pytest.approx(42.0)
    assert (
        retry_after(
            response(503, "x", {"Retry-After": format_datetime(now - timedelta(seconds=5), usegmt=True)}), now=now
        )
        == 0.0
    )
    assert retry_after(response(503, "x", {"Retry-After": "soon"})) is None
    assert retry_after(response(503, "x")) is None


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    settings = UploadSettings(backoff_initial_s=0.1, backoff_max_s=1.0)
    rng = random.Random(1)
    for failures, step in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (12, 1.0)]:
        delays = [backoff_delay(failures, settings, rng=rng) for _ in range(200)]
        assert min(delays) >= step / 2 and max(delays) <= step, failures
        assert len(set(delays)) > 150  # jittered, not one fixed value
    # Retry-After is a floor, but a huge one is capped.
    assert backoff_delay(1, settings, retry_after_s=5.0, rng=rng) == 5.0
    assert backoff_delay(1, UploadSettings(retry_after_max_s=2.0), retry_after_s=3600, rng=rng) == 2.0


def test_post_sends_ids_capture_time_type_and_token():
    service = FakeService()
    frame = make_frames(1)[0]
    uploader = Uploader(UploadSettings(url="http://svc:8000/", token="s3cret"), "line-7", transport=service.transport())
    answer = uploader.post(frame)
    assert isinstance(answer, Outcome) and answer.kind == "judged"
    request = service.requests[0]
    assert request.url.path == "/v1/frames" and request.url.host == "svc"
    params = request.url.params
    assert (params["line_id"], params["camera_id"], params["frame_id"], params["part_id"]) == (
        "line-7",
        "cam-1",
        "f000",
        "p0",
    )
    assert datetime.fromisoformat(params["captured_at"]) == frame.captured_at
    assert request.headers["Content-Type"] == "image/png" and request.headers["Authorization"] == "Bearer s3cret"
    assert request.content == frame.image


def test_connection_errors_and_timeouts_are_retried():
    service = FakeService(script=["connect", "judge-then-timeout"])
    uploader = Uploader(UploadSettings(), "line-1", transport=service.transport())
    frame = make_frames(1)[0]
    first, second, third = uploader.post(frame), uploader.post(frame), uploader.post(frame)
    assert isinstance(first, Retry) and "ConnectError" in first.reason
    assert isinstance(second, Retry) and "ReadTimeout" in second.reason
    assert isinstance(third, Outcome) and third.body["duplicate"] is True  # the timed-out attempt was judged
    assert service.judged["f000"] == 1


@pytest.mark.parametrize("url", ["ftp://host", "localhost:8000", "http://"])
def test_url_must_be_http(url):
    with pytest.raises(ValidationError, match="must be an http"):
        UploadSettings(url=url)


def test_token_is_not_shown_in_settings_repr():
    assert "s3cret" not in repr(UploadSettings(token="s3cret"))
    assert json.loads(UploadSettings(token="t").model_dump_json())["token"] == "t"
