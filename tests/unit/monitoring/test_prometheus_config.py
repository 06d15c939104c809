"""The files under grafana/ and the library that runs them, without a running service.

promtool accepts the scrape config and the alert rules and passes the rules' unit tests; every alert
is unit-tested; the dashboard is Grafana JSON whose every panel has a query on the provisioned data
source, every query parses as PromQL and names only metrics inspectline exports; the provisioning
files lead a plain Grafana to the board. The integration test (tests/integration/test_prometheus.py)
then runs every query against real data.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from inspectline.errors import ConfigError, InspectError
from inspectline.monitoring.metrics import CameraMetrics, ChallengeMetrics, LineMetrics, PartMetrics
from inspectline.monitoring.prometheus import (
    GRAFANA_BUILTINS,
    dashboard_queries,
    find_prometheus,
    start_prometheus,
    substitute,
)
from tests.system_packages import needs
from tests.unit.monitoring.test_metrics import PROMTOOL, needs_promtool

REPO = Path(__file__).resolve().parents[3]
GRAFANA = REPO / "grafana"
PROMETHEUS_CONFIG = GRAFANA / "prometheus" / "prometheus.yml"
ALERTS = GRAFANA / "prometheus" / "alerts.yml"
ALERTS_TEST = GRAFANA / "prometheus" / "alerts_test.yml"
DASHBOARD = GRAFANA / "dashboards" / "inspection-line.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "inspectline.yml"
VARIABLES = {"line": "line-1", "camera": "cam-1", **GRAFANA_BUILTINS}
INSPECT = str(Path(sys.executable).with_name("inspect"))

needs_prometheus = needs("prometheus")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL or "promtool", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def board() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict]:
    return [p for p in board()["panels"] if p["type"] != "row"]


def exported_metric_names() -> set[str]:
    """Every series name the service and the camera adapters can expose (histograms as _bucket/_sum/_count)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for registry in (m().registry for m in (LineMetrics, PartMetrics, ChallengeMetrics, CameraMetrics)):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


# ----------------------------------------------------------------------------- promtool


@needs_promtool
def test_promtool_accepts_the_scrape_config_and_the_rules_it_loads():
    proc = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout and f"{len(alert_rules())} rules found" in proc.stdout


@needs_promtool
def test_promtool_accepts_the_alert_rules():
    proc = promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0 and f"SUCCESS: {len(alert_rules())} rules found" in proc.stdout, (
        proc.stdout + proc.stderr
    )


@needs_promtool
def test_the_alert_unit_tests_pass():
    proc = promtool("test", "rules", str(ALERTS_TEST))
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def test_every_alert_is_unit_tested_firing_and_quiet():
    alerts = {rule["alert"] for rule in alert_rules()}
    cases = [case for test in load_yaml(ALERTS_TEST)["tests"] for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert firing == alerts, (
        f"alerts without a firing test: {alerts - firing}; tests of unknown alerts: {firing - alerts}"
    )
    assert quiet == alerts, f"alerts without a not-firing test: {alerts - quiet}"
    assert load_yaml(ALERTS_TEST)["rule_files"] == [ALERTS.name]


def test_every_alert_has_a_severity_and_says_where():
    service_wide = {"InspectErrorRateHigh", "InspectServiceDown"}  # errors and `up` carry no line label
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        summary, description = rule["annotations"]["summary"], rule["annotations"]["description"]
        assert len(summary) > 20 and len(description) > 80, name
        if name not in service_wide:
            assert "{{ $labels.line }}" in summary and "{{ $labels.line }}" in description, name
        if re.search(r"\bcamera\b", rule["expr"]):
            assert "{{ $labels.camera }}" in description, name


def test_the_alerts_watch_the_jobs_the_config_scrapes():
    config = load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == [ALERTS.name]  # resolved next to prometheus.yml
    jobs = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]] for job in config["scrape_configs"]
    }
    assert jobs["inspectline"] == ["localhost:8000"]
    assert len(jobs["inspectline-cameras"]) >= 1 and all(
        re.fullmatch(r"localhost:91\d\d", t) for t in jobs["inspectline-cameras"]
    )
    referenced = set(re.findall(r'job="([^"]+)"', ALERTS.read_text()))
    assert referenced and referenced <= set(jobs)


# ----------------------------------------------------------------------------- dashboard


