"""`magvlt train`: train a MAGVLT or ARGVLT transformer on tokenized data (single process or under torchrun)."""

from __future__ import annotations

import argparse
from pathlib import Path

from magvlt.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train the transformer on tokenized data (run it under torchrun for DDP/FSDP)",
        description="Train on shards built by `magvlt tokenize`. Overrides are key=value pairs of the "
        "training config, e.g. objective.mix=off model.n_layer=2 lr=5e-4.",
    )
    parser.add_argument(
        "--config",
        help="training preset (tiny, tiny-ar, small, base, large); with --resume the run's config.json is used instead",
    )
    parser.add_argument("--data", type=Path, required=True, help="tokenized data directory (holds meta.json)")
    parser.add_argument(
        "--out", type=Path, required=True, help="run directory for checkpoints, metrics and the loss plot"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out exactly where its checkpoint left off"
    )
    parser.add_argument("--steps", type=int, help="total optimizer steps (overrides the config)")
    parser.add_argument("--minutes", type=float, help="wall-time budget; stop with a checkpoint when spent")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magvlt.config import TRAIN_PRESETS, TrainConfig, apply_overrides, load_json, preset
    from magvlt.paths import CONFIG
    from magvlt.train.loop import train

    if args.resume:
        if not (args.out / CONFIG).is_file():
            raise UserError(f"nothing to resume: {args.out / CONFIG} not found")
        cfg = load_json(TrainConfig, args.out / CONFIG)
    elif args.config:
        cfg = preset(TRAIN_PRESETS, args.config)
    else:
        raise UserError("--config PRESET is required (unless --resume)")
    apply_overrides(cfg, args.overrides)
    if args.steps is not None:
        cfg.steps = args.steps
    if args.minutes is not None:
        cfg.max_minutes = args.minutes
    train(cfg, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    return 0
