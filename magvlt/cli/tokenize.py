"""`magvlt tokenize`: image-caption pairs -> shards of VQ codes and caption ids for `magvlt train`."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("tokenize", help="pre-tokenize image-caption pairs with the trained VQ-GAN and text tokenizer")
    parser.add_argument("--data", type=Path, required=True, help="image-caption pairs (any source magvlt.data.pairs reads)")
    parser.add_argument("--vq", type=Path, required=True, help="saved VQ-GAN directory")
    parser.add_argument("--text", type=Path, required=True, help="saved text tokenizer directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory for shards and meta.json")
    parser.add_argument("--shard-size", type=int, default=4096, help="pairs per shard")
    parser.add_argument("--batch-size", type=int, default=64, help="images per VQ-GAN batch")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from magvlt.data.pairs import iter_pairs
    from magvlt.data.tokenize import write_tokenized
    from magvlt.text import load_text_tokenizer
    from magvlt.vq import load_vq

    vq = load_vq(args.vq, device="cuda" if torch.cuda.is_available() else "cpu")
    tok = load_text_tokenizer(args.text)
    pairs = ((item.image, item.caption) for item in iter_pairs(args.data))
    out = write_tokenized(pairs, vq, tok, args.out, vq_dir=args.vq, text_dir=args.text, shard_size=args.shard_size,
                      batch_size=args.batch_size)
    print(f"tokenized data written to {out}")
    return 0
