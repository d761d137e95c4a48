"""Load the public taming-transformers checkpoints (e.g. vqgan_imagenet_f16_16384/checkpoints/last.ckpt)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from magvlt.checkpoint import load_torch
from magvlt.config import VQ_PRESETS, VQConfig
from magvlt.errors import UserError
from magvlt.vq.io import load_state_strict
from magvlt.vq.model import VQGAN


def taming_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The model tensors of a taming checkpoint: its "state_dict" without the training loss (`loss.*`)."""
    ckpt = load_torch(Path(path))  # weights_only=True: refuses anything that is not plain tensors and containers
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a taming checkpoint: expected a dict with a 'state_dict' of tensors")
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def load_taming(path: str | Path, cfg: VQConfig | None = None) -> VQGAN:
    """A VQGAN holding a taming checkpoint; cfg defaults to the f16 ImageNet architecture (codebook size read from the file)."""
    state = taming_state_dict(path)
    if cfg is None:
        codebook = state.get("quantize.embedding.weight")
        if codebook is None or codebook.ndim != 2:
            raise UserError(f"{path} has no 'quantize.embedding.weight' codebook; is it a taming VQ-GAN checkpoint?")
        cfg = dataclasses.replace(VQ_PRESETS["f16_16384"], n_embed=codebook.shape[0], embed_dim=codebook.shape[1])
    model = VQGAN(cfg)
    load_state_strict(model, state, str(path))
    return model.eval()
