"""The classifier (a torchvision ResNet with a deep BatchNorm/dropout head) and its checkpoint format.

A checkpoint is one ``torch.save`` file holding only tensors and plain data, so it loads with
``torch.load(weights_only=True)`` and never unpickles code:

    {"format": "inspectline.checkpoint/1", "card": {...ModelCard...}, "state_dict": {...}}

The :class:`~inspectline.card.ModelCard` (``inspectline.card``) carries everything needed to use the
weights without the training stack.

    model = build_model("resnet50", in_channels=1)
    save_checkpoint(path, model, card)
    model, card = load_checkpoint(path)

``model.init_weights`` starts the backbone from ImageNet: ``imagenet`` uses torchvision's weights API
(downloaded once into torch's cache, ``$TORCH_HOME/hub/checkpoints``, and read from there after), a
path loads a local torchvision state dict. Offline with nothing cached, ``imagenet`` fails with an
error naming both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import URLError

import torch
from pydantic import ValidationError
from torch import nn

from inspectline.card import ModelCard
from inspectline.errors import CheckpointError
from inspectline.files import atomic_write

CHECKPOINT_FORMAT = "inspectline.checkpoint/1"
ARCHITECTURES = ("resnet18", "resnet34", "resnet50")
POOLINGS = ("avg", "max", "gem")
WIDTH_ROUNDING = 8  # a scaled stage keeps a multiple of 8 channels: the width SIMD kernels and INT8 blocking expect


class GeneralizedMeanPool(nn.Module):
    """``(mean(x ** p)) ** (1 / p)`` over the feature map, with ``p`` learnt: 1 is the average, large p the max.

    Computed in fp32 under autocast (a cube of bf16 activations loses the small ones) and clamped above
    zero, since the ReLU before it leaves exact zeros that ``pow`` must not differentiate at.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.float()
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3), keepdim=True)
        return pooled.pow(1.0 / p).to(x.dtype)


def _resnet(arch: str, width: float) -> nn.Module:
    """torchvision's ``arch``, untrained, with every stage's channels scaled by ``width`` (1.0: torchvision's own).

    A narrower network (``width`` 0.5: 32-64-128-256 channels for ResNet18 instead of 64-512) keeps the
    depth and receptive field for a quarter of the multiply-adds, so a full-resolution cell costs what a
    downscaled one does at full width. The stages are rebuilt with torchvision's own blocks and stage
    builder and initialised as torchvision initialises its ResNets.
    """
    import torchvision  # here, not at import: an inspector serving an export never builds a model (~3 s, 150 MB)

    backbone = getattr(torchvision.models, arch)(weights=None)
    if width == 1.0:
        return backbone
    widths = [max(WIDTH_ROUNDING, round(64 * 2**i * width / WIDTH_ROUNDING) * WIDTH_ROUNDING) for i in range(4)]
    block = type(backbone.layer1[0])
    depths = [len(backbone.layer1), len(backbone.layer2), len(backbone.layer3), len(backbone.layer4)]
    backbone.inplanes = widths[0]
    backbone.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    backbone.bn1 = nn.BatchNorm2d(widths[0])
    for i, (planes, depth) in enumerate(zip(widths, depths, strict=True), start=1):
        setattr(backbone, f"layer{i}", backbone._make_layer(block, planes, depth, stride=1 if i == 1 else 2))
    backbone.fc = nn.Linear(widths[-1] * block.expansion, backbone.fc.out_features)
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return backbone


def _pooling(kind: str) -> nn.Module:
    if kind == "avg":
        return nn.AdaptiveAvgPool2d(1)
    if kind == "max":
        return nn.AdaptiveMaxPool2d(1)
    if kind == "gem":
        return GeneralizedMeanPool()
    msg = f"model.pooling {kind!r} is not one of {', '.join(POOLINGS)}"
    raise ValueError(msg)


