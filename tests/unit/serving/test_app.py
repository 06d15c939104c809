"""One configuration: the service finds its registry, store, spool and tokens in the inspect.yaml the CLI reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inspectline.errors import ConfigError
from inspectline.serving.app import service_locations
from inspectline.serving.deploy import exposed_without_auth, load_serve_config, resolve_paths

REPO = Path(__file__).resolve().parents[3]


def test_locations_come_from_inspect_yaml_and_say_which_file_set_them(tmp_path: Path):
    (tmp_path / "inspect.yaml").write_text(
        yaml.safe_dump({"paths": {"registry": "line-models"}, "service": {"tokens_file": "tokens.yaml"}})
    )
    where = service_locations(Path("inspect.yaml"), tmp_path)
    assert where.registry == tmp_path / "line-models"
    assert where.store.database_url == f"sqlite:///{tmp_path / 'data' / 'frames.db'}"
    assert where.spool_dir == tmp_path / "data" / "spool" and where.tokens_file == tmp_path / "tokens.yaml"
    lines = "\n".join(where.describe())
    assert f"set in {tmp_path / 'inspect.yaml'} (paths.registry)" in lines
    assert "does not set store" in lines
    assert where.plant.outbox == tmp_path / "data" / "outbox.sqlite3" and "lines       none (no part verdicts)" in lines
    without = service_locations(Path("inspect.yaml"), tmp_path / "elsewhere")
    assert without.registry == tmp_path / "elsewhere" / "models" and "default; no " in without.describe()[0]


def test_the_line_monitor_gets_the_plants_lines_with_the_outbox_resolved(tmp_path: Path):
    line = {"stations": [{"name": "final", "cameras": ["top", "bottom"], "deadline_ms": 800}]}
    (tmp_path / "inspect.yaml").write_text(yaml.safe_dump({"plant": {"outbox": "q/outbox.db", "lines": {"l1": line}}}))
    where = service_locations(Path("inspect.yaml"), tmp_path)
    assert where.plant.outbox == tmp_path / "q" / "outbox.db"
    assert where.plant.lines["l1"].stations[0].required_views == ("top", "bottom")
    assert f"lines       l1, outbox {tmp_path / 'q' / 'outbox.db'}  (set in" in "\n".join(where.describe())


def test_the_cli_and_the_service_agree_on_the_store(tmp_path: Path, monkeypatch):
    from inspectline.cli import resolve_config

    (tmp_path / "inspect.yaml").write_text(yaml.safe_dump({"store": {"database_url": "sqlite:///plant/frames.db"}}))
    monkeypatch.chdir(tmp_path)
    cli = resolve_config().store.resolved(tmp_path)
    assert service_locations(Path("inspect.yaml"), tmp_path).store == cli


def test_the_repository_serve_config_is_valid_and_locations_moved_out_of_it_are_refused(tmp_path: Path):
    config = load_serve_config(REPO / "serve_config.yaml")
    resolved = resolve_paths(config, tmp_path)
    assert resolved["applications"][0]["args"] == {"config": str(tmp_path / "inspect.yaml"), "base": str(tmp_path)}
    config["applications"][0]["args"] = {"registry": "models", "store": {}}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"registry -> paths.registry, store -> store"):
        load_serve_config(tmp_path / "old.yaml")


def test_binding_beyond_loopback_without_a_token_is_flagged(tmp_path: Path):
    config = resolve_paths(load_serve_config(REPO / "serve_config.yaml"), tmp_path)  # host 0.0.0.0
    assert exposed_without_auth(config, {})
    assert not exposed_without_auth(config, {"INSPECT_API_TOKEN": "x"})
    config["http_options"]["host"] = "127.0.0.1"
    assert not exposed_without_auth(config, {})


GATEWAY_JUDGES = REPO / "deploy" / "serve_config.gateway-judges.yaml"


def test_the_gateway_judges_config_is_the_default_service_with_the_inspector_settings_moved(tmp_path: Path):
    """The two shipped configs must not drift apart: the same settings, the Inspector's under the Gateway's."""
    default = {d["name"]: d for d in load_serve_config(REPO / "serve_config.yaml")["applications"][0]["deployments"]}
    config = load_serve_config(GATEWAY_JUDGES)
    app = config["applications"][0]
    assert app["args"]["judge"] == "gateway"
    fused = {d["name"]: d for d in app["deployments"]}
    assert set(fused) == set(default) - {"Inspector"}
    gateway = fused["Gateway"]["user_config"]
    assert gateway.pop("inspector") == default["Inspector"]["user_config"]
    # several Gateway replicas each notice a promotion on their own poll: they switch together, each warm by then
    assert gateway.pop("switch_delay_s") > gateway["reload_interval_s"] + 2
    grouping = {"inspect_window_s", "inspect_group_max", "switch_delay_s"}  # grouping: calls to Inspector replicas
    assert gateway == {k: v for k, v in default["Gateway"]["user_config"].items() if k not in grouping}
    assert fused["Gateway"]["ray_actor_options"]["num_cpus"] == default["Inspector"]["ray_actor_options"]["num_cpus"]
    assert fused["Gateway"]["num_replicas"] == default["Inspector"]["num_replicas"]
    for name in ("LineMonitor", "Heatmaps"):
        assert fused[name] == default[name]
    resolved = resolve_paths(config, tmp_path)["applications"][0]["args"]
    assert resolved == {"config": str(tmp_path / "inspect.yaml"), "base": str(tmp_path), "judge": "gateway"}


def test_inspector_settings_in_the_wrong_place_for_the_layout_are_refused(tmp_path: Path):
    config = load_serve_config(GATEWAY_JUDGES)
    app = config["applications"][0]
    default = load_serve_config(REPO / "serve_config.yaml")["applications"][0]
    app["deployments"].append(next(d for d in default["deployments"] if d["name"] == "Inspector"))
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"judge: gateway, which builds no Inspector deployment"):
        load_serve_config(tmp_path / "both.yaml")
    gateway = next(d for d in default["deployments"] if d["name"] == "Gateway")
    gateway["user_config"]["inspector"] = {"tta": False}
    (tmp_path / "split.yaml").write_text(yaml.safe_dump({**config, "applications": [default]}))
    with pytest.raises(ConfigError, match=r"move those settings to the Inspector deployment's user_config"):
        load_serve_config(tmp_path / "split.yaml")
    app["args"]["judge"] = "elsewhere"
    app["deployments"].pop()
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=r"judge.*'inspector' or 'gateway'"):
        load_serve_config(tmp_path / "bad.yaml")
