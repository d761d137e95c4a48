"""torchrun support: process group, DDP or FSDP2 wrapping, full state dicts, and one collective per step.

Without torchrun (no WORLD_SIZE in the environment) everything degrades to a single process.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.utils.checkpoint
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank among world_size, and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False  # init_distributed created the process group (so close_distributed ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) unless the caller already has, or run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    create = world_size > 1 and not dist.is_initialized()
    if create:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None
        )
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=world_size, device=device, owns_group=create)


def close_distributed(info: DistInfo) -> None:
    """End the process group if init_distributed created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: nn.Module, blocks: nn.ModuleList, info: DistInfo, fsdp: bool) -> nn.Module:
    """DDP, or FSDP2 `fully_shard` per block then the root, under torchrun; the module itself otherwise.

    DDP looks for unused parameters because a task may leave some unused (T2I never reaches the length head).
    """
    if not info.distributed:
        return module
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in blocks:
            fully_shard(block)
        return fully_shard(module)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        module, device_ids=[info.device.index] if info.device.type == "cuda" else None, find_unused_parameters=True
    )


def checkpoint_activations(blocks: nn.ModuleList) -> None:
    """Keep only each block's input for backward and recompute the rest (torch.utils.checkpoint, non-reentrant;
    the RNG state is replayed, so dropout draws the same masks): activation memory of one block instead of all,
    for about a third more compute. Parameters and their names are untouched; call it before `wrap`."""
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block.forward)


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


def gradient_sync(model: nn.Module, enabled: bool):
    """A context in which backward all-reduces gradients only when `enabled` (the last accumulation step)."""
    if hasattr(model, "no_sync"):  # DDP
        return contextlib.nullcontext() if enabled else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    return contextlib.nullcontext()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a small tensor over ranks (identity in a single process)."""
    if info.distributed:
        values = values.to(info.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.cpu()


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo) -> tuple[dict, dict]:
    """Unsharded CPU model and optimizer state dicts (parameter names as keys); complete on rank 0."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(
    model: nn.Module, module: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict
) -> None:
    """Load what full_state returned into `model` (`module`, possibly wrapped or sharded) and its optimizer.

    Parameters that had no optimizer state when saved (no gradient yet: a head no sampled task used) get
    none now either; the loader initialises their state with a dummy step, which would shift their Adam step count.
    """
    set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True))
    set_optimizer_state_dict(
        model, optimizer, optim_state, options=StateDictOptions(full_state_dict=True, strict=False)
    )
    for name, param in module.named_parameters():
        if name not in optim_state["state"]:
            optimizer.state.pop(param, None)
