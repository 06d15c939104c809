"""Serving benchmark: raw Predictor vs the served application, on the same machine, in one run.

    python benchmarks/serve_throughput.py --registry models --model production   # the demo model
    python benchmarks/serve_throughput.py --arch resnet50 --image-size 224       # ResNet50 at 224 px
    python benchmarks/serve_throughput.py --registry models --judge gateway     # the Gateway replicas judge

(a) raw: the version's Predictor through the engine the service's Inspector would choose (same
    ``engine`` / ``precision`` / ``torch_autocast`` preference), in batches of ``--max-batch-size``
    with flip TTA, in every layout of the machine's cores (``1xN``: one process of N threads; ``Nx1``:
    N single-thread processes at once, see ``raw_layouts.py``); raw is the best layout, and its
    workers' CPU time per frame is the model's own cost;
(b) served: HTTP posts of the same PNG frames (ELPV cells) to ``serve_config.yaml`` deployed with
    ``serve run``, closed loop at saturation, from a load generator in its own process, one frame
    per ``POST /v1/frames`` and then ``--batch-frames`` per ``POST /v1/frames/batch``; over each
    measured window the CPU seconds of every service process (all of Ray's, which this process
    started) per frame served, and that less the model's cost: the service's plumbing. The model's
    cost is taken twice: from (a), and as the service itself counted it over the same window
    (``inspect_inference_cpu_seconds_total`` over ``inspect_frames_total``, read from ``/metrics``). The
    second does not depend on the machine running at the same speed minutes apart (a VM's can drift
    by 15 %, as much as a large model's whole plumbing); it leaves out preprocessing, which (a)
    counts as model, so its plumbing is the larger by that much;
(c) latency p50/p95/p99 at open-loop rates of 50 % and 80 % of (b), and of a single frame on an
    idle service;
(d) the service at rest: its CPU while no frame arrives (Ray's and the app's background loops), and
    how much of (b)'s plumbing per frame that floor accounts for at the single-post throughput.

The machine may be shared: the 1-minute load average before and after each measured phase is
recorded, and the ratios, measured minutes apart in one run, are what to compare across runs.

``--arch`` builds a randomly initialised model of that architecture: throughput does not depend on
the weights, and no ImageNet or trained ResNet50 is needed to measure it. Writes
``benchmarks/results/serve_<name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing import resource_tracker
from pathlib import Path

import httpx
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import LoadResult, run_in_process
from machine import machine_info, save_result
from raw_layouts import LayoutResult, layouts_for, measure_layout

from inspectline.config import DataConfig
from inspectline.data import Preprocessing, load_samples
from inspectline.engines import EnginePreference
from inspectline.imaging import decode_image
from inspectline.model import ModelCard, build_model, save_checkpoint
from inspectline.registry import ModelRegistry
from inspectline.serving.deploy import deploy, load_serve_config, start_local_ray, stop_local_ray, wait_until_ready
from inspectline.serving.ingress import CHOICES, choose_ingress

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "served_over_raw": ">= 0.8",
    "served_batch_over_raw": ">= 0.9",
    "plumbing_cpu_ms_per_frame": "<= 3",
    "p99_at_50pct_over_idle": "<= 2.5",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", type=Path, default=Path("models"))
    parser.add_argument("--model", default="production", help="a registry reference (ignored with --arch)")
    parser.add_argument(
        "--arch",
        choices=["resnet18", "resnet34", "resnet50"],
        help="benchmark a random-init model of this architecture",
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--name", help="result name (default: the arch and size, or 'demo')")
    parser.add_argument(
        "--engine",
        choices=["auto", "torch", "openvino", "onnxruntime"],
        default="auto",
        help="the Inspector's engine preference, for raw and served alike",
    )
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16", "int8"], default="auto")
    parser.add_argument(
        "--judge",
        choices=["inspector", "gateway"],
        default="inspector",
        help="which deployment judges frames: Inspector replicas behind the Gateway (serve_config.yaml), or the "
        "Gateway replicas themselves (deploy/serve_config.gateway-judges.yaml); --replicas and --cpus-per-replica "
        "size whichever judges",
    )
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-s", type=float, default=0.005)
    parser.add_argument(
        "--concurrency", type=int, default=0, help="closed-loop clients (default: 2 x batch x replicas)"
    )
    parser.add_argument("--batch-frames", type=int, default=8, help="frames per POST /v1/frames/batch")
    parser.add_argument(
        "--batch-concurrency", type=int, default=0, help="closed-loop batch clients (default: as many frames in flight)"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument(
        "--throughput-optimized",
        action="store_true",
        help="start Ray with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 (Ray Serve's own switch for its fast paths)",
    )
    parser.add_argument(
        "--ingress",
        choices=CHOICES,
        default="auto",
        help="the service's HTTP front, as `inspect serve --ingress` chooses it (default auto: HAProxy where "
        "installed, else Ray Serve's proxy); recorded in the result",
    )
    parser.add_argument(
        "--gateway",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one of the Gateway's user_config settings, e.g. inspect_group_max=1 (one Inspector call per "
        "frame); repeatable, recorded in the result",
    )
    parser.add_argument(
        "--ray-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for every Ray process of the service, e.g. "
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD=0 (repeatable; recorded in the result)",
    )
    args = parser.parse_args()
    ray_env = dict(_key_value(item) for item in args.ray_env)
    if args.throughput_optimized:
        ray_env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    cores = os.cpu_count() or 1
    concurrency = args.concurrency or 2 * args.max_batch_size * args.replicas
    batch_concurrency = args.batch_concurrency or max(1, concurrency // args.batch_frames)
    load = LoadAverages()
    ingress = choose_ingress(args.ingress, {**os.environ, **ray_env})
    print(ingress.describe())

    with tempfile.TemporaryDirectory() as tmp:
        registry, version, name = _model(args, Path(tmp))
        card = registry.get(version).card
        bodies = [s.path.read_bytes() for s in load_samples(DataConfig())[:64]]
        frames = [decode_image(b) for b in bodies]
        config = _serve_config(args, registry.root, version, Path(tmp))
        options = _inspector_options(config)
        preference = EnginePreference(
            engine=options["engine"], precision=options["precision"], torch_autocast=options["torch_autocast"]
        )

        # Raw runs before the service starts and again after it stops: on a shared machine a neighbour's
        # burst can starve one pass, and each layout keeps its better pass.
        measure = {
            "registry_root": registry.root,
            "version": version,
            "preference": preference,
            "frames": frames,
            "batch": args.max_batch_size,
            "seconds": args.seconds,
        }
        passes = {"before": _raw_pass("before", cores, load, measure)}
        os.environ.update(ray_env)  # read by every Ray process this one starts (after the raw pass: not by it)
        address = start_local_ray(num_cpus=cores, ingress=ingress)
        try:
            deploy(config, address)
            url = f"http://127.0.0.1:{args.port}"
            ready = wait_until_ready(url, timeout_s=600)
            served_engine = httpx.get(f"{url}/v1/model", timeout=30).json()["engine"]
            raw_engine = next(iter(passes["before"].values())).engine
            if (served_engine["engine"], served_engine["precision"]) != (raw_engine["engine"], raw_engine["precision"]):
                msg = f"the service runs {served_engine}, raw ran {raw_engine}: the ratio would compare two engines"
                raise RuntimeError(msg)
            frames_url = f"{url}/v1/frames"
            run_in_process("closed", frames_url, bodies, concurrency=concurrency, seconds=5)  # warm every replica
            with load.phase("served_single"):
                single = _saturate(
                    frames_url, bodies, f"{url}/metrics", args.replicas, concurrency=concurrency, seconds=args.seconds
                )
            print(f"served: {single.result.throughput:.1f} frames/s closed loop with {concurrency} clients")
            with load.phase("served_batch"):
                batch = _saturate(
                    f"{url}/v1/frames/batch",
                    bodies,
                    f"{url}/metrics",
                    args.replicas,
                    concurrency=batch_concurrency,
                    seconds=args.seconds,
                    frames_per_post=args.batch_frames,
                )
            print(
                f"served batch: {batch.result.throughput:.1f} frames/s closed loop with {batch_concurrency} clients "
                f"of {args.batch_frames} frames"
            )
            with load.phase("idle"):
                idle = _idle_latency(frames_url, bodies, args.seconds)
            with load.phase("at_rest"):
                rest = _at_rest(args.seconds)
            print(f"at rest: the service uses {rest['cores_used']:.3f} cores with no frames arriving")
            open_loop = {}
            for share in (0.5, 0.8):
                rate = share * single.result.throughput
                key = f"{int(share * 100)}%"
                with load.phase(f"open_{key}"):
                    res = run_in_process("open", frames_url, bodies, rate=rate, seconds=args.seconds)
                open_loop[key] = {
                    "rate_per_s": rate,
                    "ok": res.ok,
                    "errors": res.errors,
                    "p50_ms": res.percentile(50),
                    "p95_ms": res.percentile(95),
                    "p99_ms": res.percentile(99),
                    "loadgen_cpu_share": res.cpu_seconds / (res.seconds * cores),
                }
                print(
                    f"open loop {share:.0%}: {rate:.1f}/s p50 {res.percentile(50):.1f} ms p99 "
                    f"{res.percentile(99):.1f} ms"
                )
        finally:
            _stop_ray_keeping_multiprocessing()
        passes["after"] = _raw_pass("after", cores, load, measure)

    layouts = {k: max((p[k] for p in passes.values()), key=lambda r: r.frames_per_s) for k in passes["before"]}
    raw = max(layouts.values(), key=lambda r: r.frames_per_s)
    model_cost = _model_cost(layouts, raw, options["threads"] or max(1, int(args.cpus_per_replica)))

    model_ms = model_cost.model_cpu_ms_per_frame
    rest_ms_per_frame = 1000 * rest["cores_used"] / single.result.throughput  # the at-rest floor spread over frames
    result = {
        "name": name,
        "model": ready.get("model_version"),
        "arch": card.arch,
        "image_size": card.preprocessing.image_size,
        "weights": "random init (throughput only)" if args.arch else "trained",
        "tta_views": list(card.tta_views),
        "engine": raw.engine["engine"],
        "precision": raw.engine["precision"],
        "engine_reason": raw.engine["reason"],
        "engine_preference": preference.model_dump(),
        "served_engine": served_engine,
        "ingress": {"name": ingress.name, "reason": ingress.reason},
        "ray_serve_throughput_optimized": args.throughput_optimized,
        "ray_env": ray_env,
        "gateway_settings": _gateway_settings(args),
        "judge": args.judge,
        "replicas": args.replicas,
        "cpus_per_replica": args.cpus_per_replica,
        "max_batch_size": args.max_batch_size,
        "batch_wait_s": args.batch_wait_s,
        "concurrency": concurrency,
        "seconds": args.seconds,
        "raw_layouts": {k: v.as_dict() for k, v in layouts.items()},
        "raw_passes": {name: {k: v.as_dict() for k, v in p.items()} for name, p in passes.items()},
        "raw_layout": (
            f"{raw.layout}: the best of {', '.join(layouts)} on {cores} cores (spawned processes, each layout "
            f"the better of a pass before the service started and one after it stopped)"
        ),
        "raw_frames_per_s": raw.frames_per_s,
        "model_cpu_ms_per_frame": model_ms,
        "model_cpu_layout": model_cost.layout,
        "served_frames_per_s": single.result.throughput,
        "served_over_raw": single.result.throughput / raw.frames_per_s,
        "served_errors": single.result.errors,
        "served_p50_ms": single.result.percentile(50),
        "served_p99_ms": single.result.percentile(99),
        "service_cpu_ms_per_frame": single.cpu_ms_per_frame,
        "service_cpu_ms_per_frame_by_process": single.by_process_ms_per_frame,
        "plumbing_cpu_ms_per_frame": single.cpu_ms_per_frame - model_ms,
        # the model's cost as the service counted it in the same window, and the plumbing against that
        "served_model_cpu_ms_per_frame": single.model_ms_per_frame,
        "plumbing_cpu_ms_per_frame_in_service": single.plumbing_ms_per_frame,
        "served_model_cpu_ms_per_frame_bound": single.model_ms_bound,  # +- from the window's edges
        "model_share_of_service_cpu": single.model_ms_per_frame / single.cpu_ms_per_frame,
        # what served / raw would be if the service and raw each had every core to themselves: the model's CPU
        # per frame over the service's (robust to neighbours that take cores from one phase and not another)
        "served_over_raw_by_cpu": model_ms / single.cpu_ms_per_frame,
        "service_cores_used": single.cores_used,
        "service_niceness": single.niceness,
        "loadgen_cpu_share_at_saturation": single.result.cpu_seconds / (single.result.seconds * cores),
        "batch_frames_per_post": args.batch_frames,
        "batch_concurrency": batch_concurrency,
        "served_batch_frames_per_s": batch.result.throughput,
        "served_batch_over_raw": batch.result.throughput / raw.frames_per_s,
        "served_batch_errors": batch.result.errors,
        "served_batch_request_p50_ms": batch.result.percentile(50),
        "served_batch_request_p99_ms": batch.result.percentile(99),
        "batch_service_cpu_ms_per_frame": batch.cpu_ms_per_frame,
        "batch_service_cpu_ms_per_frame_by_process": batch.by_process_ms_per_frame,
        "batch_plumbing_cpu_ms_per_frame": batch.cpu_ms_per_frame - model_ms,
        "batch_served_model_cpu_ms_per_frame": batch.model_ms_per_frame,
        "batch_plumbing_cpu_ms_per_frame_in_service": batch.plumbing_ms_per_frame,
        "batch_served_model_cpu_ms_per_frame_bound": batch.model_ms_bound,
        "served_batch_over_raw_by_cpu": model_ms / batch.cpu_ms_per_frame,
        "batch_service_cores_used": batch.cores_used,
        "batch_loadgen_cpu_share": batch.result.cpu_seconds / (batch.result.seconds * cores),
        "idle_single_frame_ms": idle,
        # the service's CPU with no frame arriving (Ray's and the app's background loops), and the share of
        # the single-post plumbing that is this floor spread over the frames rather than work per frame
        "at_rest_cores_used": rest["cores_used"],
        "at_rest_cores_by_process": rest["by_process"],
        "plumbing_at_rest_share": rest_ms_per_frame / (single.cpu_ms_per_frame - model_ms),
        "plumbing_at_rest_share_in_service": rest_ms_per_frame / single.plumbing_ms_per_frame,
        "open_loop": open_loop,
        "p99_at_50pct_over_idle": open_loop["50%"]["p99_ms"] / idle["median_ms"],
        "load_average_1m": load.phases,
        "targets": TARGETS,
        "machine": machine_info() | {"cpu_flags": _cpu_flags()},
    }
    out = save_result(f"serve_{name}", result)
    _table(result)
    print(f"wrote {out}")


class LoadAverages:
    """The 1-minute load average before and after each measured phase: the machine may be shared."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        before = os.getloadavg()[0]
        yield
        self.phases[name] = {"before": before, "after": os.getloadavg()[0]}


