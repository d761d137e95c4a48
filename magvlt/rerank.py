"""Reranking N generated candidates by image-text similarity (Sec. 4.2-4.3: 32 per caption, 64 per image).

No pretrained CLIP can be downloaded here, so `ContrastiveModel` is a small CLIP trained with InfoNCE on the same
pairs (`magvlt clip train`): a conv encoder on pixels and a transformer on the run's text token ids. Anything
with `score(images uint8 [B, H, W, 3], captions) -> [B]` is a scorer; `OpenClipScorer` adapts an open_clip model
for users who have its weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from magvlt.checkpoint import load_weights, save_weights
from magvlt.config import load_json, save_json
from magvlt.errors import UserError
from magvlt.paths import CONFIG, TEXT_DIR, WEIGHTS


@dataclass
class ContrastiveConfig:
    """The small contrastive image-text model: conv image tower, transformer text tower, shared embedding."""

    image_size: int = 32  # images are resized to image_size x image_size
    channels: tuple[int, ...] = (32, 64, 128)  # one stride-2 conv stage each
    text_vocab: int = 49408
    text_len: int = 64
    width: int = 128  # text transformer width
    layers: int = 2
    heads: int = 4
    embed_dim: int = 128


class ImageTower(nn.Module):
    """Stride-2 conv stages, then the whole feature map (position matters: left/right) to the embedding."""

    def __init__(self, cfg: ContrastiveConfig):
        super().__init__()
        stages, c_in = [], 3
        for c in cfg.channels:
            stages += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(8, c),
                nn.GELU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.GroupNorm(8, c),
                nn.GELU(),
            ]
            c_in = c
        self.stages = nn.Sequential(*stages)
        side = cfg.image_size // 2 ** len(cfg.channels)
        if side < 1:
            raise UserError(f"image_size {cfg.image_size} is too small for {len(cfg.channels)} stride-2 stages")
        self.proj = nn.Linear(c_in * side * side, cfg.embed_dim)
        self.size = cfg.image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().contiguous() / 127.5 - 1.0
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.proj(self.stages(x).flatten(1))


class TextTower(nn.Module):
    """Token + position embeddings, a pre-norm transformer over the real tokens, mean-pooled."""

    def __init__(self, cfg: ContrastiveConfig):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg.text_vocab, cfg.width)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.text_len, cfg.width))
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.embed_dim)
        nn.init.normal_(self.pos_emb, std=0.01)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        valid = torch.arange(ids.shape[1], device=ids.device) < lengths.unsqueeze(1)
        x = self.tok_emb(ids) + self.pos_emb[: ids.shape[1]]
        x = self.ln(self.blocks(x, src_key_padding_mask=~valid))
        pooled = (x * valid.unsqueeze(-1)).sum(dim=1) / lengths.clamp(min=1).unsqueeze(1)
        return self.proj(pooled)


class ContrastiveModel(nn.Module):
    """CLIP in miniature (Radford et al.): unit embeddings, learned temperature, symmetric InfoNCE."""

    def __init__(self, cfg: ContrastiveConfig):
        super().__init__()
        self.cfg = cfg
        self.image_tower, self.text_tower = ImageTower(cfg), TextTower(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, H, W, 3] -> unit embeddings [B, E]."""
        return F.normalize(self.image_tower(images), dim=-1)

    def encode_text(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Text ids [B, L] with lengths [B] -> unit embeddings [B, E]."""
        return F.normalize(self.text_tower(ids, lengths), dim=-1)

    def loss(self, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetric InfoNCE over the batch; returns (loss, image-to-text top-1 accuracy)."""
        img, txt = self.encode_image(images), self.encode_text(ids, lengths)
        logits = self.logit_scale.exp().clamp(max=100) * img @ txt.t()
        target = torch.arange(len(img), device=img.device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        return loss, (logits.argmax(dim=1) == target).float().mean()


class Scorer(Protocol):
    """Image-text similarity of row i of images with captions[i]: higher is a better match."""

    def score(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor: ...


class ContrastiveScorer:
    """Cosine similarity under a ContrastiveModel; captions tokenized with the text tokenizer it was trained with."""

    def __init__(self, model: ContrastiveModel, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer

    @torch.no_grad()
    def score(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        ids, lengths = self.tokenizer.encode(list(captions))
        img = self.model.encode_image(torch.as_tensor(np.asarray(images)).to(device))
        txt = self.model.encode_text(ids.to(device), lengths.to(device))
        return (img * txt).sum(dim=-1)


class OpenClipScorer:
    """Adapter for open_clip (or any CLIP with encode_image / encode_text): model, tokenizer, preprocess."""

    def __init__(self, model, tokenizer, preprocess, device=None):
        self.model, self.tokenizer, self.preprocess = model, tokenizer, preprocess
        self.device = device if device is not None else next(model.parameters()).device

    @torch.no_grad()
    def score(self, images: torch.Tensor, captions: Sequence[str]) -> torch.Tensor:
        from PIL import Image

        pixels = torch.stack([self.preprocess(Image.fromarray(im)) for im in np.asarray(images, dtype=np.uint8)])
        img = F.normalize(self.model.encode_image(pixels.to(self.device)).float(), dim=-1)
        txt = F.normalize(self.model.encode_text(self.tokenizer(list(captions)).to(self.device)).float(), dim=-1)
        return (img * txt).sum(dim=-1)


def standardized(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Scores [B * n] shifted and scaled to mean 0 and deviation 1 within each consecutive group of n candidates
    (over its finite scores; -inf, a candidate that must lose, stays -inf), so that two rankers can be added."""
    groups = scores.view(-1, n).float()
    finite = groups.isfinite()
    count = finite.sum(dim=1, keepdim=True).clamp(min=1)
    mean = groups.where(finite, 0.0).sum(dim=1, keepdim=True) / count
    var = ((groups - mean).where(finite, 0.0) ** 2).sum(dim=1, keepdim=True) / count
    z = (groups - mean) / (var.sqrt() + 1e-6)
    return z.where(finite, float("-inf")).flatten()


def best_of(scores: torch.Tensor, n: int) -> torch.Tensor:
    """Row indices of the best of each consecutive group of n candidates: scores [B * n] -> [B]."""
    groups = scores.view(-1, n)
    return groups.argmax(dim=1) + torch.arange(groups.shape[0], device=scores.device) * n


def save_contrastive(model: ContrastiveModel, tokenizer, directory: str | Path) -> Path:
    """Write config.json, model.safetensors and the text tokenizer (text/) into a scorer directory."""
    directory = Path(directory)
    tokenizer.save(directory / TEXT_DIR)
    save_weights(directory / WEIGHTS, model.state_dict())
    save_json(model.cfg, directory / CONFIG)
    return directory


def load_scorer(directory: str | Path, device=None) -> Scorer:
    """The ContrastiveScorer saved in a directory by `magvlt clip train`, or CLIP ViT-B/32 (the paper's reranker,
    Sec. 4.2-4.3) from a local transformers `openai/clip-vit-base-patch32` directory."""
    from magvlt.text import load_text_tokenizer

    directory = Path(directory)
    if _is_hf_clip(directory):
        from magvlt.clip_hf import HFClipScorer

        return HFClipScorer(directory, device)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise UserError(
            f"{directory} is not a scorer directory (needs {CONFIG} and {WEIGHTS}; make one with `magvlt clip train`)"
        )
    model = ContrastiveModel(load_json(ContrastiveConfig, directory / CONFIG))
    try:
        model.load_state_dict(load_weights(directory / WEIGHTS))
    except RuntimeError as e:
        raise UserError(f"{directory / WEIGHTS} does not match its config: {e}") from None
    if device is not None:
        model = model.to(device)
    return ContrastiveScorer(model, load_text_tokenizer(directory / TEXT_DIR))


def _is_hf_clip(directory: Path) -> bool:
    """A transformers CLIP directory: its config.json describes a vision tower."""
    try:
        return "vision_config" in json.loads((directory / CONFIG).read_text())
    except (OSError, ValueError):
        return False
