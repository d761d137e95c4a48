"""Training throughput of the demo's step: tokens/s and its share of this machine's matmul peak.

A step is what `magvlt.train.loop` runs: the MAGVLT objective (forward, backward), gradient clipping and AdamW,
on random tokens of the demo's shapes (width 128, batch 32, 4 x 8 palette codes: a colour and a pattern code per
8x8 patch; captions of 6-14 of 32 text positions as the shapes world's are). Tokens per step = batch x (N_I + L
+ 2) input tokens; the objective's extra forwards (length query, UnrollMask, MixSel) are not counted as tokens
but are counted as FLOPs (torch.utils.flop_counter on one step per task). The peak is the best rate of a large
matmul in the precision the step runs in, measured in the same run before and after the steps (the best kept);
the share is taken against it (`--precision`, by default the one `precision="auto"` picks on this hardware).
Each cell is the median over timed steps after warm-up; the task of each step is drawn from the configured
weights (8:1:1), so the median is a T2I step.

    python benchmarks/throughput.py              # the demo's model and batch
    python benchmarks/throughput.py --batch 64 --steps 3 n_embd=256 text_vocab=49408 text_len=64   # CLIP's vocabulary
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from magvlt.config import TRAIN_PRESETS, ObjectiveConfig, apply_overrides, preset
from magvlt.model import Transformer
from magvlt.objectives import TASKS
from magvlt.precision import use_bf16
from magvlt.train.loop import TrainingObjective, param_groups


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    """The best FLOP/s of `repeats` n x n x n matmuls (a shared machine's rate wanders; the peak is the best)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


def random_batch(model_cfg, batch: int, generator: torch.Generator, lengths=(6, 14)) -> dict[str, torch.Tensor]:
    """Random codes and captions of the model's shapes (lengths spread over `lengths`, at most L)."""
    h, w = model_cfg.image_grid

    def codes(n: int) -> torch.Tensor:
        return torch.randint(0, model_cfg.image_vocab, (batch, n), generator=generator)

    return {
        "image": codes(h * w),
        "image_half_w": codes(h * (w // 2)),
        "image_half_h": codes((h // 2) * w),
        "text": torch.randint(0, model_cfg.text_vocab, (batch, model_cfg.text_len), generator=generator),
        "length": torch.randint(
            min(lengths[0], model_cfg.text_len), min(lengths[1], model_cfg.text_len) + 1, (batch,), generator=generator
        ),
    }


class Step:
    """One training step of the trainer's objective, clipping and AdamW on a fixed random batch."""

    def __init__(self, model_cfg, objective_cfg: ObjectiveConfig, batch: int, bf16: bool):
        torch.manual_seed(0)
        self.objective = TrainingObjective(Transformer(model_cfg), objective_cfg)
        self.optimizer = torch.optim.AdamW(param_groups(self.objective, 0.01), lr=1e-4)
        self.generator = torch.Generator().manual_seed(0)
        self.batch, self.bf16 = random_batch(model_cfg, batch, self.generator), bf16

    def __call__(self, task: str | None = None) -> str:
        task = task or self.objective.sample_task(self.generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss, _ = self.objective(self.batch, self.generator, task)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.objective.parameters(), 4.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return task


def step_flops(step: Step) -> dict[str, float]:
    """Matmul FLOPs of one step of each task (forward and backward)."""
    flops = {}
    for task in TASKS:
        with FlopCounterMode(display=False) as counter:
            step(task)
        flops[task] = counter.get_total_flops()
    return flops


def measure(step: Step, steps: int, warmup: int = 2) -> tuple[float, str]:
    """Median seconds of a step, and the task most of the timed steps trained."""
    for _ in range(warmup):
        step()
    times, tasks = [], []
    for _ in range(steps):
        t = time.perf_counter()
        tasks.append(step())
        times.append(time.perf_counter() - t)
    return statistics.median(times), statistics.mode(tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=32, help="micro-batch size (the demo's: 32)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per cell")
    parser.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), default="auto", help="the step's arithmetic (default: auto)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        default=["n_embd=128", "text_vocab=256", "text_len=32", "image_grid=[4,8]", "image_vocab=887"],
        help="model config overrides (default: the demo's model, n_embd=128 text_vocab=256 text_len=32 "
        "image_grid=[4,8] image_vocab=887, its palette tokens)",
    )
    args = parser.parse_args()
    cfg = preset(TRAIN_PRESETS, args.preset)
    model_cfg = apply_overrides(cfg.model, args.overrides)
    objectives = {
        "full (mask+length+UnrollMask+MixSel)": cfg.objective,
        "mask prediction only": dataclasses.replace(cfg.objective, unroll_mask=False, mix="off", length_weight=0.0),
    }
    bf16 = use_bf16(args.precision, "cpu")
    dtype = torch.bfloat16 if bf16 else torch.float32
    peak = matmul_peak(dtype)  # the other precision's is not measured: bf16 without hardware support takes minutes
    tokens = args.batch * (model_cfg.image_tokens + model_cfg.text_len + 2)
    print(
        f"{args.preset}: {model_cfg.n_layer} layers x {model_cfg.n_embd}, image {model_cfg.image_grid} of "
        f"{model_cfg.image_vocab} codes, text {model_cfg.text_len} of {model_cfg.text_vocab}; batch {args.batch} "
        f"= {tokens} tokens/step; {torch.get_num_threads()} threads; {'bf16 autocast' if bf16 else 'fp32'} "
        f"(precision={args.precision})"
    )
    rows = []
    for name, objective_cfg in objectives.items():
        step = Step(model_cfg, objective_cfg, args.batch, bf16)
        seconds, task = measure(step, args.steps)
        rows.append((name, seconds, step_flops(step)[task]))
    # measured before and after the steps, the best kept: one measurement alone read 91 instead of ~150 GFLOP/s
    before, after = peak, matmul_peak(dtype)
    peak = max(before, after)
    print(f"matmul peak (2048^3, {'bf16' if bf16 else 'fp32'}): {peak / 1e9:.0f} GFLOP/s ", end="")
    print(f"(before the steps {before / 1e9:.0f}, after {after / 1e9:.0f})\n")
    print("| objective | precision | step (ms) | tokens/s | GFLOP/step | GFLOP/s | of that precision's peak |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, seconds, flops in rows:
        rate = flops / seconds
        print(
            f"| {name} | {'bf16 autocast' if bf16 else 'fp32'} | {1e3 * seconds:.0f} | {tokens / seconds:,.0f} | "
            f"{flops / 1e9:.1f} | {rate / 1e9:.0f} | {rate / peak:.1%} |"
        )


if __name__ == "__main__":
    main()
