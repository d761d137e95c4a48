"""Pre-tokenization (`magvlt tokenize`): image-caption pairs -> VQ codes and caption ids, written as shards.

Each image is encoded three times: at full size, squeezed to half width and squeezed to half height (PIL's
BOX filter, i.e. the mean of each pair of pixels), so MixSel (Sec. 3.4) can join the codes of two
half-size encodings without running the VQ-GAN while training. Captions are tokenized without dropout; the
captions themselves are kept beside each shard for BPE dropout at training time.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from magvlt.data.tokenized import ShardWriter
from magvlt.errors import UserError


def squeeze(images: np.ndarray, axis: str) -> np.ndarray:
    """uint8 images [B, H, W, 3] resized to half width (axis "w") or half height ("h") with PIL's BOX filter."""
    _, h, w, _ = images.shape
    size = (w // 2, h) if axis == "w" else (w, h // 2)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BOX)) for im in images])


def encode_images(vq, images: np.ndarray) -> dict[str, np.ndarray]:
    """VQ codes [B, tokens] of the images at full size, half width and half height (raster order)."""
    codes = {"image": vq.encode(images), "image_half_w": vq.encode(squeeze(images, "w")),
             "image_half_h": vq.encode(squeeze(images, "h"))}
    return {k: v.flatten(1).cpu().numpy() for k, v in codes.items()}


def write_tokenized(pairs: Iterable[tuple[np.ndarray, str]], vq, tok, out_dir: str | Path, *, vq_dir: str | Path | None,
                text_dir: str | Path | None, total: int | None = None, shard_size: int = 4096, batch_size: int = 64,
                progress: bool = True) -> Path:
    """Encode (image, caption) pairs with the VQ-GAN and the text tokenizer into shards in out_dir."""
    writer, size = None, None
    pairs = iter(pairs)
    with tqdm(total=total, unit="pair", desc="tokenize", disable=None if progress else True) as bar:
        while chunk := list(itertools.islice(pairs, batch_size)):
            images = np.stack([np.asarray(image, dtype=np.uint8) for image, _ in chunk])
            captions = [caption for _, caption in chunk]
            if images.ndim != 4 or images.shape[-1] != 3 or (size is not None and images.shape[1:3] != size):
                raise UserError(f"every image must be uint8 RGB of one size {size}, got shape {images.shape[1:]}")
            rows = encode_images(vq, images)
            rows["text"], rows["length"] = tok.encode(captions)
            if writer is None:
                size, f = images.shape[1:3], vq.factor
                writer = ShardWriter(out_dir, shard_size=shard_size, meta={
                    "image_size": list(size), "image_grid": [size[0] // f, size[1] // f],
                    "image_vocab": vq.cfg.n_embed, "text_vocab": tok.vocab_size, "text_len": tok.length,
                    "squeeze": "PIL BOX to half width / half height",
                    "vq_dir": str(Path(vq_dir).resolve()) if vq_dir else None,
                    "text_dir": str(Path(text_dir).resolve()) if text_dir else None,
                })
            writer.add(rows, captions)
            bar.update(len(chunk))
    if writer is None:
        raise UserError("no image-caption pairs to tokenize")
    return writer.close()


def tokenize_pairs(images: np.ndarray | Sequence[np.ndarray], captions: Sequence[str], vq, tok, out_dir: str | Path, *,
                   vq_dir: str | Path | None, text_dir: str | Path | None, shard_size: int = 4096,
                   batch_size: int = 64, progress: bool = True) -> Path:
    """Tokenize in-memory images (uint8 [n, H, W, 3]) and their captions into shards; vq_dir/text_dir go to meta.json."""
    if len(images) != len(captions):
        raise UserError(f"{len(images)} images but {len(captions)} captions")
    return write_tokenized(zip(images, captions), vq, tok, out_dir, vq_dir=vq_dir, text_dir=text_dir, total=len(captions),
                       shard_size=shard_size, batch_size=batch_size, progress=progress)
