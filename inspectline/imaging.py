"""Decoding frames into arrays the model can take, shared by datasets, ``inspect predict`` and the service.

Cameras send PNG, JPEG, BMP or TIFF in grayscale, RGB, RGBA or 16 bits. :data:`IMAGE_FORMATS` is the one
table of what we accept (names, MIME types, file suffixes, signatures); everything that checks a format
imports it. Two steps, so the cheap one can run where CPU is scarce:

* :func:`probe_image` reads only the header: format, size and bit depth, and refuses a decompression
  bomb (more than ``max_pixels``) before a single pixel is allocated. The service's gateway stops here.
* :func:`decode_image` decodes fully (a truncated file is an error, not a half-grey frame) and returns
  a numpy array. The service's inspector replicas do this, where the CPUs are.

:func:`to_model_image` then converts any of those layouts to the uint8 ``(H, W, C)`` array the model's
preprocessing expects, with ``C`` 1 for gray models and 3 for colour ones. 16-bit frames are scaled by
their *significant* bits, not the container's: a 12-bit sensor's frame in a 16-bit PNG uses 0..4095,
and shifting it by 8 bits would leave it near-black. The significant bits come from the PNG ``sBIT``
chunk when the camera writes one, else from configuration (per camera, or the bit depth the model was
trained on, recorded in its card), else the container's 16.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from inspectline.errors import ImageTooLargeError, UndecodableImageError, UnsupportedImageError


@dataclass(frozen=True)
class ImageFormat:
    name: str  # lower-case, as stored: png, jpeg, bmp, tiff
    pil_name: str  # what Pillow calls it
    mime_types: tuple[str, ...]  # the first is canonical; the rest are aliases cameras send
    suffixes: tuple[str, ...]
    signatures: tuple[bytes, ...]  # leading bytes of every such file

    @property
    def mime_type(self) -> str:
        return self.mime_types[0]


IMAGE_FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("png", "PNG", ("image/png",), (".png",), (b"\x89PNG\r\n\x1a\n",)),
    ImageFormat("jpeg", "JPEG", ("image/jpeg", "image/jpg", "image/pjpeg"), (".jpg", ".jpeg"), (b"\xff\xd8\xff",)),
    ImageFormat("bmp", "BMP", ("image/bmp", "image/x-bmp", "image/x-ms-bmp"), (".bmp",), (b"BM",)),
    ImageFormat("tiff", "TIFF", ("image/tiff", "image/tif"), (".tif", ".tiff"), (b"II*\x00", b"MM\x00*")),
)
FORMAT_NAMES = tuple(f.name for f in IMAGE_FORMATS)
IMAGE_MIME_TYPES = {mime: f for f in IMAGE_FORMATS for mime in f.mime_types}
IMAGE_SUFFIXES = frozenset(suffix for f in IMAGE_FORMATS for suffix in f.suffixes)
ACCEPTED = "PNG, JPEG, BMP or TIFF"
DEFAULT_MAX_PIXELS = 40_000_000
_BY_PIL_NAME = {f.pil_name: f for f in IMAGE_FORMATS}
_PNG_SIGNATURE = IMAGE_FORMATS[0].signatures[0]

# We enforce our own pixel limit from the header; Pillow's global bomb check would only warn first.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, read without decoding a pixel."""

    format: ImageFormat
    width: int
    height: int
    mode: str  # Pillow's mode: L, RGB, RGBA, I;16 ...
    significant_bits: int | None  # PNG sBIT of the first channel, when present

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff_format(data: bytes) -> ImageFormat | None:
    """The accepted format whose signature ``data`` starts with, or None."""
    return next((f for f in IMAGE_FORMATS for sig in f.signatures if data.startswith(sig)), None)


def format_named(name: str) -> ImageFormat:
    """``png`` / ``JPG`` / ``tif`` ... -> the format; UnsupportedImageError naming the accepted ones."""
    key = name.strip().lower().lstrip(".")
    for f in IMAGE_FORMATS:
        if key == f.name or f".{key}" in f.suffixes:
            return f
    msg = f"image format {name!r} is not one of {', '.join(FORMAT_NAMES)}"
    raise UnsupportedImageError(msg)


