"""The Ray Serve application builder named by ``serve_config.yaml``: ``inspectline.serving.app:build_app``.

    applications:
      - import_path: inspectline.serving.app:build_app
        args: {config: inspect.yaml}

The service reads where things are — the model registry (``paths.registry``), the frame store
(``store``), its spool and API tokens (``service``) — and the lines it decides part verdicts for, with
their outputs and outbox (``plant``), from the same ``inspect.yaml`` the ``inspect`` command reads, so
``inspect retrain`` learns from exactly the frames the service stored. Relative paths resolve against
the working directory, as they do for the CLI. At start it logs which file set each
location. Per-deployment settings (replicas, CPUs/GPUs, queue limits, ``user_config``) stay in the
Serve config's ``deployments`` section, so they can change without touching code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator
from ray.serve import Application

from inspectline.config import InspectConfig, PlantConfig, StoreConfig, load_config
from inspectline.errors import ConfigError, validation_messages

log = logging.getLogger("ray.serve")
_MOVED = {"registry": "paths.registry", "store": "store", "spool_dir": "service.spool_dir"}


class AppArgs(BaseModel):
    """``args`` of the application in ``serve_config.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    config: Path = Path("inspect.yaml")  # the CLI's configuration; when the file is missing, the defaults
    base: Path | None = None  # what relative paths resolve against; None: the working directory
    # Which deployment judges frames: Inspector replicas behind the Gateway (serve_config.yaml), or the
    # Gateway replicas themselves, one process hop fewer per frame (deploy/serve_config.gateway-judges.yaml).
    judge: Literal["inspector", "gateway"] = "inspector"

    @model_validator(mode="before")
    @classmethod
    def _locations_live_in_inspect_yaml(cls, values: object) -> object:
        if isinstance(values, dict) and (moved := sorted(set(values) & set(_MOVED))):
            where = ", ".join(f"{k} -> {_MOVED[k]}" for k in moved)
            msg = (
                f"the Serve config sets {', '.join(moved)}; the service now reads them from inspect.yaml so that it "
                f"and the inspect command agree. Move them there ({where}) and give `args: {{config: inspect.yaml}}`"
            )
            raise ValueError(msg)
        return values


@dataclass(frozen=True)
class ServiceLocations:
    """Where the service keeps things, absolute, and which file set each (for the start-up log)."""

    registry: Path
    store: StoreConfig
    spool_dir: Path
    tokens_file: Path | None
    plant: PlantConfig  # its outbox absolute
    origins: dict[str, str]

    def describe(self) -> list[str]:
        return [
            f"registry    {self.registry}  ({self.origins['paths.registry']})",
            f"frame store {self.store.database_url}, images in {self.store.storage_url}  ({self.origins['store']})",
            f"spool       {self.spool_dir}  ({self.origins['service.spool_dir']})",
            f"API tokens  {self.tokens_file or 'INSPECT_API_TOKEN only'}  ({self.origins['service.tokens_file']})",
            f"lines       {', '.join(self.plant.lines) or 'none (no part verdicts)'}, outbox {self.plant.outbox}  "
            f"({self.origins['plant']})",
        ]


def service_locations(config_path: Path, base: Path) -> ServiceLocations:
    """Read ``config_path`` (relative to ``base``) as the CLI would and resolve the service's locations."""
    path = config_path if config_path.is_absolute() else base / config_path
    raw: dict = {}
    if path.is_file():
        raw = yaml.safe_load(path.read_text()) or {}
        cfg = load_config(path)
    else:
        cfg = InspectConfig()

    def origin(dotted: str) -> str:
        node: object = raw
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            return f"set in {path} ({dotted})"
        return f"default; {path} does not set {dotted}" if path.is_file() else f"default; no {path}"

    tokens = cfg.service.tokens_file
    return ServiceLocations(
        registry=(base / cfg.paths.registry).resolve(),
        store=cfg.store.resolved(base),
        spool_dir=(base / cfg.service.spool_dir).resolve(),
        tokens_file=(base / tokens).resolve() if tokens is not None else None,
        plant=cfg.plant.model_copy(update={"outbox": (base / cfg.plant.outbox).resolve()}),
        origins={
            k: origin(k) for k in ("paths.registry", "store", "service.spool_dir", "service.tokens_file", "plant")
        },
    )


def build_app(args: dict) -> Application:
    """Gateway -> Inspector replicas (unless the Gateway judges), LineMonitor and the Heatmaps worker, with the
    locations from ``inspect.yaml``."""
    try:
        parsed = AppArgs.model_validate(args or {})
    except ValidationError as exc:
        msg = "invalid application args in the Serve config: " + "; ".join(validation_messages(exc))
        raise ConfigError(msg) from None
    where = service_locations(parsed.config.expanduser(), parsed.base or Path.cwd())
    for line in where.describe():
        log.info("inspectline: %s", line)
    registry, store, spool = str(where.registry), where.store.model_dump(mode="json"), str(where.spool_dir)
    tokens = str(where.tokens_file) if where.tokens_file else None
    plant = where.plant.model_dump(mode="json")
    # Imported here, where the app is built: `inspect serve` reads this module's locations for its checks
    # and should not load torch for that; each replica imports only its own deployment's module.
    from inspectline.serving.gateway import Gateway
    from inspectline.serving.heatmaps import HeatmapWorker
    from inspectline.serving.inspector import Inspector
    from inspectline.serving.monitor import LineMonitor

    return Gateway.bind(
        Inspector.bind(registry, gateway=Gateway.name) if parsed.judge == "inspector" else None,
        LineMonitor.bind(registry, store, spool, plant),
        registry,
        store,
        spool,
        tokens,
        heatmaps=HeatmapWorker.bind(registry, store),
    )
