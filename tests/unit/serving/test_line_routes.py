"""The line's routes in process: part verdicts by id and by filters, the audit trail for admins, 4xx that name why."""

from __future__ import annotations

import pytest

from inspectline.store import PartRecord
from tests.unit.serving.test_http import error_of
from tests.unit.store.factories import T0, part_record, record


@pytest.fixture
def parts(gateway) -> list[PartRecord]:
    decided = [
        part_record("P-1", verdict="DEFECTIVE", minutes=0),
        part_record("P-2", verdict="NO_RESULT", minutes=1),
        part_record("P-3", minutes=2),
        part_record("P-1", minutes=3, station="exit"),
        part_record("P-4", minutes=4, line_id="line-b"),
    ]
    with gateway.store() as store:
        assert store.add_parts(decided) == 5
    return decided


def test_a_part_is_read_with_every_stations_verdict_and_each_views_frame(gateway, parts):
    body = gateway.client("viewer").get("/v1/parts/P-1").json()
    assert body["part_id"] == "P-1"
    assert [(p["station"], p["verdict"], p["disposition"]) for p in body["stations"]] == [
        ("main", "DEFECTIVE", "reject"),
        ("exit", "OK", "pass"),
    ]
    view = body["stations"][0]["views"][0]
    assert (view["camera_id"], view["frame_id"], view["verdict"], view["defect_probability"]) == (
        "cam1",
        "P-1-cam1",
        "DEFECTIVE",
        0.9,
    )
    missed = gateway.client("viewer").get("/v1/parts/P-2", params={"line": "line-a"}).json()["stations"][0]
    assert (missed["verdict"], missed["missing"], missed["deadline_missed"]) == ("NO_RESULT", ["cam2"], True)


def test_an_unknown_part_is_404_saying_when_parts_are_decided(gateway, parts):
    body = error_of(gateway.client("viewer").get("/v1/parts/P-4", params={"line": "line-a"}), 404, "part_not_found")
    assert "'P-4' on line 'line-a'" in body["detail"] and "deadline" in body["detail"]
    error_of(gateway.client("viewer").get("/v1/parts/P-9"), 404, "part_not_found")


def test_parts_are_listed_with_the_frames_filters_newest_first(gateway, parts):
    client = gateway.client("viewer")

    def ids(**params):
        body = client.get("/v1/parts", params=params).json()
        return [(p["part_id"], p["station"]) for p in body["parts"]], body["total"]

    assert ids() == ([("P-4", "main"), ("P-1", "exit"), ("P-3", "main"), ("P-2", "main"), ("P-1", "main")], 5)
    assert ids(line="line-a", station="main", verdict="NO_RESULT") == ([("P-2", "main")], 1)
    since, until = (T0.replace(minute=m).isoformat() for m in (1, 3))
    assert ids(since=since, until=until, order="oldest") == ([("P-2", "main"), ("P-3", "main")], 2)
    assert ids(limit=2, offset=1) == ([("P-1", "exit"), ("P-3", "main")], 5)


@pytest.mark.parametrize(
    "query",
    [
        {"verdict": "maybe"},
        {"order": "uncertainty"},
        {"since": "the day before"},
        {"limit": "0"},
        {"offset": "-1"},
        {"station": "a station"},
        {"line": "line 1 with spaces"},
    ],
)
def test_bad_part_filters_are_400_naming_what_is_accepted(gateway, query):
    body = error_of(gateway.client("viewer").get("/v1/parts", params=query), 400, "invalid_request")
    assert next(iter(query)) in body["detail"]


def test_the_audit_trail_is_served_to_admins_latest_last_from_since(gateway):
    audit = gateway.services.audit
    for threshold in (0.5, 0.4, 0.3):
        audit.append("operating_point", actor="ana", subject="v0001", after={"threshold": threshold}, reason="test")
    error_of(gateway.client("reviewer").get("/v1/audit"), 403, "forbidden")
    admin = gateway.client("admin")
    body = admin.get("/v1/audit", params={"limit": 2}).json()
    assert body["total"] == 3 and body["limit"] == 2
    assert [(e["seq"], e["after"]["threshold"]) for e in body["events"]] == [(2, 0.4), (3, 0.3)]
    assert body["events"][0]["actor"] == "ana" and len(body["events"][0]["prev"]) == 64
    assert admin.get("/v1/audit", params={"since": "2099-01-01T00:00:00Z"}).json() == {
        "events": [],
        "total": 0,
        "limit": 100,
    }
    body = error_of(admin.get("/v1/audit", params={"limit": 5000}), 400, "invalid_request")
    assert "limit" in body["detail"]
    assert "since" in error_of(admin.get("/v1/audit", params={"since": "soon"}), 400, "invalid_request")["detail"]


def test_the_openapi_document_lists_the_line_routes_errors(gateway):
    spec = gateway.client().get("/openapi.json").json()["paths"]
    assert set(spec["/v1/parts"]["get"]["responses"]) == {"200", "400", "401", "403", "503"}
    assert set(spec["/v1/parts/{part_id}"]["get"]["responses"]) == {"200", "400", "401", "403", "404", "503"}
    assert set(spec["/v1/audit"]["get"]["responses"]) == {"200", "400", "401", "403", "503"}
    listing = {p["name"]: p["schema"] for p in spec["/v1/parts"]["get"]["parameters"]}
    frames = {p["name"]: p["schema"] for p in spec["/v1/frames"]["get"]["parameters"]}
    assert all(listing[name] == frames[name] for name in ("since", "until", "line", "limit", "offset"))
    assert set(listing["order"]["enum"]) == {"newest", "oldest"}


def test_each_view_links_to_its_stored_frame_image_and_heatmap(gateway, parts):
    with gateway.store() as store:  # the frames the views name; cam2's image was not kept
        store.add_frames([record("P-1-cam1", part_id="P-1"), record("P-1-cam2", camera_id="cam2", shade=None)])
        kept, not_kept = store.find("line-a", "cam1", "P-1-cam1"), store.find("line-a", "cam2", "P-1-cam2")
    body = gateway.client("viewer").get("/v1/parts/P-1", params={"line": "line-a"}).json()
    links = {v["camera_id"]: (v["frame_url"], v["image_url"], v["heatmap_url"]) for v in body["stations"][0]["views"]}
    assert links == {
        "cam1": (f"/v1/frames/{kept.id}", f"/v1/frames/{kept.id}/image", f"/v1/frames/{kept.id}/heatmap"),
        "cam2": (f"/v1/frames/{not_kept.id}", None, None),
    }
    reviewer = gateway.client("reviewer")
    assert reviewer.get(links["cam1"][0]).json()["frame_id"] == "P-1-cam1"
    heatmap = reviewer.get(links["cam1"][2])
    assert heatmap.status_code == 200 and heatmap.headers["content-type"] == "image/png"
    listed = gateway.client("viewer").get("/v1/parts", params={"line": "line-a", "verdict": "OK"}).json()["parts"]
    assert [(p["part_id"], p["station"]) for p in listed] == [("P-1", "exit"), ("P-3", "main")]
    assert [v["heatmap_url"] for v in listed[0]["views"]] == [links["cam1"][2], None]  # the same frames as above
    assert [v["frame_url"] for v in listed[1]["views"]] == [None, None]  # P-3's frames are not stored
