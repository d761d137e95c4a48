"""Best of k by the scorer vs the oracle, for T2I and I2T of a trained run on shapes-world `val` (Sec. 4.2-4.3).

K samples are drawn per input once; for every k dividing K the inputs' K samples are cut into groups of k and
each group is judged twice: the scorer's pick (what reranking gets) and the oracle (is any sample of the group
right?). Where the pick falls far below the oracle, the scorer is what limits; where both are low, the model is.

    python benchmarks/rerank_curve.py runs/demo --k 32 --n 100
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from magvlt.eval.judge import parse_caption, parse_image
from magvlt.eval.run import shapes_data
from magvlt.pipeline import MAGVLTPipeline
from magvlt.schedulers import get_preset


def curve(right: np.ndarray, scores: np.ndarray) -> list[tuple[int, float, float]]:
    """(k, % right of the scorer's picks, % of groups with any sample right) for right/scores [n, K]."""
    n, big_k = right.shape
    rows = []
    for k in (k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= big_k and big_k % k == 0):
        r, s = right.reshape(n * big_k // k, k), scores.reshape(n * big_k // k, k)
        picked = r[np.arange(len(r)), s.argmax(axis=1)]
        rows.append((k, 100 * picked.mean(), 100 * r.any(axis=1).mean()))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="demo output folder (holds model/ and clip/)")
    parser.add_argument("--k", type=int, default=32, help="samples per input (default 32)")
    parser.add_argument("--n", type=int, default=100, help="val inputs (default 100)")
    parser.add_argument("--temperature", type=float, default=0.5)
    args = parser.parse_args()
    pipe = MAGVLTPipeline.from_pretrained(f"{args.run}/model", scorer=f"{args.run}/clip")
    preset = get_preset("demo")
    preset.image.temperature = preset.text.temperature = args.temperature
    sample = dict(preset=preset, num_candidates=1, generator=torch.Generator().manual_seed(1))
    data = shapes_data("shapes:val", args.n, pipe.image_size[0])
    images = np.repeat(data.images, args.k, axis=0)
    captions = [c for c in data.captions for _ in range(args.k)]
    truth = [parse_caption(c) for c in captions]

    start = time.perf_counter()
    written = pipe.caption(images, **sample).texts
    i2t_seconds = time.perf_counter() - start
    i2t_right = np.array([parse_caption(w) == t for w, t in zip(written, truth)])
    i2t_scores = pipe.scorer.score(torch.as_tensor(images), [w or "a" for w in written]).numpy()

    start = time.perf_counter()
    drawn = np.stack([np.asarray(im) for im in pipe(captions, **sample).images])
    t2i_seconds = time.perf_counter() - start
    t2i_right = np.array([parse_image(im) == t for im, t in zip(drawn, truth)])
    t2i_scores = pipe.scorer.score(torch.as_tensor(drawn), captions).numpy()

    shape = (args.n, args.k)
    print(
        f"{args.run}: {args.n} val inputs x {args.k} samples at temperature {args.temperature} "
        f"(I2T {i2t_seconds:.0f} s, T2I {t2i_seconds:.0f} s); judge exact scene, %\n"
    )
    print("| k | T2I best of k | T2I oracle | I2T best of k | I2T oracle |")
    print("|---:|---:|---:|---:|---:|")
    for (k, t_pick, t_any), (_, i_pick, i_any) in zip(
        curve(t2i_right.reshape(shape), t2i_scores.reshape(shape)),
        curve(i2t_right.reshape(shape), i2t_scores.reshape(shape)),
    ):
        print(f"| {k} | {t_pick:.1f} | {t_any:.1f} | {i_pick:.1f} | {i_any:.1f} |")


if __name__ == "__main__":
    main()
