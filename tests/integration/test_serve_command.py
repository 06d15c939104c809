"""`inspect serve` as a plant admin runs it: its own local Ray in the foreground, ready, then Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from inspectline.registry import ModelRegistry
from inspectline.serving.deploy import load_serve_config, wait_until_ready
from tests.integration.conftest import REPO, free_port, wait_for
from tests.integration.test_service import cell, encoded, post

pytestmark = pytest.mark.integration
INSPECT = str(Path(sys.executable).with_name("inspect"))


def test_inspect_serve_runs_in_the_foreground_and_stops_cleanly_on_ctrl_c(trained_run, tmp_path):
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
    proc = subprocess.Popen(
        [INSPECT, "serve", "--config", "serve.yaml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "RAY_ADDRESS": ""},
    )
    try:
        ready = wait_until_ready(f"http://127.0.0.1:{port}", timeout_s=300)
        assert ready["model_version"] == "v0001"
        answer = post(f"http://127.0.0.1:{port}", encoded(cell()), params={"frame_id": "serve-cli-1"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == "v0001"
        # the store's relative path resolved against the working directory `inspect serve` ran in
        wait_for(lambda: (tmp_path / "data" / "frames.db").is_file(), timeout_s=60, what="the frame store")
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    assert f"service up at http://127.0.0.1:{port}" in output
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the HTTP port is still open after Ctrl-C"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
