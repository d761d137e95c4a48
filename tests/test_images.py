"""Images as crawlers bring them: every mode and format becomes RGB, sizes become one square, bad files a reason."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from magvlt.images import BadSample, fit_image, load_image


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int, h: int) -> Image.Image:
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return Image.fromarray(
        np.stack([x * 255 // max(1, w - 1), y * 255 // max(1, h - 1), (x + y) % 256], -1).astype(np.uint8)
    )


@pytest.mark.parametrize("w, h", [(300, 200), (200, 300), (64, 64), (10, 7)])
def test_shorter_side_to_size_then_center_crop(w, h):
    image = gradient(w, h)
    out = fit_image(image, (64, 64))
    assert out.shape == (64, 64, 3)
    scale = 64 / min(w, h)
    big = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
    left, top = (big.width - 64) // 2, (big.height - 64) // 2
    assert np.array_equal(out, np.asarray(big)[top : top + 64, left : left + 64])
    assert fit_image(out, (64, 64)) is out  # already the size: untouched (the 32 px shapes world)


def test_every_mode_becomes_rgb():
    rgb = gradient(40, 30)
    gray, cmyk = rgb.convert("L"), rgb.convert("CMYK")
    assert np.array_equal(np.asarray(load_image(encoded(gray, "PNG"))), np.repeat(np.asarray(gray)[..., None], 3, -1))
    assert load_image(encoded(cmyk, "JPEG")).mode == "RGB"
    assert load_image(encoded(rgb, "WEBP", lossless=True)).tobytes() == rgb.tobytes()
    deep = Image.fromarray(np.array([[0, 257, 65535, 32896]], np.uint16))
    assert np.asarray(load_image(encoded(deep, "PNG")))[..., 0].tolist() == [[0, 1, 255, 128]]
    rgba = Image.fromarray(np.array([[[200, 100, 50, 255], [200, 100, 50, 128]]], np.uint8))
    assert np.asarray(load_image(encoded(rgba, "WEBP", lossless=True))).tolist() == [[[200, 100, 50], [100, 50, 25]]]
    pal = Image.fromarray(np.array([[0, 1]], np.uint8)).convert("P")
    pal.putpalette([10, 20, 30, 40, 50, 60])
    assert np.asarray(load_image(encoded(pal, "PNG", transparency=0))).tolist() == [[[0, 0, 0], [40, 50, 60]]]


def test_exif_orientation_is_applied():
    image = gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise when shown
    loaded = load_image(encoded(image, "JPEG", exif=exif.tobytes(), quality=95))
    assert loaded.size == (20, 40)


def test_large_jpegs_decode_in_draft_mode_above_the_target():
    loaded = load_image(encoded(gradient(1024, 800), "JPEG"), draft_size=256)
    assert min(loaded.size) >= 256 and loaded.size[0] < 1024


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels and holds none (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"not an image at all", "corrupt image"),
        (encoded(gradient(64, 64), "JPEG")[:300], "corrupt image"),
        (encoded(gradient(64, 64), "PNG")[:-40], "corrupt image"),
        (_png_header_only(9000, 9000), "image too large"),  # over magvlt's limit
        (_png_header_only(100_000, 100_000), "image too large"),  # over Pillow's
    ],
)
def test_bad_files_raise_a_reason(data, reason):
    with pytest.raises(BadSample) as e:
        load_image(data)
    assert e.value.reason == reason
