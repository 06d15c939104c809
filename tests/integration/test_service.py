"""The inspection service over real HTTP: content types, verdicts, TTA, batching, errors, auth,
readiness, promotion under load, backpressure and the serve config."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import time
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image
from ray import serve

from inspectline.config import StoreConfig
from inspectline.imaging import encode_png
from inspectline.registry import ModelRegistry
from inspectline.serving.auth import add_token, remove_token
from inspectline.serving.records import InspectJob, Judgement, ServedModel
from inspectline.store import FrameStore
from tests.helpers import make_cell
from tests.integration.conftest import REPO, app_config, own_app, store_config, wait_for

pytestmark = pytest.mark.integration
IDS = {"line_id": "line-1", "camera_id": "cam-1"}


def cell(seed: int = 0, defective: bool = True) -> np.ndarray:
    return make_cell(np.random.default_rng(seed), defective)


def encoded(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def post(url: str, body: bytes, content_type: str = "image/png", params: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/frames",
        content=body,
        headers={"Content-Type": content_type, **kw.pop("headers", {})},
        params=IDS | (params or {}),
        timeout=60,
        **kw,
    )


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)
def test_each_content_type(service, fmt, content_type):
    response = post(service.url, encoded(cell(1), fmt), content_type)
    assert response.status_code == 200, response.text
    assert response.json()["verdict"] in ("OK", "DEFECTIVE")


def test_multipart_upload_with_metadata_in_form_fields(service):
    files = {"image": ("frame.png", encoded(cell(2)), "image/png")}
    response = httpx.post(
        f"{service.url}/v1/frames",
        files=files,
        data={"line_id": "line-2", "camera_id": "cam-9", "frame_id": "f-1"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["line_id"], body["camera_id"], body["frame_id"]) == ("line-2", "cam-9", "f-1")


def test_image_modes_gray_rgb_rgba_16_bit(service):
    gray = cell(3)
    reference = post(service.url, encode_png(gray)).json()["defect_probability"]
    layouts = {
        "rgb": np.dstack([gray] * 3),
        "rgba": np.dstack([gray] * 3 + [np.full_like(gray, 255)]),
        "gray16": gray.astype(np.uint16) << 8,
    }
    for name, array in layouts.items():
        body = encoded(array) if name == "gray16" else encode_png(array)
        response = post(service.url, body)
        assert response.status_code == 200, (name, response.text)
        assert response.json()["defect_probability"] == pytest.approx(reference, abs=1e-4), name


def test_response_fields(service):
    response = post(
        service.url,
        encode_png(cell(4)),
        params={"part_id": "P-77", "frame_id": "frame-0001", "captured_at": "2026-11-22T08:00:00+00:00"},
    )
    body = response.json()
    assert set(body) >= {
        "frame_id",
        "verdict",
        "defect_probability",
        "confidence",
        "threshold",
        "model_version",
        "views",
        "latency_ms",
    }
    assert (
        body["frame_id"] == "frame-0001"
        and body["part_id"] == "P-77"
        and body["captured_at"].startswith("2026-11-22T08:00:00")
    )
    assert body["model_version"] == "v0001" and set(body["views"]) == {"identity", "hflip"}
    p, t = body["defect_probability"], body["threshold"]
    assert body["verdict"] == ("DEFECTIVE" if p >= t else "OK")
    assert body["confidence"] == pytest.approx(p if p >= t else 1 - p)
    assert body["latency_ms"] > 0
    headers = {"X-Line-Id": "line-3", "X-Camera-Id": "cam-3", "X-Frame-Id": "hdr-1"}
    via_headers = httpx.post(
        f"{service.url}/v1/frames",
        content=encode_png(cell(4)),
        headers={"Content-Type": "image/png", **headers},
        timeout=60,
    )
    assert (via_headers.json()["line_id"], via_headers.json()["frame_id"]) == ("line-3", "hdr-1")


def test_flip_tta_invariance(service):
    frame = cell(5)
    a = post(service.url, encode_png(frame)).json()
    b = post(service.url, encode_png(frame[:, ::-1].copy())).json()
    assert a["defect_probability"] == pytest.approx(b["defect_probability"], abs=1e-4)
    assert a["views"]["identity"] == pytest.approx(b["views"]["hflip"], abs=1e-4)


def test_batch_endpoint_judges_each_file_and_isolates_bad_ones(service):
    files = [
        ("files", ("frame.png", encode_png(cell(10 + i)), "image/png", {"X-Frame-Id": f"part-{i}"})) for i in range(3)
    ]
    files.append(("files", ("broken.png", encode_png(cell(1))[:50], "image/png")))
    response = httpx.post(f"{service.url}/v1/frames/batch", files=files, params=IDS, timeout=60)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 200, 422]
    assert [r["result"]["frame_id"] for r in results[:3]] == ["part-0", "part-1", "part-2"]
    assert results[3]["error"] == "undecodable_image" and "broken.png" in results[3]["detail"]


def test_replicas_form_batches_under_concurrency(service):
    handle = serve.get_deployment_handle("Inspector", app_name="inspectline")

    async def burst() -> list:
        jobs = [InspectJob(encode_png(cell(i)), ServedModel("v0001"), camera_id="cam-1") for i in range(32)]
        return await asyncio.gather(*(handle.judge.remote(job) for job in jobs))

    results = asyncio.run(burst())
    assert all(isinstance(r, Judgement) and r.model_version == "v0001" for r in results)
    assert max(r.batch_size for r in results) > 1


def test_one_inspector_call_judges_many_frames_each_with_its_own_verdict(service):
    """The gateway's grouped call answers every frame as a call of its own would, in order."""
    handle = serve.get_deployment_handle("Inspector", app_name="inspectline")
    images = [encode_png(cell(i)) for i in range(6)]
    images.insert(3, encode_png(cell(99))[:50])  # a truncated PNG
    jobs = [InspectJob(image, ServedModel("v0001"), camera_id="cam-1") for image in images]

    async def judged() -> tuple[list, list]:
        alone = [await handle.judge.remote(job) for job in jobs]
        return alone, await handle.judge_many.remote(jobs)

    alone, together = asyncio.run(judged())
    assert len(together) == len(jobs)
    assert together[3].kind == "undecodable_image" and alone[3].kind == "undecodable_image"
    for i in (0, 1, 2, 4, 5, 6):
        assert together[i].defect_probability == pytest.approx(alone[i].defect_probability, abs=1e-4)
        assert together[i].image_stats == pytest.approx(alone[i].image_stats)
    assert len({together[i].image_stats for i in (0, 1, 2, 4, 5, 6)}) == 6  # six different frames, each its own


