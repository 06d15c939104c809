"""How long `inspect serve` takes to answer ready, the memory and idle CPU of its processes, and its recovery.

A line PC restarts the service after maintenance, a crash or a new release; until every inspector has
its model loaded the line's frames wait in the cameras' spools. Each start here is the one a plant admin
runs: ``inspect serve --config serve.yaml`` in a fresh folder, with a Ray of its own, the repository's
``serve_config.yaml`` unchanged but for the port, and an ``inspect.yaml`` naming the registry (shared
by every start, read only) and a frame store of the start's own. Per start:

* **seconds to ready**: from the command to the first ``/readyz`` 200 (the production model loaded in
  every Inspector replica), then one frame posted and judged;
* **the first frames after ready**: for ``--after-ready`` seconds, two frames at a time as fast as they
  are answered, as a line that was waiting for the service sends them: their slowest answer, and how many
  took over a second. A replica that joins after the service reported ready, cold, shows here;
* **memory** of every process the command started, once ready and idle: RSS, and USS (the pages only that
  process holds, so the sum over processes does not count the shared libraries twice), grouped by role:
  each Serve deployment's replicas, Serve's controller, HAProxy, the rest of Ray, the command itself;
* **CPU at rest**: cores each role uses over ``--rest`` seconds with no frame arriving (Ray's and the
  app's background loops), once idle;
* **recovery from a crashed replica**: one Inspector replica killed (SIGKILL) while a frame at a time
  keeps arriving; seconds until Serve's controller reports it gone, and until the replica replacing it is
  running, from the service's own Ray (``serve.status()``); and how many of those frames were not
  answered 200, and the slowest;
* **seconds to stop** on Ctrl-C, until the command has exited.

    python -m benchmarks.service_start --registry models                  # the demo model, 3 starts
    python -m benchmarks.service_start --registry models --baseline /tmp/before --rounds 4

``--baseline DIR`` also starts the service as the checkout at ``DIR`` has it (``git worktree add DIR
REV``), from a process whose ``PYTHONPATH`` starts there, which every Ray process it starts inherits;
the two alternate, so a busy machine slows both alike, and each round's ratio is reported.

Results go to ``benchmarks/results/service_start[_NAME].json``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx
import psutil
import yaml

from benchmarks.loadgen import elpv_cell, free_port
from benchmarks.machine import machine_info, save_result
from inspectline.hardware import cpu_capabilities
from inspectline.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[1]
THIS = "this checkout"


def role(process: psutil.Process, command_pid: int) -> str:
    """What a process of the service is: a deployment's replica by name, Serve's controller, HAProxy, Ray."""
    if process.pid == command_pid:
        return "inspect serve"
    try:
        words = " ".join(process.cmdline()[:2]) or process.name()
    except psutil.Error:
        return "ended"
    if "ServeReplica:" in words:  # ray::ServeReplica:APP:DEPLOYMENT
        return words.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]
    if "ServeController" in words:
        return "Serve controller"
    if "haproxy" in words:
        return "HAProxy"
    return "rest of Ray"


def memory_by_role(command_pid: int) -> dict[str, dict[str, float]]:
    """RSS and USS (MiB) per role, summed over the command's processes, and how many there are of each."""
    found: dict[str, dict[str, float]] = defaultdict(lambda: {"processes": 0, "rss_mib": 0.0, "uss_mib": 0.0})
    command = psutil.Process(command_pid)
    for process in [command, *command.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        entry = found[role(process, command_pid)]
        entry["processes"] += 1
        entry["rss_mib"] += info.rss / 2**20
        entry["uss_mib"] += info.uss / 2**20
    return dict(found)


def frame_post(url: str, image: bytes, frame_id: str) -> dict:
    """The arguments of one camera's PNG frame post, for httpx's ``post`` (sync or async)."""
    return {
        "url": f"{url}/v1/frames",
        "content": image,
        "headers": {"Content-Type": "image/png"},
        "params": {"line_id": "line-1", "camera_id": "cam-1", "frame_id": frame_id},
    }


def cpu_at_rest(command_pid: int, seconds: float) -> dict[str, float]:
    """Cores each role used over ``seconds`` (user + system time of every process the command started)."""

    def times() -> dict[tuple[int, float], tuple[str, float]]:
        command = psutil.Process(command_pid)
        found = {}
        for process in [command, *command.children(recursive=True)]:
            try:
                cpu = process.cpu_times()
                found[(process.pid, process.create_time())] = (role(process, command_pid), cpu.user + cpu.system)
            except psutil.Error:
                continue
        return found

    before = times()
    time.sleep(seconds)
    after = times()
    cores: dict[str, float] = defaultdict(float)
    for key, (name, spent) in after.items():
        cores[name] += (spent - before.get(key, (name, 0.0))[1]) / seconds  # a process started meanwhile: all of it
    return dict(cores)


def replica_recovery(command_pid: int, url: str, image: bytes, timeout_s: float) -> dict:
    """Kill one Inspector replica as a crash would, with a frame at a time arriving; see the module docstring."""
    import ray
    from ray import serve

    def inspectors() -> dict[str, int]:
        app = next(iter(serve.status().applications.values()))
        return dict(app.deployments["Inspector"].replica_states)

    answers: list[tuple[int, float]] = []
    stop = threading.Event()

    def post_frames() -> None:
        with httpx.Client(timeout=120) as client:
            n = 0
            while not stop.is_set():
                started = time.monotonic()
                try:
                    status = client.post(**frame_post(url, image, f"recovery-{n}")).status_code
                except httpx.HTTPError:
                    status = 0
                answers.append((status, time.monotonic() - started))
                n += 1

    ray.init(address="auto", namespace="serve", log_to_driver=False)  # the service's own Ray, which it started last
    try:
        running = inspectors().get("RUNNING", 0)
        victim = next(
            p for p in psutil.Process(command_pid).children(recursive=True) if role(p, command_pid) == "Inspector"
        )
        sender = threading.Thread(target=post_frames, daemon=True)
        sender.start()
        time.sleep(1)
        t0 = time.monotonic()
        victim.kill()
        noticed_s = replaced_s = None
        while time.monotonic() - t0 < timeout_s and replaced_s is None:
            now = inspectors().get("RUNNING", 0)
            if noticed_s is None and now < running:
                noticed_s = time.monotonic() - t0
            elif noticed_s is not None and now == running:
                replaced_s = time.monotonic() - t0
            time.sleep(0.05)
        time.sleep(1)
        stop.set()
        sender.join()
    finally:
        ray.shutdown()
    if replaced_s is None:
        seen = "never reported it gone" if noticed_s is None else f"reported it gone after {noticed_s:.1f} s"
        msg = f"a killed Inspector replica was not replaced within {timeout_s:.0f} s: Serve {seen}"
        raise RuntimeError(msg)
    return {
        "noticed_s": noticed_s,
        "replaced_s": replaced_s,
        "frames": len(answers),
        "frames_not_200": sum(status != 200 for status, _ in answers),
        "slowest_frame_s": max(latency for _, latency in answers),
    }


def _folder(root: Path, registry: Path) -> Path:
    """A fresh folder laid out as after `make demo`: serve.yaml (the repository's, on a free port) and
    inspect.yaml (the shared registry, a store of its own)."""
    root.mkdir(parents=True)
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": free_port()}
    (root / "serve.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "inspect.yaml").write_text(yaml.safe_dump({"paths": {"registry": str(registry.resolve())}}))
    return root


async def _frames_after_ready(url: str, image: bytes, seconds: float, tag: str) -> list[float]:
    """Latencies of frames sent two at a time for ``seconds`` (each pair as soon as the last is answered)."""
    latencies: list[float] = []

    async def one(client: httpx.AsyncClient, n: int) -> None:
        started = time.monotonic()
        response = await client.post(**frame_post(url, image, f"{tag}-{n}"))
        if response.status_code != 200:
            msg = f"a frame after ready got {response.status_code}: {response.text[:300]}"
            raise RuntimeError(msg)
        latencies.append(time.monotonic() - started)

    async with httpx.AsyncClient(timeout=120) as client:
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            await asyncio.gather(one(client, n), one(client, n + 1))
            n += 2
    return latencies


def start_once(
    root: Path, code: Path | None, image: bytes, timeout_s: float, after_ready_s: float = 20.0, rest_s: float = 30.0
) -> dict:
    """One start of ``inspect serve`` in ``root`` with the inspectline at ``code`` (this one's by default)."""
    port = yaml.safe_load((root / "serve.yaml").read_text())["http_options"]["port"]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own, as a plant runs it
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (code or REPO, REPO))
    command = [sys.executable, "-c", "import sys; from inspectline.cli import main; sys.argv[0] = 'inspect'; main()"]
    log = (root / "serve.log").open("w")  # a file, not a pipe: Ray's start-up output would fill a pipe and block it
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*command, "serve", "--config", "serve.yaml"],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # Ctrl-C's default back in the child: started from a background job, it would inherit SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        while True:
            if proc.poll() is not None:
                output = (root / "serve.log").read_text()[-3000:]
                msg = f"inspect serve exited with {proc.returncode} before it was ready:\n{output}"
                raise RuntimeError(msg)
            if time.monotonic() - t0 > timeout_s:
                msg = f"inspect serve was not ready after {timeout_s:.0f} s"
                raise RuntimeError(msg)
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        ready_s = time.monotonic() - t0
        answer = httpx.post(**frame_post(url, image, f"start-{port}"), timeout=60)
        if answer.status_code != 200:
            msg = f"the first frame got {answer.status_code}: {answer.text[:300]}"
            raise RuntimeError(msg)
        first_frame_s = time.monotonic() - t0
        after_ready = asyncio.run(_frames_after_ready(url, image, after_ready_s, tag=f"after-{port}"))
        time.sleep(5)  # idle: the start's own work (imports, warm-up) is over
        memory = memory_by_role(proc.pid)
        engine = httpx.get(f"{url}/v1/model", timeout=10).json().get("engine")
        at_rest = cpu_at_rest(proc.pid, rest_s)
        # in a process of its own: Serve's client in a driver outlives ray.shutdown(), tied to the first cluster
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            recovery = child.submit(replica_recovery, proc.pid, url, image, timeout_s).result()
    finally:
        t_stop = time.monotonic()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    return {
        "ready_s": ready_s,
        "first_frame_s": first_frame_s,
        "after_ready_frames": len(after_ready),
        "after_ready_max_s": max(after_ready),
        "after_ready_over_1s": sum(latency > 1.0 for latency in after_ready),
        "after_ready_median_s": statistics.median(after_ready),
        "stop_s": time.monotonic() - t_stop,
        "exit_code": proc.returncode,
        "engine": engine,
        "memory": memory,
        "uss_total_mib": sum(m["uss_mib"] for m in memory.values()),
        "rss_total_mib": sum(m["rss_mib"] for m in memory.values()),
        "at_rest_cores": at_rest,
        "at_rest_cores_total": sum(at_rest.values()),
        "recovery": recovery,
    }


