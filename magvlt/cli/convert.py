"""`magvlt convert official CKPT --out DIR [--vq TAMING_CKPT] [--heads N]`: the released weights as a magvlt run."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="convert released checkpoints into magvlt run directories")
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    official = sub.add_parser(
        "official",
        help="the authors' MAGVLT .ckpt (kakaobrain/magvlt) -> a run for `magvlt generate`",
        description="Read a released MAGVLT Lightning checkpoint without running pickled code and write a run "
        "directory: config.json (architecture inferred from tensor shapes), model.safetensors, text/ (the official "
        "tokenizer), vq/ (the VQ-GAN inside the checkpoint, or --vq) and scheduler.json (the official preset).",
    )
    official.add_argument("ckpt", type=Path, help="the MAGVLT .ckpt (state_dict with model.* and model_vqvae.*)")
    official.add_argument("--out", type=Path, required=True, help="run directory to write")
    official.add_argument(
        "--vq",
        type=Path,
        help="taming's last.ckpt (vqgan_imagenet_f16_16384), used instead of the "
        "VQ-GAN inside the checkpoint, as the official loader does",
    )
    official.add_argument("--heads", type=int, help="attention heads (default: width / 128, as both released models)")
    official.set_defaults(func=run_official)


def run_official(args: argparse.Namespace) -> int:
    from magvlt.official.convert import convert

    cfg = convert(args.ckpt, args.out, vq=args.vq, heads=args.heads).model
    print(
        f"wrote {args.out}: width {cfg.n_embd}, {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.image_vocab} image "
        f"codes on a {cfg.image_grid[0]}x{cfg.image_grid[1]} grid, {cfg.text_len} text positions"
    )
    return 0