def test_every_error_status_has_a_json_body(service):
    url = service.url
    assert_error(
        httpx.post(
            f"{url}/v1/frames",
            content=encode_png(cell()),
            headers={"Content-Type": "image/png"},
            params={"line_id": "l"},
        ),
        400,
        "invalid_request",
    )
    assert_error(post(url, encode_png(cell()), params={"camera_id": "cam 1 with spaces"}), 400, "invalid_request")
    assert_error(post(url, encode_png(cell()), params={"captured_at": "yesterday"}), 400, "invalid_request")
    assert_error(post(url, b""), 400, "invalid_request")
    too_big = assert_error(post(url, b"\0" * (21 * 2**20)), 413, "payload_too_large")
    assert "20,971,520" in too_big["detail"]

    def chunks():
        for _ in range(21):
            yield b"\0" * 2**20

    assert_error(
        httpx.post(f"{url}/v1/frames", content=chunks(), headers={"Content-Type": "image/png"}, params=IDS, timeout=60),
        413,
        "payload_too_large",
    )
    assert_error(post(url, b"hello", "text/plain"), 415, "unsupported_media_type")
    assert_error(post(url, encoded(cell(), "GIF")), 415, "unsupported_media_type")
    assert_error(post(url, encode_png(cell())[:60]), 422, "undecodable_image")
    bomb = assert_error(post(url, _png_header(100_000, 100_000)), 422, "image_too_large")
    assert "10,000,000,000 pixels" in bomb["detail"]
    assert_error(httpx.get(f"{url}/v1/nothing-here"), 404, "not_found")
    # nothing above took a replica down
    assert post(url, encode_png(cell())).status_code == 200
    status = serve.status().applications["inspectline"]
    assert status.status == "RUNNING" and all(d.status == "HEALTHY" for d in status.deployments.values())


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_openapi_and_model_endpoints(service):
    spec = httpx.get(f"{service.url}/openapi.json").json()
    assert {"/v1/frames", "/v1/frames/batch", "/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
    model = httpx.get(f"{service.url}/v1/model").json()
    assert model["version"] == "v0001" and model["classes"] == ["ok", "defective"] and 0 < model["threshold"] < 1
    assert "roc_auc" in model["metrics"]


def test_named_tokens_with_scopes(service, tmp_path):
    tokens = tmp_path / "tokens.yaml"
    camera, reviewer = add_token(tokens, "cam-line1", ["frames:write"]), add_token(tokens, "ana", ["review"])
    as_camera, as_reviewer = {"Authorization": f"Bearer {camera}"}, {"Authorization": f"Bearer {reviewer}"}
    try:
        service.reconfigure(tokens_file=tokens)
        wait_for(lambda: post(service.url, encode_png(cell())).status_code == 401, timeout_s=120, what="auth on")
        response = post(service.url, encode_png(cell()))
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert_error(post(service.url, encode_png(cell()), headers={"Authorization": "Bearer wrong"}), 403, "forbidden")
        assert post(service.url, encode_png(cell()), headers=as_camera).status_code == 200
        assert_error(httpx.get(f"{service.url}/v1/model", headers=as_camera), 403, "forbidden")  # cameras only post
        assert httpx.get(f"{service.url}/v1/model", headers=as_reviewer).status_code == 200
        assert_error(post(service.url, encode_png(cell()), headers=as_reviewer), 403, "forbidden")
        assert httpx.get(f"{service.url}/healthz").status_code == 200  # probes stay open
        assert httpx.get(f"{service.url}/readyz").status_code == 200
        # the running gateway reads the file again when it changes: a token revoked, another added, no redeploy
        remove_token(tokens, "cam-line1")
        other = {"Authorization": f"Bearer {add_token(tokens, 'cam-line2', ['frames:write'])}"}
        wait_for(lambda: post(service.url, encode_png(cell()), headers=as_camera).status_code == 403, what="revoked")
        wait_for(lambda: post(service.url, encode_png(cell()), headers=other).status_code == 200, what="added")
        assert httpx.get(f"{service.url}/v1/model", headers=as_reviewer).status_code == 200
    finally:
        service.restore()
    wait_for(lambda: post(service.url, encode_png(cell())).status_code == 200, what="auth off")


def test_readiness_before_and_after_the_model_loads(service, tmp_path, trained_run):
    fresh = ModelRegistry(tmp_path / "fresh")
    fresh.register(trained_run.checkpoint)
    other = app_config(fresh.root, name="fresh", route_prefix="/fresh", inspector_options={"num_replicas": 1})
    try:
        service.deploy(service.base_app, other)
        wait_for(lambda: httpx.get(f"{service.url}/fresh/healthz").status_code == 200, timeout_s=240, what="second app")
        not_ready = httpx.get(f"{service.url}/fresh/readyz")
        assert_error(not_ready, 503, "not_ready")
        assert "no model is in production" in not_ready.json()["detail"] and not_ready.headers["Retry-After"] == "1"
        refused = httpx.post(
            f"{service.url}/fresh/v1/frames",
            content=encode_png(cell()),
            headers={"Content-Type": "image/png"},
            params=IDS,
        )
        assert_error(refused, 503, "not_ready")
        fresh.promote("v0001")
        wait_for(lambda: httpx.get(f"{service.url}/fresh/readyz").status_code == 200, timeout_s=120, what="readiness")
        assert httpx.get(f"{service.url}/fresh/readyz").json()["model_version"] == "v0001"
        assert (
            httpx.post(
                f"{service.url}/fresh/v1/frames",
                content=encode_png(cell()),
                headers={"Content-Type": "image/png"},
                params=IDS,
            ).status_code
            == 200
        )
    finally:
        service.restore()


def test_backpressure_answers_503_with_retry_after_quickly(service):
    try:
        service.reconfigure(gateway={"max_inflight": 2}, inspector={"batch_wait_timeout_s": 0.2, "max_batch_size": 2})
        wait_for(lambda: _burst(service.url, 12)[1] > 0, timeout_s=90, what="the smaller limit")
        results, overloaded = _burst(service.url, 24)
        statuses = [status for status, _, _ in results]
        assert set(statuses) <= {200, 503} and statuses.count(200) >= 1 and overloaded >= 10
        for status, seconds, response in results:
            if status == 503:
                assert response.headers["Retry-After"] == "1" and response.json()["error"] == "overloaded"
                assert seconds < 3.0  # refused at once, not queued
    finally:
        service.restore()


def _burst(url: str, n: int) -> tuple[list[tuple[int, float, httpx.Response]], int]:
    body = encode_png(cell(8))

    async def one(client: httpx.AsyncClient) -> tuple[int, float, httpx.Response]:
        t0 = time.perf_counter()
        r = await client.post(f"{url}/v1/frames", content=body, headers={"Content-Type": "image/png"}, params=IDS)
        return r.status_code, time.perf_counter() - t0, r

    async def run() -> list:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n)) as client:
            return await asyncio.gather(*(one(client) for _ in range(n)))

    results = asyncio.run(run())
    return results, sum(1 for s, _, _ in results if s == 503)


