"""A local Prometheus for the line board, and the queries of the Grafana dashboard.

``inspect monitor`` runs Prometheus (the Debian package or the prometheus.io binary) on loopback with
``grafana/prometheus/prometheus.yml``, which scrapes the service and the camera adapters and loads
the alert rules; Grafana's provisioned data source reads it at http://localhost:9090. The same
function starts the Prometheus of the integration test, which then evaluates every query that
:func:`dashboard_queries` extracts from ``grafana/dashboards/inspection-line.json``.

    server = start_prometheus(Path("grafana/prometheus/prometheus.yml"), data_dir=Path("runs/prometheus"))
    ...
    server.stop()
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from inspectline.errors import ConfigError, InspectError

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install it with `apt-get install prometheus` (Debian/Ubuntu; includes promtool), or download the "
    "release for your platform from https://prometheus.io/download/ and put `prometheus` on your PATH"
)

# What Grafana puts in place of its built-in interval variables; pick values that fit the question
# (the integration test uses a short window because its frames are recent).
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

# $name, ${name} and ${name:format}: the forms Grafana substitutes in a query.
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::\w+)?\}|(?P<bare>\w+))")


@dataclass
class PrometheusServer:
    """A running Prometheus process; :meth:`stop` ends it (also on ``with`` exit)."""

    process: subprocess.Popen
    url: str
    data_dir: Path
    log_path: Path | None = None

    def stop(self, timeout_s: float = 30) -> int:
        """Ask Prometheus to shut down (SIGTERM), kill it after ``timeout_s``; returns its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("Prometheus (pid %d) did not stop in %.0f s; killing it", self.process.pid, timeout_s)
                self.process.kill()
                self.process.wait(timeout=timeout_s)
        return self.process.returncode

    def log_tail(self, chars: int = 3000) -> str:
        """The end of Prometheus' log when it writes to a file, else an empty string."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class PanelQuery:
    """One PromQL query of a dashboard, Grafana variables already substituted."""

    panel: str  # panel title, or "annotation: NAME" for an annotation query
    ref_id: str
    expr: str


def find_prometheus(binary: str = "prometheus") -> str:
    """The path of the Prometheus server binary, or an :class:`InspectError` that says how to install it."""
    path = shutil.which(binary)
    if path is None:
        msg = f"the Prometheus server binary {binary!r} is not on PATH; {INSTALL_HINT}"
        raise InspectError(msg)
    return path


def start_prometheus(
    config: Path,
    *,
    data_dir: Path,
    port: int = 9090,
    host: str = "127.0.0.1",
    binary: str = "prometheus",
    log_file: Path | None = None,
    ready_timeout_s: float = 60,
) -> PrometheusServer:
    """Start Prometheus on ``host:port`` (loopback by default) with ``config``; return once it is ready.

    TSDB blocks go to ``data_dir`` (created). Without ``log_file`` Prometheus logs to this process'
    stderr. Raises :class:`InspectError` when the binary is missing, or when Prometheus exits or is
    not ready within ``ready_timeout_s`` (the message carries the end of its log when there is one).
    """
    executable = find_prometheus(binary)
    config = Path(config).resolve()
    if not config.is_file():
        msg = f"Prometheus config {config} does not exist; the repository's is grafana/prometheus/prometheus.yml"
        raise ConfigError(msg)
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        executable,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={host}:{port}",
    ]
    log_handle: IO[bytes] | None = log_file.open("ab") if log_file is not None else None
    try:
        process = subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT if log_handle else None)
    finally:
        if log_handle is not None:
            log_handle.close()  # the child holds its own descriptor
    server = PrometheusServer(process=process, url=f"http://{host}:{port}", data_dir=data_dir, log_path=log_file)
    try:
        _wait_until_ready(server, ready_timeout_s)
    except BaseException:
        server.stop()
        raise
    log.info("Prometheus %s ready at %s (config %s, data %s)", executable, server.url, config, data_dir)
    return server


def run_prometheus_until_interrupted(
    config: Path, *, data_dir: Path, port: int = 9090, on_ready: Callable[[PrometheusServer], None] | None = None
) -> int:
    """``inspect monitor``: run Prometheus in the foreground until Ctrl-C or SIGTERM; returns its exit status.

    Prometheus logs to the terminal. If it stops by itself (killed, a full disk), this returns its
    status instead of waiting forever.
    """
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server: PrometheusServer | None = None
    try:
        server = start_prometheus(config, data_dir=data_dir, port=port)
        if on_ready is not None:
            on_ready(server)
        while not stop.is_set() and server.process.poll() is None:
            stop.wait(0.5)
        if server.process.returncode is not None:
            log.warning("Prometheus stopped by itself with status %d", server.process.returncode)
    except KeyboardInterrupt:
        pass  # Ctrl-C: the terminal sent SIGINT to Prometheus too; stop() below waits for it
    finally:
        signal.signal(signal.SIGTERM, previous)
        if server is not None:
            server.stop()
    return server.process.returncode if server is not None else 0


def load_dashboard(dashboard: Path | Mapping[str, Any]) -> dict[str, Any]:
    """A dashboard as a dict, from its JSON file or as given."""
    if isinstance(dashboard, Mapping):
        return dict(dashboard)
    path = Path(dashboard)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        msg = f"cannot read the Grafana dashboard {path}: {exc}"
        raise ConfigError(msg) from None


def dashboard_queries(
    dashboard: Path | Mapping[str, Any], variables: Mapping[str, str], *, annotations: bool = True
) -> list[PanelQuery]:
    """Every PromQL query of a Grafana dashboard (panels, also inside rows, then annotations).

    ``variables`` gives each dashboard variable (``line``, ``camera``) and each Grafana built-in the
    queries use (``__rate_interval``, ``__range``, ...; see :data:`GRAFANA_BUILTINS`) the text that
    replaces it. A variable with no value raises :class:`ConfigError`, so a query cannot reach
    Prometheus with a ``$`` left in it. The data source variable is not part of any expression.
    """
    board = load_dashboard(dashboard)
    queries = []
    for panel in _panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                title = panel.get("title", f"panel {panel.get('id')}")
                queries.append(
                    PanelQuery(title, target.get("refId", ""), substitute(target["expr"], variables, where=title))
                )
    if annotations:
        for annotation in board.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                where = f"annotation: {annotation.get('name', '')}"
                queries.append(PanelQuery(where, "", substitute(annotation["expr"], variables, where=where)))
    return queries


def substitute(expr: str, variables: Mapping[str, str], *, where: str = "query") -> str:
    """``expr`` with every ``$name`` / ``${name}`` replaced by ``variables[name]``."""

    def value(match: re.Match) -> str:
        name = match.group("braced") or match.group("bare")
        if name not in variables:
            msg = (
                f"{where}: no value for Grafana variable ${name} in {expr!r}; given: "
                f"{', '.join(sorted(variables)) or 'none'}"
            )
            raise ConfigError(msg)
        return variables[name]

    return _VARIABLE.sub(value, expr)


def _panels(panels: list[dict]) -> Iterator[dict]:
    """Panels in order, descending into rows (a collapsed row keeps its panels inside it)."""
    for panel in panels:
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels", []))
        else:
            yield panel


def _wait_until_ready(server: PrometheusServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        status = server.process.poll()
        if status is not None:
            msg = f"Prometheus exited with status {status} before it was ready at {server.url}"
            tail = server.log_tail()
            raise InspectError(f"{msg}:\n{tail}" if tail else f"{msg}; see its log above")
        try:
            response = httpx.get(f"{server.url}/-/ready", timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.2)
    msg = f"Prometheus was not ready at {server.url} after {timeout_s:.0f} s (last answer: {last})"
    tail = server.log_tail()
    raise InspectError(f"{msg}:\n{tail}" if tail else msg)
