import shutil
import subprocess

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from inspectline.monitoring.metrics import CameraMetrics, LineMetrics
from tests.system_packages import needs

PROMTOOL = shutil.which("promtool")
# CI installs Prometheus (.ci/run); on a developer machine without it these checks are skipped.
needs_promtool = needs("prometheus")


def _exercised() -> bytes:
    m = LineMetrics()
    m.frames.labels("line-1", "cam-1", "OK").inc()
    m.errors.labels("undecodable_image").inc()
    m.latency.labels("line-1").observe(0.05)
    m.inference.observe(0.02)
    m.batch_size.observe(4)
    m.probability.labels("line-1", "cam-1").observe(0.2)
    m.confidence.labels("line-1", "cam-1").observe(0.8)
    m.disagreement.labels("line-1", "cam-1").observe(0.01)
    m.unsure_ratio.labels("line-1", "cam-1").set(0.0)
    m.model_info.labels("v0001", "resnet50", "openvino", "int8").set(1)
    for gauge in (m.drift_score, m.drift_p_value, m.drift_alarm):
        gauge.labels("line-1", "cam-1", "output").set(0.5)
    c = CameraMetrics()
    c.captured.labels("line-1", "cam-1").inc()
    c.post_seconds.labels("line-1", "cam-1").observe(0.03)
    return generate_latest(m.registry) + generate_latest(c.registry)


def test_names_follow_prometheus_conventions():
    families = list(text_string_to_metric_families(_exercised().decode()))
    assert families
    for family in families:
        assert family.name.startswith("inspect_"), family.name
        labels = {k for sample in family.samples for k in sample.labels}
        assert not labels & {"frame_id", "part_id", "frame", "part"}, family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples)
        if "duration" in family.name or "latency" in family.name:
            assert family.name.endswith("_seconds"), family.name


@needs_promtool
def test_promtool_reports_nothing_on_the_exposition():
    proc = subprocess.run(
        [PROMTOOL or "promtool", "check", "metrics"], input=_exercised(), capture_output=True, timeout=30
    )
    assert proc.returncode == 0 and proc.stdout.strip() == b"" and proc.stderr.strip() == b"", proc.stdout + proc.stderr