def test_the_deployed_app_is_the_one_in_serve_config_yaml(service):
    """The fixture deployed the repo's serve_config.yaml with `serve run`; its deployments are running.

    Serve's status is as of the controller's last step (once a second, see ``BACKGROUND_LOOPS``): an
    Inspector an earlier test reconfigured can still read UPDATING for a step or two."""
    import yaml

    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    app = config["applications"][0]
    assert app["import_path"] == "inspectline.serving.app:build_app"
    status = serve.status().applications[app["name"]]
    assert set(status.deployments) == {d["name"] for d in app["deployments"]}

    def inspector() -> str:
        return serve.status().applications[app["name"]].deployments["Inspector"].status

    wait_for(lambda: inspector() == "HEALTHY", timeout_s=30, what=lambda: f"the Inspector HEALTHY, not {inspector()}")


def test_a_repeated_frame_id_returns_the_first_verdict_only_for_the_same_bytes(service):
    params = {"frame_id": "dup-0001", "camera_id": "cam-dup"}
    first = post(service.url, encode_png(cell(20)), params=params).json()
    again = post(service.url, encode_png(cell(20)), params=params).json()  # a retry
    assert first["duplicate"] is False and again["duplicate"] is True
    assert again["defect_probability"] == first["defect_probability"] and again["received_at"] == first["received_at"]
    conflict = assert_error(post(service.url, encode_png(cell(21)), params=params), 409, "frame_id_conflict")
    assert conflict["first_sha256"] == first["content_sha256"]
    other_camera = post(service.url, encode_png(cell(21)), params={**params, "camera_id": "cam-other"}).json()
    assert other_camera["duplicate"] is False

    async def concurrent() -> list[dict]:
        async with httpx.AsyncClient(timeout=60) as client:
            rs = await asyncio.gather(
                *(
                    client.post(
                        f"{service.url}/v1/frames",
                        content=encode_png(cell(22)),
                        headers={"Content-Type": "image/png"},
                        params=IDS | {"frame_id": "dup-0002"},
                    )
                    for _ in range(6)
                )
            )
        return [r.json() for r in rs]

    results = asyncio.run(concurrent())
    assert sum(not r["duplicate"] for r in results) == 1
    assert len({r["defect_probability"] for r in results}) == 1


