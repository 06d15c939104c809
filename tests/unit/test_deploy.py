"""The shipped systemd units and cron lines: valid for systemd, and every command they run is a real
`inspect` command line with options the CLI accepts."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from inspectline.cli import app
from tests.system_packages import find_program, needs

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
INSTALLED = "/opt/inspectline/.venv/bin/inspect"
UNITS = ["inspect-serve.service", "inspect-retrain.service", "inspect-retrain.timer"]
TEMPLATES = ["inspect-challenge@.service", "inspect-challenge@.timer"]
SYSTEMD_ANALYZE = find_program("systemd-analyze")


def parse_inspect(args: list[str]):
    """Parse ``inspect ARGS`` as the console script would, without running it (a usage error when wrong)."""
    command = typer.main.get_command(app)
    ctx = command.context_class(command, info_name="inspect")
    while hasattr(command, "list_commands"):  # a command group: descend into the named subcommand
        name, *args = args
        sub = command.get_command(ctx, name)
        assert sub is not None, f"`inspect ... {name}` is not a command"
        command = sub
    return command.make_context(command.name, list(args), parent=ctx)


def exec_start(unit: str) -> list[str]:
    lines = [line for line in (DEPLOY / unit).read_text().splitlines() if line.startswith("ExecStart=")]
    (line,) = lines
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.parametrize("unit", ["inspect-serve.service", "inspect-retrain.service", "inspect-challenge@.service"])
def test_every_unit_runs_a_real_inspect_command(unit):
    program, *args = exec_start(unit)
    assert program == INSTALLED
    ctx = parse_inspect([a.replace("%i", "shift-start") for a in args])
    assert ctx.command.name in ("serve", "retrain", "challenge")


def test_retrain_counts_its_normal_outcomes_as_success():
    text = (DEPLOY / "inspect-retrain.service").read_text()
    assert "SuccessExitStatus=3 4\n" in text and "Type=oneshot" in text


def test_cron_lines_run_the_same_commands():
    jobs = [line for line in (DEPLOY / "crontab").read_text().splitlines() if line and line[0].isdigit()]
    assert len(jobs) == 2
    for job in jobs:
        fields = job.split(None, 5)
        assert all(part for part in fields[:5])
        command = fields[5].split(INSTALLED, 1)[1].split(">>")[0].split(";")[0]
        parse_inspect(shlex.split(command))


@needs("systemd")
def test_units_pass_systemd_analyze_verify(tmp_path):
    inspect = Path(sys.executable).with_name("inspect")  # the installed console script stands in for /opt/...
    assert inspect.is_file(), f"{inspect} missing: pip install -e '.[dev]'"
    for name in UNITS + TEMPLATES:
        (tmp_path / name).write_text((DEPLOY / name).read_text().replace(INSTALLED, str(inspect)))
    names = [*UNITS, "inspect-challenge@shift-start.service", "inspect-challenge@shift-start.timer"]
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", *names], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    (tmp_path / "inspect-retrain.timer").write_text("[Timer]\nOnCalendar=every night\n")  # the check does check
    bad = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "inspect-retrain.timer"], cwd=tmp_path, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "calendar" in bad.stderr


class _Process:
    def __init__(self, *cmdline: str):
        self._cmdline = list(cmdline)

    def cmdline(self) -> list[str]:
        return self._cmdline


def test_stopping_local_ray_ends_ray_processes_only():
    from inspectline.serving.deploy import _is_ray_process

    ray_dir = f"{sys.prefix}/lib/python3.11/site-packages/ray"
    for ray_process in (
        _Process(f"{ray_dir}/core/src/ray/raylet/raylet", "--raylet_socket_name=x"),
        _Process(sys.executable, "-u", f"{ray_dir}/_private/log_monitor.py"),
        _Process("ray::ServeReplica:inspectline:Inspector"),
        _Process("ray::IDLE"),
        # the HAProxy that Ray's HAProxy manager starts outlives that actor
        _Process("/usr/sbin/haproxy", "-f", "/tmp/inspect-x/node/haproxy.cfg", "-p", "/tmp/inspect-x/node/pid"),
    ):
        assert _is_ray_process(ray_process), ray_process.cmdline()
    for other in (  # a multiprocessing resource tracker and a caller's own spawned worker live on
        _Process(),  # a zombie: no command line
        _Process(sys.executable, "-c", "from multiprocessing.resource_tracker import main;main(8)"),
        _Process(sys.executable, "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=6)"),
    ):
        assert not _is_ray_process(other), other.cmdline()
