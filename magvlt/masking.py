"""Masking shared by training and decoding (Sec. 3.1-3.2): mask schedules, masked positions, fed inputs, draws.

Training (`magvlt.objectives`) and decoding (`magvlt.schedulers`, `magvlt.sampling`) both import from here, so a
schedule or an input layout is defined once. Random draws take one torch.Generator, or one per batch row: with a
list, row b's draws come from generator b alone, so a row's output does not depend on what else is in the batch.
Draws happen on the generator's device and are moved to the batch's, so a CPU generator can drive a GPU batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from magvlt.config import ModelConfig
from magvlt.model import Vocab

Generators = torch.Generator | Sequence[torch.Generator]
_EPS = 1e-9  # ceil(x - eps): cos(pi / 2) is 6e-17 in floating point, not 0


def cosine_schedule(r: torch.Tensor) -> torch.Tensor:
    """Mask ratio cos(pi r / 2) at progress r (Sec. 3.1; MaskGIT's schedule, used for images)."""
    return torch.cos(math.pi * r / 2)


def linear_schedule(r: torch.Tensor) -> torch.Tensor:
    """Mask ratio 1 - r at progress r (Sec. 3.1; Mask-Predict's schedule, used for text)."""
    return 1 - r


SCHEDULES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"cosine": cosine_schedule, "linear": linear_schedule}


def uniform(shape: Sequence[int], generator: Generators, device, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) of `shape`, from one generator or from one per row (a list of shape[0] generators)."""
    if isinstance(generator, torch.Generator):
        return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    rows = [torch.rand(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype).to(device) for g in generator]
    return torch.stack(rows)


def gumbel(shape: Sequence[int], generator: Generators, device) -> torch.Tensor:
    """Standard Gumbel noise -log(-log(u)) of `shape`."""
    return -torch.log(-torch.log(uniform(shape, generator, device).clamp_(min=1e-20)))


def sample_tokens(logits: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A token from each row of softmax(logits) [M, V] by inverse CDF at uniforms u [M], and its probability."""
    probs = logits.detach().float().softmax(dim=-1)
    tokens = torch.searchsorted(probs.cumsum(dim=-1), u.view(-1, 1).to(probs.dtype), right=True)
    tokens = tokens.clamp(max=probs.shape[-1] - 1)
    return tokens.squeeze(1), probs.gather(1, tokens).squeeze(1)


def lowest_scores(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean [B, N]: the counts[b] positions of row b with the lowest scores (ties to the lower index)."""
    ranks = scores.argsort(dim=1, stable=True).argsort(dim=1)
    return ranks < counts.unsqueeze(1)


def masked_count(ratio: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """ceil(ratio * n): how many of n positions a mask ratio covers (Sec. 3.1)."""
    return torch.ceil(ratio * n.double() - _EPS).long()


def random_mask(ratio: torch.Tensor, valid: torch.Tensor, generator: Generators) -> torch.Tensor:
    """Mask ceil(ratio[b] * N_b) of the N_b valid positions of each row, uniformly at random (Sec. 3.1)."""
    scores = uniform(valid.shape, generator, valid.device).masked_fill(~valid, 2.0)
    return lowest_scores(scores, torch.ceil(ratio * valid.sum(dim=1)).long())


def text_valid(length: torch.Tensor, text_len: int) -> torch.Tensor:
    """Boolean [B, L]: the real (non-padding) text positions."""
    return torch.arange(text_len, device=length.device) < length.unsqueeze(1)


def text_input(vocab: Vocab, text: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Raw text ids [B, L] to unified ids, with <PAD> at positions >= length."""
    return torch.where(text_valid(length, text.shape[1]), vocab.text(text), vocab.PAD)


def unconditional_text(cfg: ModelConfig, batch: int, device=None) -> torch.Tensor:
    """The null caption of condition dropout (classifier-free guidance): all <PAD>, unified ids [B, L]."""
    return torch.full((batch, cfg.text_len), Vocab.of(cfg).PAD, dtype=torch.long, device=device)


def unconditional_image(cfg: ModelConfig, batch: int, device=None) -> torch.Tensor:
    """The null image of condition dropout (classifier-free guidance): all <MASK>, unified ids [B, N_I]."""
    return torch.full((batch, cfg.image_tokens), Vocab.of(cfg).MASK, dtype=torch.long, device=device)