def test_the_dashboard_is_grafana_json_with_line_and_camera_variables():
    b = board()
    assert b["uid"] and b["title"] and b["schemaVersion"] >= 36 and b["id"] is None
    variables = {v["name"]: v for v in b["templating"]["list"]}
    assert set(variables) == {"datasource", "line", "camera"}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["line"]["definition"] == "label_values(inspect_frames_total, line)"
    assert variables["camera"]["definition"] == 'label_values(inspect_frames_total{line=~"$line"}, camera)'
    for name in ("line", "camera"):
        assert variables[name]["includeAll"] and variables[name]["multi"] and variables[name]["allValue"] == ".*"


def test_every_panel_has_a_query_on_the_dashboard_data_source_and_a_place():
    ds = {"type": "prometheus", "uid": "${datasource}"}
    ids, cells = set(), set()
    for panel in board()["panels"]:
        assert panel["id"] not in ids, panel["title"]
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == ds and panel["targets"], panel["title"]
        assert panel.get("description"), f"{panel['title']} has no description"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == ds, panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]


def test_rate_windows_use_grafana_intervals():
    for panel in panels():
        for target in panel["targets"]:
            for window in re.findall(r"\[([^\]]+)\]", target["expr"]):
                assert window in ("$__rate_interval", "$__range"), (
                    f"{panel['title']}: fixed window [{window}] in {target['expr']}"
                )


def test_the_board_shows_what_quality_engineers_watch():
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
    everything = " ".join(exprs.values())
    for metric in (
        "inspect_frames_total",
        "inspect_defect_ratio",
        "inspect_reference_defect_ratio",
        "inspect_unsure_ratio",
        "inspect_confidence_bucket",
        "inspect_drift_score",
        "inspect_drift_p_value",
        "inspect_drift_alpha",
        "inspect_drift_alarm",
        "inspect_errors_total",
        "inspect_batch_size",
        "inspect_inference_cpu_seconds_total",
        "inspect_camera_frames_sent_total",
        "inspect_camera_retries_total",
        "inspect_camera_spooled_frames",
        "inspect_camera_frames_dropped_total",
        "inspect_parts_total",
        "inspect_parts_deadline_missed_total",
        "inspect_part_decision_seconds_bucket",
        "inspect_outbox_backlog",
        "inspect_challenge_passed",
        "inspect_challenge_last_run_timestamp_seconds",
    ):
        assert metric in everything, f"no panel shows {metric}"
    latency = exprs["Latency p50 / p99 (end to end)"]
    assert (
        "histogram_quantile(0.5," in latency
        and "histogram_quantile(0.99," in latency
        and "inspect_request_duration_seconds_bucket" in latency
    )
    assert "sum by (line, camera) (rate(inspect_frames_total" in exprs["Throughput per camera"]
    assert "inspect_reference_defect_ratio" in exprs["Defect rate with baseline"]
    assert "by (verdict)" in exprs["Verdict mix"]
    assert "by (verdict)" in exprs["Parts by verdict"] and "by (line, output)" in exprs["Outbox backlog per line"]
    assert "histogram_quantile(0.95," in exprs["First view to verdict p95"]
    assert "inspect_drift_alpha" in exprs["Drift p-value per signal (alarm below alpha)"]
    heatmaps = [p for p in panels() if p["type"] == "heatmap" and "inspect_confidence_bucket" in exprs[p["title"]]]
    assert heatmaps and heatmaps[0]["targets"][0]["format"] == "heatmap"
    annotations = [a for a in board()["annotations"]["list"] if a.get("expr")]
    assert (
        len(annotations) == 1
        and "changes(inspect_model_version[" in annotations[0]["expr"]
        and annotations[0]["enable"]
    )


def test_every_query_names_only_metrics_inspectline_exports():
    exported = exported_metric_names()
    queries = [q.expr for q in dashboard_queries(DASHBOARD, VARIABLES)] + [rule["expr"] for rule in alert_rules()]
    for variable in board()["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    for expr in queries:
        unknown = set(re.findall(r"\binspect_\w+", expr)) - exported
        assert not unknown, f"{sorted(unknown)} in {expr!r} is not defined in inspectline/monitoring/metrics.py"


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path):
    # promtool has no offline query parser, but it parses every expression of a rules file.
    queries = dashboard_queries(DASHBOARD, VARIABLES)
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:query_{i}", "expr": q.expr} for i, q in enumerate(queries)],
            }
        ]
    }
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump(rules))
    proc = promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    assert proc.returncode == 0 and f"{len(queries)} rules found" in proc.stdout, proc.stdout + proc.stderr
    # ...and it does reject a broken one, so the check above means something.
    rules["groups"][0]["rules"].append(
        {"record": "dashboard:broken", "expr": "sum by (line (rate(inspect_frames_total[1m]))"}
    )
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(rules))
    assert promtool("check", "rules", str(tmp_path / "broken.yml")).returncode != 0


