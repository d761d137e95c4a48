"""Train the tiny VQ-GAN on shapes-world and measure it: PSNR, codebook usage, and how many val scenes the
shapes-world judge still reads back from decode(encode(x)), at full size and squeezed to half width/height.

    .venv/bin/python benchmarks/vq_train.py --minutes 6 --threads 2 [--preset tiny-patch] [--out runs/vq] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

from magvlt.config import VQ_PRESETS, apply_overrides, preset
from magvlt.data.shapes import render_split
from magvlt.eval.judge import judge_images
from magvlt.train.vq import evaluate, train_vq


def squeeze(images: np.ndarray, axis: str) -> np.ndarray:
    """Half width or half height with PIL's BOX filter, as the tokenize step feeds MixSel."""
    h, w = images.shape[1:3]
    size = (w // 2, h) if axis == "w" else (w, h // 2)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BOX)) for im in images])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=[n for n in VQ_PRESETS if n.startswith("tiny")])
    parser.add_argument("--minutes", type=float, default=6.0)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=20000)
    parser.add_argument("--n-val", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = apply_overrides(preset(VQ_PRESETS, args.preset), args.overrides)
    train, _ = render_split("train", args.n_train, args.seed, cfg.resolution)
    val, captions = render_split("val", args.n_val, args.seed, cfg.resolution)
    t0 = time.perf_counter()
    model, stats = train_vq(
        train,
        cfg,
        minutes=args.minutes,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out=args.out,
        val_images=val,
        log_every=50,
    )
    stats["train_seconds_with_eval"] = round(time.perf_counter() - t0, 1)
    stats["judge_real"] = judge_images(val, captions)["exact"]
    stats["judge_reconstructed"] = judge_images(model.decode(model.encode(val)).numpy(), captions)["exact"]
    for axis in ("w", "h"):
        stats[f"psnr_half_{axis}"] = evaluate(model, squeeze(val, axis))["psnr"]
    print(
        json.dumps(
            {
                "preset": args.preset,
                "threads": args.threads,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "overrides": args.overrides,
                **stats,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
