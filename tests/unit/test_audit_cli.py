"""`inspect audit`: listing, filters, JSON, tamper check; and audit events forwarded to syslog from config."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import yaml
from typer.testing import CliRunner

from inspectline.cli import app as cli
from inspectline.registry import ModelRegistry


def setup(tmp_path: Path, **sections) -> tuple[Path, ModelRegistry]:
    registry = ModelRegistry(tmp_path / "models")
    for name in ("v0001", "v0002"):
        (registry.root / name).mkdir(parents=True)
        (registry.root / name / "model.pt").write_bytes(b"")
    config = tmp_path / "inspect.yaml"
    config.write_text(yaml.safe_dump({"paths": {"registry": str(registry.root)}, **sections}))
    return config, registry


def test_audit_lists_filters_and_prints_json(tmp_path):
    config, registry = setup(tmp_path)
    registry.promote("v0001", actor="ana", reason="first line model")
    registry.set_shadow("v0002", actor="ben")
    runner = CliRunner()

    listed = runner.invoke(cli, ["audit", "--config", str(config)])
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert len(lines) == 2 and lines[0].endswith("ana promote production: v0001 (first line model)")
    assert "ben shadow shadow" in lines[1]

    only = runner.invoke(cli, ["audit", "--config", str(config), "--action", "shadow", "--json"])
    (event,) = [json.loads(line) for line in only.output.splitlines()]
    assert (event["actor"], event["after"], event["seq"]) == ("ben", "v0002", 2)
    future = runner.invoke(cli, ["audit", "--config", str(config), "--since", "2999-01-01"])
    assert future.exit_code == 0 and future.output == ""
    bad = runner.invoke(cli, ["audit", "--config", str(config), "--action", "delete"])
    assert bad.exit_code != 0 and "not one of" in str(bad.exception)


def test_audit_verify_finds_an_edited_line(tmp_path):
    config, registry = setup(tmp_path)
    for version in ("v0001", "v0002", "v0001"):
        registry.promote(version, actor="ana")
    runner = CliRunner()
    intact = runner.invoke(cli, ["audit", "--config", str(config), "--verify"])
    assert intact.exit_code == 0 and "intact" in intact.output

    path = registry.root / "audit.jsonl"
    lines = path.read_text().splitlines()
    edited = json.loads(lines[1]) | {"actor": "mallory"}
    lines[1] = json.dumps(edited, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    tampered = runner.invoke(cli, ["audit", "--config", str(config), "--verify"])
    assert tampered.exit_code == 1 and "TAMPERED: event 3" in tampered.output


def test_promotions_from_the_cli_also_go_to_syslog_when_configured(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(10)
        port = receiver.getsockname()[1]
        config, registry = setup(tmp_path, audit={"syslog": f"127.0.0.1:{port}"})
        result = CliRunner().invoke(cli, ["models", "promote", "v0001", "--config", str(config), "--actor", "ana"])
        assert result.exit_code == 0, result.output
        message = receiver.recv(65536).decode()
    assert "inspectline audit:" in message and '"actor":"ana"' in message and '"action":"promote"' in message
    assert registry.audit.read()[0].actor == "ana"
