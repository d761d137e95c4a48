"""`magvlt clip train|score`: the small contrastive image-text model used to rerank generated candidates."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser("clip", help="train or query the contrastive reranker (a small CLIP)")
    sub = parser.add_subparsers(dest="clip_command", required=True, metavar="ACTION")

    train = sub.add_parser("train", help="train the reranker with InfoNCE on image-caption pairs")
    train.add_argument(
        "--data", type=Path, required=True, help="image-caption pairs: a folder of {key}.png + {key}.txt or tar shards"
    )
    train.add_argument("--text", type=Path, required=True, help="text tokenizer directory (use the run's text/)")
    train.add_argument("--out", type=Path, required=True, help="output scorer directory")
    train.add_argument("--minutes", type=float, default=5.0, help="wall-time budget (default 5)")
    train.add_argument("--steps", type=int, help="stop after this many steps (if sooner than --minutes)")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--image-size", type=int, help="side the image tower works at (default: the images')")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(func=run_train)

    score = sub.add_parser("score", help="print the image-caption similarity of each caption with the image")
    score.add_argument("--scorer", type=Path, required=True, help="scorer directory from `magvlt clip train`")
    score.add_argument("--image", type=Path, required=True, help="an image file")
    score.add_argument("captions", nargs="+", help="captions to score against the image")
    score.set_defaults(func=run_score)


def run_train(args: argparse.Namespace) -> int:
    from magvlt.data.pairs import load_pairs
    from magvlt.rerank import ContrastiveConfig
    from magvlt.text import load_text_tokenizer
    from magvlt.train.clip import train_clip

    tok = load_text_tokenizer(args.text)
    images, captions = load_pairs(args.data)
    cfg = ContrastiveConfig(image_size=args.image_size or images.shape[1])
    metrics = train_clip(
        images,
        captions,
        tok,
        args.out,
        minutes=args.minutes,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        cfg=cfg,
        seed=args.seed,
    )
    print(
        f"reranker saved in {args.out}: {metrics['steps']} steps, held-out image-to-text top-1 "
        f"{metrics.get('heldout_i2t_top1', float('nan')):.3f} (batches of {metrics.get('heldout_batch', 0)})"
    )
    return 0


def run_score(args: argparse.Namespace) -> int:
    import numpy as np

    from magvlt.images import read_image
    from magvlt.rerank import load_scorer

    scorer = load_scorer(args.scorer)
    image = np.asarray(read_image(args.image))
    scores = scorer.score(np.stack([image] * len(args.captions)), args.captions)
    for caption, s in zip(args.captions, scores.tolist()):
        print(f"{s:+.4f}\t{caption}")
    return 0
