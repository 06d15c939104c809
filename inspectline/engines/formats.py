"""The export formats, by name: how each is written, quantised and opened (see the engine modules)."""

from __future__ import annotations

from inspectline.engines.onnx_engine import OnnxFormat
from inspectline.engines.openvino_engine import OpenVinoFormat
from inspectline.errors import ExportError

# Which precisions each format is exported in (ONNX Runtime has no fast fp16/bf16 on CPUs).
FORMAT_PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "fp16", "bf16", "int8")}
FORMATS = {"onnx": OnnxFormat(), "openvino": OpenVinoFormat()}


def export_format(name: str, precision: str | None = None) -> OnnxFormat | OpenVinoFormat:
    """The format ``name``; with ``precision``, also checks that the format is exported in it."""
    if name not in FORMATS:
        msg = f"export format {name!r} is not one of {', '.join(FORMATS)}"
        raise ExportError(msg)
    if precision is not None and precision not in FORMAT_PRECISIONS[name]:
        msg = (
            f"format {name!r} is not exported in precision {precision!r} "
            f"(accepted: {', '.join(FORMAT_PRECISIONS[name])}; fp16 and bf16 are OpenVINO's)"
        )
        raise ExportError(msg)
    return FORMATS[name]
