"""`magvlt vq train|fit-palette|eval`: make the image tokenizer from image-caption pairs, or measure a saved one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("vq", help="image tokenizer (VQ-GAN or palette): train, fit, evaluate")
    sub = parser.add_subparsers(dest="vq_command", required=True, metavar="ACTION")

    train = sub.add_parser(
        "train",
        help="train a VQ-GAN on the images of a pairs folder for a time budget",
        description="Train a VQ-GAN (EMA codebook, k-means init, dead-code restart). "
        "Overrides set VQConfig fields, e.g. n_embed=1024 dead_code_fraction=0.1 rec_loss=l2.",
    )
    train.add_argument(
        "--data", type=Path, required=True, help="pairs: folder of tar shards or of {key}.png + {key}.txt"
    )
    train.add_argument("--out", type=Path, required=True, help="directory to save config.json and model.safetensors in")
    train.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget")
    train.add_argument("--steps", type=int, default=0, help="stop after this many steps (0: only the time budget)")
    train.add_argument(
        "--config",
        default="tiny",
        help="VQ preset: tiny (32x32 -> 8x8, 512 codes), tiny-patch (each 4x4 patch coded on its own, 1,024 codes) or f16_16384",
    )
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--val", type=Path, help="pairs to report PSNR and codebook usage on (default: 512 training images)"
    )
    train.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="bf16 autocast or fp32 (default auto: bf16 where the hardware has fast bf16)",
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="VQConfig field overrides")
    train.set_defaults(func=run_train)

    fit = sub.add_parser(
        "fit-palette",
        help="fit the two-code palette tokenizer (a colour and a pattern code per patch) to flat-colour images",
        description="Fit a palette tokenizer in seconds: the most frequent colours of the images and every patch "
        "pattern of them and of their half-width and half-height copies (MixSel's). Exact for scenes with one "
        "object colour per patch, such as the shapes world. Overrides set PaletteConfig fields, e.g. patch=4.",
    )
    fit.add_argument("--data", type=Path, required=True, help="pairs: folder of tar shards or of {key}.png + {key}.txt")
    fit.add_argument("--out", type=Path, required=True, help="directory to save config.json and model.safetensors in")
    fit.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="PaletteConfig field overrides")
    fit.set_defaults(func=run_fit_palette)

    evaluate = sub.add_parser("eval", help="PSNR and codebook usage of decode(encode(x)) on a pairs folder")
    evaluate.add_argument("--vq", type=Path, required=True, help="saved VQ-GAN directory")
    evaluate.add_argument("--data", type=Path, required=True, help="pairs folder or tar shard")
    evaluate.set_defaults(func=run_eval)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_train(args: argparse.Namespace) -> int:
    from magvlt.config import VQ_PRESETS, apply_overrides, preset
    from magvlt.data.pairs import load_pairs
    from magvlt.train.vq import train_vq

    cfg = apply_overrides(preset(VQ_PRESETS, args.config), args.overrides)
    images, _ = load_pairs(args.data)
    val = load_pairs(args.val)[0] if args.val else None
    print(
        f"training a {args.config} VQ-GAN on {len(images)} images {images.shape[1]}x{images.shape[2]} for {args.minutes} min"
    )
    _, stats = train_vq(
        images,
        cfg,
        minutes=args.minutes,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        val_images=val,
        precision=args.precision,
        device=_device(),
        log_every=100,
    )
    print(json.dumps(stats, indent=2))
    print(f"saved to {args.out}")
    return 0


def run_fit_palette(args: argparse.Namespace) -> int:
    from magvlt.config import PaletteConfig, apply_overrides
    from magvlt.data.pairs import load_pairs
    from magvlt.train.vq import evaluate, fit_palette
    from magvlt.vq import save_vq

    images, _ = load_pairs(args.data)
    model = fit_palette(images, apply_overrides(PaletteConfig(), args.overrides))
    save_vq(model, args.out)
    stats = evaluate(model, images)
    print(f"{model.cfg.n_colors} colours, {model.cfg.n_patterns} patterns; {stats['psnr']:.1f} dB on the images")
    print(f"saved to {args.out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from magvlt.data.pairs import load_pairs
    from magvlt.train.vq import evaluate
    from magvlt.vq import load_vq

    model = load_vq(args.vq, device=_device())
    images, _ = load_pairs(args.data)
    print(json.dumps(evaluate(model, images), indent=2))
    return 0
