"""A real Prometheus (the Debian package) on loopback, scraping the real service and a camera adapter's
metrics: the alert rules load and evaluate without error, and every query of the Grafana dashboard
returns data once a line has sent frames. Also `inspect monitor` as a user runs it: in the
foreground with the shipped config until Ctrl-C.

Prometheus scrapes every second here (the shipped config says 5 s), so a few seconds after the last
frame every panel has something to show. Every process started here is stopped, also on failure.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import start_http_server

from inspectline.challenge import ChallengeResult, run_challenge
from inspectline.config import PlantConfig
from inspectline.monitoring.metrics import CameraMetrics
from inspectline.monitoring.prometheus import GRAFANA_BUILTINS, PrometheusServer, dashboard_queries, start_prometheus
from tests.helpers import write_dataset
from tests.integration.conftest import PARTS_CAMERAS, PARTS_LINE, free_port, wait_for
from tests.integration.test_service_metrics import post_many
from tests.integration.test_service_parts import post_views
from tests.unit.monitoring.test_prometheus_config import ALERTS, DASHBOARD, PROMETHEUS_CONFIG, REPO, needs_prometheus

pytestmark = [pytest.mark.integration, needs_prometheus]

LINE = f"line-prom-{uuid.uuid4().hex[:6]}"
CAMERA = "cam-prom"
DRIFT_WINDOW = next(
    d["user_config"]["drift_window"]
    for d in yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["deployments"]
    if d["name"] == "LineMonitor"
)
FRAMES = DRIFT_WINDOW + 20  # a full drift window, so drift gauges exist for CAMERA
# What Grafana would put in the queries for this line (and the parts line, selected with it) and camera;
# windows short enough that the frames just posted are inside them, long enough for several 1 s scrapes.
VARIABLES = {
    **GRAFANA_BUILTINS,
    "line": f"({LINE}|{PARTS_LINE})",
    "camera": CAMERA,
    "__rate_interval": "1m",
    "__range": "5m",
}
INSPECT = str(Path(sys.executable).with_name("inspect"))
GOLDEN_SET = "prom-golden"


def query(prometheus: PrometheusServer, expr: str, **params: str | float) -> list[dict]:
    """An instant query through the HTTP API; its result vector."""
    response = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr, **params}, timeout=30)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {response.status_code} {body}"
    return body["data"]["result"]


@pytest.fixture(scope="module")
def camera_adapter_metrics() -> Iterator[str]:
    """A stand-in camera adapter: CameraMetrics on its own port, moving like a live adapter's; yields host:port."""
    metrics = CameraMetrics()
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    labels = (LINE, CAMERA)
    metrics.dropped.labels(*labels)  # present and 0, as on a healthy adapter
    metrics.reconnects.labels(*labels).inc()  # the stream dropped once
    metrics.rejected.labels(*labels, "415").inc()
    stop = threading.Event()

    def capture_and_send() -> None:
        n = 0
        while not stop.wait(0.1):
            n += 1
            metrics.captured.labels(*labels).inc()
            metrics.sent.labels(*labels).inc()
            metrics.post_seconds.labels(*labels).observe(0.01 * (1 + n % 7))
            metrics.spooled.labels(*labels).set(n % 3)
            if n % 5 == 0:
                metrics.retries.labels(*labels).inc()

    feeder = threading.Thread(target=capture_and_send, daemon=True)
    feeder.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        feeder.join(timeout=10)
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def prometheus(service, camera_adapter_metrics: str, tmp_path_factory) -> Iterator[PrometheusServer]:
    """Prometheus with the shipped config, rules and jobs, pointed at the test's service and adapter."""
    folder = tmp_path_factory.mktemp("prometheus")
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / name) for name in config["rule_files"]]
    targets = {"inspectline": service.url.removeprefix("http://"), "inspectline-cameras": camera_adapter_metrics}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]  # a new job must get a target here
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    server = start_prometheus(
        folder / "prometheus.yml", data_dir=folder / "data", port=free_port(), log_file=folder / "prometheus.log"
    )
    try:
        # Prometheus hands new targets to its scrapers a few seconds after start; wait for a first scrape of both.
        wait_for(
            lambda: (
                sorted(s["metric"]["job"] for s in query(server, "up == 1")) == ["inspectline", "inspectline-cameras"]
            ),
            timeout_s=60,
            what="Prometheus scraping the service and the adapter",
        )
        yield server
    finally:
        server.stop()
        assert server.process.poll() is not None


def run_golden_set(service, folder: Path) -> ChallengeResult:
    """``inspect challenge --set GOLDEN_SET`` on PARTS_LINE through the service: two good and two bad cells."""
    write_dataset(folder, n_per_class=2, seed=7)
    station = {"name": "final", "cameras": list(PARTS_CAMERAS)}
    golden = {"path": str(folder), "timeout_s": 120}  # posted as the line's first camera, with no part id
    line = {"stations": [station], "challenges": {GOLDEN_SET: golden}}
    plant = PlantConfig.model_validate({"lines": {PARTS_LINE: line}})
    result = run_challenge(plant, GOLDEN_SET, registry_root=service.registry.root, actor="test", url=service.url)
    assert result.status != "error" and len(result.samples) == 4, result.summary()
    return result