def test_each_frame_gets_its_own_verdict_over_grpc_and_over_ray_actor_calls(service, trained_run, tmp_path):
    """``replica_calls``: the gateway's per-frame calls (to an inspector, to the line monitor) made as Ray actor
    calls give every frame the verdict the default gRPC calls give it, and every frame is stored either way."""
    registry, app = own_app(
        trained_run.checkpoint, tmp_path, "actorcalls", replicas=1, cpus=0.3, gateway={"replica_calls": "ray"}
    )
    bodies = [encode_png(cell(300 + i, defective=i % 2 == 0)) for i in range(12)]
    line = {"line_id": "line-calls", "camera_id": "cam-calls"}

    async def judge_all(url: str) -> list[dict]:
        async with httpx.AsyncClient(timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"{url}/v1/frames",
                        content=body,
                        headers={"Content-Type": "image/png"},
                        params=line | {"frame_id": f"calls-{i}"},
                    )
                    for i, body in enumerate(bodies)
                )
            )
        assert [r.status_code for r in responses] == [200] * len(bodies), [r.text for r in responses]
        return [r.json() for r in responses]

    stores = {
        name: FrameStore(StoreConfig.model_validate(store_config(root, name)))
        for name, root in (("inspectline", service.registry.root), ("actorcalls", registry.root))
    }
    try:
        service.deploy(service.base_app, app)
        wait_for(lambda: httpx.get(f"{service.url}/actorcalls/readyz").status_code == 200, 300, "the app")
        over_grpc = asyncio.run(judge_all(service.url))
        over_actor_calls = asyncio.run(judge_all(f"{service.url}/actorcalls"))
        for name, store in stores.items():
            wait_for(lambda s=store: s.count(line="line-calls") == len(bodies), 60, f"every frame in {name}'s store")
    finally:
        service.restore()
    for body, grpc_answer, actor_answer in zip(bodies, over_grpc, over_actor_calls, strict=True):
        assert grpc_answer["content_sha256"] == actor_answer["content_sha256"] == hashlib.sha256(body).hexdigest()
        assert actor_answer["defect_probability"] == pytest.approx(grpc_answer["defect_probability"], abs=1e-4)
    assert len({answer["defect_probability"] for answer in over_grpc}) > 1  # not one answer for every frame