def probe_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> ImageHeader:
    """Format, size and bit depth from the header alone; raises for anything :func:`decode_image` would refuse early."""
    image = _open(data, name)
    fmt = _BY_PIL_NAME.get(image.format or "")
    if fmt is None:
        msg = f"{name} is {image.format}; accepted formats are {ACCEPTED}"
        raise UnsupportedImageError(msg)
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        msg = f"{name} is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        raise ImageTooLargeError(msg)
    bits = png_significant_bits(data) if fmt.name == "png" else None
    return ImageHeader(format=fmt, width=width, height=height, mode=image.mode, significant_bits=bits)


def png_significant_bits(data: bytes) -> int | None:
    """The ``sBIT`` value of a PNG's first channel (e.g. 12 for a 12-bit sensor in 16 bits), or None.

    Pillow does not read sBIT, so walk the chunks before the image data: ``length, type, body, crc``.
    """
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"sBIT" and length >= 1 and pos + 9 <= len(data):
            return data[pos + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        pos += 12 + length
    return None


def decode_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to ``(H, W)`` or ``(H, W, C)``, uint8 or uint16.

    Raises :class:`UnsupportedImageError` (not PNG/JPEG/BMP/TIFF), :class:`ImageTooLargeError` (more
    than ``max_pixels``, from the header) or :class:`UndecodableImageError`.
    """
    header = probe_image(data, max_pixels=max_pixels, name=name)
    image = _open(data, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TIFF/PNG metadata warnings are not errors
            image.load()
        return _to_array(image)
    except (OSError, ValueError, SyntaxError) as exc:
        msg = f"{name} could not be decoded as {header.format.pil_name} ({exc}); the file may be truncated or corrupt"
        raise UndecodableImageError(msg) from None


def _open(data: bytes, name: str) -> Image.Image:
    """Pillow's lazy open: parses the header only."""
    if not data:
        msg = f"{name} is empty (0 bytes)"
        raise UndecodableImageError(msg)
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        claimed = sniff_format(data)
        if claimed is not None:  # starts like one of ours, so it is a corrupt file rather than another format
            msg = f"{name} starts like a {claimed.pil_name} file but its header is corrupt"
            raise UndecodableImageError(msg) from None
        msg = f"{name} is not a recognised image; accepted formats are {ACCEPTED}"
        raise UnsupportedImageError(msg) from None
    except (OSError, ValueError, SyntaxError) as exc:  # a known format whose header is broken
        msg = f"{name} has a corrupt image header ({exc})"
        raise UndecodableImageError(msg) from None


def read_image(path: Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file; errors name the path."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror or exc}"
        raise UndecodableImageError(msg) from None
    return decode_image(data, max_pixels=max_pixels, name=str(path))


def decode_for_model(
    data: bytes,
    color_mode: str,
    *,
    bit_depth: int | None = None,
    default_bit_depth: int = 16,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str = "image",
) -> tuple[np.ndarray, ImageHeader]:
    """Decode and convert for the model in one step: the uint8 ``(H, W, C)`` frame and its header.

    16-bit frames are scaled by ``bit_depth`` when given (configured per camera), else by the PNG's
    sBIT, else by ``default_bit_depth`` (the bit depth the model was trained on).
    """
    header = probe_image(data, max_pixels=max_pixels, name=name)
    bits = bit_depth or header.significant_bits or default_bit_depth
    return to_model_image(decode_image(data, max_pixels=max_pixels, name=name), color_mode, bit_depth=bits), header


def to_model_image(array: np.ndarray, color_mode: str, *, bit_depth: int = 16) -> np.ndarray:
    """Convert a decoded frame to uint8 ``(H, W, 1)`` (gray) or ``(H, W, 3)`` (rgb).

    ``bit_depth`` is how many bits of a uint16 frame carry signal (8..16); values above the range saturate.
    """
    image = _to_uint8(array, bit_depth)
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


def _to_uint8(array: np.ndarray, bit_depth: int = 16) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        if not 8 <= bit_depth <= 16:
            msg = f"bit_depth {bit_depth} must be between 8 and 16 for a 16-bit frame"
            raise ValueError(msg)
        # Keep the top 8 of the significant bits: exact for 16 (>> 8), 12 (>> 4) or 10 (>> 2) bit sensors.
        top = (1 << bit_depth) - 1
        return (np.minimum(array, top) >> (bit_depth - 8)).astype(np.uint8)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(array)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(array) * scale, 0, 255).astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)