class ServiceCpu:
    """``on_window`` for a closed loop: the CPU seconds of the service's processes inside its measured window,
    and the model's CPU seconds and frames the service counted over it (its ``/metrics``, when given).

    The service is every process below this one (``start_local_ray`` runs Ray from here: GCS, raylet,
    Serve controller, proxy, replicas), less those Python's multiprocessing started for the benchmark
    (the load generator, which reports its own CPU, and the resource tracker). A process that starts
    inside the window counts whole; one that ends inside it is missed (none should, at steady load).

    The service counts a forward's CPU when the forward ends. A forward under way as the window opens
    counts whole although part of its CPU was spent before, and one under way as it closes counts not
    at all: each of the ``judges`` replicas can shift the count by up to one forward's CPU at each edge.
    ``model_ms_bound`` is that shift per frame (one mean forward per judge): negligible for a fast model,
    tens of milliseconds a frame for a slow one in large batches over a short window."""

    def __init__(self, metrics_url: str | None = None, judges: int = 1) -> None:
        self.seconds = float("nan")
        self.by_process: dict[str, float] = {}  # CPU seconds per kind of process (several replicas add up)
        self.niceness: dict[str, int] = {}  # Ray starts its workers at nice 15: neighbours at 0 come first
        self.model_ms_per_frame = float("nan")  # as the service counted it
        self.model_ms_bound = float("nan")  # how far the window's edges can move that count, per frame
        self._judges = judges
        self._open: dict[tuple[int, float], tuple[str, float]] = {}
        self._metrics_url = metrics_url
        self._counted: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __call__(self, event: str) -> None:
        if event == "open":  # the scrape before the window opens and after it closes: its CPU stays outside
            if self._metrics_url:
                self._counted = _model_counters(self._metrics_url)
            self._open = _service_cpu()
            return
        cpu = _service_cpu()
        if self._metrics_url:
            model_seconds, frames, forwards = (
                b - a for a, b in zip(self._counted, _model_counters(self._metrics_url), strict=True)
            )
            if frames and forwards:
                self.model_ms_per_frame = 1000 * model_seconds / frames
                self.model_ms_bound = 1000 * self._judges * (model_seconds / forwards) / frames
        self.by_process = {}
        for key, (label, seconds, nice) in cpu.items():
            spent = seconds - self._open.get(key, (label, 0.0, nice))[1]
            self.by_process[label] = self.by_process.get(label, 0.0) + spent
            self.niceness[label] = nice
        self.seconds = sum(self.by_process.values())


