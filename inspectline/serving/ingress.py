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
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from inspectline.errors import ConfigError

CHOICES = ("auto", "haproxy", "ray")
INSTALL = "sudo apt-get install -y haproxy"
_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
_BINARY = "RAY_SERVE_HAPROXY_BINARY_PATH"
_SOCKET_PATH_MAX = 97


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
    """A new folder for HAProxy's files. Ray puts them one node id (40 characters) deeper, and HAProxy refuses
    an admin socket path (while it binds: ``admin.sock.<pid>.tmp``) over 97 characters, so the name is short and
    a long temporary directory falls back to /tmp."""
    base = tempfile.gettempdir()
    if len(base) + len("/inspect-12345678/") + 40 + len("/admin.sock.4194304.tmp") > _SOCKET_PATH_MAX:
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="inspect-", dir=base))


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
