"""Does a tiny MAGVLT learn the shapes world in a minute? Held-out masked-token accuracy per task vs chance.

Reuses the demo's cached stages under --demo (shapes-world pairs, caption BPE, VQ-GAN, training shards; built
if missing), tokenizes the `val` split, trains the tiny preset (8:1:1 tasks, UnrollMask, MixSel) for
--seconds of wall time (the learning rate decayed over that time), and evaluates masked-token accuracy on `val` with
masks drawn as in training. "majority" is always guessing the most common target token, the real chance
level (most image tokens are background).

    python benchmarks/shapes_learning.py --seconds 60 [--demo runs/demo] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from magvlt.checkpoint import load_weights
from magvlt.config import TrainConfig, load_json
from magvlt.data.pairs import load_pairs
from magvlt.data.tokenized import TokenizedDataset
from magvlt.demo import DemoConfig, demo_train_config, prepare, tokenize
from magvlt.model import Transformer
from magvlt.train.loop import evaluate_masked_accuracy, train
from magvlt.train.rundir import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="the demo's output folder (its cache)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-eval", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    demo = DemoConfig(out=args.demo, minutes=args.seconds / 60, n_eval=args.n_eval, progress=False)
    prep = prepare(demo)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        held = tokenize(*load_pairs(prep.data / "val"), prep.text, prep.vq, tmp / "val", progress=False)

        cfg = demo_train_config(demo)
        start = time.perf_counter()
        run = train(cfg, prep.tokens, tmp / "run", progress=True)
        seconds = time.perf_counter() - start
        steps = read_metrics(run)[-1]["step"]
        model = Transformer(load_json(TrainConfig, run / "config.json").model)
        model.load_state_dict(load_weights(run / "model.safetensors"))
        rows, _ = TokenizedDataset(held).rows(np.arange(len(TokenizedDataset(held))))
        batches = [{k: v[i : i + 100] for k, v in rows.items()} for i in range(0, len(rows["image"]), 100)]
        acc = evaluate_masked_accuracy(model, batches)
    print(
        json.dumps(
            {"steps": steps, "train_seconds": round(seconds, 1), "threads": args.threads, **acc},
            indent=2,
        )
    )
    print("\n| task / modality | held-out masked accuracy | chance (majority token) |\n|---|---:|---:|")
    for key in ("t2i/image", "i2t/text", "it2it/image", "it2it/text"):
        print(f"| {key} | {100 * acc[key]:.1f}% | {100 * acc[key + '/majority']:.1f}% |")


if __name__ == "__main__":
    main()