_COUNTERS = (
    "inspect_inference_cpu_seconds_total",
    "inspect_frames_total",
    "inspect_inference_duration_seconds_count",  # the forwards
)


def _model_counters(metrics_url: str) -> tuple[float, ...]:
    """The model's CPU seconds, the frames judged and the forwards, as the service's ``/metrics`` counts them:
    the line monitor updates all three from the same judgements, so their ratios over a window do not lag."""
    totals = dict.fromkeys(_COUNTERS, 0.0)
    for family in text_string_to_metric_families(httpx.get(metrics_url, timeout=30).text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return tuple(totals[name] for name in _COUNTERS)


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        msg = f"--ray-env and --gateway take KEY=VALUE, not {item!r}"
        raise SystemExit(msg)
    return key, value


def _service_cpu() -> dict[tuple[int, float], tuple[str, float, int]]:
    """Each service process's label, user + system CPU seconds and niceness, keyed by (pid, start time): a
    reused pid is a new process."""
    cpu = {}
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            args = process.cmdline()
            if "multiprocessing" in " ".join(args):
                continue
            times = process.cpu_times()
            key = (process.pid, process.create_time())
            cpu[key] = (_label(args, process.name()), times.user + times.system, process.nice())
    return cpu


def _label(args: list[str], name: str) -> str:
    """``ray::ServeReplica:inspectline:Inspector`` for a Ray worker (its title, less the method it runs), else
    the script or executable."""
    first = args[0] if args else name
    if first.startswith("ray::"):
        return first.split(".")[0]
    script = next((Path(a).name for a in args[1:] if a.endswith(".py")), None)
    return script or Path(first).name


class Saturated:
    """A closed loop's result with the service CPU spent in its measured window, per frame served."""

    def __init__(self, result: LoadResult, cpu: ServiceCpu):
        self.result = result
        self.niceness = cpu.niceness
        self.cores_used = cpu.seconds / result.seconds
        frames = result.ok or float("nan")
        self.cpu_ms_per_frame = 1000 * cpu.seconds / frames
        self.model_ms_per_frame = cpu.model_ms_per_frame
        self.model_ms_bound = cpu.model_ms_bound
        self.plumbing_ms_per_frame = self.cpu_ms_per_frame - self.model_ms_per_frame  # against the service's count
        self.by_process_ms_per_frame = {
            label: round(1000 * seconds / frames, 2)
            for label, seconds in sorted(cpu.by_process.items(), key=lambda kv: -kv[1])
        }


def _saturate(url: str, bodies: list[bytes], metrics_url: str, judges: int, **kw) -> Saturated:
    cpu = ServiceCpu(metrics_url, judges)
    return Saturated(run_in_process("closed", url, bodies, on_window=cpu, **kw), cpu)


def _at_rest(seconds: float) -> dict:
    """The service's CPU while no frame arrives: cores in all, and per kind of process."""
    cpu = ServiceCpu()
    cpu("open")
    time.sleep(seconds)
    cpu("close")
    by_process = sorted(cpu.by_process.items(), key=lambda kv: -kv[1])
    return {"cores_used": cpu.seconds / seconds, "by_process": {k: round(v / seconds, 4) for k, v in by_process}}


def _stop_ray_keeping_multiprocessing() -> None:
    """``stop_local_ray`` ends every process below this one, multiprocessing's resource tracker too (it ignores
    SIGTERM, so it gets SIGKILL). Wait until it is gone and start a new one, or the raw pass after the service
    can race its death and fail creating a queue."""
    trackers = [p for p in psutil.Process().children() if "resource_tracker" in " ".join(p.cmdline())]
    stop_local_ray()
    psutil.wait_procs(trackers, timeout=30)
    resource_tracker.ensure_running()


def _raw_pass(name: str, cores: int, load: LoadAverages, measure: dict) -> dict[str, LayoutResult]:
    layouts = {}
    for processes, threads in layouts_for(cores):
        with load.phase(f"raw_{processes}x{threads}_{name}"):
            r = measure_layout(processes=processes, threads=threads, **measure)
        layouts[r.layout] = r
        print(
            f"raw {r.layout} ({name}): {r.frames_per_s:.1f} frames/s on {r.cores_used:.2f} cores, "
            f"model {r.model_cpu_ms_per_frame:.1f} ms CPU/frame ({r.engine['engine']} {r.engine['precision']})"
        )
    return layouts


def _model_cost(layouts: dict[str, LayoutResult], best: LayoutResult, replica_threads: int) -> LayoutResult:
    """The layout whose processes run as many threads as a replica: its CPU per frame is the model's cost in
    the service (more threads per process spend more CPU per frame); the best layout if none does."""
    return next((r for r in layouts.values() if r.threads == replica_threads), best)


def _cpu_flags() -> list[str]:
    """The vector and matrix extensions an engine may use (AVX2, AVX-512, AMX, VNNI, BF16)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    line = next((x for x in cpuinfo.read_text().splitlines() if x.startswith("flags")), "")
    flags = line.split(":", 1)[-1].split()
    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")) or "vnni" in f or "bf16" in f)


def _model(args: argparse.Namespace, tmp: Path) -> tuple[ModelRegistry, str, str]:
    """The registry and the version to serve, and the result's name."""
    if args.arch is None:
        registry = ModelRegistry(args.registry)
        return registry, registry.resolve(args.model).parent.name, args.name or "demo"
    registry = random_init_registry(tmp, args.arch, args.image_size)
    return registry, registry.production(), args.name or f"{args.arch}_{args.image_size}"


def random_init_registry(folder: Path, arch: str, image_size: int) -> ModelRegistry:
    """``folder/models`` holding one promoted, randomly initialised version: for speed, never for verdicts."""
    model = build_model(arch, in_channels=1)
    card = ModelCard(
        arch=arch,
        class_names=("ok", "defective"),
        head_dims=(512, 256),
        head_dropout=(0.5, 0.3, 0.2),
        preprocessing=Preprocessing(image_size=image_size, color_mode="gray", mean=(0.5,), std=(0.2,)),
    )
    save_checkpoint(folder / "run" / "model.pt", model, card)
    registry = ModelRegistry(folder / "models")
    version = registry.register(folder / "run" / "model.pt")
    registry.promote(version.name)
    return registry


def _idle_latency(url: str, bodies: list[bytes], seconds: float) -> dict:
    """A trickle of 2 frames/s from the same load generator: the latency of a frame on an idle service."""
    res = run_in_process("open", url, bodies, rate=2.0, seconds=max(seconds, 15.0))
    return {"median_ms": res.percentile(50), "p99_ms": res.percentile(99), "frames": res.ok}


def _serve_config(args: argparse.Namespace, registry: Path, version: str, workdir: Path) -> dict:
    """serve_config.yaml with this run's model and engine preference, the benchmark's replica settings, and
    an inspect.yaml of its own: this run's registry, a throwaway frame store and spool."""
    locations = {
        "paths": {"registry": str(registry.resolve())},
        "store": {"database_url": f"sqlite:///{workdir / 'frames.db'}", "storage_url": str(workdir / "images")},
        "service": {"spool_dir": str(workdir / "spool")},
    }
    (workdir / "inspect.yaml").write_text(yaml.safe_dump(locations))
    gateway_judges = args.judge == "gateway"
    config = load_serve_config(
        REPO / ("deploy/serve_config.gateway-judges.yaml" if gateway_judges else "serve_config.yaml")
    )
    config["http_options"] = {"host": "127.0.0.1", "port": args.port}
    app = config["applications"][0]
    app["args"] = {"config": str(workdir / "inspect.yaml"), "judge": args.judge}
    for deployment in app["deployments"]:
        if deployment["name"] == ("Gateway" if gateway_judges else "Inspector"):
            deployment["num_replicas"] = args.replicas
            deployment["ray_actor_options"] = {"num_cpus": args.cpus_per_replica}
        if deployment["name"] == "Gateway":
            deployment["user_config"]["model"] = version
            deployment["user_config"]["max_inflight"] = 4096  # measure the service, not its refusal path
            deployment["user_config"].update(_gateway_settings(args))
    _inspector_options(config).update(
        {
            "max_batch_size": args.max_batch_size,
            "batch_wait_timeout_s": args.batch_wait_s,
            "engine": args.engine,
            "precision": args.precision,
        }
    )
    return config


def _inspector_options(config: dict) -> dict:
    """The judging replicas' settings: the Inspector's user_config, or the Gateway's ``inspector`` where it judges."""
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    if "Inspector" in deployments:
        return deployments["Inspector"]["user_config"]
    return deployments["Gateway"]["user_config"]["inspector"]


def _gateway_settings(args: argparse.Namespace) -> dict:
    """``--gateway key=value`` overrides of the Gateway's user_config, as YAML scalars (numbers stay numbers)."""
    return {key: yaml.safe_load(value) for key, value in map(_key_value, args.gateway)}


def _table(r: dict) -> None:
    print(f"\nServing benchmark: {r['name']} on {r['machine']['cpu']} ({r['machine']['cpu_cores']} cores)")
    print(f"engine: {r['engine']} {r['precision']} ({r['engine_reason']})")
    if r.get("ingress"):
        print(f"ingress: {r['ingress']['name']} ({r['ingress']['reason']})")
    if r.get("judge"):
        print(f"frames judged by: {'the Gateway replicas' if r['judge'] == 'gateway' else 'Inspector replicas'}")
    if r.get("gateway_settings") or r.get("ray_env"):
        gateway, ray_env = r.get("gateway_settings") or "none", r.get("ray_env") or "default"
        print(f"gateway overrides: {gateway}; Ray environment: {ray_env}")
    print(f"| {'measure':<60} | {'value':>12} | {'target':<7} |")
    print(f"|{'-' * 62}|{'-' * 14}|{'-' * 9}|")
    t = r["targets"]
    rows = [
        (
            f"raw {k} ({v['processes']} proc. x {v['threads']} thr.), frames/s (cores got)",
            f"{v['frames_per_s']:.1f} ({v['cores_used']:.2f})",
            "",
        )
        for k, v in r["raw_layouts"].items()
    ]
    rows += [
        (f"raw (best layout, {r['raw_layout'].split(':')[0]}), frames/s", f"{r['raw_frames_per_s']:.1f}", ""),
        (f"model CPU per frame ({r['model_cpu_layout']}), ms", f"{r['model_cpu_ms_per_frame']:.1f}", ""),
        (
            f"served single, frames/s ({r['concurrency']} clients) (cores got)",
            f"{r['served_frames_per_s']:.1f} ({r['service_cores_used']:.2f})",
            "",
        ),
        ("served single / raw", f"{r['served_over_raw']:.3f}", t["served_over_raw"]),
        ("served single / raw, by CPU per frame", f"{r['served_over_raw_by_cpu']:.3f}", t["served_over_raw"]),
        ("service CPU per frame, single posts, ms", f"{r['service_cpu_ms_per_frame']:.1f}", ""),
        (
            "plumbing CPU per frame, single posts, ms",
            f"{r['plumbing_cpu_ms_per_frame']:.1f}",
            t["plumbing_cpu_ms_per_frame"],
        ),
        (
            "model CPU per frame as the service counted it, single, ms",
            f"{r['served_model_cpu_ms_per_frame']:.1f} ± {r['served_model_cpu_ms_per_frame_bound']:.1f}",
            "",
        ),
        (
            "plumbing CPU per frame against that, single posts, ms",
            f"{r['plumbing_cpu_ms_per_frame_in_service']:.1f}",
            t["plumbing_cpu_ms_per_frame"],
        ),
        (
            f"served batch, frames/s ({r['batch_concurrency']} x {r['batch_frames_per_post']} frames) (cores got)",
            f"{r['served_batch_frames_per_s']:.1f} ({r['batch_service_cores_used']:.2f})",
            "",
        ),
        ("served batch / raw", f"{r['served_batch_over_raw']:.3f}", t["served_batch_over_raw"]),
        (
            "served batch / raw, by CPU per frame",
            f"{r['served_batch_over_raw_by_cpu']:.3f}",
            t["served_batch_over_raw"],
        ),
        ("service CPU per frame, batch posts, ms", f"{r['batch_service_cpu_ms_per_frame']:.1f}", ""),
        (
            "plumbing CPU per frame, batch posts, ms",
            f"{r['batch_plumbing_cpu_ms_per_frame']:.1f}",
            t["plumbing_cpu_ms_per_frame"],
        ),
        (
            "model CPU per frame as the service counted it, batch, ms",
            f"{r['batch_served_model_cpu_ms_per_frame']:.1f} ± {r['batch_served_model_cpu_ms_per_frame_bound']:.1f}",
            "",
        ),
        (
            "plumbing CPU per frame against that, batch posts, ms",
            f"{r['batch_plumbing_cpu_ms_per_frame_in_service']:.1f}",
            t["plumbing_cpu_ms_per_frame"],
        ),
        ("idle single frame, median ms", f"{r['idle_single_frame_ms']['median_ms']:.1f}", ""),
        ("service at rest (no frames), cores", f"{r['at_rest_cores_used']:.3f}", ""),
        ("share of single-post plumbing that is the rest floor", f"{r['plumbing_at_rest_share']:.2f}", ""),
        (
            "the same, of the plumbing against the service's model count",
            f"{r['plumbing_at_rest_share_in_service']:.2f}",
            "",
        ),
        ("model's share of the service's CPU, single posts", f"{r['model_share_of_service_cpu']:.2f}", ""),
    ]
    for key, v in r["open_loop"].items():
        rows.append(
            (
                f"{key} load ({v['rate_per_s']:.1f}/s): p50 / p95 / p99 ms",
                f"{v['p50_ms']:.0f}/{v['p95_ms']:.0f}/{v['p99_ms']:.0f}",
                "",
            )
        )
    rows += [
        ("p99 at 50 % load / idle single frame", f"{r['p99_at_50pct_over_idle']:.2f}", t["p99_at_50pct_over_idle"]),
        ("load generator share of the machine at saturation", f"{r['loadgen_cpu_share_at_saturation']:.1%}", ""),
    ]
    rows += [
        (f"load average (1 min), {phase}: before / after", f"{v['before']:.2f}/{v['after']:.2f}", "")
        for phase, v in r["load_average_1m"].items()
    ]
    for label, value, target in rows:
        print(f"| {label:<60} | {value:>12} | {target:<7} |")
    top = list(r["service_cpu_ms_per_frame_by_process"].items())[:6]
    print("service CPU per frame by process, single posts (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in top))


if __name__ == "__main__":
    main()
