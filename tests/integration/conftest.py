"""Session fixtures for the running service: one local Ray, the repo's serve_config.yaml deployed with
`serve run` (only the port, the registry and CPU shares changed), and a registry with two versions.

Tests that reconfigure the service (auth, backpressure, extra apps) restore the base config before
they return, so test order does not matter.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from inspectline.registry import ModelRegistry
from inspectline.serving.deploy import (
    deploy,
    load_serve_config,
    service_url,
    start_local_ray,
    stop_local_ray,
    wait_until_ready,
)

REPO = Path(__file__).resolve().parents[2]
# The line whose parts the service decides: three cameras, all required, a deadline a loaded CI machine meets.
PARTS_LINE = "line-parts"
PARTS_CAMERAS = ("top", "bottom", "side")
PARTS_DEADLINE_MS = 3000


class PartsReceiver:
    """The line controller's end of the parts line's webhook output: a loopback HTTP server keeping each verdict."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/parts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_receivers: list[PartsReceiver] = []  # the session's receiver, once started: every app's inspect.yaml names it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def store_config(registry: Path, name: str = "inspectline") -> dict:
    data = registry.parent / f"data-{name}"
    return {
        "database_url": f"sqlite:///{data / 'frames.db'}",
        "storage_url": str(data / "images"),
        "keep_ok_images": 1.0,
    }


def inspect_yaml(registry: Path, name: str = "inspectline", *, tokens_file: Path | None = None) -> Path:
    """The inspect.yaml an app of this name reads: its registry, its own store and spool."""
    service = {"spool_dir": str(registry.parent / f"data-{name}" / "spool")}
    if tokens_file is not None:
        service["tokens_file"] = str(tokens_file)
    station = {"name": "final", "cameras": list(PARTS_CAMERAS), "deadline_ms": PARTS_DEADLINE_MS}
    line: dict = {"stations": [station]}
    if _receivers:
        line["outputs"] = {"webhook": {"url": _receivers[0].url}}
    plant = {"outbox": str(registry.parent / f"data-{name}" / "outbox.sqlite3"), "lines": {PARTS_LINE: line}}
    doc = {
        "paths": {"registry": str(registry)},
        "store": store_config(registry, name),
        "service": service,
        "plant": plant,
    }
    # a file of its own per variant: Serve redeploys an app when its args change, not when a file it names does
    path = registry.parent / f"inspect-{name}{'-auth' if tokens_file else ''}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def app_config(
    registry: Path,
    *,
    name: str = "inspectline",
    route_prefix: str = "/",
    gateway: dict | None = None,
    inspector: dict | None = None,
    inspector_options: dict | None = None,
    gateway_options: dict | None = None,
    tokens_file: Path | None = None,
    judge: str = "inspector",
) -> dict:
    """The repo's application entry with test-sized settings; ``judge="gateway"``: the one of
    ``deploy/serve_config.gateway-judges.yaml``, where ``inspector`` goes to the Gateway's ``user_config.inspector``
    and ``inspector_options`` (replicas, CPUs) to the Gateway deployment."""
    gateway_judges = judge == "gateway"
    source = REPO / ("deploy/serve_config.gateway-judges.yaml" if gateway_judges else "serve_config.yaml")
    app = copy.deepcopy(load_serve_config(source)["applications"][0])
    app["name"], app["route_prefix"] = name, route_prefix
    app["args"] = {"config": str(inspect_yaml(registry, name, tokens_file=tokens_file)), "judge": judge}
    for deployment in app["deployments"]:
        if deployment["name"] == "Gateway":
            deployment["user_config"].update({"reload_interval_s": 0.3, **(gateway or {})})
            deployment.update(gateway_options or {})
            if gateway_judges:
                deployment["ray_actor_options"] = {"num_cpus": 0.25}  # beside the base app's inspectors
                deployment["user_config"]["inspector"].update(inspector or {})
                deployment.update(inspector_options or {})
        if deployment["name"] == "Inspector":
            deployment["ray_actor_options"] = {"num_cpus": 0.5}  # two replicas on a 2-core CI machine
            deployment["user_config"].update(inspector or {})
            deployment.update(inspector_options or {})
    return app


def own_app(
    checkpoint, tmp_path: Path, name: str, replicas: int, cpus: float, gateway: dict | None = None
) -> tuple[ModelRegistry, dict]:
    """An app of a test's own, next to the base one: its registry (one model, promoted) and its config."""
    registry = ModelRegistry(tmp_path / "models")
    registry.register(checkpoint)
    registry.promote("v0001")
    options = {"num_replicas": replicas, "ray_actor_options": {"num_cpus": cpus}}
    return registry, app_config(
        registry.root, name=name, route_prefix=f"/{name}", inspector_options=options, gateway=gateway
    )


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60, what: str | Callable[[], str] = "condition") -> None:
    """Poll ``predicate``; ``what`` (or what it returns, for a message that says what was last seen) names it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what() if callable(what) else what}")


@dataclass
class Service:
    url: str
    port: int
    address: str
    registry: ModelRegistry
    base_app: dict
    extra_apps: list[dict] = field(default_factory=list)

    def deploy(self, *apps: dict) -> None:
        config = load_serve_config(REPO / "serve_config.yaml")
        config["http_options"] = {"host": "127.0.0.1", "port": self.port}
        config["applications"] = list(apps)
        deploy(config, self.address)

    def reconfigure(self, **changes) -> None:
        self.deploy(app_config(self.registry.root, **changes))

    def restore(self) -> None:
        """Back to the base config, and wait until it serves: ready, and open again (no token needed)."""
        self.deploy(self.base_app)
        wait_for(lambda: httpx.get(f"{self.url}/v1/model").status_code == 200, timeout_s=300, what="the base config")


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    address = start_local_ray(num_cpus=2)
    yield address
    stop_local_ray()


@pytest.fixture(scope="session")
def parts_receiver() -> Iterator[PartsReceiver]:
    receiver = PartsReceiver()
    _receivers.append(receiver)
    yield receiver
    _receivers.remove(receiver)
    receiver.close()


@pytest.fixture(scope="session")
def service(ray_address: str, trained_run, tmp_path_factory, parts_receiver: PartsReceiver) -> Iterator[Service]:
    registry = ModelRegistry(tmp_path_factory.mktemp("service") / "models")
    registry.register(trained_run.checkpoint)
    registry.register(trained_run.checkpoint)  # v0002: the same weights, a different version for switching
    registry.promote("v0001")
    port = free_port()
    svc = Service(
        url=f"http://127.0.0.1:{port}",
        port=port,
        address=ray_address,
        registry=registry,
        base_app=app_config(registry.root),
    )
    svc.deploy(svc.base_app)
    assert service_url({"http_options": {"host": "127.0.0.1", "port": port}}) == svc.url
    wait_until_ready(svc.url, timeout_s=300)
    yield svc


@pytest.fixture(scope="session")
def other_run(folder_dataset, tmp_path_factory):
    """A second real model with different weights (another seed), for promotions that must be visible."""
    from inspectline.training import run_training
    from tests.helpers import tiny_config

    workdir = tmp_path_factory.mktemp("other")
    return run_training(tiny_config(folder_dataset, workdir, train={"seed": 7}), progress=False)
