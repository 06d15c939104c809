"""Large frames through a running service: frames/s for 5 MP PNGs, and a small frame's latency beside 40 MP ones.

    inspect serve &                                   # the service to measure (any version of it)
    python benchmarks/large_frames.py --url http://127.0.0.1:8000 --label after

(a) throughput: closed loop, ``--concurrency`` clients posting 5 MP (2592 x 1944) RGB PNG frames for
    ``--seconds``, each with a fresh frame id;
(b) isolation: one client posts 40 MP (6400 x 6250) gray PNGs back to back while another posts small
    frames at 2/s; the small frames' latency is compared with the same small-frame stream on the idle
    service.

Run it against two versions of the service on the same machine to compare them (``--label`` names the
run; results go to ``benchmarks/results/large_frames_<label>.json``). The load generator runs in its own
process; the machine (CPU model and flags) is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import run_in_process
from machine import machine_info, save_result

from inspectline.hardware import cpu_capabilities


def five_mp_frames(n: int = 4, seed: int = 0) -> list[bytes]:
    """Textured RGB frames of 2592 x 1944 px, as a line camera sends them (a few MB as PNG)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        y, x = np.mgrid[0:1944, 0:2592].astype(np.float32)
        base = 128 + 60 * np.sin(x / rng.uniform(40, 90)) * np.cos(y / rng.uniform(40, 90))
        rgb = np.clip(base[..., None] + rng.normal(0, 12, (1944, 2592, 3)), 0, 255).astype(np.uint8)
        frames.append(_png(rgb))
    return frames


def forty_mp_frame() -> bytes:
    """A 6400 x 6250 gray gradient: 40 MP to decode, a small file to send."""
    y, x = np.mgrid[0:6250, 0:6400]
    return _png(((x + y) % 256).astype(np.uint8))


def small_frame() -> bytes:
    rng = np.random.default_rng(1)
    return _png(rng.integers(0, 256, (300, 300), dtype=np.uint8))


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


async def small_frame_latencies(
    url: str, seconds: float, *, rate: float = 2.0, headers: dict | None = None
) -> list[float]:
    """Latencies (ms) of small frames posted at ``rate`` per second."""
    body, out = small_frame(), []
    async with httpx.AsyncClient(timeout=120, headers=headers) as client:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            r = await client.post(
                f"{url}/v1/frames",
                content=body,
                headers={"Content-Type": "image/png"},
                params={"line_id": "bench", "camera_id": "small", "frame_id": uuid.uuid4().hex},
            )
            if r.status_code == 200:
                out.append((time.perf_counter() - t0) * 1000)
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - t0)))
    return out


async def big_frames(url: str, stop: asyncio.Event, headers: dict | None = None) -> tuple[int, int]:
    """Post 40 MP frames back to back until ``stop``; returns (answered, refused)."""
    body, answered, refused = forty_mp_frame(), 0, 0
    async with httpx.AsyncClient(timeout=300, headers=headers) as client:
        while not stop.is_set():
            r = await client.post(
                f"{url}/v1/frames",
                content=body,
                headers={"Content-Type": "image/png"},
                params={"line_id": "bench", "camera_id": "big", "frame_id": uuid.uuid4().hex},
            )
            answered, refused = answered + (r.status_code == 200), refused + (r.status_code != 200)
    return answered, refused


async def isolation(url: str, seconds: float, headers: dict | None = None) -> dict:
    idle = await small_frame_latencies(url, seconds, headers=headers)
    stop = asyncio.Event()
    big = asyncio.create_task(big_frames(url, stop, headers))
    await asyncio.sleep(2.0)  # the first big frame is in flight
    loaded = await small_frame_latencies(url, seconds, headers=headers)
    stop.set()
    answered, refused = await big
    return {
        "small_idle_ms": _percentiles(idle),
        "small_beside_40mp_ms": _percentiles(loaded),
        "big_frames_answered": answered,
        "big_frames_refused": refused,
    }


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), **{f"p{q}": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--label", default="current", help="names this run in the results file")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--token", default=None, help="bearer token with the frames:write scope")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else None
    httpx.get(f"{args.url}/readyz", timeout=30).raise_for_status()

    bodies = five_mp_frames()
    closed = run_in_process(
        "closed", f"{args.url}/v1/frames", bodies, concurrency=args.concurrency, seconds=args.seconds
    )
    isolated = asyncio.run(isolation(args.url, args.seconds / 2, headers))
    result = {
        "label": args.label,
        "machine": machine_info() | cpu_capabilities().to_dict(),
        "five_mp_png": {
            "frames_per_s": round(closed.throughput, 2),
            "ok": closed.ok,
            "errors": closed.errors,
            "latency_ms": _percentiles(closed.latencies_ms),
            "mean_body_bytes": int(np.mean([len(b) for b in bodies])),
            "load_generator_cpu_s": round(closed.cpu_seconds, 1),
        },
        "isolation": isolated,
    }
    path = save_result(f"large_frames_{args.label}", result)
    iso = result["isolation"]
    print("\n| run | 5 MP PNG frames/s | small frame p50 / p95 idle | beside 40 MP frames | 40 MP answered |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.label} | {result['five_mp_png']['frames_per_s']:.2f} "
        f"| {iso['small_idle_ms'].get('p50')} / {iso['small_idle_ms'].get('p95')} ms "
        f"| {iso['small_beside_40mp_ms'].get('p50')} / {iso['small_beside_40mp_ms'].get('p95')} ms "
        f"| {iso['big_frames_answered']} |"
    )
    print(f"written to {path}")


if __name__ == "__main__":
    main()
