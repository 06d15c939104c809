"""Deploying ``serve_config.yaml``: the library side of ``inspect serve`` and of ``make demo``.

There is one deployment path: Ray Serve's own config deploy (``serve run CONFIG``), so ``inspect
serve`` and ``serve run serve_config.yaml`` cannot drift apart. ``inspect serve`` adds what a plant
admin wants around it: the file is validated first, relative paths are resolved against the
working directory, a local Ray is started when no cluster address is given (and stopped on Ctrl-C
or SIGTERM), and the command waits until ``/readyz`` answers before saying where the service is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import BaseModel, ValidationError

from inspectline.config import GatewayOptions, HeatmapOptions, InspectorOptions, MonitorOptions
from inspectline.errors import ConfigError, InspectError, validation_messages
from inspectline.serving.ingress import (
    Ingress,
    choose_ingress,
    end_haproxy,
    end_processes,
    end_stale_haproxy,
    ingress_workdir,
)

log = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polling is not news
_OPTIONS = {
    "Gateway": GatewayOptions,
    "Inspector": InspectorOptions,
    "LineMonitor": MonitorOptions,
    "Heatmaps": HeatmapOptions,
}


def load_serve_config(path: Path) -> dict[str, Any]:
    """Read and validate a Serve config (Ray's schema, then our ``user_config`` schemas)."""
    from ray.serve.schema import ServeDeploySchema

    from inspectline.serving.app import AppArgs

    path = Path(path)
    if not path.is_file():
        msg = f"serve config {path} does not exist"
        raise ConfigError(msg)
    raw = yaml.safe_load(path.read_text()) or {}
    _validated(ServeDeploySchema, raw, f"{path} is not a valid Ray Serve config")
    for app in raw.get("applications", []):
        for deployment in app.get("deployments", []):
            schema = _OPTIONS.get(deployment.get("name"))
            if schema is not None:
                _validated(schema, deployment.get("user_config") or {}, f"{path}: user_config of {deployment['name']}")
        if app.get("import_path") == "inspectline.serving.app:build_app":
            where = f"{path}: application {app.get('name')!r}"
            args = _validated(AppArgs, app.get("args") or {}, f"{where}: args")
            _check_judge(args.judge, app.get("deployments", []), where)
    return raw


def _check_judge(judge: str, deployments: list[dict], where: str) -> None:
    """The deployments must be the ones ``judge`` builds, with the inspector settings in one place."""
    names = {d.get("name"): d for d in deployments}
    if judge == "gateway" and "Inspector" in names:
        msg = (
            f"{where} has judge: gateway, which builds no Inspector deployment: remove the Inspector entry and put "
            "its user_config under the Gateway's user_config.inspector (see deploy/serve_config.gateway-judges.yaml)"
        )
        raise ConfigError(msg)
    gateway_inspector = (names.get("Gateway", {}).get("user_config") or {}).get("inspector")
    if judge == "inspector" and gateway_inspector is not None:
        msg = (
            f"{where} sets the Gateway's user_config.inspector, but its Inspector replicas judge the frames (judge: "
            "inspector): move those settings to the Inspector deployment's user_config, or set judge: gateway in args"
        )
        raise ConfigError(msg)


def _validated(schema: type[BaseModel], value: dict, where: str) -> BaseModel:
    try:
        return schema.model_validate(value)
    except ValidationError as exc:
        msg = f"{where} is invalid:\n" + "\n".join(f"  {line}" for line in validation_messages(exc))
        raise ConfigError(msg) from None


def resolve_paths(config: dict[str, Any], base: Path) -> dict[str, Any]:
    """A copy of ``config`` whose application args name ``inspect.yaml`` and the base of relative paths absolutely.

    Ray builds the application in a worker process whose working directory need not be the user's (on a
    cluster it never is), so relative paths must be settled where the user typed the command.
    """
    from inspectline.serving.app import AppArgs

    config = json.loads(json.dumps(config))
    for app in config.get("applications", []):
        if app.get("import_path") != "inspectline.serving.app:build_app":
            continue
        args = AppArgs.model_validate(app.get("args") or {})
        root = (base / args.base).resolve() if args.base else base.resolve()
        app["args"] = {"config": str((root / args.config.expanduser()).resolve()), "base": str(root)}
        if args.judge != AppArgs().judge:  # only where set: the args of a default app stay as they were
            app["args"]["judge"] = args.judge
    return config


def describe_locations(config: dict[str, Any]) -> list[str]:
    """What each application will use and which file set it (``inspect serve`` prints this before deploying)."""
    from inspectline.serving.app import AppArgs, service_locations

    lines = []
    for app in config.get("applications", []):
        if app.get("import_path") == "inspectline.serving.app:build_app":
            args = AppArgs.model_validate(app.get("args") or {})
            lines += service_locations(args.config, args.base or Path.cwd()).describe()
    return lines


def exposed_without_auth(config: dict[str, Any], environ: dict[str, str]) -> bool:
    """True when the service would listen beyond loopback with no API token configured at all."""
    from inspectline.serving.app import AppArgs, service_locations

    host = (config.get("http_options") or {}).get("host", "127.0.0.1")
    if host in ("127.0.0.1", "localhost", "::1") or environ.get("INSPECT_API_TOKEN"):
        return False
    for app in config.get("applications", []):
        if app.get("import_path") == "inspectline.serving.app:build_app":
            args = AppArgs.model_validate(app.get("args") or {})
            if service_locations(args.config, args.base or Path.cwd()).tokens_file is not None:
                return False
    return True


def service_url(config: dict[str, Any]) -> str:
    http = config.get("http_options") or {}
    host = http.get("host", "127.0.0.1")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{http.get('port', 8000)}"


def deploy(config: dict[str, Any], address: str, *, timeout_s: float = 300) -> None:
    """Submit a Serve config to the Ray cluster at ``address`` with ``serve run --non-blocking``."""
    serve_bin = Path(sys.executable).with_name("serve")
    command = str(serve_bin) if serve_bin.is_file() else shutil.which("serve")
    if command is None:
        msg = "the `serve` command (ray[serve]) is not installed in this environment"
        raise InspectError(msg)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="inspectline-serve-", delete=False) as fh:
        yaml.safe_dump(config, fh, sort_keys=False)
    try:
        proc = subprocess.run(
            [command, "run", "--non-blocking", "--address", address, fh.name],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    finally:
        Path(fh.name).unlink(missing_ok=True)
    if proc.returncode != 0:
        msg = f"serve run failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}"
        raise InspectError(msg)


def wait_until_ready(url: str, *, timeout_s: float = 180, path: str = "/readyz") -> dict:
    """Poll ``url + path`` until it answers 200; returns its JSON. Raises with the last answer on timeout."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url + path, timeout=5)
            if response.status_code == 200:
                return response.json()
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.5)
    msg = f"{url}{path} was not ready after {timeout_s:.0f} s: {last}"
    raise InspectError(msg)


# Ray Serve's background loops run whether frames arrive or not; on a two-core line PC the service's CPU
# at rest is part of every frame's cost. Two of them run faster than this service needs. Measured with
# benchmarks/service_start.py on a 2-core AMD EPYC, 3 starts each, medians: 0.134 cores at rest against
# 0.206 (0.65 of it, paired), the same time to ready, and a killed Inspector replica replaced in 20 s
# against 17, the other replica answering every frame meanwhile.
#
# * Serve's own request metrics are handed to Ray's exporter every 100 ms by default, and Ray exports
#   them every 10 s (``metrics_report_interval_ms``): at 1 s no exported sample is lost. This service's
#   Prometheus board reads its own metrics, not Ray's.
# * Serve's controller steps every deployment ten times a second; once a second it still notices a dead
#   replica at its health check (every 10 s) and starts the next, a few steps later.
#
# A value already in the environment wins; a cluster given with ``--address`` keeps its own.
BACKGROUND_LOOPS = {
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1",
}


def local_ray_environment(environ: Mapping[str, str], ingress: Ingress | None, workdir: Path | None) -> dict[str, str]:
    """The variables a local Ray's processes are started with: :data:`BACKGROUND_LOOPS` where ``environ`` does
    not set them, and the HTTP front's (``workdir``: its folder, see :meth:`Ingress.environment`)."""
    env = {key: environ.get(key, value) for key, value in BACKGROUND_LOOPS.items()}
    if ingress is not None and workdir is not None:
        env |= ingress.environment(workdir, environ)
    return env


def start_local_ray(num_cpus: int | None = None, ingress: Ingress | None = None) -> str:
    """Start an embedded Ray for this process; returns the address ``serve run`` connects to.

    :func:`local_ray_environment` (the background loops' intervals, and ``ingress``'s settings, see
    :mod:`inspectline.serving.ingress`) is applied to this process's environment first, which every Ray
    process and ``serve run`` inherit; :func:`stop_local_ray` puts the environment back. A Ray that is
    already running keeps the settings it started with.
    """
    import ray

    if not ray.is_initialized():
        if ingress is not None and ingress.name == "haproxy" and (ended := end_stale_haproxy()):
            log.warning("ended HAProxy processes an earlier service left holding its ports: pids %s", ended)
        if ingress is not None:
            _LOCAL.workdir = ingress_workdir()
        environ = local_ray_environment(os.environ, ingress, _LOCAL.workdir)
        _LOCAL.saved_environ = {k: os.environ.get(k) for k in environ}
        os.environ.update(environ)
        ray.init(num_cpus=num_cpus, namespace="serve", include_dashboard=False, log_to_driver=False)
    return ray.get_runtime_context().gcs_address


@dataclass
class _LocalRay:
    """What :func:`start_local_ray` changed, for :func:`stop_local_ray` to undo."""

    workdir: Path | None = None  # HAProxy's config, socket and server state for this run
    saved_environ: dict[str, str | None] = field(default_factory=dict)


_LOCAL = _LocalRay()


def stop_local_ray(timeout_s: float = 15.0) -> None:
    """Shut Serve and the local Ray down, then end any process Ray started that outlived it.

    Ray's dashboard and runtime-env agents can outlive ``ray.shutdown()`` after a SIGTERM, and the HAProxy
    that Ray's HAProxy manager starts outlives that actor; every such process below this one when it stops
    is ours to end. Other children (a multiprocessing resource tracker, a caller's own workers) are left
    alone. The environment and HAProxy's folder from :func:`start_local_ray` are put back and removed.
    """
    import psutil
    import ray
    from ray import serve

    started = [p for p in psutil.Process().children(recursive=True) if _is_ray_process(p)]
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
        alive = [p for p in started if p.is_running()]
        end_processes(alive, timeout_s=timeout_s)
        if alive:
            log.info("ended %d Ray processes that outlived ray.shutdown()", len(alive))
        _restore_environ()


def _restore_environ() -> None:
    for key, value in _LOCAL.saved_environ.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if _LOCAL.workdir is not None:
        workdir = _LOCAL.workdir.resolve()
        if orphans := end_haproxy(lambda config: config.resolve().is_relative_to(workdir)):
            log.info("ended %d HAProxy processes of this run that had outlived their manager", len(orphans))
        shutil.rmtree(_LOCAL.workdir, ignore_errors=True)
    _LOCAL.workdir, _LOCAL.saved_environ = None, {}


def serve_until_interrupted(
    config_path: Path,
    *,
    address: str | None = None,
    on_ready: Callable[[str, dict], None] | None = None,
    report: Callable[[str], None] = log.info,
    ready_timeout_s: float = 300,
    ingress: str = "auto",
) -> None:
    """``inspect serve``: deploy; without ``address`` also own a local Ray, behind the HTTP front ``ingress``
    (see :mod:`inspectline.serving.ingress`), and block until interrupted."""
    config = resolve_paths(load_serve_config(config_path), Path.cwd())
    if address is not None and ingress != "auto":
        msg = (
            f"--ingress {ingress} applies to the local Ray `inspect serve` starts; a cluster at {address} keeps the "
            "front its own environment chose (RAY_SERVE_ENABLE_HA_PROXY on its nodes)"
        )
        raise ConfigError(msg)
    chosen = choose_ingress(ingress, os.environ) if address is None else None
    for line in describe_locations(config):
        report(line)
    if exposed_without_auth(config, dict(os.environ)):
        host = config["http_options"]["host"]
        report(
            f"WARNING: the service listens on {host} (beyond this machine) and no API token is configured: anyone "
            "on the network can post frames and relabel training data. Set INSPECT_API_TOKEN or service.tokens_file "
            "(`inspect tokens add NAME --scope frames:write`)."
        )
    url = service_url(config)
    if chosen is not None:
        report(chosen.describe())
    if address is not None:
        deploy(config, address)
        if on_ready is not None:
            on_ready(url, {"deployed_to": address})
        return
    stop = threading.Event()
    try:
        address = start_local_ray(ingress=chosen)
        # after ray.init, which installs a SIGTERM handler of its own that aborts the process and leaves
        # Ray's agents running: ours stops the service and every process Ray started
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        deploy(config, address)
        health = wait_until_ready(url, path="/healthz", timeout_s=ready_timeout_s)
        if on_ready is not None:
            on_ready(url, health)
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        log.info("shutting down the service")
        stop_local_ray()


def _is_ray_process(process) -> bool:
    """Ray's workers are named ``ray::...``; its raylet, GCS and agents run from the ``ray`` package; the
    HAProxy its HAProxy manager runs is ``haproxy``."""
    import psutil

    try:
        command = process.cmdline()
    except psutil.Error:
        return False
    if command and Path(command[0]).name == "haproxy":
        return True
    line = " ".join(command)
    return line.startswith("ray::") or f"{os.sep}ray{os.sep}" in line