@dataclass(frozen=True)
class Traffic:
    started: float  # unix time before the first frame
    settled: float  # unix time at which Prometheus had scraped every frame


@pytest.fixture(scope="module")
def line_traffic(service, prometheus: PrometheusServer, tmp_path_factory) -> Iterator[Traffic]:
    """A promotion and a rollback (model version annotations), FRAMES frames on LINE/CAMERA, a bad frame, and
    on PARTS_LINE one part with every view and one whose last view never comes (the Parts row) and a
    challenge run through the service (the Challenge runs row)."""
    started = time.time()
    try:
        service.registry.promote("v0002", reason="test_prometheus: a version change for the board's annotations")
        wait_for(
            lambda: httpx.get(f"{service.url}/readyz").json().get("model_version") == "v0002",
            timeout_s=120,
            what="v0002 served",
        )
        post_many(service.url, LINE, 8, camera="cam-promotion")
        wait_for(
            lambda: [s["value"][1] for s in query(prometheus, "inspect_model_version")] == ["2"],
            what="Prometheus seeing v0002",
        )
        time.sleep(
            3
        )  # served for a few scrapes, as any real version is: a 1 s version can fall between annotation steps
    finally:
        service.registry.set_shadow("v0002", reason="test_prometheus: data for the shadow panels")
        service.registry.promote("v0001", reason="test_prometheus: back to the session's production version")
    wait_for(
        lambda: httpx.get(f"{service.url}/readyz").json().get("model_version") == "v0001",
        timeout_s=120,
        what="v0001 served again",
    )
    try:
        results = post_many(service.url, LINE, FRAMES, camera=CAMERA)
        wait_for(
            lambda: query(prometheus, f'sum(inspect_shadow_frames_total{{line="{LINE}"}})'),
            timeout_s=60,
            what="shadow verdicts scraped",
        )
    finally:
        service.registry.set_shadow(None)
    assert {r["model_version"] for r in results} == {"v0001"}
    bad = httpx.post(
        f"{service.url}/v1/frames",
        content=b"\x89PNG\r\n\x1a\nbroken",
        headers={"Content-Type": "image/png"},
        params={"line_id": LINE, "camera_id": CAMERA, "frame_id": "broken"},
    )
    assert bad.status_code == 422
    part = f"P-prom-{uuid.uuid4().hex[:6]}"
    post_views(service.url, part, PARTS_CAMERAS)
    post_views(service.url, f"{part}-missed", PARTS_CAMERAS[:2], defective=None)
    challenge = run_golden_set(service, tmp_path_factory.mktemp("golden"))

    seen: dict[str, list] = {}

    def scraped() -> bool:
        seen["frames"] = query(prometheus, f'sum(inspect_frames_total{{line="{LINE}", camera="{CAMERA}"}})')
        seen["window"] = query(prometheus, f'inspect_drift_window_frames{{line="{LINE}", camera="{CAMERA}"}}')
        seen["missed"] = query(prometheus, f'sum(inspect_parts_deadline_missed_total{{line="{PARTS_LINE}"}})')
        seen["challenge"] = query(prometheus, f'inspect_challenge_passed{{line="{PARTS_LINE}", set="{GOLDEN_SET}"}}')
        return (
            all(seen.values())
            and float(seen["frames"][0]["value"][1]) == FRAMES
            and seen["window"][0]["value"][1] == str(DRIFT_WINDOW)
        )

    def last_seen() -> str:
        series = query(prometheus, f'inspect_frames_total{{line="{LINE}", camera="{CAMERA}"}}')
        return f"last seen {seen}; the frame series {series}; the service's own {scrape_lines(service.url, LINE)}"

    expected = f"{FRAMES} frames, a drift window of {DRIFT_WINDOW}, a deadline miss and a challenge run"
    wait_for(scraped, timeout_s=60, what=lambda: f"Prometheus scraping {expected}; {last_seen()}")
    assert float(seen["challenge"][0]["value"][1]) == float(challenge.passed), f"{challenge.summary()}; {seen}"
    time.sleep(3)  # a few more scrapes, so every rate() window holds several samples after the last frame
    yield Traffic(started=started, settled=time.time())


