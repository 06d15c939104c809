"""Schemathesis hooks for the gateway's API: image bodies are real images.

A body documented as ``image/png`` is, to the schema, any byte string; the service judges only real
images. So that schema-valid (positive) requests are valid requests, image media types and the binary
parts of multipart bodies are generated as small real images in the documented format; negative
requests still mutate them. Loaded with ``SCHEMATHESIS_HOOKS=tests.fuzz.hooks``.
"""

from __future__ import annotations

import io

import numpy as np
import schemathesis
from hypothesis import strategies as st
from PIL import Image

FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/bmp": "BMP", "image/tiff": "TIFF"}


@st.composite
def images(draw, fmt: str = "PNG") -> bytes:
    side = draw(st.integers(min_value=8, max_value=48))
    seed = draw(st.integers(min_value=0, max_value=2**16))
    mode = draw(st.sampled_from(["L", "RGB"]))
    rng = np.random.default_rng(seed)
    shape = (side, side) if mode == "L" else (side, side, 3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(buf, format=fmt)
    return buf.getvalue()


for media_type, pil_format in FORMATS.items():
    schemathesis.openapi.media_type(media_type, images(pil_format))
schemathesis.openapi.format("binary", images("PNG"))
