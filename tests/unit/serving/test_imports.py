"""Each process of the service imports what its own work needs, and no more.

Every Serve replica imports its deployment's module when it starts, and keeps what it imported for as
long as it runs. torch with torchvision, the training stack, grad-cam and matplotlib cost a replica
seconds of CPU at every start and hundreds of MiB for its life; the gateway and the line monitor use
none of them, and the heatmap worker loads them at the first heatmap asked for
(``benchmarks/service_start.py`` measures the difference). Checked in a fresh interpreter, since this
test session has long imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

TORCH_AND_TRAINING = {"torch", "torchvision", "albumentations", "pytorch_grad_cam", "matplotlib", "openvino"}
TRAINING_AND_EXPLAINING = {
    "torchvision",
    "pytorch_grad_cam",
    "matplotlib",
    "inspectline.training",
    "inspectline.explain",
}


def imported_after(*modules: str) -> set[str]:
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def loaded(modules: set[str], packages: set[str]) -> list[str]:
    return sorted(p for p in packages if p in modules)


@pytest.mark.parametrize(
    "module",
    [
        "inspectline.serving.gateway",  # HTTP, auth, hashing, forwarding
        "inspectline.serving.monitor",  # metrics, drift windows, the store, part verdicts
        "inspectline.serving.heatmaps",  # until the first heatmap is asked for
        "inspectline.serving.app",  # what `inspect serve` reads for its checks
        "inspectline.serving.deploy",
        "inspectline.registry",  # model versions and pointers: read by every process
        "inspectline.card",
    ],
)
def test_the_processes_that_run_no_model_import_no_torch(module):
    assert loaded(imported_after(module), TORCH_AND_TRAINING) == []


def test_an_inspector_imports_no_training_explaining_or_torchvision_until_it_builds_a_torch_model():
    """An inspector serving an export (OpenVINO, ONNX Runtime) never builds the torch model."""
    assert loaded(imported_after("inspectline.serving.inspector"), TRAINING_AND_EXPLAINING) == []