# ----------------------------------------------------------------------------- provisioning


def test_provisioning_points_a_plain_grafana_at_the_board(monkeypatch: pytest.MonkeyPatch):
    sources = load_yaml(DATASOURCES)["datasources"]
    assert len(sources) == 1
    source = sources[0]
    datasource_variable = next(v for v in board()["templating"]["list"] if v["name"] == "datasource")
    assert source["type"] == "prometheus" and source["isDefault"]
    assert source["uid"] == datasource_variable["current"]["value"]
    assert source["url"] == "http://localhost:9090"  # where `inspect monitor` listens by default
    assert source["jsonData"]["timeInterval"] == load_yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]

    providers = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert len(providers) == 1 and providers[0]["type"] == "file"
    # Grafana expands environment variables in provisioning files; the README starts it with this one.
    monkeypatch.setenv("GF_PATHS_PROVISIONING", str(GRAFANA / "provisioning"))
    folder = Path(os.path.expandvars(providers[0]["options"]["path"])).resolve()
    assert folder == DASHBOARD.parent and DASHBOARD in folder.glob("*.json")


# ----------------------------------------------------------------------------- library


def test_dashboard_queries_substitute_every_variable():
    queries = dashboard_queries(DASHBOARD, VARIABLES)
    targets = sum(len(p["targets"]) for p in panels())
    assert len(queries) == targets + 1  # every panel target, then the annotation
    assert all("$" not in q.expr for q in queries)
    assert any('line=~"line-1", camera=~"cam-1"' in q.expr and "[1m]" in q.expr for q in queries)
    assert queries[-1].panel == "annotation: Model version changes"
    assert len(dashboard_queries(DASHBOARD, VARIABLES, annotations=False)) == targets
    with pytest.raises(ConfigError, match=r"\$camera"):
        dashboard_queries(DASHBOARD, {"line": "line-1", **GRAFANA_BUILTINS})


def test_substitute_knows_grafana_variable_forms_and_collapsed_rows():
    values = {"line": "l1", "camera": "c1", "__rate_interval": "30s"}
    assert substitute('rate(x{line=~"$line", camera=~"${camera}", l=~"${line:regex}"}[$__rate_interval])', values) == (
        'rate(x{line=~"l1", camera=~"c1", l=~"l1"}[30s])'
    )
    collapsed = {
        "panels": [
            {
                "type": "row",
                "collapsed": True,
                "panels": [{"title": "inside", "targets": [{"refId": "A", "expr": 'up{job=~"$line"}'}]}],
            }
        ]
    }
    assert [(q.panel, q.expr) for q in dashboard_queries(collapsed, values)] == [("inside", 'up{job=~"l1"}')]


def test_a_missing_prometheus_says_how_to_install_it(tmp_path: Path):
    with pytest.raises(InspectError, match=r"apt-get install prometheus.*prometheus\.io/download"):
        find_prometheus("prometheus-not-installed-here")
    with pytest.raises(InspectError, match="apt-get install prometheus"):
        start_prometheus(PROMETHEUS_CONFIG, data_dir=tmp_path / "data", binary="prometheus-not-installed-here")


def test_inspect_monitor_without_prometheus_explains_and_fails(tmp_path: Path):
    env = {**os.environ, "PATH": str(tmp_path)}  # an empty folder: no prometheus binary to find
    proc = subprocess.run(
        [INSPECT, "monitor", "--data-dir", str(tmp_path / "data")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "apt-get install prometheus" in proc.stderr and "https://prometheus.io/download/" in proc.stderr


@needs_prometheus
def test_a_config_prometheus_refuses_is_reported_with_its_reason(tmp_path: Path):
    config = tmp_path / "prometheus.yml"
    config.write_text("scrape_configs:\n  - job_name: inspectline\n    scrape_interval: often\n")
    with pytest.raises(
        InspectError, match=r"exited with status \d+ before it was ready(.|\n)*not a valid duration string(.|\n)*often"
    ):
        start_prometheus(config, data_dir=tmp_path / "data", port=_free_port(), log_file=tmp_path / "prometheus.log")
    with pytest.raises(ConfigError, match="does not exist"):
        start_prometheus(tmp_path / "missing.yml", data_dir=tmp_path / "data")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
