"""What a benchmark ran on, recorded beside every absolute number, and where results are written."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from inspectline.hardware import cpu_capabilities

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    cpu = cpu_capabilities()
    mem_gib = None
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        kib = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        mem_gib = round(kib / 2**20, 1)
    return {
        "hostname": platform.node(),
        "cpu": cpu.model,
        "cpu_family": cpu.family or None,  # the generation where a VM hides the model name
        "cpu_model_number": cpu.model_number or None,
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
