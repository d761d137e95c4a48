"""A two-code patch tokenizer for flat-colour scenes: colour and pattern as separate tokens.

Each p x p patch becomes two codes that sit side by side in the token grid: its colour (an index into a palette
fitted to the training pixels, background first) and its pattern (the binary mask of the pixels that carry the
colour, an index into the patterns seen in training). An image of H x W pixels is a grid of H/p rows and
2 W/p columns; joining two half-width or half-height grids (MixSel, App. E) still gives a valid grid.

Why two codes: a VQ-GAN code mixes colour and shape, so a colour-shape pair never seen in training (the shapes
world's `novel` split) needs codes the transformer never saw. Here a green triangle is green codes over triangle
patterns, each seen in training. Decoding is exact for scenes with at most one object colour per patch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from magvlt.config import PaletteConfig
from magvlt.errors import UserError
from magvlt.vq.model import checked_codes, to_uint8, uint8_batch


def _patches(images: torch.Tensor, p: int) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> [B, H/p, W/p, p*p, 3]."""
    b, h, w, _ = images.shape
    return images.view(b, h // p, p, w // p, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, h // p, w // p, p * p, 3)


class PaletteTokenizer(nn.Module):
    """Images <-> codes [B, H/p, 2 W/p]: even columns colours, odd columns patterns (ids offset by n_colors)."""

    def __init__(self, cfg: PaletteConfig):
        super().__init__()
        if cfg.patch < 1 or cfg.n_colors < 2 or cfg.n_patterns < 1:
            raise UserError(f"PaletteConfig needs patch >= 1, n_colors >= 2, n_patterns >= 1: {cfg}")
        self.cfg = cfg
        self.register_buffer("palette", torch.zeros(cfg.n_colors, 3, dtype=torch.uint8))
        self.register_buffer("patterns", torch.zeros(cfg.n_patterns, cfg.patch**2, dtype=torch.bool))

    @classmethod
    def fit(cls, images: np.ndarray, cfg: PaletteConfig, extra: tuple[np.ndarray, ...] = ()) -> PaletteTokenizer:
        """The palette: the n_colors most frequent colours of `images` (uint8 [B, H, W, 3]); the patterns: every
        distinct pattern of their patches and of the `extra` images' (e.g. MixSel's squeezed encodings), the empty one
        first, then the most frequent, up to cfg.max_patterns."""
        rgb = images[:: max(1, len(images) // 2048)].reshape(-1, 3).astype(np.int64)
        colors, counts = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2], return_counts=True)
        if len(colors) < cfg.n_colors:
            raise UserError(f"the images hold {len(colors)} colours; the palette needs {cfg.n_colors}")
        top = colors[np.argsort(-counts, kind="stable")[: cfg.n_colors]]
        probe = cls(dataclasses.replace(cfg, n_patterns=1))
        probe.palette.copy_(torch.from_numpy(np.stack([top >> 16, top >> 8 & 255, top & 255], 1).astype(np.uint8)))
        found, seen = [], []
        for batch in (images, *extra):
            for part in np.array_split(batch, max(1, len(batch) // 4096)):
                _, mask = probe.colors_and_masks(probe.to_input(np.ascontiguousarray(part)))
                packed = np.packbits(mask.reshape(-1, cfg.patch**2).numpy(), axis=1)
                keys, counts = np.unique(packed.view(f"V{packed.shape[1]}").ravel(), return_counts=True)
                found.append(keys)
                seen.append(counts)
        keys, inverse = np.unique(np.concatenate(found), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate(seen))
        empty = np.zeros(1, keys.dtype)  # the all-background pattern, always kept
        counts[keys == empty[0]] = np.inf
        kept = keys[np.argsort(-counts, kind="stable")[: cfg.max_patterns]]
        bits = np.unpackbits(kept.view(np.uint8).reshape(len(kept), -1), axis=1)[:, : cfg.patch**2]
        model = cls(dataclasses.replace(cfg, n_patterns=len(kept)))
        model.palette.copy_(probe.palette)
        model.patterns.copy_(torch.from_numpy(bits.astype(bool)))
        return model.eval()

    @property
    def cell(self) -> tuple[int, int]:
        """Pixels per token (rows, columns): a patch's two codes share its width."""
        return self.cfg.patch, self.cfg.patch // 2

    @property
    def factor(self) -> int:
        """Pixels per patch side (images must be a multiple of it)."""
        return self.cfg.patch

    def colors_and_masks(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, H, W, 3] -> each patch's colour index [B, h, w] (0: background) and pixel mask [B, h, w, p*p]."""
        x = _patches(images, self.cfg.patch).float()
        palette = self.palette.float()
        away = (x - palette[0]).norm(dim=-1)  # distance from the background
        floor = (palette[1:] - palette[0]).norm(dim=-1).min() * self.cfg.threshold
        mask = away > floor
        strongest = x.gather(-2, away.argmax(-1)[..., None, None].expand(*x.shape[:-2], 1, 3)).squeeze(-2)
        color = (strongest[..., None, :] - palette[1:]).norm(dim=-1).argmin(-1) + 1
        return torch.where(mask.any(-1), color, 0), mask

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Codes LongTensor [B, H/p, 2 W/p] of uint8 RGB [B, H, W, 3] (numpy or tensor) or float [B, 3, H, W]."""
        x = self.to_input(images)
        color, mask = self.colors_and_masks(x)
        signs = self.patterns.float() * 2 - 1  # the nearest pattern in Hamming distance
        pattern = ((mask.float() * 2 - 1) @ signs.T).argmax(-1)
        return torch.stack([color, pattern + self.cfg.n_colors], dim=-1).flatten(-2)

    @torch.no_grad()
    def decode(self, tokens, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 RGB images [B, H, W, 3] on the CPU from codes [B, h, 2w] or [B, h*2w] (grid=(h, 2w)); a colour code
        in a pattern's place draws nothing, a pattern code in a colour's place draws background."""
        codes = self.check_tokens(tokens, grid)
        b, h, w2 = codes.shape
        n, p = self.cfg.n_colors, self.cfg.patch
        color, pattern = codes[..., 0::2], codes[..., 1::2]
        color = torch.where(color < n, color, 0)
        mask = torch.where((pattern >= n)[..., None], self.patterns[(pattern - n).clamp(min=0)], False)
        pixels = torch.where(mask[..., None], self.palette[color][..., None, :], self.palette[0])
        return pixels.view(b, h, w2 // 2, p, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(b, h * p, w2 // 2 * p, 3).cpu()

    def to_input(self, images) -> torch.Tensor:
        """uint8 [B, H, W, 3] on the tokenizer's device, H and W multiples of the patch."""
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4 or images.shape[1] != 3:
                raise UserError(f"float images must be [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
            images = to_uint8(images)
        elif isinstance(images, np.ndarray) and images.dtype.kind == "f":
            return self.to_input(torch.from_numpy(images))
        images = uint8_batch(images)
        p, (h, w) = self.cfg.patch, images.shape[1:3]
        if h % p or w % p or h == 0 or w == 0 or images.shape[0] == 0:
            raise UserError(f"images must be non-empty RGB with sides divisible by {p} (the patch), got {h}x{w}")
        return images.to(self.palette.device).contiguous()

    def check_tokens(self, tokens, grid: tuple[int, int] | None) -> torch.Tensor:
        """Codes as a LongTensor [B, h, 2w] on the tokenizer's device; out-of-range or malformed codes are refused."""
        codes = checked_codes(tokens, self.cfg.n_embed)
        if codes.ndim == 2:
            if grid is None or grid[0] * grid[1] != codes.shape[1]:
                raise UserError(f"{codes.shape[1]} tokens per image need grid=(h, 2w) holding them, got {grid}")
            codes = codes.reshape(-1, *grid)
        if codes.shape[-1] % 2:
            raise UserError(f"a palette grid has an even number of columns (colour, pattern), got {codes.shape[-1]}")
        return codes.to(self.palette.device, torch.long)
