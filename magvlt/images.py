"""Image preprocessing shared by data, evaluation, the pipeline and the server: images as crawlers and users bring
them -> RGB, fitted to the model's size as the paper's code prepares them, pixel masks to token masks, and
pasting an inpainted region back.

`load_image` reads any file Pillow reads (JPEG, PNG, WebP, BMP, GIF: the first frame) into RGB: EXIF orientation
is applied; grayscale is repeated to three channels; alpha (and palette transparency) is composited over black;
16-bit values v become round(v * 255 / 65535); CMYK, palette and other modes go through Pillow's RGB conversion.
Whatever cannot be read raises `BadSample` with a short reason, so a reader can skip and count it. `fit_image`
scales the shorter side to the target with bilinear resampling and cuts the center.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

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


def read_image(path: str | Path) -> Image.Image:
    """An image file as RGB (`load_image`'s rules), or a UserError naming the file."""
    try:
        return load_image(Path(path).read_bytes())
    except (BadSample, OSError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def as_pil(image, mode: str = "RGB") -> Image.Image:
    """A PIL image or a uint8 array [H, W(, C)] as a PIL image of `mode`."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return im.convert(mode)


def as_list(images) -> list:
    """One image (PIL or uint8 [H, W, 3]) or a batch of them, as a list."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
        return [images]
    return list(images)


def fit_image(image, size: tuple[int, int], resample=Image.Resampling.BILINEAR, mode: str = "RGB") -> np.ndarray:
    """Resize the shorter side to fit (H, W), then center-crop: uint8 [H, W, 3] (or [H, W] for mode "L")."""
    if isinstance(image, np.ndarray) and image.shape[:2] == tuple(size) and mode == "RGB" and image.ndim == 3:
        return image  # already the size: untouched (the 32 px shapes world)
    im = as_pil(image, mode)
    h, w = size
    if size[0] < 1 or size[1] < 1:
        raise UserError(f"image size must be positive, got {size}")
    scale = max(h / im.height, w / im.width)
    rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    if (rw, rh) != im.size:
        im = im.resize((rw, rh), resample)
    dx, dy = (rw - w) // 2, (rh - h) // 2
    return np.asarray(im.crop((dx, dy, dx + w, dy + h)))


def mask_tokens(mask_image, size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Bool [h * w] from a mask image (white = regenerate) of the input image's size: the mask is fitted to the
    model's (H, W) as the image is (area-averaged, so a thin stroke survives), and a token is regenerated when
    any pixel under its cell is >= 128."""
    white = as_pil(mask_image, "L").point(lambda v: 255 if v >= 128 else 0)
    pixels = fit_image(white, size, Image.Resampling.BOX, mode="L") > 0
    h, w = grid
    cells = pixels.reshape(h, size[0] // h, w, size[1] // w).any(axis=(1, 3))
    if not cells.any():
        raise UserError("the mask is all black: paint white where the image should be regenerated")
    return torch.from_numpy(cells.flatten())


def blend(original: np.ndarray, generated: np.ndarray, token_mask: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Paste the generated pixels of masked tokens into the original, feathered across the mask boundary (MaskGIT)."""
    h, w = original.shape[:2]
    cells = Image.fromarray(token_mask.view(grid).cpu().numpy().astype(np.uint8) * 255)
    alpha = cells.resize((w, h), Image.Resampling.NEAREST)
    alpha = np.asarray(alpha.filter(ImageFilter.GaussianBlur(radius=max(1.0, w / grid[1] / 4))), dtype=np.float32) / 255
    out = alpha[..., None] * generated + (1 - alpha[..., None]) * original
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
