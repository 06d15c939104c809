"""The gateway's HTTP contract, in process: verdicts, the 409 rule, scopes on every route, 4xx for bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from inspectline.imaging import encode_png
from inspectline.serving.http import ERRORS
from inspectline.serving.line_routes import router as line_router
from inspectline.serving.routes import router
from tests.helpers import make_cell
from tests.unit.serving.conftest import build_gateway

IDS = {"line_id": "line-1", "camera_id": "cam-1"}


def png(seed: int = 0, defective: bool = True) -> bytes:
    return encode_png(make_cell(np.random.default_rng(seed), defective))


def encoded(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def post(client, body: bytes, content_type: str = "image/png", **params):
    return client.post("/v1/frames", content=body, headers={"Content-Type": content_type}, params=IDS | params)


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and body["detail"], body
    return body


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("BMP", "image/bmp"), ("TIFF", "image/tiff")],
)
def test_each_image_type_gets_a_verdict(gateway, fmt, content_type):
    frame = make_cell(np.random.default_rng(1), True)
    response = post(gateway.client("camera"), encoded(frame, fmt), content_type)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["verdict"] in ("OK", "DEFECTIVE") and body["model_version"] == "v0001"
    assert not body["duplicate"] and len(body["content_sha256"]) == 64


def test_multipart_with_metadata_in_form_fields(gateway):
    response = gateway.client("camera").post(
        "/v1/frames",
        files={"image": ("frame.png", png(2), "image/png")},
        data={"line_id": "line-2", "camera_id": "cam-9", "frame_id": "f-1", "part_id": "P-7"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["line_id"], body["camera_id"], body["frame_id"], body["part_id"]) == ("line-2", "cam-9", "f-1", "P-7")


def test_metadata_in_headers_the_query_wins_and_every_value_sent_is_checked(gateway):
    client = gateway.client("camera")
    headers = {
        "Content-Type": "image/png",
        "X-Line-Id": "line-4",
        "X-Camera-Id": "cam-2",
        "X-Frame-Id": "hdr-7",
        "X-Captured-At": "2026-12-02T06:30:00Z",
    }
    body = client.post("/v1/frames", content=png(3), headers=headers).json()
    assert (body["line_id"], body["camera_id"], body["frame_id"]) == ("line-4", "cam-2", "hdr-7")
    assert body["captured_at"].startswith("2026-12-02T06:30:00")
    # the query wins over a header, but a header that is sent must still be valid
    body = client.post("/v1/frames", content=png(4), headers=headers, params={"camera_id": "cam-q"}).json()
    assert body["camera_id"] == "cam-q"
    bad = error_of(
        client.post("/v1/frames", content=png(4), headers=headers | {"X-Part-Id": "P 1"}, params=IDS),
        400,
        "invalid_request",
    )
    assert "header X-Part-Id='P 1' is not a valid id" in bad["detail"] and "letters, digits" in bad["detail"]
    bad = error_of(post(client, png(), line_id="../../etc", captured_at="yesterday-ish"), 400, "invalid_request")
    assert "query parameter line_id='../../etc' is not a valid id" in bad["detail"]
    assert "query parameter captured_at='yesterday-ish' is not an ISO 8601 date-time" in bad["detail"]
    # a batch takes no frame id from the query: each file part names its own
    files = [("files", ("a.png", png(5), "image/png"))]
    batch = client.post("/v1/frames/batch", files=files, params=IDS | {"frame_id": "ignored"}).json()
    assert batch["results"][0]["result"]["frame_id"] != "ignored"


def test_a_reused_frame_id_never_returns_another_images_verdict(gateway, tmp_path):
    client = gateway.client("camera")
    first = post(client, png(1), frame_id="cam1-000187").json()
    retry = post(client, png(1), frame_id="cam1-000187").json()
    assert retry["duplicate"] and retry["defect_probability"] == first["defect_probability"]
    conflict = error_of(post(client, png(2), frame_id="cam1-000187"), 409, "frame_id_conflict")
    assert conflict["first_sha256"] == first["content_sha256"] and conflict["sent_sha256"] != first["content_sha256"]
    assert first["content_sha256"] in conflict["detail"]
    gateway.flush()
    stored = gateway.store().query(order="oldest", limit=10)
    assert [(f.frame_id, f.content_sha256) for f in stored] == [("cam1-000187", first["content_sha256"])]
    assert gateway.inspector.jobs == 1  # the retry and the conflicting frame were not judged
    # after a restart (a new gateway on the same store) the store decides
    again = build_gateway(tmp_path / "restarted", gateway.registry, store_dir=tmp_path)
    client2 = again.client("camera")
    assert post(client2, png(1), frame_id="cam1-000187").json()["duplicate"]
    error_of(post(client2, png(3), frame_id="cam1-000187"), 409, "frame_id_conflict")
    assert again.inspector.jobs == 0
    client2.close()


def test_batches_generate_ids_unless_named_and_never_from_file_names(gateway):
    client = gateway.client("camera")
    files = [("files", ("frame.png", png(i), "image/png")) for i in range(3)]  # every file has the same name
    results = client.post("/v1/frames/batch", files=files, params=IDS).json()["results"]
    ids = [r["result"]["frame_id"] for r in results]
    assert len(set(ids)) == 3 and "frame" not in ids
    assert len({r["result"]["content_sha256"] for r in results}) == 3  # each its own image's verdict
    named = [("files", ("frame.png", png(i), "image/png", {"X-Frame-Id": f"cam1-{i:06d}"})) for i in range(3)]
    results = client.post("/v1/frames/batch", files=named, params=IDS).json()["results"]
    assert [r["result"]["frame_id"] for r in results] == ["cam1-000000", "cam1-000001", "cam1-000002"]
    again = client.post(
        "/v1/frames/batch",
        files=[*named[:1], ("files", ("x.png", png(7), "image/png", {"X-Frame-Id": "cam1-000001"}))],
        params=IDS,
    ).json()["results"]
    assert again[0]["result"]["duplicate"] and (again[1]["status"], again[1]["error"]) == (409, "frame_id_conflict")
    error_of(client.post("/v1/frames/batch", files=files, data={"frame_id": "x"}, params=IDS), 400, "invalid_request")
    broken = [*files[:1], ("files", ("broken.png", png(9)[:60], "image/png"))]
    mixed = client.post("/v1/frames/batch", files=broken, params=IDS).json()["results"]
    assert [r["status"] for r in mixed] == [200, 422] and mixed[1]["error"] == "undecodable_image"
    assert "broken.png" in mixed[1]["detail"]


@pytest.mark.parametrize(
    "query",
    [
        {"order": "sideways"},
        {"verdict": "maybe"},
        {"offset": str(2**70)},
        {"offset": "-1"},
        {"limit": "0"},
        {"since": "the day before"},
        {"since": "99999999w"},
        {"line": "line 1 with spaces"},
        {"labelled": "perhaps"},
    ],
)
def test_bad_query_parameters_are_400_naming_what_is_accepted(gateway, query):
    body = error_of(gateway.client("viewer").get("/v1/frames", params=query), 400, "invalid_request")
    assert next(iter(query)) in body["detail"]


def test_hostile_ids_and_paths_are_4xx(gateway):
    client = gateway.client("admin")
    error_of(client.get(f"/v1/frames/{2**70}"), 400, "invalid_request")
    error_of(client.get("/v1/frames/0"), 404, "frame_not_found")
    error_of(client.get("/v1/frames/-3"), 404, "not_found")
    error_of(client.get("/v1/frames/123456"), 404, "frame_not_found")
    error_of(client.put("/v1/frames/1/label", json={"label": "ok", "reviewer": "   "}), 400, "invalid_request")
    error_of(client.put("/v1/frames/1/label", json={"label": "maybe", "reviewer": "ana"}), 400, "invalid_label")
    error_of(post(client, png(), line_id="../../etc"), 400, "invalid_request")
    error_of(post(client, png(), captured_at="yesterday-ish"), 400, "invalid_request")
    error_of(post(client, b""), 400, "invalid_request")
    error_of(post(client, b"hello", "text/plain"), 415, "unsupported_media_type")
    error_of(post(client, encoded(make_cell(np.random.default_rng(0), True), "GIF")), 415, "unsupported_media_type")
    error_of(post(client, png()[:60]), 422, "undecodable_image")
    error_of(client.delete("/v1/frames"), 405, "method_not_allowed")


def test_huge_frames_are_refused_from_the_header_before_any_decoding(tmp_path, tiny_registry):
    gateway = build_gateway(tmp_path, tiny_registry, max_pixels=10_000)
    client = gateway.client("camera")
    big = encode_png(np.zeros((200, 200), np.uint8))
    assert "10,000" in error_of(post(client, big), 422, "image_too_large")["detail"]
    assert gateway.inspector.jobs == 0
    small = build_gateway(tmp_path / "small", tiny_registry, max_body_bytes=2048)
    assert "2,048" in error_of(post(small.client("camera"), bytes(4096)), 413, "payload_too_large")["detail"]
    client.close()


# --- auth ---------------------------------------------------------------------------------------------
ROUTE_SCOPES = {
    ("POST", "/v1/frames"): "camera",
    ("POST", "/v1/frames/batch"): "camera",
    ("GET", "/v1/frames"): "viewer",
    ("GET", "/v1/frames/{id:int}"): "viewer",
    ("GET", "/v1/frames/{id:int}/image"): "reviewer",
    ("PUT", "/v1/frames/{id:int}/label"): "reviewer",
    ("GET", "/v1/model"): "viewer",
    ("GET", "/v1/parts"): "viewer",
    ("GET", "/v1/parts/{part_id}"): "viewer",
    ("GET", "/v1/audit"): "admin",
}
WHO_MAY = {
    "camera": {"camera", "admin"},
    "viewer": {"viewer", "reviewer", "admin"},
    "reviewer": {"reviewer", "admin"},
    "admin": {"admin"},
}


def test_every_v1_route_is_in_the_scope_table(gateway):
    found = {(m, r.path) for r in (*router.routes, *line_router.routes) if r.path.startswith("/v1") for m in r.methods}
    assert found == set(ROUTE_SCOPES)


@pytest.mark.parametrize(("method", "path"), list(ROUTE_SCOPES))
def test_every_v1_route_refuses_missing_wrong_and_out_of_scope_tokens(gateway, method, path):
    url = path.replace("{id:int}", "1").replace("{part_id}", "P-1")
    kwargs = {"json": {"label": "ok", "reviewer": "ana"}} if method == "PUT" else {}

    def call(client):
        return client.request(method, url, params=IDS, **kwargs)

    missing = call(gateway.client())
    error_of(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = gateway.client()
    wrong.headers["Authorization"] = "Bearer not-a-token"
    error_of(call(wrong), 403, "forbidden")
    allowed = WHO_MAY[ROUTE_SCOPES[(method, path)]]
    for role in ("camera", "viewer", "reviewer", "admin"):
        response = call(gateway.client(role))
        if role in allowed:
            assert response.status_code not in (401, 403), (role, response.text)
        else:
            assert "needs" in error_of(response, 403, "forbidden")["detail"], role


def test_a_camera_token_cannot_relabel_training_data_and_labels_are_audited(gateway):
    answer = post(gateway.client("camera"), png(5), frame_id="f-5").json()
    gateway.flush()
    stored = gateway.store().find("line-1", "cam-1", "f-5")
    assert stored.content_sha256 == answer["content_sha256"]
    label = {"label": "defective", "reviewer": "ana@plant"}
    error_of(gateway.client("camera").put(f"/v1/frames/{stored.id}/label", json=label), 403, "forbidden")
    labelled = gateway.client("reviewer").put(f"/v1/frames/{stored.id}/label", json=label)
    assert labelled.status_code == 200 and labelled.json()["label"] == "defective"
    [event] = gateway.services.audit.read(action="label")
    assert event.actor == "ana" and event.before is None and event.after["label"] == "defective"
    image = gateway.client("reviewer").get(f"/v1/frames/{stored.id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png" and image.content == png(5)


def test_probes_and_metrics_stay_open(gateway):
    client = gateway.client()
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model_version": "v0001"}
    assert client.get("/metrics").status_code == 200


def test_no_tokens_means_open(tmp_path, tiny_registry):
    gateway = build_gateway(tmp_path, tiny_registry, auth=False)
    assert post(gateway.client(), png()).status_code == 200


# --- the document is the contract ----------------------------------------------------------------------
def test_the_openapi_document_lists_every_error_with_its_body_and_no_default_422(gateway):
    spec = gateway.client().get("/openapi.json").json()
    assert "HTTPValidationError" not in str(spec)
    frames = spec["paths"]["/v1/frames"]["post"]
    assert set(frames["responses"]) == {"200", "400", "401", "403", "409", "413", "415", "422", "503"}
    assert frames["responses"]["409"]["content"]["application/json"]["schema"]["$ref"].endswith("ConflictBody")
    assert "Retry-After" in frames["responses"]["503"]["headers"]
    assert set(frames["requestBody"]["content"]) == {
        "image/png",
        "image/jpeg",
        "image/bmp",
        "image/tiff",
        "multipart/form-data",
    }
    params = {p["name"]: p for p in frames["parameters"]}
    assert params["line_id"]["schema"]["pattern"].startswith("^[A-Za-z0-9]")
    assert params["line_id"]["required"] and params["camera_id"]["required"] and not params["frame_id"]["required"]
    assert params["captured_at"]["schema"]["format"] == "date-time"
    batch = {p["name"] for p in spec["paths"]["/v1/frames/batch"]["post"]["parameters"]}
    assert batch == {"line_id", "camera_id", "part_id", "captured_at"}  # each file part names its own frame
    listing = {p["name"]: p["schema"] for p in spec["paths"]["/v1/frames"]["get"]["parameters"]}
    assert listing["offset"]["maximum"] == 10_000_000 and set(listing["order"]["enum"]) == {
        "uncertainty",
        "newest",
        "oldest",
    }
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if path.startswith("/v1"):
                assert {"401", "403"} <= set(operation["responses"]), (method, path)
                assert operation.get("security"), (method, path)
    assert {spec.status for spec in ERRORS.values()} == {400, 401, 403, 404, 409, 413, 415, 422, 503}


def test_labels_in_any_usual_case_and_a_wrong_label_says_which_are_accepted(gateway):
    post(gateway.client("camera"), png(6), frame_id="f-6")
    gateway.flush()
    stored = gateway.store().find("line-1", "cam-1", "f-6")
    reviewer = gateway.client("reviewer")
    ok = reviewer.put(f"/v1/frames/{stored.id}/label", json={"label": "Defective", "reviewer": "ana"})
    assert ok.status_code == 200 and ok.json()["label"] == "defective"
    bad = error_of(
        reviewer.put(f"/v1/frames/{stored.id}/label", json={"label": "scratched", "reviewer": "ana"}),
        400,
        "invalid_label",
    )
    assert "'ok'" in bad["detail"] and "'defective'" in bad["detail"]


def _callables(dependant) -> list:
    """The endpoint and every dependency under it, depth first."""
    found = [dependant.call]
    for sub in dependant.dependencies:
        found += _callables(sub)
    return found


def test_no_route_hands_its_dependencies_to_a_worker_thread():
    # FastAPI runs a plain `def` endpoint or dependency on a worker thread: a hand-off per request that cost
    # the gateway 0.9 of 3.8 ms per frame (benchmarks/gateway_app.py) for a dictionary lookup.
    import inspect

    from tests.unit.serving.conftest import ROUTERS

    synchronous = [
        f"{route.path} {sorted(route.methods)}: {getattr(call, '__name__', type(call).__name__)}"
        for router_ in ROUTERS
        for route in router_.routes
        if hasattr(route, "dependant")
        for call in _callables(route.dependant)
        if not (inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(type(call).__call__))
    ]
    assert len([r for router_ in ROUTERS for r in router_.routes if hasattr(r, "dependant")]) > 20
    assert synchronous == []