def measure(args: argparse.Namespace) -> dict:
    registry = ModelRegistry(args.registry)
    version = registry.resolve("production").parent.name  # fails clearly when nothing is in production
    image = elpv_cell()
    labels = [THIS] + ([str(args.baseline)] if args.baseline else [])
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for label in labels if r % 2 == 0 else labels[::-1]:
                folder = _folder(Path(tmp) / f"round-{r}-{labels.index(label)}", registry.root)
                code = None if label == THIS else args.baseline
                result = start_once(folder, code, image, args.timeout, args.after_ready, args.rest)
                runs[label].append(result)
                print(
                    f"round {r + 1}/{args.rounds} {label}: ready {result['ready_s']:.1f} s, "
                    f"after ready: slowest of {result['after_ready_frames']} frames "
                    f"{result['after_ready_max_s']:.2f} s ({result['after_ready_over_1s']} over 1 s), "
                    f"USS {result['uss_total_mib']:.0f} MiB, at rest {result['at_rest_cores_total']:.3f} cores, "
                    f"a killed replica replaced in {result['recovery']['replaced_s']} s, stop {result['stop_s']:.1f} s",
                    flush=True,
                )
    summary = {}
    for label, results in runs.items():
        roles = sorted({name for x in results for name in x["memory"]})
        summary[label] = {
            "ready_s": statistics.median(x["ready_s"] for x in results),
            "first_frame_s": statistics.median(x["first_frame_s"] for x in results),
            "after_ready_max_s": statistics.median(x["after_ready_max_s"] for x in results),
            "after_ready_over_1s": statistics.median(x["after_ready_over_1s"] for x in results),
            "after_ready_median_s": statistics.median(x["after_ready_median_s"] for x in results),
            "stop_s": statistics.median(x["stop_s"] for x in results),
            "uss_total_mib": statistics.median(x["uss_total_mib"] for x in results),
            "rss_total_mib": statistics.median(x["rss_total_mib"] for x in results),
            "at_rest_cores_total": statistics.median(x["at_rest_cores_total"] for x in results),
            **{
                f"recovery_{key}": statistics.median(x["recovery"][key] for x in results)
                for key in ("noticed_s", "replaced_s", "frames_not_200", "slowest_frame_s")
            },
            "engine": results[0]["engine"],
            "roles": {
                name: {
                    key: statistics.median(x["memory"].get(name, {}).get(key, 0.0) for x in results)
                    for key in ("processes", "rss_mib", "uss_mib")
                }
                | {"at_rest_cores": statistics.median(x["at_rest_cores"].get(name, 0.0) for x in results)}
                for name in roles
            },
        }
    result = {
        "registry": str(registry.root),
        "version": version,
        "rounds": args.rounds,
        "summary": summary,
        "runs": runs,
        "machine": machine_info() | {"cpu_flags": cpu_capabilities().to_dict()["cpu_flags"]},
    }
    if args.baseline:  # paired per round: a round the machine was slow in slowed both starts
        for key in ("ready_s", "uss_total_mib", "at_rest_cores_total"):
            ratios = sorted(a[key] / b[key] for a, b in zip(runs[THIS], runs[labels[1]], strict=True))
            result[f"{key}_over_baseline"] = {"median": statistics.median(ratios), "range": [ratios[0], ratios[-1]]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", type=Path, default=Path("models"), help="a registry with a model in production")
    parser.add_argument("--rounds", type=int, default=3, help="starts per checkout, alternating with the baseline")
    parser.add_argument("--baseline", type=Path, help="also start the service as the checkout at this folder has it")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a start may take to be ready")
    parser.add_argument("--name", help="results file suffix: service_start_NAME.json")
    parser.add_argument("--after-ready", type=float, default=20.0, help="seconds of frames sent after ready")
    parser.add_argument("--rest", type=float, default=30.0, help="seconds the CPU at rest is measured over")
    args = parser.parse_args()
    result = measure(args)
    out = save_result(f"service_start_{args.name}" if args.name else "service_start", result)
    m = result["machine"]
    print(f"\n`inspect serve`, start to ready and memory once idle; {m['cpu']}, median of {args.rounds} starts")
    labels = list(result["summary"])
    print("| | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    rows = [("seconds to ready", "ready_s", 1), ("seconds to the first verdict", "first_frame_s", 1)]
    rows += [("slowest frame in the window after ready (s)", "after_ready_max_s", 2)]
    rows += [("frames over 1 s in that window", "after_ready_over_1s", 0)]
    rows += [("seconds to stop (Ctrl-C)", "stop_s", 1), ("USS, all processes (MiB)", "uss_total_mib", 0)]
    rows += [
        ("RSS, all processes (MiB)", "rss_total_mib", 0),
        ("cores at rest, all processes", "at_rest_cores_total", 3),
    ]
    rows += [("a killed Inspector: seconds until Serve saw it gone", "recovery_noticed_s", 1)]
    rows += [("... until its replacement was running", "recovery_replaced_s", 1)]
    rows += [("... frames meanwhile not answered 200", "recovery_frames_not_200", 0)]
    rows += [("... the slowest frame meanwhile (s)", "recovery_slowest_frame_s", 2)]
    for title, key, digits in rows:
        print(f"| {title} | " + " | ".join(f"{result['summary'][x][key]:.{digits}f}" for x in labels) + " |")
    roles = sorted({name for x in labels for name in result["summary"][x]["roles"]})
    for name in roles:
        cells = []
        for x in labels:
            r = result["summary"][x]["roles"].get(name, {"processes": 0, "uss_mib": 0.0, "rss_mib": 0.0})
            cells.append(f"{r['uss_mib']:.0f} / {r['rss_mib']:.0f} ({r['processes']:.0f})")
        print(f"| {name}: USS / RSS MiB (processes) | " + " | ".join(cells) + " |")
    for name in roles:
        cells = [f"{result['summary'][x]['roles'].get(name, {}).get('at_rest_cores', 0.0):.3f}" for x in labels]
        print(f"| {name}: cores at rest | " + " | ".join(cells) + " |")
    for key in ("ready_s", "uss_total_mib", "at_rest_cores_total"):
        if f"{key}_over_baseline" in result:
            ratio = result[f"{key}_over_baseline"]
            print(
                f"{key}: this ÷ baseline {ratio['median']:.2f} (rounds {ratio['range'][0]:.2f}-{ratio['range'][1]:.2f})"
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
