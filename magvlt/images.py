"""Image preprocessing shared by data, evaluation and the pipeline: reading files, fitting an image to the
model's size (shorter side resized bilinearly, then a center crop, as the paper's code does), pixel masks to
token masks and pasting an inpainted region back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, UnidentifiedImageError

from magvlt.errors import UserError


def read_image(path: str | Path) -> Image.Image:
    """An image file as RGB, or a UserError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
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
    im = as_pil(image, mode)
    h, w = size
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
