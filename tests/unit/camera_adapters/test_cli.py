"""``inspect camera ...`` through typer's CliRunner: options reach the adapter, bad values exit 2 with
a message that names them. The service here is a small real HTTP server answering like the gateway."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from inspectline.camera_adapters.cli import camera_app

runner = CliRunner()


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.rfile.read(length)
        query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
        self.server.seen.append(
            (urlparse(self.path).path, query, self.headers.get("Authorization"), self.headers.get("Content-Type"))
        )
        body = json.dumps(
            {"frame_id": query["frame_id"], "verdict": "OK", "defect_probability": 0.2, "duplicate": False}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def http_service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def url_of(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_replay_sends_the_dataset_with_the_token_from_the_environment(http_service, folder_dataset, tmp_path):
    results = tmp_path / "results.jsonl"
    result = runner.invoke(
        camera_app,
        [
            "replay",
            "--data",
            f"folder:{folder_dataset}",
            "--fps",
            "50",
            "--limit",
            "4",
            "--url",
            url_of(http_service),
            "--line-id",
            "line-9",
            "--camera-id",
            "cam-9",
            "--spool-dir",
            str(tmp_path / "spool"),
            "--results-log",
            str(results),
        ],
        env={"INSPECT_API_TOKEN": "tok-123"},
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["judged"] == 4
    assert [(path, q["line_id"], q["camera_id"], auth, ctype) for path, q, auth, ctype in http_service.seen] == [
        ("/v1/frames", "line-9", "cam-9", "Bearer tok-123", "image/png")
    ] * 4
    logged = [json.loads(line)["frame_id"] for line in results.read_text().splitlines()]
    assert sorted(logged) == sorted(q["frame_id"] for _, q, _, _ in http_service.seen)  # posts may overtake
    assert (tmp_path / "spool" / "source-state.json").is_file()


def test_video_sends_every_frame_of_a_file(http_service, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 20.0, (32, 32))
    for i in range(5):
        writer.write(np.full((32, 32, 3), i * 40, np.uint8))
    writer.release()
    result = runner.invoke(
        camera_app,
        [
            "video",
            str(video),
            "--fps",
            "50",
            "--url",
            url_of(http_service),
            "--spool-dir",
            str(tmp_path / "spool"),
            "--token",
            "",
        ],
    )
    assert result.exit_code == 0, result.output
    assert sorted(q["frame_id"] for _, q, _, _ in http_service.seen) == [f"clip-{i:07d}" for i in range(5)]
    assert {auth for _, _, auth, _ in http_service.seen} == {None}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay", "--data", "elpv", "--shift", "sparkle"], "sparkle"),
        (["replay", "--data", "cloud:bucket"], "cloud:bucket"),
        (["replay", "--data", "elpv", "--url", "ftp://plant"], "ftp://plant"),
        (["replay", "--data", "elpv", "--camera-id", "cam 1"], "cam 1"),
        (["folder", "/no/such/folder"], "/no/such/folder does not exist"),
        (["video", "/no/such/clip.mp4"], "/no/such/clip.mp4 does not exist"),
    ],
)
def test_bad_options_exit_2_naming_the_value(args, message, tmp_path):
    result = runner.invoke(camera_app, [*args, "--spool-dir", str(tmp_path / "spool")])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_the_spool_defaults_to_a_folder_per_camera(http_service, folder_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        camera_app,
        [
            "replay",
            "--data",
            f"folder:{folder_dataset}",
            "--fps",
            "100",
            "--limit",
            "1",
            "--camera-id",
            "cam-42",
            "--url",
            url_of(http_service),
        ],
    )
    assert result.exit_code == 0, result.output
    assert Path("spool/cam-42/source-state.json").is_file()
