"""Test helpers: a tiny learnable tokenized data set written with ShardWriter, a tiny run directory, and the env
for subprocess runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from magvlt.checkpoint import save_weights
from magvlt.config import ModelConfig, TrainConfig, VQConfig, save_json
from magvlt.data.shapes import render_split
from magvlt.data.tokenized import ShardWriter
from magvlt.model import Transformer
from magvlt.text import CaptionBPE
from magvlt.vq import VQGAN, save_vq

GRID, IMAGE_VOCAB, TEXT_VOCAB, TEXT_LEN = (4, 4), 16, 12, 6
COLORS, SHAPES = ("red", "green", "blue", "yellow", "purple"), ("circle", "square", "triangle")
# One intra-op thread, as the in-process runs use: bitwise comparisons need the same reduction order. The
# repository root first, so subprocesses import the magvlt under test (a git worktree's, not an installed copy).
TESTS = Path(__file__).resolve().parent
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}


def write_synthetic(
    out: Path,
    n: int = 256,
    seed: int = 0,
    shard_size: int = 100,
    text_vocab: int = TEXT_VOCAB,
    tokenizer_dir: Path | None = None,
) -> Path:
    """n pairs "a <color a> <shape b>": the top rows of the 4x4 codes are a, the bottom rows 5 + b.

    Caption ids are [sot, a, 5 + b, (9 if b), eot] in a vocabulary of `text_vocab`, or, with tokenizer_dir,
    a caption BPE trained on the captions and saved there (named in meta.json, so BPE dropout can run).
    """
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, len(COLORS), n), rng.integers(0, len(SHAPES), n)
    codes = np.where(np.arange(GRID[0] * GRID[1]) < GRID[0] * GRID[1] // 2, a[:, None], 5 + b[:, None])
    grid = codes.reshape(n, *GRID)
    captions = [f"a {COLORS[i]} {SHAPES[j]}" for i, j in zip(a, b)]
    if tokenizer_dir is None:
        sot, eot = text_vocab - 2, text_vocab - 1
        text, length = np.zeros((n, TEXT_LEN), dtype=np.int64), np.zeros(n, dtype=np.int64)
        for i in range(n):
            ids = [sot, a[i], 5 + b[i], *([9] * int(b[i] > 0)), eot]
            text[i, : len(ids)], length[i] = ids, len(ids)
        meta = {"text_vocab": text_vocab, "text_len": TEXT_LEN}
    else:
        tok = CaptionBPE.train(captions, vocab_size=48, length=24)
        tok.save(tokenizer_dir)
        text, length = tok.encode(captions)
        meta = {"text_vocab": tok.vocab_size, "text_len": tok.length, "text_dir": str(Path(tokenizer_dir).resolve())}
    writer = ShardWriter(out, {"image_grid": list(GRID), "image_vocab": IMAGE_VOCAB, **meta}, shard_size=shard_size)
    writer.add(
        {"image": codes, "image_half_w": grid[:, :, ::2], "image_half_h": grid[:, ::2], "text": text, "length": length},
        captions,
    )
    return writer.close()


VQ = VQConfig(
    resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, embed_dim=8, n_embed=32
)


def write_run(root: Path, causal: bool = False) -> Path:
    """config.json, model.safetensors, text/ and vq/ of an untrained tiny model on 16x16 images (8x8 tokens)."""
    _, captions = render_split("train", 200, seed=0, size=16)
    tok = CaptionBPE.train(captions, vocab_size=128, length=20)
    tok.save(root / "text")
    torch.manual_seed(0)
    save_vq(VQGAN(VQ), root / "vq")
    cfg = ModelConfig(
        n_layer=1,
        n_head=2,
        n_embd=32,
        image_vocab=VQ.n_embed,
        image_grid=(8, 8),
        text_vocab=tok.vocab_size,
        text_len=tok.length,
        causal=causal,
    )
    save_json(TrainConfig(model=cfg), root / "config.json")
    save_weights(root / "model.safetensors", Transformer(cfg).state_dict())
    return root
