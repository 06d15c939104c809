"""A schema-driven fuzz of the gateway's API: every check schemathesis has, auth on, zero failures.

The gateway's real app (real model, store, journal and recorder; only Ray's hops are direct calls) is
served by uvicorn on loopback, and the schemathesis CLI runs every phase against ``/openapi.json`` with
``--checks all``: no server error, no undocumented status, no schema-valid request rejected, no invalid
one accepted, no response that violates its schema, auth enforced where declared. Bounded in examples
per operation and in time; the seed is fixed so a failure reproduces.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.unit.serving.conftest import build_gateway, secret

REPO = Path(__file__).resolve().parents[3]
MAX_EXAMPLES = int(os.environ.get("INSPECT_FUZZ_EXAMPLES", "30"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path, tiny_registry):
    gateway = build_gateway(tmp_path, tiny_registry)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(gateway.app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield gateway, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    gateway.monitor.recorder.close()


def test_the_api_passes_a_schema_driven_fuzz_with_every_check(served, tmp_path):
    _, url = served
    # a few stored frames, so reads find something
    for i in range(3):
        files = {"image": (f"{i}.png", _png(i), "image/png")}
        response = httpx.post(
            f"{url}/v1/frames",
            files=files,
            params={"line_id": "l1", "camera_id": "c1"},
            headers={"Authorization": f"Bearer {secret('admin')}"},
        )
        assert response.status_code == 200, response.text
    report = tmp_path / "report.json"
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(REPO / "tests" / "fuzz" / "schemathesis.toml"),
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        "20261130",
        "--no-color",
        "--header",
        f"Authorization: Bearer {secret('admin')}",
        "--request-timeout",
        "30",
        "--generation-database",
        "none",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks", "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    run = subprocess.run(command, capture_output=True, env=env, cwd=tmp_path, timeout=900)  # its cache stays there
    seconds = time.monotonic() - started
    output = (run.stdout + run.stderr).decode("utf-8", "replace")
    (tmp_path / "schemathesis.txt").write_text(output)  # the whole report, binary bodies included
    summary = _summary(report)
    print(f"\nschemathesis: {summary} in {seconds:.0f} s")  # the figures the closing note quotes
    assert run.returncode == 0, _failures(output)
    assert summary["operations"] >= 7 and summary["failures"] == 0


def _png(seed: int) -> bytes:
    import numpy as np

    from inspectline.imaging import encode_png
    from tests.helpers import make_cell

    return encode_png(make_cell(np.random.default_rng(seed), seed % 2 == 0))


def _failures(output: str) -> str:
    """The failure section, with request bodies cut short (they are binary images)."""
    section = output[output.find("FAILURES") :] if "FAILURES" in output else output
    return "\n".join(line if len(line) < 400 else line[:400] + " ..." for line in section.splitlines())


def _failures(output: str) -> str:
    """The failure section, with request bodies cut short (they are binary images)."""
    section = output[output.find("FAILURES") :] if "FAILURES" in output else output
    return "\n".join(line if len(line) < 300 else line[:300] + " ..." for line in section.splitlines())


def _summary(report: Path) -> dict:
    """Operations tested, test cases generated and failures found, from the JSON report."""
    if not report.is_file():
        return {"operations": 0, "cases": 0, "failures": -1}
    doc = json.loads(report.read_text())
    return {
        "operations": doc["operations"]["tested"],
        "cases": doc["test_cases"]["generated"],
        "failures": len(doc["failures"]) + len(doc["errors"]),
        "phases": {name: phase["status"] for name, phase in doc["phases"].items()},
    }
