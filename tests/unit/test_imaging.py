import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from inspectline.errors import InvalidImageError
from inspectline.imaging import decode_image, encode_png, read_image, to_model_image


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
    with pytest.raises(InvalidImageError, match="accepted formats are PNG, JPEG, BMP, TIFF") as err:
        decode_image(gif)
    assert err.value.code == "unsupported_type"
    with pytest.raises(InvalidImageError) as err:
        decode_image(b"definitely not an image")
    assert err.value.code == "unsupported_type"


def test_truncated_file_is_an_error_not_a_grey_frame():
    data = encode_png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(InvalidImageError, match="truncated or corrupt") as err:
        decode_image(data[: len(data) // 2])
    assert err.value.code == "undecodable"
    with pytest.raises(InvalidImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(InvalidImageError, match="starts like a PNG file but its header is corrupt") as err:
        decode_image(b"\x89PNG\r\n\x1a\nbroken")
    assert err.value.code == "undecodable"


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
    assert err.value.code == "too_large"
    with pytest.raises(InvalidImageError, match="limit is 100"):
        decode_image(encode_png(np.zeros((20, 20), np.uint8)), max_pixels=100)


def test_read_image_names_the_path(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InvalidImageError, match=r"broken.png"):
        read_image(bad)
    with pytest.raises(InvalidImageError, match=r"missing.png"):
        read_image(tmp_path / "missing.png")
