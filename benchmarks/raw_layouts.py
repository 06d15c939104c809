"""Raw throughput of a model version's Predictor, in every layout of a core budget: the serving benchmark's baseline.

For ``cores`` cores there are two ways to run the same engine without a service:

* ``1x{cores}``: one process whose engine runs ``cores`` threads;
* ``{cores}x1``: ``cores`` processes of one thread each, as the service's single-CPU replicas are.

Each layout runs in fresh spawned processes (so no layout inherits another's thread pools), every
process builds its Predictor with :meth:`Predictor.from_version` and the service's engine
preference, warms up, waits at a barrier, then predicts batches of ``batch`` frames with the
card's TTA views for ``seconds``. A layout's throughput is the sum of its processes'; its model
cost per frame is their CPU time (``time.process_time``, every thread) over their frames. The
fair raw figure for a service on the same cores is the best layout.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inspectline.engines import EnginePreference
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry


@dataclass(frozen=True)
class LayoutResult:
    layout: str  # "1x2": one process of two threads; "2x1": two processes of one thread
    processes: int
    threads: int
    frames: int
    frames_per_s: float  # summed over the processes
    model_cpu_ms_per_frame: float  # the processes' CPU time over their frames
    cores_used: float  # the processes' CPU time over the wall time: what neighbours left them
    engine: dict  # the engine choice (engine, precision, reason) every process made

    def as_dict(self) -> dict:
        return asdict(self)


def layouts_for(cores: int) -> list[tuple[int, int]]:
    """(processes, threads) pairs that use exactly ``cores`` cores: 1 x cores and cores x 1."""
    return [(1, cores)] if cores == 1 else [(1, cores), (cores, 1)]


def run_together(target: Callable[..., None], args: tuple, processes: int) -> list[dict]:
    """Start ``processes`` spawned processes of ``target(queue, barrier, *args)`` and collect one report from each.

    The barrier lets their timed loops start together; each puts its report on the queue.
    """
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    workers = [ctx.Process(target=target, args=(queue, barrier, *args)) for _ in range(processes)]
    for w in workers:
        w.start()
    reports = [queue.get() for _ in workers]
    for w in workers:
        w.join()
    return reports


def measure_layout(
    registry_root: Path,
    version: str,
    preference: EnginePreference,
    frames: list[np.ndarray],
    *,
    processes: int,
    threads: int,
    batch: int,
    seconds: float,
) -> LayoutResult:
    """``processes`` processes of ``threads`` threads each, predicting at once for ``seconds``."""
    args = (str(registry_root), version, preference.model_dump(), threads, frames, batch, seconds)
    reports = run_together(_worker, args, processes)
    engines = {r["engine"]["engine"] + " " + r["engine"]["precision"] for r in reports}
    if len(engines) != 1:
        msg = f"the processes of layout {processes}x{threads} chose different engines: {sorted(engines)}"
        raise RuntimeError(msg)
    frames_done = sum(r["frames"] for r in reports)
    return LayoutResult(
        layout=f"{processes}x{threads}",
        processes=processes,
        threads=threads,
        frames=frames_done,
        frames_per_s=sum(r["frames"] / r["seconds"] for r in reports),
        model_cpu_ms_per_frame=1000 * sum(r["cpu_seconds"] for r in reports) / frames_done,
        cores_used=sum(r["cpu_seconds"] for r in reports) / max(r["seconds"] for r in reports),
        engine=reports[0]["engine"],
    )


def _worker(
    queue: mp.Queue,
    barrier: mp.Barrier,
    registry_root: str,
    version: str,
    preference: dict,
    threads: int,
    frames: list[np.ndarray],
    batch: int,
    seconds: float,
) -> None:
    registered = ModelRegistry(Path(registry_root)).get(version)
    predictor = Predictor.from_version(registered, EnginePreference(**preference), threads=threads)
    report = time_predictor(predictor, frames, batch=batch, seconds=seconds, barrier=barrier)
    queue.put(report | {"engine": {**predictor.engine_choice.describe(), **predictor.engine.describe()}})


def time_predictor(
    predictor: Predictor, frames: list[np.ndarray], *, batch: int, seconds: float, barrier: mp.Barrier
) -> dict:
    """Warm up, wait for the other processes, then predict batches for ``seconds``: frames, seconds, CPU seconds."""
    for i in range(3):  # lazy initialisation and allocator warm-up stay out of the measurement
        predictor.predict(frames[i * batch : (i + 1) * batch])
    barrier.wait()
    cpu0, start = time.process_time(), time.perf_counter()
    done, i = 0, 0
    while time.perf_counter() - start < seconds:
        predictor.predict([frames[(i + k) % len(frames)] for k in range(batch)])
        done += batch
        i += batch
    return {"frames": done, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu0}
