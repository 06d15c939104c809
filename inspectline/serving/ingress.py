"""Which HTTP front a local Ray's service runs behind, settled before Ray starts.

Ray Serve has two. By default its Python HTTP proxy actor takes every request and hands it to the
Gateway replica over Ray's ASGI bridge: two extra hops of Python per request, which measured 8.5-12 ms
of proxy CPU and most of the Gateway's ~19 ms per single-frame post on a 2-core Xeon. With
``RAY_SERVE_ENABLE_HA_PROXY`` Ray instead runs the ingress replica's own HTTP server ("direct ingress")
and puts Debian's ``haproxy`` (C, event-driven) in front of it on the configured host and port: the same
routes, auth and answers, and about 1.75x the single-post throughput on the same machine
(``benchmarks/results/serve_elpv_cpu_auto_haproxy.json`` against ``..._default.json``).

Ray reads these settings from the environment of the processes it starts, so they are chosen here and
applied to ``os.environ`` by :func:`inspectline.serving.deploy.start_local_ray` just before ``ray.init``;
a cluster given with ``--address`` has its own environment and keeps its own choice.

``auto`` (the default) takes HAProxy when the program is installed and Ray's proxy otherwise, and says
which and why. HAProxy's files (its generated config, admin and metrics sockets, server state) go in a
folder of this run's own, so two services on one machine cannot overwrite each other's, and the drain
Ray holds a stopping ingress replica open for (30 s, for a cloud load balancer to deregister it) is 1 s:
on one machine HAProxy is the only party routing to it. Both stay overridable from the environment.

An HAProxy can outlive its run: Ray's HAProxy manager actor starts it, and when that actor is killed (a
crashed service, a manager Ray restarted because it answered its ready check too late on a slow PC) the
HAProxy is left to init, still holding the service's port and its stats and metrics ports, and every later
start fails to bind them. Each run's folder names the process that owns it; a local start ends the HAProxy
processes of folders whose owner has ended (:func:`end_stale_haproxy`), and a stop ends its own run's
wherever they now hang (:func:`end_haproxy`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from inspectline.errors import ConfigError

CHOICES = ("auto", "haproxy", "ray")
INSTALL = "sudo apt-get install -y haproxy"
_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
_BINARY = "RAY_SERVE_HAPROXY_BINARY_PATH"
_SOCKET_PATH_MAX = 97
_PREFIX = "inspect-"
_OWNER = "owner"  # "<pid> <start time>" of the process that made the folder


@dataclass(frozen=True)
class Ingress:
    """The front chosen: ``haproxy`` or ``ray`` (Ray Serve's proxy), why, and the HAProxy program for the first."""

    name: str
    reason: str
    binary: str | None = None

    def describe(self) -> str:
        return f"ingress: {self.name} ({self.reason})"

    def environment(self, workdir: Path, environ: Mapping[str, str]) -> dict[str, str]:
        """The variables Ray's processes need for this front; HAProxy's files go in ``workdir``. Values already
        in ``environ`` win, except the two that pick the front."""
        if self.name == "ray":
            return {_FLAG: "0"}
        env = {
            "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(workdir / "haproxy.cfg"),
            "RAY_SERVE_HAPROXY_SOCKET_PATH": str(workdir / "admin.sock"),
            "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(workdir / "metrics.sock"),
            "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(workdir),
            "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(workdir / "server-state"),
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
        }
        return {**{k: environ.get(k, v) for k, v in env.items()}, _FLAG: "1", _BINARY: str(self.binary)}


def ingress_workdir() -> Path:
    """A new folder for HAProxy's files, owned by this process (see :func:`end_stale_haproxy`). Ray puts them one
    node id (40 characters) deeper, and HAProxy refuses an admin socket path (while it binds:
    ``admin.sock.<pid>.tmp``) over 97 characters, so the name is short and a long temporary directory falls back
    to /tmp."""
    base = _workdir_base()
    workdir = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=base))
    me = psutil.Process()
    (workdir / _OWNER).write_text(f"{me.pid} {me.create_time()}\n")
    return workdir


def _workdir_base() -> str:
    base = tempfile.gettempdir()
    if len(base) + len(f"/{_PREFIX}12345678/") + 40 + len("/admin.sock.4194304.tmp") > _SOCKET_PATH_MAX:
        base = "/tmp"
    return base


