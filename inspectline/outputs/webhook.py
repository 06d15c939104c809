"""Part verdicts POSTed as JSON to a URL, with ``httpx``; retried until the receiver answers 2xx.

The body is the outbox's JSON document (``seq``, line, station, part id, verdict, ...). Headers say
which verdict it is, so a receiver can drop the duplicates at-least-once delivery may bring:
``Idempotency-Key: <line>:<seq>`` and ``X-Inspectline-Seq: <seq>``. A connection error, timeout, 408,
429 or 5xx is retried by the dispatcher (backoff, in order, for as long as it takes); any other 4xx
means the receiver will never take this verdict, so it is recorded as refused (with the answer) and
the next one goes.
"""

from __future__ import annotations

import json
import os

import httpx

from inspectline.config import WebhookOutput
from inspectline.outputs.outbox import DeliveryError, DeliveryRefused, OutboxItem

RETRY_STATUSES = {408, 429}


class WebhookPublisher:
    """The ``webhook`` output of one line; ``transport`` is injectable for tests."""

    name = "webhook"

    def __init__(self, settings: WebhookOutput, line_id: str, *, transport: httpx.BaseTransport | None = None):
        self.settings, self.line_id = settings, line_id
        headers = {"Content-Type": "application/json", **settings.headers}
        token = os.environ.get(settings.token_env) if settings.token_env else None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(headers=headers, timeout=settings.timeout_s, transport=transport)

    def deliver(self, item: OutboxItem) -> None:
        headers = {"Idempotency-Key": f"{self.line_id}:{item.seq}", "X-Inspectline-Seq": str(item.seq)}
        body = json.dumps(item.document, sort_keys=True).encode()
        try:
            response = self.client.post(self.settings.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            msg = f"webhook {self.settings.url} unreachable for seq {item.seq}: {type(exc).__name__}: {exc}"
            raise DeliveryError(msg) from None
        if response.is_success:
            return
        text = response.text[:200].strip()
        answer = f"HTTP {response.status_code}" + (f": {text}" if text else "")
        if response.status_code in RETRY_STATUSES or response.status_code >= 500:
            msg = f"webhook {self.settings.url} answered seq {item.seq} with {answer}"
            raise DeliveryError(msg)
        msg = f"webhook {self.settings.url} refused seq {item.seq}: {answer}"
        raise DeliveryRefused(msg)

    def close(self) -> None:
        self.client.close()
