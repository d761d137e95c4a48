"""Test helpers: a tiny learnable tokenized data set written with ShardWriter, and the env for subprocess runs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from magvlt.data.tokenized import ShardWriter
from magvlt.text import CaptionBPE

GRID, IMAGE_VOCAB, TEXT_VOCAB, TEXT_LEN = (4, 4), 16, 12, 6
COLORS, SHAPES = ("red", "green", "blue", "yellow", "purple"), ("circle", "square", "triangle")
# One intra-op thread, as the in-process runs use: bitwise comparisons need the same reduction order.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}


def write_synthetic(out: Path, n: int = 256, seed: int = 0, shard_size: int = 100, text_vocab: int = TEXT_VOCAB,
                    tokenizer_dir: Path | None = None) -> Path:
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
    writer.add({"image": codes, "image_half_w": grid[:, :, ::2], "image_half_h": grid[:, ::2], "text": text,
                "length": length}, captions)
    return writer.close()
