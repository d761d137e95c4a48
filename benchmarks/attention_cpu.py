"""Why model.py runs CPU bf16 attention on the math kernel: forward + backward time of each SDPA backend.

    .venv/bin/python benchmarks/attention_cpu.py [--threads 2]

Shape: the tiny preset's training attention (batch 64, 4 heads, 98 tokens, head dim 64). Prints medians of 7 runs.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def median_seconds(backend: SDPBackend, dtype: torch.dtype, shape: tuple[int, ...], repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=True) for _ in range(3))
        start = time.perf_counter()
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (64, 4, 98, 64)
    print(f"| dtype | fused (flash) ms | math ms | threads={args.threads} |\n|---|---|---|---|")
    for dtype in (torch.bfloat16, torch.float32):
        flash = median_seconds(SDPBackend.FLASH_ATTENTION, dtype, shape)
        math = median_seconds(SDPBackend.MATH, dtype, shape)
        print(f"| {str(dtype).removeprefix('torch.')} | {1000 * flash:.0f} | {1000 * math:.0f} | |")


if __name__ == "__main__":
    main()