def test_every_alert_rule_loads_and_evaluates_on_live_data(prometheus: PrometheusServer, line_traffic: Traffic):
    expected = {g["name"]: [r["alert"] for r in g["rules"]] for g in yaml.safe_load(ALERTS.read_text())["groups"]}

    def loaded() -> dict:
        return {g["name"]: g for g in httpx.get(f"{prometheus.url}/api/v1/rules", timeout=30).json()["data"]["groups"]}

    groups = loaded()
    assert {name: [r["name"] for r in g["rules"]] for name, g in groups.items()} == expected
    assert all(g["file"] == str(ALERTS) for g in groups.values())
    # Evaluated since the last frame: a rule that errors on real series (say, many-to-many matching)
    # has health "err" and says why.
    time.sleep(2)
    rules = [r for g in loaded().values() for r in g["rules"]]
    assert all(r["type"] == "alerting" for r in rules)
    assert [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    service_down = next(r for r in rules if r["name"] == "InspectServiceDown")
    assert service_down["state"] == "inactive"  # the service is up, so its `up` series is 1


def test_every_panel_query_of_the_dashboard_returns_data(prometheus: PrometheusServer, line_traffic: Traffic):
    queries = dashboard_queries(DASHBOARD, VARIABLES, annotations=False)
    assert len(queries) >= 30
    empty, undefined = [], []
    for q in queries:
        result = query(prometheus, q.expr, time=line_traffic.settled)
        values = [float(sample["value"][1]) for sample in result]
        if not values:
            empty.append(f"{q.panel} [{q.ref_id}]: {q.expr}")
        elif not any(math.isfinite(v) for v in values):
            undefined.append(f"{q.panel} [{q.ref_id}]: {q.expr} -> {values}")
    assert empty == [], "queries without data:\n" + "\n".join(empty)
    assert undefined == [], "queries with only NaN/Inf:\n" + "\n".join(undefined)


def test_line_and_camera_variables_and_model_annotations_have_values(
    prometheus: PrometheusServer, line_traffic: Traffic
):
    # label_values(inspect_frames_total, line) and label_values(inspect_frames_total{line=~"$line"}, camera)
    lines = httpx.get(
        f"{prometheus.url}/api/v1/label/line/values", params={"match[]": "inspect_frames_total"}, timeout=30
    ).json()["data"]
    cameras = httpx.get(
        f"{prometheus.url}/api/v1/label/camera/values",
        params={"match[]": f'inspect_frames_total{{line=~"{LINE}"}}'},
        timeout=30,
    ).json()["data"]
    assert LINE in lines and set(cameras) == {CAMERA, "cam-promotion"}
    # The annotation query over the test's time range, as Grafana runs it: both version changes show.
    (annotation,) = [q for q in dashboard_queries(DASHBOARD, VARIABLES) if q.panel.startswith("annotation:")]
    response = httpx.get(
        f"{prometheus.url}/api/v1/query_range",
        timeout=30,
        params={"query": annotation.expr, "start": line_traffic.started, "end": line_traffic.settled, "step": "1s"},
    )
    versions = {series["metric"]["version"] for series in response.json()["data"]["result"]}
    history = httpx.get(
        f"{prometheus.url}/api/v1/query_range",
        timeout=30,
        params={
            "query": "inspect_model_version",
            "start": line_traffic.started,
            "end": line_traffic.settled,
            "step": "1s",
        },
    ).json()
    assert versions == {"v0001", "v0002"}, (
        f"annotations for {versions}; inspect_model_version: {history['data']['result']}"
    )


def test_inspect_monitor_runs_prometheus_in_the_foreground_until_ctrl_c(tmp_path: Path):
    port = free_port()
    out, err = (tmp_path / "stdout").open("w"), (tmp_path / "stderr").open("w")
    # Its own session: Ctrl-C is sent to the process group, as a terminal does, and nothing outlives the test.
    proc = subprocess.Popen(
        [INSPECT, "monitor", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        cwd=REPO,
        stdout=out,
        stderr=err,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, timeout_s=60, what="inspect monitor"
        )
        wait_for(
            lambda: f"Prometheus up at {url}" in (tmp_path / "stdout").read_text(),
            timeout_s=10,
            what="the ready message",
        )
        groups = httpx.get(f"{url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert {g["name"] for g in groups} == {g["name"] for g in yaml.safe_load(ALERTS.read_text())["groups"]}

        def targets() -> set[str]:
            return {
                t["scrapeUrl"] for t in httpx.get(f"{url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
            }

        wait_for(
            lambda: targets(), timeout_s=30, what="the scrape targets"
        )  # handed to the scrapers a few seconds after start
        assert {"http://localhost:8000/metrics", "http://localhost:9101/metrics"} <= targets()
        assert (tmp_path / "data").is_dir()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0, (tmp_path / "stderr").read_text()[-3000:]
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/-/ready", timeout=2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever of the group is left: the CLI or its Prometheus
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        out.close()
        err.close()


def scrape_lines(url: str, line: str) -> list[str]:
    """The service's exposition lines that name ``line``: what a failed wait saw at the source."""
    return [row for row in httpx.get(f"{url}/metrics", timeout=30).text.splitlines() if f'line="{line}"' in row]
