"""Decoding frames into arrays the model can take, shared by datasets, ``inspect predict`` and the service.

Cameras send PNG, JPEG, BMP or TIFF in grayscale, RGB, RGBA or 16 bits. ``decode_image`` checks the
format and the pixel count from the header *before* decoding (a decompression bomb never allocates),
decodes fully (a truncated file is an error, not a half-grey frame) and returns a numpy array.
``to_model_image`` then converts any of those layouts to the uint8 ``(H, W, C)`` array the model's
preprocessing expects, with ``C`` 1 for gray models and 3 for colour ones.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from inspectline.errors import InvalidImageError

ACCEPTED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp", "TIFF": "image/tiff"}
DEFAULT_MAX_PIXELS = 40_000_000
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}

# We enforce our own pixel limit from the header; Pillow's global bomb check would only warn first.
Image.MAX_IMAGE_PIXELS = None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to ``(H, W)`` or ``(H, W, C)``, uint8 or uint16.

    Raises :class:`InvalidImageError` with ``code`` ``unsupported_type`` (not one of
    PNG/JPEG/BMP/TIFF), ``too_large`` (more than ``max_pixels``) or ``undecodable``.
    """
    if not data:
        raise InvalidImageError(f"{name} is empty (0 bytes)", code="undecodable")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        claimed = next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)
        if claimed is not None:  # starts like one of ours, so it is a corrupt file rather than another format
            msg = f"{name} starts like a {claimed} file but its header is corrupt"
            raise InvalidImageError(msg, code="undecodable") from None
        msg = f"{name} is not a recognised image; accepted formats are {', '.join(ACCEPTED_FORMATS)}"
        raise InvalidImageError(msg, code="unsupported_type") from None
    except (OSError, ValueError, SyntaxError) as exc:  # a known format whose header is broken
        msg = f"{name} has a corrupt image header ({exc})"
        raise InvalidImageError(msg, code="undecodable") from None
    if image.format not in ACCEPTED_FORMATS:
        msg = f"{name} is {image.format}; accepted formats are {', '.join(ACCEPTED_FORMATS)}"
        raise InvalidImageError(msg, code="unsupported_type")
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        msg = f"{name} is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        raise InvalidImageError(msg, code="too_large")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TIFF/PNG metadata warnings are not errors
            image.load()
        return _to_array(image)
    except (OSError, ValueError, SyntaxError) as exc:
        msg = f"{name} could not be decoded as {image.format} ({exc}); the file may be truncated or corrupt"
        raise InvalidImageError(msg, code="undecodable") from None


def read_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file; errors name the path."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise InvalidImageError(msg, code="undecodable") from None
    return decode_image(data, max_pixels=max_pixels, name=str(path))


def to_model_image(array: np.ndarray, color_mode: str) -> np.ndarray:
    """Convert a decoded frame to uint8 ``(H, W, 1)`` (gray) or ``(H, W, 3)`` (rgb)."""
    image = _to_uint8(array)
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 4:  # alpha carries no inspection signal
        image = image[:, :, :3]
    elif channels == 2:  # gray + alpha
        image = image[:, :, :1]
    channels = image.shape[2]
    if color_mode == "gray" and channels == 3:
        image = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)[:, :, None]
    elif color_mode == "rgb" and channels == 1:
        image = np.repeat(image, 3, axis=2)
    elif color_mode not in ("gray", "rgb"):
        msg = f"color_mode {color_mode!r} is not one of 'gray', 'rgb'"
        raise ValueError(msg)
    return np.ascontiguousarray(image)


def encode_png(array: np.ndarray) -> bytes:
    """PNG-encode a uint8/uint16 gray or RGB(A) array (used by tests, adapters and the store)."""
    mode_map = {2: None, 3: "RGB", 4: "RGBA"}
    buf = io.BytesIO()
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        Image.fromarray(array).save(buf, format="PNG")
    else:
        Image.fromarray(array, mode=mode_map[array.shape[2]]).save(buf, format="PNG")
    return buf.getvalue()


def _to_array(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "1":
        image = image.convert("L")
    elif mode in ("P", "PA"):  # palette: expand; to_model_image drops the alpha
        image = image.convert("RGBA")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    elif mode == "I":  # 32-bit integer gray: keep the range a 16-bit sensor would give
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    elif mode == "F":
        values = np.asarray(image, dtype=np.float32)
        return (
            (np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
            if values.max() <= 1.0
            else np.clip(values, 0, 255).astype(np.uint8)
        )
    return np.asarray(image)


def _to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        # Full-scale mapping keeps the sensor's contrast; a 12-bit camera stored in 16 bits still lands
        # in the lower range, as the model saw it in training (training reads through this function too).
        return (array >> 8).astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(array)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)
