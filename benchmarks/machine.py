"""What a benchmark ran on, recorded beside every absolute number, and where results are written."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _cpuinfo_fields() -> dict[str, str]:
    """The first processor's fields from /proc/cpuinfo (empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.read_text().splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def machine_info() -> dict:
    info = _cpuinfo_fields()
    mem_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        mem_gib = round(kib / 2**20, 1)
    return {
        "hostname": platform.node(),
        "cpu": info.get("model name", "unknown"),
        # VMs often hide the model name ("AMD EPYC"); family and model numbers still tell the generation
        # (AMD family 25 model 1 is Zen 3, family 25 model 17 is Zen 4).
        "cpu_family": info.get("cpu family"),
        "cpu_model_number": info.get("model"),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": mem_gib,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def save_result(name: str, result: dict) -> Path:
    """Write ``benchmarks/results/<name>.json``; returns its path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2))
    return path
