"""T2I decoding speed, MAGVLT against ARGVLT (paper Tables 1 and 9: 8.12x for the base model on GPUs).

One run, same machine, same architecture and weight shapes (random weights: speed does not depend on them),
256 image tokens (16x16), 16-token prompts, both in the released T2I layout [BOC BOT text BOG BOI image] (the
text cut after the prompt, which hides the rest anyway): MAGVLT decodes in T = 10 parallel steps, each a
forward over the whole 276-token layout; ARGVLT decodes the 256 image tokens one at a time after the 20-token
prefix, with a KV cache (the fair baseline) and without one. Times are medians of full decodes.

    python benchmarks/decode_speed.py            # tiny and mid (12 x 768), batch 1 and 32; a few minutes
    python benchmarks/decode_speed.py --quick    # tiny, batch 1, one decode each; seconds
    python benchmarks/decode_speed.py --full     # every cell measured in full (~45 minutes on 2 cores)

By default the slowest cells are not run in full: ARGVLT without a cache is measured for the tiny model at
batch 1 only ("—" elsewhere), and the mid-size batch-32 MAGVLT time is a 2-step decode scaled by 10 / 2
(every step is the same forward on the same shapes), marked "~". On a shared machine pass --threads 1: with
more threads than free cores, thread synchronisation slows the many small ops of AR decoding by up to 50x.

Why a CPU does not show the paper's 8.12x. Per sample, MAGVLT computes 10 x 276 token-forwards, ~10x the FLOPs
of ARGVLT with a cache (20 + 256 token-forwards), but reads the weights only 10 times in sequence, where cached
ARGVLT reads them 256 times, each step waiting for the last. So, roughly,

    speed-up = (256 x max(weight bytes / bandwidth, step latency)) / (10 x step FLOPs / FLOP rate).

Measured on 2 CPU cores with magvlt's former architecture ([<BOI> image <BOT> text], 322 tokens, a 66-token AR
prefix; not re-measured since), mid model, batch 1: MAGVLT reaches ~0.14 TFLOP/s, so its 650 GFLOP take ~4.7 s;
cached ARGVLT streams its ~0.39 GB of fp32 weights 256 times at ~12 GB/s, ~8.5 s: 1.8x. At batch 32 the AR
step's weight reads are shared by 32 rows and both methods are compute-bound, so time follows FLOPs and MAGVLT
is slower (~0.25x). The tiny model at batch 1 is bound by per-op dispatch (~3 ms per AR token), not by memory.
A GPU has ~1000x this FLOP rate but only ~300x the bandwidth, and a one-token step costs about a kernel-launch
chain whatever its size, so the compute term shrinks against the sequential one and the ratio moves toward
256 / 10; the paper measures 8.12x (base model). Against ARGVLT without a cache (a 20..275-token forward per
token) MAGVLT wins everywhere (16x here on the tiny model). The second table prints each decode's FLOPs,
sequential forwards and the throughput it reached, so the figures can be checked against the roofline.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

from magvlt import sampling
from magvlt.config import MODEL_PRESETS, ModelConfig
from magvlt.model import Transformer
from magvlt.schedulers import MaskGITScheduler

STEPS = 10
PROMPT_LEN = 16  # real caption tokens; the rest of the 64 is padding, as in the paper's fixed text length


def bench_configs() -> dict[str, ModelConfig]:
    """The tiny preset on a 16x16 grid and the 12 x 768 mid preset (256 image tokens, 16,384 codes)."""
    return {
        "tiny (4x256)": dataclasses.replace(MODEL_PRESETS["tiny"], image_grid=(16, 16)),
        "mid (12x768)": MODEL_PRESETS["mid"],
    }


def flops_and_passes(cfg: ModelConfig, method: str) -> tuple[float, int]:
    """Matmul FLOPs per sample (blocks, attention, image head) and the number of sequential forwards."""
    d, n_layer, n_i = cfg.n_embd, cfg.n_layer, cfg.image_tokens
    seq, prefix = n_i + PROMPT_LEN + 4, PROMPT_LEN + 4
    block = 2 * 12 * d * d * n_layer  # per token: qkv, proj and the 4x MLP
    head = 2 * d * cfg.image_vocab

    def forward(queries: int, keys: int, causal: bool) -> float:  # QK^T and AV: 4 d per query-key pair per layer
        return queries * block + 4 * d * n_layer * queries * keys / (2 if causal else 1)

    if method == "magvlt":
        return STEPS * (forward(seq, seq, False) + n_i * head), STEPS
    if method == "ar-cached":  # prefill, then one token per forward against the cache
        total = forward(prefix, prefix, True) + sum(forward(1, k, False) for k in range(prefix + 1, seq))
    else:  # every token recomputes its whole prefix
        total = sum(forward(p, p, True) for p in range(prefix, seq))
    return total + n_i * head, n_i


def weight_bytes(model: Transformer) -> int:
    """Bytes of weights a forward reads: every block, and the image rows of the tied head."""
    blocks = sum(p.numel() * p.element_size() for p in model.blocks.parameters())
    return blocks + model.cfg.image_vocab * model.cfg.n_embd * 4


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_time(fn, repeats: int, device: torch.device) -> float:
    return statistics.median(timed(fn, device) for _ in range(repeats))


def run_cell(name: str, cfg: ModelConfig, batch: int, args, device: torch.device) -> dict:
    """Median decode times of the three methods for one model size and batch size."""
    torch.manual_seed(0)
    magvlt = Transformer(cfg).to(device).eval()
    argvlt = Transformer(dataclasses.replace(cfg, causal=True)).to(device).eval()
    text = torch.randint(0, 1000, (batch, cfg.text_len), device=device)
    length = torch.full((batch,), PROMPT_LEN, device=device)
    gen = torch.Generator(device).manual_seed(0)
    small = cfg.n_layer < 12
    expensive = not args.full and not small and batch > 1
    repeats = 1 if args.quick or not small else args.repeats

    def mag(steps: int):
        return lambda: sampling.generate_images(magvlt, text, length, MaskGITScheduler(steps), generator=gen)

    def ar(use_cache: bool):
        return lambda: sampling.ar_generate_images(argvlt, text, length, generator=gen, use_cache=use_cache)

    sampling.generate_images(
        magvlt, text[:1], length[:1], MaskGITScheduler(1), generator=gen
    )  # warm-up: allocator, threads
    row = {"model": name, "batch": batch, "estimated": set()}
    if expensive:
        row["magvlt"] = median_time(mag(2), repeats, device) * STEPS / 2
        row["estimated"].add("magvlt")
    else:
        row["magvlt"] = median_time(mag(STEPS), repeats, device)
    row["ar-cached"] = median_time(ar(True), repeats, device)
    run_uncached = args.full or (small and batch == 1)
    row["ar-uncached"] = median_time(ar(False), 1, device) if run_uncached else None
    wbytes = weight_bytes(magvlt)
    for method in ("magvlt", "ar-cached", "ar-uncached"):
        flops, passes = flops_and_passes(cfg, method)
        row[f"{method}/gflops"] = flops * batch / 1e9
        row[f"{method}/passes"] = passes
        if row[method] is not None:
            row[f"{method}/tflops_s"] = flops * batch / row[method] / 1e12
            row[f"{method}/gb_s"] = wbytes * passes / row[method] / 1e9
    return row


def fmt_time(row: dict, method: str) -> str:
    if row[method] is None:
        return "—"
    return ("~" if method in row["estimated"] else "") + f"{row[method]:.2f}"


def fmt_ratio(row: dict, method: str) -> str:
    if row[method] is None:
        return "—"
    approx = "~" if row["estimated"] else ""
    return f"{approx}{row[method] / row['magvlt']:.2f}x"


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | batch | MAGVLT, 10 steps (s) | ARGVLT + KV cache (s) | ARGVLT, no cache (s) | speed-up vs cached | vs no cache |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {fmt_time(r, 'magvlt')} | {fmt_time(r, 'ar-cached')} | "
            f"{fmt_time(r, 'ar-uncached')} | {fmt_ratio(r, 'ar-cached')} | {fmt_ratio(r, 'ar-uncached')} |"
        )
    return "\n".join(lines)


def roofline(rows: list[dict]) -> str:
    lines = [
        "| model | batch | method | GFLOP | sequential forwards | achieved TFLOP/s | weight GB/s |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        for m in ("magvlt", "ar-cached", "ar-uncached"):
            achieved = f"{r[f'{m}/tflops_s']:.3f} | {r[f'{m}/gb_s']:.1f}" if f"{m}/tflops_s" in r else "— | —"
            lines.append(
                f"| {r['model']} | {r['batch']} | {m} | {r[f'{m}/gflops']:.0f} | {r[f'{m}/passes']} | {achieved} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, batch 1, one decode each (seconds)")
    parser.add_argument("--full", action="store_true", help="measure every cell, none estimated (slow on a CPU)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=3, help="decodes per median (the mid model uses 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    configs = bench_configs()
    if args.quick:
        configs, args.batches = dict(list(configs.items())[:1]), [1]
    rows, load_before = [], os.getloadavg()[0]
    for name, cfg in configs.items():
        for batch in args.batches:
            rows.append(run_cell(name, cfg, batch, args, device))
            print(f"measured {name} batch {batch}", flush=True)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    load = f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (other processes skew CPU timings)"
    print(f"\nT2I decoding, 256 image tokens, {where}, torch {torch.__version__}; {load}; ~: estimated, see --full\n")
    print(markdown(rows))
    print(
        "\nWork per decode and the throughput reached (FLOPs of matmuls; weights read once per sequential forward):\n"
    )
    print(roofline(rows))


if __name__ == "__main__":
    main()
