"""Choosing the local Ray's HTTP front (`inspect serve --ingress`) and its environment, without starting Ray."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from inspectline.errors import ConfigError
from inspectline.serving import ingress as ingress_module
from inspectline.serving.deploy import BACKGROUND_LOOPS, local_ray_environment
from inspectline.serving.ingress import choose_ingress, end_haproxy, end_stale_haproxy, ingress_workdir


@pytest.fixture
def haproxy(tmp_path) -> str:
    """An executable named haproxy that Ray would run."""
    program = tmp_path / "bin" / "haproxy"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return str(program)


def test_auto_takes_haproxy_where_installed_and_keeps_its_files_in_the_runs_own_folder(haproxy, tmp_path):
    chosen = choose_ingress("auto", {"RAY_SERVE_HAPROXY_BINARY_PATH": haproxy})
    assert chosen.name == "haproxy"
    assert haproxy in chosen.describe()
    env = chosen.environment(tmp_path / "run", {})
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == haproxy
    for key in ("CONFIG_FILE_LOC", "SOCKET_PATH", "METRICS_SOCKET_PATH", "SERVER_STATE_FILE", "SERVER_STATE_BASE"):
        assert env[f"RAY_SERVE_HAPROXY_{key}"].startswith(str(tmp_path / "run")), key
    # one machine, HAProxy the only router: a stopping Gateway is not held open 30 s for a cloud balancer
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "1"


def test_settings_already_in_the_environment_win_except_the_choice_itself(haproxy, tmp_path):
    environ = {
        "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy,
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "20",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": "/run/haproxy/admin.sock",
    }
    env = choose_ingress("haproxy", environ).environment(tmp_path, environ)
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "20"
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == "/run/haproxy/admin.sock"
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_asking_for_rays_proxy_turns_haproxy_off_even_where_it_is_installed(haproxy, tmp_path):
    chosen = choose_ingress("ray", {"RAY_SERVE_HAPROXY_BINARY_PATH": haproxy, "RAY_SERVE_ENABLE_HA_PROXY": "1"})
    assert chosen.name == "ray"
    assert chosen.environment(tmp_path, {}) == {"RAY_SERVE_ENABLE_HA_PROXY": "0"}


def test_a_local_ray_slows_serves_background_loops_unless_the_environment_says_otherwise(haproxy, tmp_path):
    env = local_ray_environment({}, None, None)
    assert env == {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "1"}
    assert env == BACKGROUND_LOOPS
    environ = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1", "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy}
    with_front = local_ray_environment(environ, choose_ingress("auto", environ), tmp_path)
    assert with_front["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"] == "0.1"  # the admin's own value
    assert with_front["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == "1000"
    assert with_front["RAY_SERVE_ENABLE_HA_PROXY"] == "1"  # and the front's settings beside them
    assert with_front["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].startswith(str(tmp_path))


def test_auto_follows_an_explicit_ray_setting_in_the_environment(haproxy):
    off = choose_ingress("auto", {"RAY_SERVE_HAPROXY_BINARY_PATH": haproxy, "RAY_SERVE_ENABLE_HA_PROXY": "0"})
    assert off.name == "ray"
    assert "RAY_SERVE_ENABLE_HA_PROXY=0" in off.reason
    on = choose_ingress("auto", {"RAY_SERVE_HAPROXY_BINARY_PATH": haproxy, "RAY_SERVE_ENABLE_HA_PROXY": "1"})
    assert on.name == "haproxy"


def test_without_haproxy_auto_falls_back_to_rays_proxy_and_says_how_to_install_it(tmp_path):
    chosen = choose_ingress("auto", {"RAY_SERVE_HAPROXY_BINARY_PATH": str(tmp_path / "missing")})
    assert chosen.name == "ray"
    assert "apt-get install -y haproxy" in chosen.describe()


def test_asking_for_haproxy_where_it_is_missing_names_the_install_command_and_the_alternative(tmp_path):
    with pytest.raises(ConfigError, match=r"apt-get install -y haproxy.*--ingress ray"):
        choose_ingress("haproxy", {"RAY_SERVE_HAPROXY_BINARY_PATH": str(tmp_path / "missing")})


def test_an_unknown_ingress_names_the_accepted_ones():
    with pytest.raises(ConfigError, match=r"'nginx' is not one of auto, haproxy, ray"):
        choose_ingress("nginx", {})


def test_haproxys_folder_stays_short_enough_for_its_admin_socket_under_a_long_tmpdir(tmp_path, monkeypatch):
    # HAProxy refuses a socket path over 97 characters; Ray adds a 40-character node id below the folder
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    folder = ingress_workdir()
    try:
        socket = folder / ("n" * 40) / "admin.sock.4194304.tmp"
        assert len(str(socket)) <= ingress_module._SOCKET_PATH_MAX
        assert folder.is_dir() and (folder / "owner").read_text().split()[0] == str(os.getpid())
    finally:
        shutil.rmtree(folder)
    assert Path(tempfile.gettempdir()) == deep


def _fake_haproxy(config: Path) -> subprocess.Popen:
    """A process that looks like the HAProxy Ray runs (``haproxy -db -f CONFIG``) and only sleeps."""
    code = "import time; time.sleep(120)"
    return subprocess.Popen(["haproxy", "-c", code, "-db", "-f", str(config)], executable=sys.executable)


def test_a_start_ends_the_haproxy_an_ended_service_left_and_spares_everyone_elses(tmp_path, monkeypatch):
    monkeypatch.setattr(ingress_module, "_workdir_base", lambda: str(tmp_path))
    running = ingress_workdir()  # owned by this process, which is alive: another service still running
    ended = ingress_workdir()
    (ended / "owner").write_text("999999999 0.0\n")  # its owner is gone
    old = ingress_workdir()
    (old / "owner").unlink()  # a folder no process claims
    removed = tmp_path / "inspect-removed0"  # stopped, folder removed, HAProxy left behind
    elsewhere = tmp_path.parent / "etc-haproxy"  # a plant's own HAProxy, not ours
    configs = {
        name: folder / "node" / "haproxy.cfg"
        for name, folder in [
            ("running", running),
            ("ended", ended),
            ("old", old),
            ("removed", removed),
            ("elsewhere", elsewhere),
        ]
    }
    processes = {name: _fake_haproxy(config) for name, config in configs.items()}
    try:
        deadline = time.monotonic() + 10  # until each shows its command line
        while any(psutil.Process(p.pid).cmdline()[:1] != ["haproxy"] for p in processes.values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert ingress_module.haproxy_config(psutil.Process(processes["ended"].pid)) == configs["ended"]
        assert ingress_module.haproxy_config(psutil.Process()) is None
        ended_pids = end_stale_haproxy()
        stale = {"ended", "old", "removed"}
        assert sorted(ended_pids) == sorted(processes[name].pid for name in stale)
        for name, process in processes.items():
            assert (process.poll() is not None) == (name in stale), name
        # a stop ends its own run's HAProxy wherever it now hangs, and nobody else's
        assert end_haproxy(lambda config: config.is_relative_to(running)) == [processes["running"].pid]
        assert processes["elsewhere"].poll() is None
    finally:
        for process in processes.values():
            process.kill()
            process.wait()
