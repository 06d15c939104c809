import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from inspectline.errors import ImageTooLargeError, InvalidImageError, UndecodableImageError, UnsupportedImageError
from inspectline.imaging import (
    IMAGE_MIME_TYPES,
    decode_for_model,
    decode_image,
    encode_png,
    format_named,
    probe_image,
    read_image,
    sniff_format,
    to_model_image,
)


def _encode(array: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF"])
def test_each_accepted_format_decodes(fmt):
    gray = (np.arange(64 * 48) % 256).astype(np.uint8).reshape(48, 64)
    out = decode_image(_encode(gray, fmt))
    assert out.shape[:2] == (48, 64)
    if fmt != "JPEG":
        np.testing.assert_array_equal(out if out.ndim == 2 else out[:, :, 0], gray)


def test_modes_gray_rgb_rgba_and_16_bit_become_model_images():
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    rgba = np.dstack([rgb, np.full((10, 12), 7, np.uint8)])
    gray16 = np.full((10, 12), 40000, np.uint16)
    for array in (rgb, rgba):
        decoded = decode_image(encode_png(array))
        assert to_model_image(decoded, "gray").shape == (10, 12, 1)
        assert to_model_image(decoded, "rgb").shape == (10, 12, 3)
    decoded16 = decode_image(_encode(gray16, "PNG"))
    assert decoded16.dtype == np.uint16 and int(decoded16[0, 0]) == 40000
    model16 = to_model_image(decoded16, "gray")
    assert model16.dtype == np.uint8 and int(model16[0, 0, 0]) == 40000 >> 8
    gray = to_model_image(decode_image(encode_png(np.full((4, 4), 9, np.uint8))), "rgb")
    assert gray.shape == (4, 4, 3) and (gray == 9).all()
    # red (200, 0, 0) becomes luminance ~ 0.299 * 200
    assert abs(int(to_model_image(rgb, "gray")[0, 0, 0]) - 60) <= 1


def test_unsupported_format_is_415_material():
    gif = _encode(np.zeros((8, 8), np.uint8), "GIF")
    with pytest.raises(InvalidImageError, match="accepted formats are PNG, JPEG, BMP or TIFF") as err:
        decode_image(gif)
    assert isinstance(err.value, UnsupportedImageError)
    with pytest.raises(InvalidImageError) as err:
        decode_image(b"definitely not an image")
    assert isinstance(err.value, UnsupportedImageError)


def test_truncated_file_is_an_error_not_a_grey_frame():
    data = encode_png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(InvalidImageError, match="truncated or corrupt") as err:
        decode_image(data[: len(data) // 2])
    assert isinstance(err.value, UndecodableImageError)
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(InvalidImageError, match="starts like a PNG file but its header is corrupt") as err:
        decode_image(b"\x89PNG\r\n\x1a\nbroken")
    assert isinstance(err.value, UndecodableImageError)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_the_header():
    # 100k x 100k would need 10 GB to decode; the guard must fire before any pixel is allocated.
    with pytest.raises(InvalidImageError, match="10,000,000,000 pixels") as err:
        decode_image(_png_header_only(100_000, 100_000))
    assert isinstance(err.value, ImageTooLargeError)
    with pytest.raises(InvalidImageError, match="limit is 100"):
        decode_image(encode_png(np.zeros((20, 20), np.uint8)), max_pixels=100)


def test_read_image_names_the_path(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InvalidImageError, match=r"broken.png"):
        read_image(bad)
    with pytest.raises(InvalidImageError, match=r"missing.png"):
        read_image(tmp_path / "missing.png")


def _with_sbit(png: bytes, bits: int) -> bytes:
    """Insert an sBIT chunk right after IHDR, as a camera writing its sensor depth does."""
    body = bytes([bits])
    chunk = struct.pack(">I", len(body)) + b"sBIT" + body + struct.pack(">I", zlib.crc32(b"sBIT" + body))
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


@pytest.mark.parametrize("bits", [10, 12, 16])
def test_16_bit_containers_are_scaled_by_their_significant_bits(bits):
    # A gradient that uses the sensor's whole range, stored in a 16-bit PNG.
    full = (1 << bits) - 1
    sensor = np.linspace(0, full, 256).astype(np.uint16).reshape(16, 16)
    png = _encode(sensor, "PNG")
    expected = (sensor >> (bits - 8)).astype(np.uint8)
    # sBIT in the file is enough ...
    frame, header = decode_for_model(_with_sbit(png, bits), "gray")
    assert header.significant_bits == bits
    np.testing.assert_array_equal(frame[:, :, 0], expected)
    assert frame.max() == 255  # the sensor's full scale is white, not near-black
    # ... and without it the configured bit depth (per camera, or the model's) does the same
    frame, header = decode_for_model(png, "gray", bit_depth=bits)
    assert header.significant_bits is None
    np.testing.assert_array_equal(frame[:, :, 0], expected)
    frame, _ = decode_for_model(png, "gray", default_bit_depth=bits)
    np.testing.assert_array_equal(frame[:, :, 0], expected)


def test_12_bit_content_shifted_as_16_bit_would_be_near_black():
    sensor = np.full((4, 4), 4095, np.uint16)
    assert to_model_image(sensor, "gray", bit_depth=16).max() == 15
    assert to_model_image(sensor, "gray", bit_depth=12).max() == 255
    assert to_model_image(np.full((2, 2), 5000, np.uint16), "gray", bit_depth=12).max() == 255  # saturates
    with pytest.raises(ValueError, match="between 8 and 16"):
        to_model_image(sensor, "gray", bit_depth=4)


def test_probe_reads_the_header_only():
    header = probe_image(_png_header_only(6000, 5000), max_pixels=40_000_000)  # no pixel data at all
    assert (header.format.name, header.width, header.height, header.pixels) == ("png", 6000, 5000, 30_000_000)
    with pytest.raises(ImageTooLargeError, match="limit is 1,000"):
        probe_image(_png_header_only(100, 100), max_pixels=1000)
    jpeg = probe_image(_encode(np.zeros((30, 40), np.uint8), "JPEG"))
    assert (jpeg.format.mime_type, jpeg.width, jpeg.height, jpeg.mode) == ("image/jpeg", 40, 30, "L")


def test_the_format_table():
    assert sniff_format(encode_png(np.zeros((2, 2), np.uint8))).name == "png"
    assert sniff_format(b"GIF89a") is None
    assert format_named("JPG").name == "jpeg" and format_named(".tif").name == "tiff"
    with pytest.raises(UnsupportedImageError, match="png, jpeg, bmp, tiff"):
        format_named("gif")
    assert IMAGE_MIME_TYPES["image/x-ms-bmp"].name == "bmp"