def haproxy_config(process: psutil.Process) -> Path | None:
    """The config file of an HAProxy process (``haproxy ... -f FILE``), or None for any other process."""
    try:
        command = process.cmdline()
    except psutil.Error:
        return None
    if not command or Path(command[0]).name != "haproxy" or "-f" not in command[:-1]:
        return None
    return Path(command[command.index("-f") + 1])


def end_haproxy(where: Callable[[Path], bool], *, timeout_s: float = 5.0) -> list[int]:
    """End every HAProxy process whose config file ``where`` accepts, whoever its parent is now; their pids.

    An HAProxy outlives the Ray actor that started it (its HAProxy manager) when that actor is killed, and is
    then a child of init that still holds the service's ports: the next start cannot bind them.
    """
    found = [p for p in psutil.process_iter() if (config := haproxy_config(p)) is not None and where(config)]
    end_processes(found, timeout_s=timeout_s)
    return [p.pid for p in found]


def end_processes(processes: list[psutil.Process], *, timeout_s: float) -> None:
    """SIGTERM each, then SIGKILL those still running after ``timeout_s``; gone ones are skipped."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, stubborn = psutil.wait_procs(processes, timeout=timeout_s)
    for process in stubborn:
        with contextlib.suppress(psutil.Error):
            process.kill()


def end_stale_haproxy() -> list[int]:
    """End the HAProxy processes an earlier local service left running: those whose folder (from
    :func:`ingress_workdir`) is gone or whose owner process has ended. Another running service's are left alone."""
    base = Path(_workdir_base()).resolve()

    def stale(config: Path) -> bool:
        config = config.resolve()
        if not config.is_relative_to(base):
            return False
        folder = config.relative_to(base).parts[0]
        return folder.startswith(_PREFIX) and not _owner_alive(base / folder)

    return end_haproxy(stale)


def _owner_alive(workdir: Path) -> bool:
    try:
        pid, started = (workdir / _OWNER).read_text().split()
        return psutil.Process(int(pid)).create_time() == float(started)  # the same process, not a reused pid
    except (OSError, ValueError, psutil.Error):
        return False


def find_haproxy(environ: Mapping[str, str]) -> str | None:
    """The HAProxy program Ray would run: ``RAY_SERVE_HAPROXY_BINARY_PATH``, else ``haproxy`` on PATH or in
    /usr/sbin, where Debian puts it (not on a normal user's PATH)."""
    explicit = environ.get(_BINARY)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin:/sbin")


def choose_ingress(choice: str, environ: Mapping[str, str]) -> Ingress:
    """The front for ``choice`` (``auto``, ``haproxy`` or ``ray``) on this machine.

    Under ``auto`` an explicit ``RAY_SERVE_ENABLE_HA_PROXY`` in the environment decides. Asking for
    ``haproxy`` where it is not installed is an error that names the install command.
    """
    if choice not in CHOICES:
        msg = f"ingress {choice!r} is not one of {', '.join(CHOICES)}"
        raise ConfigError(msg)
    if choice == "ray":
        return Ingress("ray", "Ray Serve's HTTP proxy, as asked")
    if choice == "auto" and _FLAG in environ:
        if environ[_FLAG] != "1":
            return Ingress("ray", f"Ray Serve's HTTP proxy: {_FLAG}={environ[_FLAG]} in the environment")
        choice, why = "haproxy", f"{_FLAG}=1 in the environment"
    else:
        why = "as asked" if choice == "haproxy" else "installed"
    binary = find_haproxy(environ)
    if binary is None:
        if choice == "haproxy":
            msg = (
                f"the haproxy ingress needs HAProxy, which is not installed here ({_BINARY}, PATH and /usr/sbin "
                f"searched). Install it with `{INSTALL}`, or serve behind Ray's own proxy with --ingress ray."
            )
            raise ConfigError(msg)
        return Ingress("ray", f"Ray Serve's HTTP proxy: HAProxy is not installed; `{INSTALL}` makes posts cheaper")
    return Ingress("haproxy", f"{binary} in front of the Gateway's own HTTP server, {why}", binary)
