"""A promotion under load: every inspector replica warms the new version first, nothing fails, and every
answer names the version that judged it — checked against each version's own offline probabilities.

The promotion is also one between engines: v0001 runs its checkpoint in torch fp32, v0002 has an
OpenVINO INT8 export that passed parity, which the replicas' ``engine: auto`` must pick up with the
promotion (hot reload works the same for exported models). The tiny test model is not one INT8 keeps
every verdict of, so the export is held to a low agreement bound; the test is about serving it.

It runs in both layouts: Inspector replicas behind one Gateway, which switches every replica at one request
boundary, and Gateway replicas that judge their own frames (``judge: gateway``), which each notice the
promotion on their own poll and switch together at the instant the registry's record of it plus
``switch_delay_s`` (as shipped in ``deploy/serve_config.gateway-judges.yaml``) gives: no answer from the new
version before it, and no client, whichever replica takes its next post, back on the old one after it.
"""

from __future__ import annotations

import threading
from datetime import datetime

import httpx
import numpy as np
import pytest

from inspectline.engines import EnginePreference
from inspectline.export import ExportRequest, export_version
from inspectline.imaging import decode_image, encode_png
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry
from tests.helpers import make_cell
from tests.integration.conftest import app_config, wait_for

pytestmark = pytest.mark.integration
FRAMES = [encode_png(make_cell(np.random.default_rng(100 + i), i % 2 == 0)) for i in range(6)]


@pytest.mark.parametrize("judge", ["inspector", "gateway"])
def test_promotion_under_load_warms_every_replica_and_every_answer_names_its_judge(
    service, trained_run, other_run, tmp_path, judge
):
    registry = ModelRegistry(tmp_path / "models")
    registry.register(trained_run.checkpoint)
    registry.register(other_run.checkpoint)
    registry.promote("v0001")
    int8 = ExportRequest(format="openvino", precision="int8", min_agreement=0.01, calibration_frames=20)
    export_version(registry, "v0002", int8.model_copy(update={"measure_speed": False}))
    offline, engines = {}, {}  # what each version says about each frame, judged in this process as a replica would
    for version in ("v0001", "v0002"):
        predictor = Predictor.from_version(registry.get(version), EnginePreference(torch_autocast=False), threads=1)
        engines[version] = {"engine": predictor.engine.name, "precision": predictor.engine.precision}
        offline[version] = [predictor.predict([decode_image(f)])[0].defect_probability for f in FRAMES]
    assert engines == {
        "v0001": {"engine": "torch", "precision": "fp32"},
        "v0002": {"engine": "openvino", "precision": "int8"},
    }
    assert max(abs(a - b) for a, b in zip(offline["v0001"], offline["v0002"], strict=True)) > 1e-3  # truly different
    replicas = 3 if judge == "inspector" else 2
    app = app_config(
        registry.root,
        name=f"promo-{judge}",
        route_prefix=f"/promo-{judge}",
        inspector_options={"num_replicas": replicas, "ray_actor_options": {"num_cpus": 0.3}},
        judge=judge,
    )
    url = f"{service.url}/promo-{judge}"
    stop = threading.Event()
    answers: list[list[tuple[int, str, float, datetime]]] = [[] for _ in range(3)]
    failures: list[str] = []

    def client(k: int) -> None:
        with httpx.Client(timeout=60) as http:
            n = 0
            while not stop.is_set():
                i = (k + n) % len(FRAMES)
                n += 1
                r = http.post(
                    f"{url}/v1/frames",
                    content=FRAMES[i],
                    headers={"Content-Type": "image/png"},
                    params={"line_id": "promo", "camera_id": f"cam-{k}"},
                )
                if r.status_code == 200:
                    v = r.json()
                    answered = datetime.fromisoformat(v["received_at"])
                    answers[k].append((i, v["model_version"], v["defect_probability"], answered))
                else:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    try:
        service.deploy(service.base_app, app)
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout_s=300, what="the promo app")
        served = {v: httpx.get(f"{url}/v1/model").json() for v in ("v0001",)}
        threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(len(a) >= 4 for a in answers), timeout_s=120, what="traffic before the promotion")
            promoted = registry.promote("v0002", reason="test: different weights")
            wait_for(
                lambda: all(a and a[-1][1] == "v0002" and sum(v == "v0002" for _, v, _, _ in a) >= 4 for a in answers),
                timeout_s=120,
                what="the switch",
            )
            served["v0002"] = httpx.get(f"{url}/v1/model").json()
        finally:
            stop.set()
            for t in threads:
                t.join()
    finally:
        service.restore()
    assert failures == []
    for version, model in served.items():  # /v1/model names the engine that judges each version
        assert model["version"] == version
        assert {k: model["engine"][k] for k in ("engine", "precision")} == engines[version], model["engine"]
    if judge == "gateway":  # the instant every Gateway replica switches at, from the registry's record
        delay = next(d for d in app["deployments"] if d["name"] == "Gateway")["user_config"]["switch_delay_s"]
        assert delay > 0.3  # above the test's reload_interval_s, as the shipped config is above its own
        instant = datetime.fromisoformat(promoted["updated_at"]).timestamp() + delay
        first_new = min(t for a in answers for _, v, _, t in a if v == "v0002")
        assert first_new.timestamp() >= instant, (first_new, instant)  # no replica switched early
    for sequence in answers:
        versions = [v for _, v, _, _ in sequence]
        switch = versions.index("v0002")
        assert set(versions[:switch]) == {"v0001"}, versions
        assert set(versions[switch:]) == {"v0002"}, versions  # a client's next post never goes back to v0001
        for i, version, p, _ in sequence:  # the named version did judge it
            assert p == pytest.approx(offline[version][i], abs=1e-4), (i, version)
