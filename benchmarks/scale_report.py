"""Memory and throughput of each training preset on GPUs, from shapes counted on this machine (meta device).

    python benchmarks/scale_report.py                         # A100 80 GB, 8 GPUs, the paper's batch 4096
    python benchmarks/scale_report.py --gpus 128 --gpu-gb 80 --gpu-tflops 989   # H100s, the paper's 128 GPUs

Per preset: parameters; model state per rank (fp32 weights + gradients + AdamW's two moments = 16 bytes a
parameter; DDP keeps all of it on every rank, FSDP2 a 1/ranks share); activations autograd keeps per sample
(the T2I layout's 324 tokens: 256 image + 64 text + 4 specials; bf16 as under autocast; with and without
activation_checkpointing), measured by hooking autograd's saved tensors on a meta-device forward, with
attention scores kept whole as the released model computes them (flash attention keeps less); the
largest micro-batch that fits beside the state with 20% of the GPU kept free; the grad_accum that reaches
the global batch; FLOPs per sample counted by torch's FlopCounterMode (training = 3 x forward, times the
cost of the full objective over plain mask prediction; checkpointing adds a forward, +1/3); and the step
time and tokens/s at an assumed fraction of the GPU's bf16 peak. Only the counts are measurements; the GPU
rates are arithmetic.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from magvlt.config import TRAIN_PRESETS
from magvlt.model import Task, Transformer, official_segments
from magvlt.train import dist

STATE_BYTES = 16  # fp32 weight, gradient, Adam exp_avg and exp_avg_sq


def forward_counts(cfg, checkpointed: bool) -> tuple[int, float]:
    """(activation bytes kept for backward, forward FLOPs) of one sample, bf16, on the meta device."""
    with torch.device("meta"):
        model = Transformer(cfg).to(torch.bfloat16)
    if checkpointed:
        dist.checkpoint_activations(model.blocks)
    params = {id(p) for p in model.parameters()}
    kept = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        if id(t) not in params and id(t._base) not in params:
            kept += t.numel() * t.element_size()
        return t

    image = torch.zeros(1, cfg.image_tokens, dtype=torch.long, device="meta")
    text = torch.zeros(1, cfg.text_len, dtype=torch.long, device="meta")
    masked = torch.zeros(1, cfg.image_tokens, dtype=torch.bool, device="meta")
    length = torch.full((1,), cfg.text_len, device="meta")
    with FlopCounterMode(display=False) as flops, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = model.official(Task.T2I, image, masked, text, torch.zeros_like(text, dtype=torch.bool), length)
        model.image_logits(hidden[:, official_segments(Task.T2I, cfg).image])  # the largest head
    return kept, float(flops.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="tiny,small,base,large")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4096, help="global batch (the paper: 4096)")
    parser.add_argument("--gpu-gb", type=float, default=80.0)
    parser.add_argument("--gpu-tflops", type=float, default=312.0, help="bf16 dense peak (A100: 312, H100 SXM: 989)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed fraction of the peak a step reaches")
    parser.add_argument(
        "--objective-factor",
        type=float,
        default=2.7,
        help="a full objective step (length query, UnrollMask, MixSel) over plain mask prediction; "
        "2.7 measured on the CPU (README: 1.95 s vs 0.73 s)",
    )
    args = parser.parse_args()
    print(
        f"{args.gpus} GPUs of {args.gpu_gb:g} GB, {args.gpu_tflops:g} bf16 TFLOP/s at {args.mfu:.0%}, "
        f"global batch {args.batch}\n"
    )
    print(
        "| preset (wrapping) | params | state/rank DDP | state/rank FSDP2 | activations/sample | checkpointed | "
        "micro-batch / grad_accum | checkpointed | GFLOP/sample | step | tokens/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.presets.split(","):
        cfg = TRAIN_PRESETS[name].model
        if cfg.image_tokens != 256:  # the CPU presets' 8x8 grid: shown at the paper's 16x16, 16,384 codes
            cfg = type(cfg)(**{**cfg.__dict__, "image_grid": (16, 16), "image_vocab": 16384})
        with torch.device("meta"):
            params = Transformer(cfg).num_params()
        plain, flops = forward_counts(cfg, False)
        kept, _ = forward_counts(cfg, True)
        fsdp = TRAIN_PRESETS[name].fsdp
        state = params * STATE_BYTES / (args.gpus if fsdp else 1)
        per_rank = args.batch // args.gpus
        fits = [fitting(args.gpu_gb * 2**30 * 0.8 - state, act, per_rank) for act in (plain, kept)]
        train_flops = 3 * flops * args.objective_factor
        step = args.batch * train_flops / (args.gpus * args.gpu_tflops * 1e12 * args.mfu)
        tokens = args.batch * (cfg.image_tokens + cfg.text_len + 4) / step
        print(
            f"| {name} ({'FSDP2' if fsdp else 'DDP'}) | {params / 1e6:.1f}M | {params * STATE_BYTES / 2**30:.1f} GB | "
            f"{params * STATE_BYTES / args.gpus / 2**30:.2f} GB | {plain / 2**20:.0f} MiB | {kept / 2**20:.0f} MiB | "
            f"{' / '.join(map(str, fits[0]))} | {' / '.join(map(str, fits[1]))} | {train_flops / 1e9:.0f} | "
            f"{step:.1f} s | {tokens:,.0f} |"
        )


def fitting(free: float, per_sample: float, per_rank: int) -> tuple[int, int]:
    """The largest power-of-two micro-batch (at most this rank's share) whose activations fit, and the
    grad_accum it needs for the rank's share of the global batch."""
    micro = 1
    while micro * 2 <= per_rank and micro * 2 * per_sample <= free:
        micro *= 2
    return micro, math.ceil(per_rank / micro)


if __name__ == "__main__":
    main()
