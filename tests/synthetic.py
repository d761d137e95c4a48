"""A tiny learnable tokenized data set written with ShardWriter: captions "a<i> b<j>" decide the image codes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from magvlt.data.tokenized import ShardWriter

GRID, IMAGE_VOCAB, TEXT_VOCAB, TEXT_LEN = (4, 4), 16, 12, 6


def write_synthetic(out: Path, n: int = 256, seed: int = 0, shard_size: int = 100, text_vocab: int = TEXT_VOCAB,
                    **meta) -> Path:
    """n pairs: attributes a in 0..4 and b in 0..2 give the caption ids and the image's 4x4 codes."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 5, n), rng.integers(0, 3, n)
    top = np.arange(GRID[0] * GRID[1]) < GRID[0] * GRID[1] // 2
    codes = np.where(top, a[:, None], 5 + b[:, None])  # top rows show a, bottom rows b
    grid = codes.reshape(n, *GRID)
    sot, eot = text_vocab - 2, text_vocab - 1
    text = np.zeros((n, TEXT_LEN), dtype=np.int64)
    length = np.zeros(n, dtype=np.int64)
    for i in range(n):
        ids = [sot, a[i], 5 + b[i], *([9] * int(b[i] > 0)), eot]
        text[i, : len(ids)], length[i] = ids, len(ids)
    writer = ShardWriter(out, {"image_grid": list(GRID), "image_vocab": IMAGE_VOCAB, "text_vocab": text_vocab,
                               "text_len": TEXT_LEN, **meta}, shard_size=shard_size)
    writer.add({"image": codes, "image_half_w": grid[:, :, ::2], "image_half_h": grid[:, ::2], "text": text,
                "length": length}, [f"a{i} b{j}" for i, j in zip(a, b)])
    return writer.close()
