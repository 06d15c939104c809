"""The model card: what travels with a model's weights, readable without the model's stack.

A :class:`ModelCard` carries everything needed to use the weights: architecture, class names, the
:class:`Preprocessing` that turns a frame into the model's input, temperature, threshold, TTA views,
metrics and lineage. It is stored in every checkpoint (``inspectline.model``) and beside it as
``card.json`` in every registered version (``inspectline.registry``).

This module needs only pydantic: the gateway and the line monitor read cards and registry pointers
without importing torch, torchvision or the training stack, which keeps their processes small and
quick to start.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Preprocessing(BaseModel):
    """How a decoded frame becomes the model's input tensor; saved in every checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int
    color_mode: str  # "gray" -> 1 channel, "rgb" -> 3
    mean: tuple[float, ...]
    std: tuple[float, ...]
    bit_depth: int = Field(
        16, ge=8, le=16, description="significant bits of the 16-bit frames it was trained on (8-bit frames: unused)"
    )

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "gray" else 3


def backbone_name(arch: str, width: float) -> str:
    """The architecture as people should read it: ``resnet18``, or ``resnet18 x0.5`` when its width is scaled."""
    return arch if width == 1.0 else f"{arch} x{width:g}"


class ModelCard(BaseModel):
    """What travels with the weights: enough to preprocess, predict and explain a verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    arch: str
    class_names: tuple[str, ...]
    head_dims: tuple[int, ...]
    head_dropout: tuple[float, ...]
    pooling: str = "avg"  # cards written before pooling was configurable hold torchvision's average
    width: float = 1.0  # the backbone's channel scale; cards written before it was configurable are full width
    preprocessing: Preprocessing
    temperature: float = 1.0
    threshold: float = 0.5
    threshold_policy: str = "max_f1"
    # validation metrics of the standard points ("max_f1", "target_recall"): threshold, recall, precision,
    # false_reject_rate, prevalence, escapes_per_10k ... (see training.operating_point)
    operating_points: dict[str, dict[str, float | None]] = {}
    tta_views: tuple[str, ...] = ("identity", "hflip")
    metrics: dict[str, float] = {}
    version: str | None = None
    parent: str | None = None
    created_at: str | None = None
    config: dict[str, Any] = {}

    @property
    def backbone(self) -> str:
        return backbone_name(self.arch, self.width)

    @property
    def defect_index(self) -> int:
        return self.class_names.index("defective")
