"""GET /metrics on the running service: line-wide counts with several inspector replicas."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from inspectline.imaging import encode_png
from tests.helpers import make_cell
from tests.unit.monitoring.test_metrics import needs_promtool

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == val for k, val in labels.items())
    )


def post_many(url: str, line: str, n: int, *, concurrency: int = 16, camera: str = "cam-m") -> list[dict]:
    import numpy as np

    bodies = [encode_png(make_cell(np.random.default_rng(i), i % 3 == 0)) for i in range(n)]

    async def run() -> list[dict]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(i: int) -> dict:
                async with sem:
                    r = await client.post(
                        f"{url}/v1/frames",
                        content=bodies[i],
                        headers={"Content-Type": "image/png"},
                        params={"line_id": line, "camera_id": camera, "frame_id": f"{line}-{i}"},
                    )
                    r.raise_for_status()
                    return r.json()

            return await asyncio.gather(*(one(i) for i in range(n)))

    return asyncio.run(run())


def test_counts_are_exact_line_wide_with_two_inspector_replicas(service):
    line = f"line-{uuid.uuid4().hex[:6]}"
    results = post_many(service.url, line, 60)
    by_verdict = {v: sum(r["verdict"] == v for r in results) for v in ("OK", "DEFECTIVE")}
    samples = scrape(service.url)
    assert total(samples, "inspect_frames_total", line=line) == 60
    for verdict, count in by_verdict.items():
        assert total(samples, "inspect_frames_total", line=line, verdict=verdict) == count
    assert total(samples, "inspect_request_duration_seconds_count", line=line) == 60
    post_many(service.url, line, 10)  # the same frame ids again: answered, not counted again
    assert total(scrape(service.url), "inspect_frames_total", line=line) == 60


def test_batching_model_and_errors_are_visible(service):
    post_many(service.url, f"line-{uuid.uuid4().hex[:6]}", 48, concurrency=24)
    samples = scrape(service.url)
    batches = total(samples, "inspect_batch_size_count")
    single = total(samples, "inspect_batch_size_bucket", le="1.0")
    assert batches > 0 and single < batches, "no batch of more than one frame formed under concurrency"
    # the model's CPU: counted per batch, by the single-thread replicas' own clock, so within their forwards' time
    model_cpu = total(samples, "inspect_inference_cpu_seconds_total")
    assert 0 < model_cpu <= 1.05 * total(samples, "inspect_inference_duration_seconds_sum") + 0.01
    assert total(samples, "inspect_model_info", version="v0001", engine="torch", precision="fp32") == 1
    assert 0 < total(samples, "inspect_model_threshold") < 1
    before = total(samples, "inspect_errors_total", reason="undecodable_image")
    bad = httpx.post(
        f"{service.url}/v1/frames",
        content=b"\x89PNG\r\n\x1a\nbroken",
        headers={"Content-Type": "image/png"},
        params={"line_id": "l", "camera_id": "c"},
    )
    assert bad.status_code == 422
    assert total(scrape(service.url), "inspect_errors_total", reason="undecodable_image") == before + 1


def test_drift_gauges_appear_once_a_window_is_full(service):
    line = f"line-{uuid.uuid4().hex[:6]}"
    post_many(service.url, line, 210, camera="cam-drift")  # serve_config.yaml: window 200, interval 50
    samples = scrape(service.url)
    assert total(samples, "inspect_drift_window_frames", line=line) == 200
    for signal in ("output", "brightness", "contrast", "focus", "clipping", "embedding", "defect_rate"):
        p = [
            v
            for (n, ls), v in samples.items()
            if n == "inspect_drift_p_value" and dict(ls).get("line") == line and dict(ls).get("signal") == signal
        ]
        assert len(p) == 1 and 0 <= p[0] <= 1, signal
    assert total(samples, "inspect_drift_alpha") == 0.01


@needs_promtool
def test_promtool_accepts_the_live_exposition(service):
    text = httpx.get(f"{service.url}/metrics", timeout=30).content
    proc = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr
