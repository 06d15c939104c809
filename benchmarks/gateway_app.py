"""What the gateway's own code costs per frame, against the HTTP server it runs in.

The served benchmark (``serve_throughput.py``) charges the Gateway replica about 10 ms of CPU per
single-post frame, but that figure mixes three things: the HTTP server (uvicorn), Ray's work in the
replica (the handle call to an inspector, the monitor's batches, metrics and health checks), and ours
(routing, auth, metadata, the header probe, hashing, the repeated-id lookup, the journal). This script
separates ours. Each variant runs in a server process of its own on loopback, the way a Gateway
replica behind HAProxy serves (uvicorn, ``lifespan="off"``, no access log), and the same client posts
the same ELPV cell to each, in alternating rounds so a busy machine slows all alike:

* ``gateway app``: the Gateway's FastAPI app as ``serving.gateway`` builds it, with its real token
  table, frame store (SQLite), journal and outbox; only what crosses to another Ray process answers at
  once (the inspector's verdict, the line monitor's acknowledgement).
* ``HTTP floor``: a plain ASGI app that reads the body and answers a verdict-sized JSON body, nothing
  else: what any Python HTTP service pays per request on this machine.

Per variant: the server process's CPU time per frame (``psutil``; every thread), frames/s and the
latency percentiles of single posts, and of ``/v1/frames/batch`` posts of ``--batch`` frames.

    python -m benchmarks.gateway_app                 # 2,000 single posts and 250 batches of 8 per round
    python -m benchmarks.gateway_app --rounds 5 --frames 4000
    python -m benchmarks.gateway_app --baseline /tmp/main-before   # also the app of another checkout, same run

``--baseline DIR`` adds the gateway app as the checkout at ``DIR`` has it (``git worktree add DIR REV``),
served from a process whose ``PYTHONPATH`` starts there: a change measured against what it replaces,
in the same rounds.

Results go to ``benchmarks/results/gateway_app.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks.loadgen import elpv_cell, free_port
from benchmarks.machine import machine_info, save_result
from inspectline.hardware import cpu_capabilities

VARIANTS = ("gateway app", "HTTP floor")
TOKEN = "benchmark-camera-token"


# --- the server side (a process of its own per variant) --------------------------------------------
def _gateway_app(root: Path):
    """The Gateway's app as ``serving.gateway.Gateway`` wires it, with instant stand-ins for other replicas."""
    import hashlib

    from inspectline.audit import AuditLog
    from inspectline.config import GatewayOptions, StoreConfig
    from inspectline.serving import line_routes, model_routes, review_routes, routes, ui
    from inspectline.serving.auth import TokenEntry, TokenTable
    from inspectline.serving.http import Services, create_app
    from inspectline.serving.judging import FrameService, ModelFollower, MonitorOutbox, StoreAccess
    from inspectline.serving.records import InspectJob, Judgement, MonitorBatch, ServedModel
    from inspectline.store import FrameStore

    options = GatewayOptions()
    store_config = StoreConfig(database_url=f"sqlite:///{root / 'frames.db'}", storage_url=str(root / "images"))
    FrameStore(store_config).close()  # the schema exists before the first lookup, as in a running service
    store = StoreAccess(lambda: FrameStore(store_config))
    served = ServedModel("v0001")
    # an inspector replica's answer, without the model; built once, so the gateway is charged nothing for it
    answer = Judgement(
        verdict="OK",
        defect_probability=0.12,
        confidence=0.88,
        threshold=0.5,
        model_version=served.version,
        views={"identity": 0.11, "hflip": 0.13},
        engine="openvino int8",
        embedding=tuple(np.linspace(-1, 1, 256).tolist()),
        image_stats=(0.41, 0.22, 0.05, 0.9, 0.01, 0.3),
    )

    async def inspect(_: InspectJob) -> Judgement:
        return answer

    async def send(_: MonitorBatch) -> None:  # the line monitor acknowledges (it is another process)
        return None

    async def describe(_: ServedModel) -> dict:
        return {"version": served.version}

    async def render() -> tuple[bytes, str]:
        return b"", "text/plain"

    async def prepare(_: ServedModel) -> None:
        return None

    follower = ModelFollower(target=lambda: served, shadow=lambda: None, prepare_everywhere=prepare)
    follower.active = served
    outbox = MonitorOutbox.open(send, root / "spool", max_memory_bytes=options.max_pending_bytes)
    frames = FrameService(
        inspect=inspect, lookup=store.find, outbox=outbox, follower=follower, max_inflight=options.max_inflight
    )
    camera = TokenEntry(name="cam", sha256=hashlib.sha256(TOKEN.encode()).hexdigest(), scopes=("frames:write",))
    tokens = TokenTable((camera,))
    services = Services(
        options=lambda: options,
        tokens=tokens,
        frames=frames,
        store=store,
        audit=AuditLog(root / "audit.jsonl"),
        describe_model=describe,
        render_metrics=render,
    )
    app = create_app(services, routes.router, review_routes.router, model_routes.router, line_routes.router, ui.router)

    async def start_outbox() -> None:  # the gateway flushes its outbox in the background, as deployed
        asyncio.get_running_loop().create_task(outbox.run_forever(lambda: options.monitor_flush_s))

    return app, start_outbox


def _floor_app():
    """Read the body, answer a verdict-sized JSON body: the HTTP server's own cost per request."""
    answer = json.dumps(
        {"verdict": "OK", "defect_probability": 0.12, "confidence": 0.88, "padding": "x" * 420}
    ).encode()

    async def app(_scope, receive, send):
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})

    async def nothing() -> None:
        return None

    return app, nothing


def serve(variant: str, port: int, root: Path) -> None:
    import uvicorn

    import inspectline

    print(f"serving {variant!r} on port {port}, inspectline from {Path(inspectline.__file__).parent}", file=sys.stderr)

    app, on_start = _gateway_app(root) if variant == VARIANTS[0] else _floor_app()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", access_log=False, log_level="warning")
    server = uvicorn.Server(config)

    async def run() -> None:
        await on_start()
        await server.serve()

    asyncio.run(run())


# --- the client side ------------------------------------------------------------------------------
class Server:
    def __init__(self, variant: str, root: Path, code: Path | None = None):
        self.variant, self.port = variant, free_port()
        root.mkdir(parents=True, exist_ok=True)
        # run as a script, so that sys.path starts with PYTHONPATH, not the working directory: the inspectline
        # of `code` (another checkout) when given, this one's otherwise; this script's serve() either way
        here = Path(__file__).resolve().parents[1]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(p) for p in (code or here, here)))
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve",
                variant,
                "--port",
                str(self.port),
                "--root",
                str(root),
            ],
            env=env,
        )
        self.ps = psutil.Process(self.process.pid)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{self.url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    msg = f"the {variant!r} server did not start"
                    raise RuntimeError(msg) from None
                time.sleep(0.2)

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


async def _posts(server: Server, image: bytes, count: int, batch: int, tag: str, concurrency: int) -> dict:
    """``count`` frames as single posts (batch 1) or batch posts, ``concurrency`` clients: CPU and latency."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    latencies: list[float] = []
    todo = iter(range(0, count, batch))
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30) as client:

        async def poster() -> None:
            for start in todo:
                t0 = time.perf_counter()
                if batch == 1:
                    r = await client.post(
                        "/v1/frames",
                        content=image,
                        headers={"Content-Type": "image/png"},
                        params={"line_id": "line-1", "camera_id": "cam-1", "frame_id": f"{tag}-{start}"},
                    )
                else:
                    files = [("files", (f"{i}.png", image, "image/png")) for i in range(batch)]
                    ids = {"line_id": "line-1", "camera_id": "cam-1"}
                    r = await client.post("/v1/frames/batch", files=files, params=ids)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    msg = f"{server.variant}: {r.status_code} {r.text[:200]}"
                    raise RuntimeError(msg)

        cpu, wall = server.cpu_s(), time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(concurrency)))
        cpu, wall = server.cpu_s() - cpu, time.perf_counter() - wall
    ms = sorted(1000 * x for x in latencies)
    return {
        "cpu_ms_per_frame": 1000 * cpu / count,
        "frames_per_s": count / wall,
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
    }


def measure(args: argparse.Namespace) -> dict:
    image = elpv_cell()
    kinds = {"single": 1, f"batch of {args.batch}": args.batch}
    labels = list(VARIANTS) + ([f"gateway app at {args.baseline}"] if args.baseline else [])
    with tempfile.TemporaryDirectory() as tmp:
        servers = {v: Server(v, Path(tmp) / f"variant-{i}") for i, v in enumerate(VARIANTS)}
        if args.baseline:
            servers[labels[2]] = Server(VARIANTS[0], Path(tmp) / "baseline", code=args.baseline)
        try:
            for server in servers.values():  # warm: imports, the store's first queries, the first frames
                asyncio.run(_posts(server, image, 200, 1, "warm", 1))
            runs: dict[tuple[str, str], list[dict]] = {(v, k): [] for v in labels for k in kinds}
            for r in range(args.rounds):
                order = labels if r % 2 == 0 else labels[::-1]
                for kind, batch in kinds.items():
                    count = args.frames if batch == 1 else args.frames // batch * batch
                    for variant in order:
                        result = asyncio.run(
                            _posts(servers[variant], image, count, batch, f"r{r}-{kind}", args.concurrency)
                        )
                        runs[variant, kind].append(result)
        finally:
            for server in servers.values():
                server.stop()
    rows = []
    for kind in kinds:
        row: dict = {"posts": kind}
        for variant in labels:
            results = runs[variant, kind]
            row[variant] = {k: statistics.median(x[k] for x in results) for k in results[0]}
        app, floor = (row[v]["cpu_ms_per_frame"] for v in VARIANTS)
        row["app_cpu_ms_per_frame"] = app - floor
        row["app_over_floor"] = app / floor
        if args.baseline:  # paired: each round's ratio, so a round the machine was slow in slows both
            ratios = sorted(
                a["cpu_ms_per_frame"] / b["cpu_ms_per_frame"]
                for a, b in zip(runs[labels[0], kind], runs[labels[2], kind], strict=True)
            )
            row["app_over_baseline"] = statistics.median(ratios)
            row["app_over_baseline_range"] = [ratios[0], ratios[-1]]
        rows.append(row)
    return {
        "frames_per_round": args.frames,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "baseline": str(args.baseline) if args.baseline else None,
        "image_bytes": len(image),
        "rows": rows,
        "machine": machine_info() | {"cpu_flags": cpu_capabilities().to_dict()["cpu_flags"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=2000, help="frames per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the variants' order")
    parser.add_argument("--batch", type=int, default=8, help="frames per /v1/frames/batch post")
    parser.add_argument("--concurrency", type=int, default=2, help="clients posting at once")
    parser.add_argument("--baseline", type=Path, help="also serve the gateway app of the checkout at this folder")
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.root)
        return

    result = measure(args)
    out = save_result("gateway_app", result)
    m = result["machine"]
    print(f"\nThe gateway's own CPU per frame, {m['cpu']}, {args.concurrency} clients, median of {args.rounds} rounds")
    print(
        "| posts | gateway app: CPU ms / frame | HTTP floor: CPU ms / frame | the app's own | app ÷ floor "
        "| frames/s (app / floor) | p50 / p99 ms (app) |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        app, floor = row[VARIANTS[0]], row[VARIANTS[1]]
        print(
            f"| {row['posts']} | {app['cpu_ms_per_frame']:.2f} | {floor['cpu_ms_per_frame']:.2f} | "
            f"{row['app_cpu_ms_per_frame']:.2f} | {row['app_over_floor']:.1f} | "
            f"{app['frames_per_s']:.0f} / {floor['frames_per_s']:.0f} | {app['p50_ms']:.1f} / {app['p99_ms']:.1f} |"
        )
    if args.baseline:
        for row in result["rows"]:
            before = row[f"gateway app at {args.baseline}"]
            print(
                f"{row['posts']}: at {args.baseline} {before['cpu_ms_per_frame']:.2f} ms / frame; "
                f"this checkout ÷ that one {row['app_over_baseline']:.2f} (rounds "
                f"{row['app_over_baseline_range'][0]:.2f}-{row['app_over_baseline_range'][1]:.2f})"
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
