"""What one call from the gateway to an inspector replica costs: a Ray actor call or Ray Serve's gRPC.

The gateway sends every frame to an inspector with ``handle.judge_many`` (one frame per single post, the
frames of a batch post together) and the judged records to the line monitor with ``handle.observe``.
Ray Serve makes such a call either as a Ray actor task, arguments by reference (``replica_calls: ray``,
Ray's default), or over the replicas' own gRPC channel, by value (``replica_calls: grpc``). Here two
Serve deployments stand in for the two ends: a caller that makes ``--calls`` calls with ``--concurrency``
in flight, each carrying ``--jobs`` distinct ELPV-sized encoded frames (23 KB each, in ``InspectJob``), and
a callee that answers with as many verdict-sized records at once. The two transports alternate over
``--rounds``; per call, the CPU time of the caller's and the callee's processes, and calls/s. The model
and the HTTP front are not in it: the whole service is ``serve_throughput.py``.

    python -m benchmarks.replica_calls                     # 1 frame per call, and 8
    python -m benchmarks.replica_calls --jobs 1 --rounds 5

Results go to ``benchmarks/results/replica_calls.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import psutil
import ray
from ray import serve

from benchmarks.machine import machine_info, save_result
from inspectline.serving.records import InspectJob, Judgement, ServedModel

TRANSPORTS = {"ray": True, "grpc": False}  # replica_calls -> _by_reference, as the Gateway sets it
FRAME_BYTES = 23_000  # an ELPV cell as PNG


def _cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


def _verdict() -> Judgement:
    return Judgement(
        verdict="OK",
        defect_probability=0.1,
        confidence=0.9,
        threshold=0.5,
        model_version="v0001",
        views={"identity": 0.1, "hflip": 0.1},
        engine="openvino-int8",
        embedding=tuple(0.5 for _ in range(512)),
        image_stats=(0.5,) * 6,
    )


@serve.deployment(max_ongoing_requests=256)
class Callee:
    async def judge_many(self, jobs: list[InspectJob]) -> list[Judgement]:
        return [_verdict() for _ in jobs]

    def cpu_s(self) -> float:
        return _cpu_s()


@serve.deployment(max_ongoing_requests=4)
class Caller:
    def __init__(self, callee) -> None:
        self.callee = callee

    async def run(self, transport: str, calls: int, jobs: int, concurrency: int) -> dict:
        judge = self.callee.options(method_name="judge_many", _by_reference=TRANSPORTS[transport])
        groups = [
            [InspectJob(os.urandom(FRAME_BYTES), ServedModel("v0001"), camera_id="cam-1") for _ in range(jobs)]
            for _ in range(16)
        ]
        for group in groups:  # connections up, code paths warm
            await judge.remote(group)
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                answers = await judge.remote(groups[i % len(groups)])
                assert len(answers) == jobs

        callee0, caller0, t0 = await self.callee.cpu_s.remote(), _cpu_s(), time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        seconds, caller1, callee1 = time.perf_counter() - t0, _cpu_s(), await self.callee.cpu_s.remote()
        return {
            "calls_per_s": calls / seconds,
            "caller_cpu_ms_per_call": 1000 * (caller1 - caller0) / calls,
            "callee_cpu_ms_per_call": 1000 * (callee1 - callee0) / calls,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 8], help="frames per call")
    parser.add_argument("--calls", type=int, default=1500, help="calls per transport and round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        caller = serve.run(Caller.bind(Callee.bind()), name="replica_calls", route_prefix=None)
        rows = []
        for jobs in args.jobs:
            passes: dict[str, list[dict]] = {t: [] for t in TRANSPORTS}
            for _ in range(args.rounds):
                for transport in TRANSPORTS:
                    passes[transport].append(
                        caller.run.remote(transport, args.calls, jobs, args.concurrency).result(timeout_s=900)
                    )
            row: dict = {"frames_per_call": jobs}
            for transport, results in passes.items():
                row[transport] = {key: statistics.median(r[key] for r in results) for key in results[0]} | {
                    "rounds": results
                }
                row[transport]["cpu_ms_per_call"] = (
                    row[transport]["caller_cpu_ms_per_call"] + row[transport]["callee_cpu_ms_per_call"]
                )
            row["grpc_over_ray_cpu"] = row["grpc"]["cpu_ms_per_call"] / row["ray"]["cpu_ms_per_call"]
            rows.append(row)
    finally:
        serve.shutdown()
        ray.shutdown()

    result = {"calls": args.calls, "concurrency": args.concurrency, "rounds": args.rounds, "rows": rows}
    result["machine"] = machine_info()
    out = save_result("replica_calls", result)
    print(f"\nOne gateway -> inspector call, medians of {args.rounds} alternating rounds, {result['machine']['cpu']}")
    print("| frames per call | replica_calls | CPU ms / call: caller + callee | calls/s |")
    print("|---|---|---|---|")
    for row in rows:
        for transport in TRANSPORTS:
            r = row[transport]
            print(
                f"| {row['frames_per_call']} | {transport} | {r['cpu_ms_per_call']:.2f} "
                f"({r['caller_cpu_ms_per_call']:.2f} + {r['callee_cpu_ms_per_call']:.2f}) | {r['calls_per_s']:.0f} |"
            )
        print(f"| {row['frames_per_call']} | grpc ÷ ray (CPU) | {row['grpc_over_ray_cpu']:.2f} | |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
