"""The Ray Serve application builder named by ``serve_config.yaml``: ``inspectline.serving.app:build_app``.

    applications:
      - import_path: inspectline.serving.app:build_app
        args: {registry: /srv/inspectline/models}

Per-deployment settings (replicas, CPUs/GPUs, queue limits, ``user_config``) live in the config file's
``deployments`` section, so they can change without touching code.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError
from ray.serve import Application

from inspectline.config import StoreConfig
from inspectline.errors import ConfigError
from inspectline.serving.gateway import Gateway
from inspectline.serving.inspector import Inspector
from inspectline.serving.monitor import LineMonitor


class AppArgs(BaseModel):
    """``args`` of the application in ``serve_config.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    registry: Path = Path("models")
    store: StoreConfig = StoreConfig()
    spool_dir: Path = Path("data/spool")  # frames waiting for the store while it is unavailable


def build_app(args: dict) -> Application:
    """Gateway -> Inspector replicas, Gateway -> LineMonitor; paths are made absolute where the app is built."""
    try:
        parsed = AppArgs.model_validate(args or {})
    except ValidationError as exc:
        msg = f"invalid application args in the Serve config: {exc}"
        raise ConfigError(msg) from None
    base = Path.cwd()
    registry = str(parsed.registry.expanduser().resolve())
    store = parsed.store.resolved(base).model_dump(mode="json")
    spool = str((base / parsed.spool_dir).resolve())
    return Gateway.bind(Inspector.bind(registry), LineMonitor.bind(registry, store, spool), registry, store)
