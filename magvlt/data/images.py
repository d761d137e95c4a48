"""Images as crawlers bring them -> uint8 RGB of one size, as the paper's code prepares them.

`load_image` reads any file Pillow reads (JPEG, PNG, WebP, BMP, GIF: the first frame) into RGB: EXIF
orientation is applied; grayscale is repeated to three channels; alpha (and palette transparency) is
composited over black; 16-bit values v become round(v * 255 / 65535); CMYK, palette and other modes go through
Pillow's RGB conversion. `resize_center_crop` scales the shorter side to the target with bilinear resampling
and cuts the central square. Whatever cannot be read raises `BadSample` with a short reason, so a reader can
skip and count it.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from magvlt.errors import UserError

MAX_PIXELS = 8192 * 8192  # larger images are refused before decoding (decompression bombs); below Pillow's ~89M
_DEEP_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class BadSample(UserError):
    """A sample (image, caption or shard) that cannot become training data; `reason` is a short label for reports."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


def load_image(data: bytes, draft_size: int | None = None) -> Image.Image:
    """Image file bytes -> PIL RGB by the rules above; with draft_size, JPEGs decode at the smallest DCT scale
    that keeps both sides >= draft_size (several times faster on large photographs)."""
    if not data:
        raise BadSample("empty file")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > MAX_PIXELS:
                raise BadSample("image too large", f"{im.width}x{im.height} pixels")
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            return _to_rgb(ImageOps.exif_transpose(im))
    except BadSample:
        raise
    except Image.DecompressionBombError as e:
        raise BadSample("image too large", str(e)) from None
    except UnidentifiedImageError:
        raise BadSample("corrupt image", "not an image format Pillow reads") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadSample("corrupt image", str(e) or type(e).__name__) from None


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in _DEEP_MODES:
        a = np.asarray(im).astype(np.int64).clip(0, 65535)
        return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if "A" in im.getbands() or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        alpha = rgba[..., 3:]
        return Image.fromarray(((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8))
    return im.convert("RGB") if im.mode != "RGB" else im


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """The shorter side scaled to `size` (bilinear), then the central size x size square; as is if already so."""
    if size < 1:
        raise UserError(f"image size must be positive, got {size}")
    w, h = image.size
    if (w, h) == (size, size):
        return image
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))
