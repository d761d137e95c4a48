"""`magvlt tokenize` speed at the paper's setting: 256 px images, the taming f16/16384 VQ-GAN (random weights:
speed does not depend on them), each image encoded at full size, half width and half height (MixSel).

    python benchmarks/tokenize_speed.py                 # ~2 min on 2 cores
    python benchmarks/tokenize_speed.py --pairs 64 --batch 16 --threads 16

Measures on this machine (1) preparing an image: decoding a JPEG photograph of web size and bringing it to
256 x 256 (shorter side, bilinear, center crop), per thread and with a thread pool; (2) the VQ-GAN encodings of
a batch, with their FLOPs counted; (3) the whole `tokenize_units` on tar shards of JPEGs, in pairs/s. Then the
arithmetic for GPUs: a GPU encodes pairs at (sustained bf16 FLOP/s) / (FLOPs per pair), while decoding stays on
the CPU cores beside it; the slower of the two sets the rate, from which the hours for CC3M and CC12M on 8 GPUs
follow. The GPU rate is an estimate (peak x an assumed utilization for convolutions), not a measurement.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from magvlt.config import VQ_PRESETS
from magvlt.data.sources import open_source
from magvlt.data.tokenize import encode_images, prepare_image, squeeze, tokenize_units
from magvlt.text import ClipTokenizer
from magvlt.vq import VQGAN

SIZE = 256
DATASETS = {"CC3M": 3.3e6, "CC12M": 12.4e6}  # pairs as published (a fresh download keeps ~70-90% of them)


def photographs(n: int, side: int) -> list[bytes]:
    """n JPEGs of about side x 1.33 side: scikit-image's photographs if installed, else smooth noise."""
    try:
        from skimage import data

        sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field()]
    except ImportError:
        rng = np.random.default_rng(0)
        sources = [
            np.asarray(Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).resize((640, 480)))
            for _ in range(5)
        ]
    out = []
    for i in range(n):
        image = Image.fromarray(sources[i % len(sources)]).resize(
            (round(side * 4 / 3), side), Image.Resampling.BILINEAR
        )
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def time_prepare(jpegs: list[bytes], threads: int) -> float:
    """Images prepared per second with `threads` threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda b: prepare_image(b, SIZE), jpegs))
    return len(jpegs) / (time.perf_counter() - start)


def encode_flops(vq: VQGAN) -> float:
    """FLOPs of one pair's three encodings (full, half width, half height)."""
    image = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            for x in (image, squeeze(image, "w"), squeeze(image, "h")):
                vq.latents(vq.to_input(x))
    return float(counter.get_total_flops())


def time_encode(vq: VQGAN, batch: int, reps: int) -> float:
    """Seconds per batch of three encodings (median of reps, after one warm-up)."""
    images = np.random.default_rng(0).integers(0, 256, (batch, SIZE, SIZE, 3), np.uint8)
    encode_images(vq, images)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        encode_images(vq, images)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_end_to_end(vq: VQGAN, jpegs: list[bytes], batch: int, workers: int) -> float:
    """Pairs/s of tokenize_units on two tar shards of the JPEGs (decode, resize, encode, write)."""
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(tmp) / "shards"
        shards.mkdir()
        half = len(jpegs) // 2
        for s, part in enumerate((jpegs[:half], jpegs[half:])):
            with tarfile.open(shards / f"{s:05d}.tar", "w") as tar:
                for i, data in enumerate(part):
                    for name, blob in ((f"{s}{i:06d}.jpg", data), (f"{s}{i:06d}.txt", b"a photograph of something")):
                        info = tarfile.TarInfo(name)
                        info.size = len(blob)
                        tar.addfile(info, io.BytesIO(blob))
        start = time.perf_counter()
        tokenize_units(
            open_source(shards),
            vq,
            ClipTokenizer(),
            Path(tmp) / "out",
            vq_dir=None,
            text_dir=None,
            image_size=SIZE,
            batch_size=batch,
            workers=workers,
            progress=False,
        )
        return len(jpegs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=16, help="pairs in the end-to-end run")
    parser.add_argument("--batch", type=int, default=4, help="VQ-GAN batch")
    parser.add_argument("--reps", type=int, default=2, help="timed encoder batches")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads and decoding threads")
    parser.add_argument("--photo-side", type=int, default=400, help="shorter side of the JPEGs (CC3M's median ~400)")
    parser.add_argument(
        "--gpu-tflops", type=float, default=312.0, help="GPU bf16 dense peak (A100: 312, H100 SXM: 989)"
    )
    parser.add_argument(
        "--utilization", type=float, default=0.4, help="assumed fraction of peak for the encoder's convs"
    )
    parser.add_argument("--cores-per-gpu", type=int, default=12, help="CPU cores beside each GPU for decoding")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vq = VQGAN(VQ_PRESETS["f16_16384"]).eval()
    jpegs = photographs(max(args.pairs, 32), args.photo_side)

    one = time_prepare(jpegs, 1)
    pooled = time_prepare(jpegs, args.threads)
    flops = encode_flops(vq)
    seconds = time_encode(vq, args.batch, args.reps)
    cpu_encode = args.batch / seconds
    end_to_end = time_end_to_end(vq, jpegs[: args.pairs], args.batch, args.threads)

    print(
        f"machine: {os.cpu_count()} cores, {args.threads} threads, torch {torch.__version__}, load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        f"prepare (JPEG {round(args.photo_side * 4 / 3)}x{args.photo_side} -> 256x256): {one:.0f} images/s on 1 thread, "
        f"{pooled:.0f} on {args.threads}"
    )
    print(f"VQ encodings per pair (full + half width + half height, f16/16384 at 256 px): {flops / 1e9:.0f} GFLOP")
    print(
        f"VQ encoding, batch {args.batch}, fp32 on this CPU: {seconds:.2f} s a batch, {cpu_encode:.2f} pairs/s "
        f"({flops * cpu_encode / 1e9:.0f} GFLOP/s)"
    )
    print(f"end to end (`tokenize_units`, {args.pairs} JPEGs in 2 tar shards): {end_to_end:.2f} pairs/s")
    gpu = args.gpu_tflops * 1e12 * args.utilization / flops
    cpu = one * args.cores_per_gpu
    rate = min(gpu, cpu)
    print(
        f"\nper GPU, estimated: encoding {gpu:,.0f} pairs/s ({args.gpu_tflops:g} TFLOP/s x {args.utilization:g}); "
        f"decoding on {args.cores_per_gpu} cores {cpu:,.0f} pairs/s -> {rate:,.0f} pairs/s "
        f"({'GPU' if gpu < cpu else 'CPU decoding'}-bound)"
    )
    for name, pairs in DATASETS.items():
        print(f"{name} ({pairs / 1e6:.1f}M pairs) on 8 GPUs: {pairs / (8 * rate) / 60:.0f} min")


if __name__ == "__main__":
    main()
