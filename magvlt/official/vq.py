"""Pixels in and out of the VQ-GAN exactly as the official sampling scripts convert them."""

from __future__ import annotations

import numpy as np
import torch


def official_input(images) -> torch.Tensor:
    """sampling_i2t.py's ToTensor + Normalize((0.5,)*3, (0.5,)*3): uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.5


def official_uint8(decoded: torch.Tensor) -> torch.Tensor:
    """sample_t2i's pixels: clamp(x * 0.5 + 0.5, 0, 1) * 255 truncated to uint8, [B, 3, H, W] -> [B, H, W, 3]."""
    return (torch.clamp(decoded * 0.5 + 0.5, 0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
