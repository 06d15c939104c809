"""A promotion under load: every inspector replica warms the new version first, nothing fails, and every
answer names the version that judged it — checked against each version's own offline probabilities."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import pytest

from inspectline.imaging import decode_image, encode_png
from inspectline.predictor import Predictor
from inspectline.registry import ModelRegistry
from tests.helpers import make_cell
from tests.integration.conftest import app_config, wait_for

pytestmark = pytest.mark.integration
FRAMES = [encode_png(make_cell(np.random.default_rng(100 + i), i % 2 == 0)) for i in range(6)]


def test_promotion_under_load_warms_every_replica_and_every_answer_names_its_judge(
    service, trained_run, other_run, tmp_path
):
    registry = ModelRegistry(tmp_path / "models")
    registry.register(trained_run.checkpoint)
    registry.register(other_run.checkpoint)
    registry.promote("v0001")
    offline = {  # what each version says about each frame, judged in this process
        version: [
            Predictor.load(registry.resolve(version)).predict([decode_image(f)])[0].defect_probability for f in FRAMES
        ]
        for version in ("v0001", "v0002")
    }
    assert max(abs(a - b) for a, b in zip(offline["v0001"], offline["v0002"], strict=True)) > 1e-3  # truly different
    app = app_config(
        registry.root,
        name="promo",
        route_prefix="/promo",
        inspector_options={"num_replicas": 3, "ray_actor_options": {"num_cpus": 0.3}},
    )
    url = f"{service.url}/promo"
    stop = threading.Event()
    answers: list[list[tuple[int, str, float]]] = [[] for _ in range(3)]
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
                    answers[k].append((i, r.json()["model_version"], r.json()["defect_probability"]))
                else:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    try:
        service.deploy(service.base_app, app)
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout_s=300, what="the promo app")
        threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: all(len(a) >= 4 for a in answers), timeout_s=120, what="traffic before the promotion")
            registry.promote("v0002", reason="test: different weights")
            wait_for(
                lambda: all(a and a[-1][1] == "v0002" and sum(v == "v0002" for _, v, _ in a) >= 4 for a in answers),
                timeout_s=120,
                what="the switch",
            )
        finally:
            stop.set()
            for t in threads:
                t.join()
    finally:
        service.restore()
    assert failures == []
    for sequence in answers:
        versions = [v for _, v, _ in sequence]
        switch = versions.index("v0002")
        assert set(versions[:switch]) == {"v0001"} and set(versions[switch:]) == {"v0002"}, versions
        for i, version, p in sequence:  # the named version did judge it
            assert p == pytest.approx(offline[version][i], abs=1e-4), (i, version)
