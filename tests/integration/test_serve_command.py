"""`inspect serve` as a plant admin runs it: its own local Ray in the foreground, ready, then Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from inspectline.errors import InspectError
from inspectline.registry import ModelRegistry
from inspectline.serving import ingress as ingress_module
from inspectline.serving.deploy import BACKGROUND_LOOPS, load_serve_config, wait_until_ready
from tests.integration.conftest import REPO, free_port, wait_for
from tests.integration.test_service import cell, encoded, post
from tests.system_packages import available

pytestmark = pytest.mark.integration
INSPECT = str(Path(sys.executable).with_name("inspect"))


def test_inspect_serve_runs_in_the_foreground_and_stops_cleanly_on_ctrl_c(trained_run, tmp_path):
    """Behind HAProxy where it is installed (as on CI), which is what `inspect serve` picks by default."""
    if not available("haproxy") and os.environ.get("CI"):
        pytest.fail("CI installs haproxy (.ci/system-packages): this test checks the default front with it")
    expected = "haproxy" if available("haproxy") else "ray"
    registry = ModelRegistry(tmp_path / "models")  # relative paths in the config resolve against the working directory
    registry.register(trained_run.checkpoint)
    registry.promote("v0001")
    port = free_port()
    config = load_serve_config(REPO / "serve_config.yaml")
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    for deployment in config["applications"][0]["deployments"]:
        if deployment["name"] == "Inspector":
            deployment["num_replicas"] = 1
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    stale = _stale_haproxy() if expected == "haproxy" else None  # a crashed run's, still holding a port
    proc = _start([INSPECT, "serve", "--config", "serve.yaml"], tmp_path, _own_ray_env(), f"http://127.0.0.1:{port}")
    try:
        assert wait_until_ready(f"http://127.0.0.1:{port}", timeout_s=60)["model_version"] == "v0001"
        if stale is not None:  # the start ended it
            assert stale.wait(timeout=30) is not None
        answer = post(f"http://127.0.0.1:{port}", encoded(cell()), params={"frame_id": "serve-cli-1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "v0001"
        refused = post(f"http://127.0.0.1:{port}", b"not an image", params={"frame_id": "serve-cli-2"})
        assert refused.status_code == 415, refused.text
        assert "PNG" in refused.json()["detail"]
        # the store's relative path resolved against the working directory `inspect serve` ran in
        wait_for(lambda: (tmp_path / "data" / "frames.db").is_file(), timeout_s=60, what="the frame store")
        started = _descendants(proc.pid)
        controller = next(p for p in started if "ServeController" in " ".join(p.cmdline()))
        # Serve's background loops run at the intervals the service sets for a local Ray
        assert {k: controller.environ().get(k) for k in BACKGROUND_LOOPS} == BACKGROUND_LOOPS
        fronts = [p for p in started if _name(p) == "haproxy"]
        assert bool(fronts) == (expected == "haproxy"), [_name(p) for p in started]
        folders = {Path(a).parent.parent for p in fronts for a in p.cmdline() if a.endswith("haproxy.cfg")}
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if stale is not None:
            stale.kill()
            stale.wait()
            shutil.rmtree(Path(stale.args[-1]).parent)
    assert proc.returncode == 0, output[-3000:]
    assert f"service up at http://127.0.0.1:{port}" in output
    if stale is not None:
        assert f"ended HAProxy processes an earlier service left holding its ports: pids [{stale.pid}]" in output
    assert f"ingress: {expected} (" in output
    survivors = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [(p.pid, p.name()) for p in survivors]
    assert all(not folder.exists() for folder in folders), folders  # HAProxy's config and socket folder
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the HTTP port is still open after Ctrl-C"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def _stale_haproxy() -> subprocess.Popen:
    """A real HAProxy as a crashed service leaves it: its folder's owner gone, still listening on a port."""
    folder = Path(tempfile.mkdtemp(prefix="inspect-", dir=ingress_module._workdir_base()))
    (folder / "owner").write_text("999999999 0.0\n")
    config = folder / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode http\n  timeout connect 1s\n  timeout client 1s\n  timeout server 1s\n"
        f"frontend stale\n  bind 127.0.0.1:{free_port()}\n  http-request return status 200\n"
    )
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
    process = subprocess.Popen([binary, "-db", "-f", str(config)], start_new_session=True)
    wait_for(lambda: ingress_module.haproxy_config(psutil.Process(process.pid)) == config, what="the stale HAProxy")
    return process


