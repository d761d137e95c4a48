"""`magvlt demo`: the main job, end to end on the built-in shapes world."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build data and tokenizers, train a small MAGVLT, evaluate, draw samples",
        description="Runs the whole method on the built-in shapes world (about 20 minutes on 2 CPU "
        "cores). A second run reuses every finished stage unless --fresh is given.",
    )
    from magvlt.demo import TOKENIZERS, DemoConfig

    d = DemoConfig()
    p.add_argument("--out", type=Path, default=d.out, help=f"output folder (default {d.out})")
    p.add_argument(
        "--minutes", type=float, default=d.minutes, help=f"training time of the transformer (default {d.minutes:g})"
    )
    p.add_argument(
        "--tokenizer",
        choices=TOKENIZERS,
        default=d.tokenizer,
        help=f"image tokenizer: a colour and a pattern code per patch, fitted in seconds, or the paper's VQ-GAN, "
        f"trained for --vq-minutes (default {d.tokenizer})",
    )
    p.add_argument(
        "--vq-minutes", type=float, default=d.vq_minutes, help=f"training time of the VQ-GAN (default {d.vq_minutes:g})"
    )
    p.add_argument(
        "--clip-minutes",
        type=float,
        default=d.clip_minutes,
        help=f"training time of the reranking scorer (default {d.clip_minutes:g})",
    )
    p.add_argument("--n-train", type=int, default=d.n_train, help=f"training pairs (default {d.n_train})")
    p.add_argument("--n-eval", type=int, default=d.n_eval, help=f"`val` pairs judged (default {d.n_eval})")
    p.add_argument(
        "--n-novel", type=int, default=d.n_novel, help=f"`novel` pairs judged, at most --n-eval (default {d.n_novel})"
    )
    p.add_argument(
        "--candidates",
        type=int,
        help="images per caption in the evaluation, the contrastive scorer keeps the best (default: the demo "
        "preset's, 4; 1: no reranking)",
    )
    p.add_argument(
        "--caption-candidates",
        type=int,
        help="captions per image, the best by the scorer and the model's own image likelihood is kept (default: the "
        "demo preset's, 16; 1: no reranking)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        help="one sampling temperature for images and captions (default: the demo preset's, 0.3 for images and 1 "
        "for captions)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--fresh", action="store_true", help="rebuild every stage instead of reusing the cache")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magvlt.demo import DemoConfig, run_demo
    from magvlt.errors import UserError

    if (
        min(args.minutes, args.vq_minutes, args.clip_minutes) <= 0
        or args.n_train < 256
        or min(args.n_eval, args.n_novel) < 2
    ):
        raise UserError("minutes must be positive, --n-train >= 256, --n-eval and --n-novel >= 2")
    counts = [c for c in (args.candidates, args.caption_candidates) if c is not None]
    if min(counts, default=1) < 1 or (args.temperature is not None and args.temperature < 0):
        raise UserError("--candidates and --caption-candidates must be >= 1 and --temperature >= 0")
    run_demo(
        DemoConfig(
            out=args.out,
            minutes=args.minutes,
            tokenizer=args.tokenizer,
            vq_minutes=args.vq_minutes,
            clip_minutes=args.clip_minutes,
            n_train=args.n_train,
            n_eval=args.n_eval,
            n_novel=args.n_novel,
            candidates=args.candidates,
            caption_candidates=args.caption_candidates,
            temperature=args.temperature,
            seed=args.seed,
            fresh=args.fresh,
        )
    )
    return 0
