"""The arithmetic precision of training, chosen from the hardware: bf16 autocast only where bf16 is fast.

CUDA GPUs since Ampere and CPUs with native bf16 instructions (AVX512_BF16, AMX) run bf16 matmuls faster than
fp32. Other CPUs emulate them: measured here, an AVX2 AMD EPYC ran a 1024^2 bf16 matmul at 0.5 GFLOP/s against
37 for fp32, and an AVX-512 Xeon without bf16 at 61 against 279, so there "auto" trains in fp32.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from magvlt.errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when /proc/cpuinfo lists a native bf16 instruction set (elsewhere: False, fp32 is the safe choice)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return bool(_CPU_BF16_FLAGS & set(flags))


def use_bf16(precision: str, device: str | torch.device) -> bool:
    """Whether to autocast to bf16 on `device`: "bf16" and "fp32" force it; "auto" asks the hardware."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


def autocast(bf16: bool, device: str | torch.device):
    """bf16 autocast on `device` when bf16, else nothing (fp32)."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
