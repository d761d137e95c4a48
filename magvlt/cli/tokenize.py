"""`magvlt tokenize`: image-caption pairs -> shards of VQ codes and caption ids for `magvlt train`.

Run it under torchrun to split the work: `torchrun --nproc_per_node=8 magvlt tokenize ...` (each rank takes
its own units; on several machines --out must be a folder they share).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tokenize",
        help="pre-tokenize image-caption pairs with the trained VQ-GAN and text tokenizer",
        description="Reads webdataset/img2dataset tar shards (a folder, one .tar, or a brace pattern such as "
        "'shards/{00000..00999}.tar'), a folder of {key}.jpg + {key}.txt, or a COCO-style captions "
        "JSON with --images. Bad samples are skipped and listed in OUT/report.json and "
        "OUT/skipped.jsonl. A stopped run continues when started again with the same arguments.",
    )
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="tar shards (folder, .tar or brace pattern), a folder of pairs, or a captions JSON; several are joined",
    )
    parser.add_argument("--images", type=Path, help="image folder of a COCO-style captions JSON given as --data")
    parser.add_argument("--vq", type=Path, required=True, help="saved VQ-GAN directory")
    parser.add_argument("--text", type=Path, required=True, help="saved text tokenizer directory")
    parser.add_argument("--out", type=Path, required=True, help="output directory for shards, meta.json and the report")
    parser.add_argument(
        "--image-size",
        type=int,
        help="side of the square images the VQ-GAN encodes (shorter side "
        "resized, center crop); default: the VQ-GAN's training resolution",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=10000,
        help="pairs per output shard for a folder or a captions JSON (tar shards map one to one)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per VQ-GAN batch")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image decoding threads")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from magvlt.data.sources import open_source
    from magvlt.data.tokenize import REPORT, tokenize_units
    from magvlt.text import load_text_tokenizer
    from magvlt.vq import load_vq

    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    units = [unit for spec in args.data for unit in open_source(spec, args.images, args.shard_size)]
    vq = load_vq(args.vq, device=device)
    tok = load_text_tokenizer(args.text)
    size = args.image_size if args.image_size is not None else vq.cfg.resolution
    out = tokenize_units(
        units,
        vq,
        tok,
        args.out,
        vq_dir=args.vq,
        text_dir=args.text,
        image_size=size,
        batch_size=args.batch_size,
        workers=args.workers,
        rank=rank,
        world_size=world_size,
    )
    if rank == 0:
        summary = json.loads((out / REPORT).read_text())["summary"]
        print(f"magvlt: tokenized {summary}; report in {out / REPORT}", file=sys.stderr)
        print(f"tokenized data written to {out}")
    return 0
