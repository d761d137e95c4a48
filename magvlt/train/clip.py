"""Training the small contrastive reranker (`magvlt clip train`): InfoNCE on image-caption pairs, time-boxed."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from magvlt.checkpoint import atomic_write_text
from magvlt.errors import UserError
from magvlt.rerank import ContrastiveConfig, ContrastiveModel, save_contrastive


@torch.no_grad()
def retrieval_accuracy(
    model: ContrastiveModel, images: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int = 256
) -> float:
    """Image-to-text top-1 accuracy among each held-out batch of batch_size pairs (chance: 1 / batch_size)."""
    model.eval()
    hits = []
    for lo in range(0, len(images), batch_size):
        sl = slice(lo, lo + batch_size)
        _, acc = model.loss(images[sl], ids[sl], lengths[sl])
        hits.append(acc * len(images[sl]))
    model.train()
    return float(sum(hits) / len(images))


def train_clip(
    images: np.ndarray,
    captions: Sequence[str],
    tokenizer,
    out_dir: str | Path,
    *,
    minutes: float = 5.0,
    steps: int | None = None,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 100,
    cfg: ContrastiveConfig | None = None,
    seed: int = 0,
    holdout: int = 512,
    device=None,
    progress: bool = True,
) -> dict:
    """Train a ContrastiveModel on uint8 images [n, H, W, 3] and captions until minutes or steps run out;
    save it with the tokenizer to out_dir and return its metrics (held-out retrieval accuracy)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise UserError(f"images must be uint8 [n, H, W, 3], got {images.dtype} {images.shape}")
    if len(images) != len(captions):
        raise UserError(f"{len(images)} images but {len(captions)} captions")
    holdout = min(holdout, len(images) // 10)
    if len(images) - holdout < 2:
        raise UserError(f"need at least a few pairs to train a contrastive model, got {len(images)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = cfg or ContrastiveConfig(image_size=images.shape[1])
    cfg = dataclasses.replace(cfg, text_vocab=tokenizer.vocab_size, text_len=tokenizer.length)
    torch.manual_seed(seed)
    model = ContrastiveModel(cfg).to(device).train()
    ids, lengths = tokenizer.encode(list(captions))
    pixels = torch.from_numpy(images)
    train_n = len(images) - holdout
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)

    start, step, loss = time.monotonic(), 0, torch.zeros(())
    bar = tqdm(total=steps, unit="step", desc="clip", disable=None if progress else True)
    while (steps is None or step < steps) and time.monotonic() - start < minutes * 60:
        rows = torch.randint(0, train_n, (min(batch_size, train_n),), generator=gen)
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup)
        loss, acc = model.loss(pixels[rows].to(device), ids[rows].to(device), lengths[rows].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc.item():.2f}")
    bar.close()
    metrics = {"steps": step, "minutes": (time.monotonic() - start) / 60, "train_loss": float(loss.detach())}
    if holdout:
        metrics["heldout_i2t_top1"] = retrieval_accuracy(
            model, pixels[train_n:].to(device), ids[train_n:].to(device), lengths[train_n:].to(device)
        )
        metrics["heldout_batch"] = min(256, holdout)
    out = save_contrastive(model.eval(), tokenizer, out_dir)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return metrics