class DefectClassifier(nn.Module):
    """ResNet backbone (global-pooled features: average, max or generalized mean) followed by the deep head.

    Head: Dropout(p0) -> Linear(d1) -> BN -> ReLU -> Dropout(p1) -> Linear(d2) -> BN -> ReLU
          -> Dropout(p2) -> Linear(num_classes)
    """

    def __init__(
        self,
        arch: str,
        num_classes: int,
        in_channels: int,
        head_dims: tuple[int, ...],
        head_dropout: tuple[float, ...],
        pooling: str = "avg",
        width: float = 1.0,
    ):
        super().__init__()
        if arch not in ARCHITECTURES:
            msg = f"model.arch {arch!r} is not one of {', '.join(ARCHITECTURES)}"
            raise ValueError(msg)
        backbone = _resnet(arch, width)
        backbone.avgpool = _pooling(pooling)  # the name torchvision's forward calls, whatever the pooling
        if in_channels != 3:
            stem = backbone.conv1.out_channels
            backbone.conv1 = nn.Conv2d(in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.feature_dim = backbone.fc.in_features  # 512 (resnet18/34) or 2048 (resnet50), times the width
        backbone.fc = nn.Identity()
        self.backbone = backbone
        layers: list[nn.Module] = []
        width = self.feature_dim
        for out, p in zip(head_dims, head_dropout, strict=False):
            layers += [nn.Dropout(p), nn.Linear(width, out), nn.BatchNorm1d(out), nn.ReLU(inplace=True)]
            width = out
        self.embedding_dim = width
        self.neck = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(head_dropout[-1]), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.neck(self.backbone(x)))  # (B, C, H, W) -> (B, num_classes)

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the penultimate activations ``(B, head_dims[-1])`` in one pass (drift monitoring)."""
        embedding = self.neck(self.backbone(x))
        return self.classifier(embedding), embedding


def build_model(
    arch: str = "resnet50",
    *,
    num_classes: int = 2,
    in_channels: int = 3,
    head_dims: tuple[int, ...] = (512, 256),
    head_dropout: tuple[float, ...] = (0.5, 0.3, 0.2),
    pooling: str = "avg",
    width: float = 1.0,
    init_weights: str | Path | None = None,
    fetch_imagenet: Callable[[str], dict[str, torch.Tensor]] | None = None,
) -> DefectClassifier:
    """Build the classifier, from scratch or with an ImageNet backbone (see the module docstring).

    ``fetch_imagenet`` (``arch -> state dict``) replaces the download, for tests and air-gapped mirrors.
    """
    model = DefectClassifier(arch, num_classes, in_channels, tuple(head_dims), tuple(head_dropout), pooling, width)
    if init_weights is None:
        return model
    if str(init_weights) == "imagenet":
        load_backbone_state(model, (fetch_imagenet or imagenet_state_dict)(arch), "ImageNet weights")
    else:
        load_backbone_weights(model, Path(init_weights))
    return model


def imagenet_state_dict(arch: str, *, load_url: Callable[..., dict] | None = None) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights for ``arch``: from torch's cache, downloaded there once.

    ``load_url`` stands in for ``torch.hub.load_state_dict_from_url`` (tests, mirrors).
    """
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    load_url = load_url or torch.hub.load_state_dict_from_url
    try:
        return load_url(weights.url, progress=False, check_hash=True, weights_only=True, map_location="cpu")
    except (URLError, OSError) as exc:
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        msg = (
            f"model.init_weights='imagenet' needs torchvision's {weights} weights, which are not in torch's cache "
            f"({cache}) and could not be downloaded from {weights.url} ({exc}). Either run once where the machine "
            f"is online (or copy the file into {cache}), or download the .pth file elsewhere and set "
            f"model.init_weights to its local path."
        )
        raise CheckpointError(msg) from None


def model_from_card(card: ModelCard) -> DefectClassifier:
    return build_model(
        card.arch,
        num_classes=len(card.class_names),
        in_channels=card.preprocessing.channels,
        head_dims=card.head_dims,
        head_dropout=card.head_dropout,
        pooling=card.pooling,
        width=card.width,
    )


def load_backbone_weights(model: DefectClassifier, path: Path) -> int:
    """Load a torchvision-style ResNet state dict file into the backbone; returns tensors loaded."""
    state = _torch_load(Path(path))
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"{path} is not a state dict of tensors (a torchvision ResNet .pth file is expected)"
        raise CheckpointError(msg)
    return load_backbone_state(model, state, str(path))


def load_backbone_state(model: DefectClassifier, state: dict[str, torch.Tensor], origin: str) -> int:
    """Load a torchvision ResNet state dict into the backbone; returns tensors loaded.

    The classifier (``fc.*``) is skipped. For a gray model the RGB ``conv1`` kernel is summed over its
    input channels, which keeps the response to a gray image equal to that of the RGB original.
    """
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = model.backbone.state_dict()
    conv = state.get("conv1.weight")
    if conv is not None and conv.shape[1] == 3 and own["conv1.weight"].shape[1] == 1:
        state["conv1.weight"] = conv.sum(dim=1, keepdim=True)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    unknown = [k for k in state if k not in own]
    if mismatched or len(unknown) > len(state) // 2:
        msg = (
            f"{origin} does not fit backbone {model.backbone.__class__.__name__}: shape mismatches "
            f"{mismatched[:5]}, unknown keys {unknown[:5]}"
        )
        raise CheckpointError(msg)
    model.backbone.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return sum(1 for k in state if k in own)


def save_checkpoint(path: Path, model: nn.Module, card: ModelCard) -> None:
    """Write atomically: a reader never sees a half-written checkpoint."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "card": card.model_dump(mode="json"), "state_dict": state}
    atomic_write(Path(path), lambda fh: torch.save(payload, fh))


def read_card(path: Path) -> ModelCard:
    """The card of a checkpoint, validated (the weights are read too: one file)."""
    return _validated(Path(path))[0]


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[DefectClassifier, ModelCard]:
    """Rebuild the model in eval mode from a checkpoint; clear errors for missing, truncated or foreign files."""
    path = Path(path)
    card, state = _validated(path)
    model = model_from_card(card)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        msg = f"{path}: weights do not match the {card.arch} architecture its card describes: {str(exc)[:300]}"
        raise CheckpointError(msg) from None
    return model.to(device).eval(), card


def _validated(path: Path) -> tuple[ModelCard, dict[str, torch.Tensor]]:
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = sorted(payload)[:6] if isinstance(payload, dict) else type(payload).__name__
        msg = (
            f"{path} was not written by inspectline: expected format {CHECKPOINT_FORMAT!r} with a card "
            f"and state_dict, found {found}"
        )
        raise CheckpointError(msg)
    try:
        card = ModelCard.model_validate(payload["card"])
    except (ValidationError, KeyError) as exc:
        msg = f"{path} has an invalid model card: {exc}"
        raise CheckpointError(msg) from None
    return card, payload["state_dict"]


def _torch_load(path: Path) -> Any:
    if not path.is_file():
        msg = f"no checkpoint at {path}"
        raise CheckpointError(msg)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on corrupt input (KeyError, EOFError, ...)
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        msg = f"{path} is not a readable checkpoint (truncated, corrupt or not a torch file): {reason}"
        raise CheckpointError(msg) from None
