"""HTTP load generator for the serving benchmark, run in its own process.

* closed loop: ``concurrency`` clients post back to back for ``seconds`` -> throughput at saturation;
  with ``frames_per_post`` > 1 each post is a multipart ``POST /v1/frames/batch`` of that many frames,
  and throughput counts frames judged.
* open loop: requests start on a fixed schedule at ``rate`` per second whatever the answers do
  (no coordinated omission), for ``seconds`` -> latency percentiles at a given load.

Each run reports its own CPU time, so the benchmark can say how much of the machine the load
generator itself used. A closed loop can also tell the caller, through ``on_window``, when its
measured window opens and closes, so the caller can read other processes' CPU over exactly that window.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

_RUN = uuid.uuid4().hex[:12]  # each load phase runs in a fresh process, so each gets its own frame ids


def free_port() -> int:
    """A loopback port no one listens on, for a server the benchmark starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def elpv_cell() -> bytes:
    """The first ELPV cell as stored in the dataset (a 300x300 gray PNG, 23 KB), as a line camera would post it."""
    import elpv_dataset

    return (Path(elpv_dataset.__file__).parent / "data" / "images" / "cell0001.png").read_bytes()


@dataclass
class LoadResult:
    requests: int
    ok: int
    errors: dict[int, int]
    seconds: float
    latencies_ms: list[float]
    cpu_seconds: float

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def run_in_process(
    mode: str, url: str, bodies: list[bytes], *, on_window: Callable[[str], None] | None = None, **kw
) -> LoadResult:
    """Run one load phase in a fresh process (its CPU use is then its own).

    A closed loop calls ``on_window("open")`` as its measured window starts and ``on_window("close")``
    as it ends (within a queue hop, a millisecond or so)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, mode, url, bodies, kw))
    proc.start()
    while not isinstance(message := queue.get(), LoadResult):
        if on_window is not None:
            on_window(message)
    proc.join()
    return message


def _child(queue: mp.Queue, mode: str, url: str, bodies: list[bytes], kw: dict) -> None:
    if mode == "closed":
        kw = {**kw, "signal": queue.put}
    runner = _closed_loop if mode == "closed" else _open_loop
    before = resource.getrusage(resource.RUSAGE_SELF)
    result = asyncio.run(runner(url, bodies, **kw))
    after = resource.getrusage(resource.RUSAGE_SELF)
    result.cpu_seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    queue.put(result)


async def _post(client: httpx.AsyncClient, url: str, body: bytes, i: int) -> tuple[int, float]:
    """One frame, raw bytes in the body; returns (status, ms)."""
    t0 = time.perf_counter()
    try:
        # A fresh frame id per request: a repeated id would be answered from the service's memory.
        r = await client.post(
            url,
            content=body,
            headers={"Content-Type": "image/png"},
            params={"line_id": "bench", "camera_id": f"cam-{i % 4}", "frame_id": f"{_RUN}-{i}"},
        )
        status = r.status_code
    except httpx.HTTPError:
        status = 0
    return status, (time.perf_counter() - t0) * 1000


async def _post_batch(client: httpx.AsyncClient, url: str, bodies: list[bytes]) -> tuple[int, float, list[int]]:
    """Several frames as one multipart post to ``/v1/frames/batch``; returns (status, ms, each frame's status).

    The parts carry no X-Frame-Id, so the service names every frame afresh (never from the file name)."""
    t0 = time.perf_counter()
    files = [("files", (f"{k}.png", body, "image/png")) for k, body in enumerate(bodies)]
    try:
        r = await client.post(url, files=files, params={"line_id": "bench", "camera_id": f"cam-{len(bodies) % 4}"})
        status = r.status_code
        frames = [item["status"] for item in r.json()["results"]] if status == 200 else [status] * len(bodies)
    except httpx.HTTPError:
        status, frames = 0, [0] * len(bodies)
    return status, (time.perf_counter() - t0) * 1000, frames


async def _closed_loop(
    url: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    seconds: float,
    warmup_s: float = 3.0,
    frames_per_post: int = 1,
    signal: Callable[[str], None] | None = None,
) -> LoadResult:
    """Counts the answers that arrive inside the measured window; ``ok`` counts frames judged (200)."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    counter = 0
    ok = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        start = time.perf_counter()
        measure_from = start + warmup_s
        deadline = measure_from + seconds

        async def worker() -> None:
            nonlocal counter, ok
            while time.perf_counter() < deadline:
                counter += 1
                i = counter
                if frames_per_post == 1:
                    status, ms = await _post(client, url, bodies[i % len(bodies)], i)
                    frames = [status]
                else:
                    chunk = [bodies[(i * frames_per_post + k) % len(bodies)] for k in range(frames_per_post)]
                    status, ms, frames = await _post_batch(client, url, chunk)
                if not measure_from <= time.perf_counter() < deadline:
                    continue
                if status == 200:
                    latencies.append(ms)
                for frame_status in frames:
                    if frame_status == 200:
                        ok += 1
                    else:
                        errors[frame_status] = errors.get(frame_status, 0) + 1

        async def window() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            signal("open")
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            signal("close")

        tasks = [worker() for _ in range(concurrency)]
        await asyncio.gather(*tasks, *([window()] if signal is not None else []))
    return LoadResult(
        requests=ok + sum(errors.values()),
        ok=ok,
        errors=errors,
        seconds=seconds,
        latencies_ms=latencies,
        cpu_seconds=0.0,
    )


async def _open_loop(url: str, bodies: list[bytes], *, rate: float, seconds: float) -> LoadResult:
    latencies: list[float] = []
    errors: dict[int, int] = {}
    n = max(1, int(rate * seconds))
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        start = time.perf_counter()

        async def scheduled(i: int) -> tuple[int, float]:
            # latency counts from the scheduled start, so a late start is charged to the service
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            scheduled_at = start + i / rate
            status, _ = await _post(client, url, bodies[i % len(bodies)], i)
            return status, (time.perf_counter() - scheduled_at) * 1000

        outcomes = await asyncio.gather(*(scheduled(i) for i in range(n)))
        elapsed = time.perf_counter() - start
    for status, ms in outcomes:
        if status == 200:
            latencies.append(ms)
        else:
            errors[status] = errors.get(status, 0) + 1
    return LoadResult(
        requests=n, ok=len(latencies), errors=errors, seconds=elapsed, latencies_ms=latencies, cpu_seconds=0.0
    )