def _start(command: list[str], cwd: Path, env: dict[str, str], url: str) -> subprocess.Popen:
    """A command in a session of its own (so a signal reaches everything it starts), its output captured,
    returned once ``url`` answers ready.

    Ray gives its raylet a fixed 30 s to register when a node starts; on a loaded 2-core machine that
    already runs the test session's Ray it can miss that, and the command exits. That start is tried once
    more; any other failure fails the test with the command's output.
    """
    for attempt in (1, 2):
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env=env,
            preexec_fn=_interruptible,  # runs in the child between fork and exec: one signal call, no locks
        )
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(InspectError):
                wait_until_ready(url, timeout_s=5)
                return proc
        output = _stop(proc, signal.SIGINT)
        if attempt == 2 or "timed out during startup" not in output:
            raise AssertionError(output[-4000:])
    raise AssertionError("unreachable")


def _interruptible() -> None:
    """SIGINT back to its default in the child: a test session started in the background of a non-interactive
    shell (``make test &``) ignores SIGINT, every child would inherit that, and Python then never turns
    Ctrl-C into KeyboardInterrupt. A terminal's Ctrl-C reaches a foreground `inspect serve` with the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop(proc: subprocess.Popen, sig: signal.Signals) -> str:
    """Signal the command's whole session (it may already have exited); returns the rest of its output."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        return proc.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.communicate()[0]


def _own_ray_env() -> dict[str, str]:
    """The environment without the test session's Ray address: the command starts a Ray of its own."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def _serve_dir(trained_run, tmp_path) -> None:
    """A folder laid out like the repository root after `make demo`: serve_config.yaml (unchanged) and models/."""
    shutil.copyfile(REPO / "serve_config.yaml", tmp_path / "serve_config.yaml")
    registry = ModelRegistry(tmp_path / "models")
    registry.register(trained_run.checkpoint)
    registry.promote("v0001")


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _name(process: psutil.Process) -> str:
    """The process's name, or "" for one that ended since it was listed (Ray's workers come and go)."""
    try:
        return process.name()
    except psutil.Error:
        return ""


@pytest.mark.skipif(socket.socket().connect_ex(("127.0.0.1", 8000)) == 0, reason="port 8000 is taken on this machine")
def test_serve_run_deploys_the_repository_config_unchanged(trained_run, tmp_path):
    _serve_dir(trained_run, tmp_path)
    assert (tmp_path / "serve_config.yaml").read_bytes() == (REPO / "serve_config.yaml").read_bytes()
    serve_bin = str(Path(sys.executable).with_name("serve"))
    proc = _start([serve_bin, "run", "serve_config.yaml"], tmp_path, _own_ray_env(), "http://127.0.0.1:8000")
    try:
        assert wait_until_ready("http://127.0.0.1:8000", timeout_s=60)["model_version"] == "v0001"
        answer = post("http://127.0.0.1:8000", encoded(cell()), params={"frame_id": "serve-run-1"})
        assert answer.status_code == 200, answer.text
        # the defaults, relative to the folder `serve run` ran in: the store is where `inspect retrain` looks
        wait_for(lambda: (tmp_path / "data" / "frames.db").is_file(), timeout_s=60, what="the frame store")
    finally:
        _stop(proc, signal.SIGINT)


def test_inspect_serve_on_sigterm_stops_every_process_it_started(trained_run, tmp_path):
    _serve_dir(trained_run, tmp_path)
    port = free_port()
    config = load_serve_config(tmp_path / "serve_config.yaml")
    config["http_options"] = {"host": "0.0.0.0", "port": port}
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in _own_ray_env().items() if k != "INSPECT_API_TOKEN"}
    command = [INSPECT, "serve", "--config", "serve.yaml", "--ingress", "ray"]
    proc = _start(command, tmp_path, env, f"http://127.0.0.1:{port}")
    try:
        started = _descendants(proc.pid)
        assert len(started) >= 3  # Ray's GCS, raylet, agents, workers ...
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    survivors = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert survivors == [], [(p.pid, p.name()) for p in survivors]
    # it said where everything lives, and warned that it listens beyond this machine without a token
    assert "ingress: ray (Ray Serve's HTTP proxy, as asked)" in output
    assert "registry" in output and "default; no " in output and "WARNING: the service listens on 0.0.0.0" in output
