"""The trainer (App. A): AdamW, warmup + cosine decay, clipping at norm 4, bf16 autocast, accumulation, torchrun.

Randomness: step s trains one task for its whole global batch (Sec. 3.5 samples the task per batch), drawn
from (seed, s), so every rank runs the same forwards, as FSDP's collectives require. Micro-batch k of step
s draws its masks from a generator seeded with (seed, s, k), and its dropout from the global RNG
re-seeded from (seed, s, k) inside `fork_rng`. Nothing random carries over from one step to the next, so
a resumed run needs no saved RNG state to continue bit for bit, and the result does not depend on
whether micro-batches run on several ranks or one after another on a single process (the global batch is
cut into ranks x grad_accum micro-batches either way).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from magvlt import paths
from magvlt.config import ModelConfig, ObjectiveConfig, TrainConfig, load_json, save_json
from magvlt.data.tokenized import BatchStream, TokenizedDataset, derive_seed
from magvlt.errors import UserError
from magvlt.model import Task, Transformer, check_architecture
from magvlt.objectives import TASKS, mask_task, predict_masked, sample_task, trained_task_weights, training_loss
from magvlt.precision import autocast, use_bf16
from magvlt.train import dist, rundir
from magvlt.train.threads import ThreadTuner, threads_set


def lr_at(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Learning rate of update `step` (0-based) after `elapsed` seconds: linear warmup over steps, then cosine decay
    to min_lr_ratio * lr over the steps, or over max_minutes of wall time when cfg.schedule is "time"."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = progress_at(step, cfg, elapsed)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def progress_at(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """How far training is, 0..1: of the time budget when cfg.schedule is "time" (max_minutes and, when set, also
    min_steps updates, whichever ends later, but no later than stretch_minutes), else of the steps after warmup."""
    if cfg.schedule == "time":
        done = elapsed / (60 * cfg.max_minutes)
        if cfg.min_steps:
            done = max(min(done, step / cfg.min_steps), elapsed / (60 * cfg.stretch_minutes))
        return min(1.0, done)
    return min(1.0, max(0, step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))


def budget_spent(step: int, cfg: TrainConfig, elapsed: float) -> bool:
    """Whether a run stops after `step` updates and `elapsed` seconds: its time budget spent (before cfg.steps)."""
    if cfg.schedule == "time":
        return progress_at(step, cfg, elapsed) >= 1
    return cfg.max_minutes > 0 and elapsed > 60 * cfg.max_minutes


def objective_at(cfg: ObjectiveConfig, progress: float) -> ObjectiveConfig:
    """The objective of an update at `progress`: the curriculum's task weights before cfg.curriculum_until, and
    without UnrollMask and MixSel before cfg.extras_from."""
    if cfg.curriculum_weights is not None and progress < cfg.curriculum_until:
        cfg = dataclasses.replace(cfg, task_weights=tuple(cfg.curriculum_weights))
    if progress >= cfg.extras_from:
        return cfg
    return dataclasses.replace(cfg, unroll_mask=False, mix="off")


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on linear weights only, none on norms, biases and embeddings (and tied heads)."""
    decay = [m.weight for m in module.modules() if isinstance(m, nn.Linear)]
    ids = {id(p) for p in decay}
    rest = [p for p in module.parameters() if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def fit_to_data(model: ModelConfig, meta: dict) -> tuple[ModelConfig, list[str]]:
    """The model config with the data's token spaces (image codes and grid, text vocabulary and length)."""
    fields = {
        "image_vocab": meta["image_vocab"],
        "image_grid": tuple(meta["image_grid"]),
        "text_vocab": meta["text_vocab"],
        "text_len": meta["text_len"],
    }
    notes = [
        f"model.{k} = {v} (from the data; was {getattr(model, k)})" for k, v in fields.items() if getattr(model, k) != v
    ]
    return dataclasses.replace(model, **fields), notes


class TrainingObjective(nn.Module):
    """The transformer with its training loss as forward, so DDP and FSDP see every use of the weights in one call."""

    def __init__(self, model: Transformer, cfg: ObjectiveConfig):
        super().__init__()
        self.model, self.cfg = model, cfg

    def sample_task(self, generator: torch.Generator) -> Task:
        """The task of one global batch from the configured weights (ARGVLT: T2I and I2T only)."""
        return sample_task(trained_task_weights(self.cfg.task_weights, self.model.cfg.causal), generator)

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator, task: Task):
        return training_loss(self.model, batch, self.cfg, task, generator)


class WeightEMA:
    """An exponential moving average of a module's parameters (kept in fp32, sharded as the parameters are)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().float().clone() for n, p in module.named_parameters()}
        self.dtypes = {n: p.dtype for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        """Move the average toward the parameters after update `step` (1-based); early steps weigh more."""
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        for name, p in module.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), weight)

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """Restore a saved average (full tensors; copied into the local shards where sharded)."""
        for name, t in self.shadow.items():
            full = weights[name].float()
            t.copy_(_distribute_like(full, t) if hasattr(t, "full_tensor") else full)

    def full(self) -> dict[str, torch.Tensor]:
        """The average as full CPU tensors in the parameters' dtypes (collective under FSDP: every rank calls it)."""
        out = {}
        for name, t in self.shadow.items():
            full = t.full_tensor() if hasattr(t, "full_tensor") else t
            out[name] = full.detach().to("cpu", self.dtypes[name])
        return out


def _distribute_like(full: torch.Tensor, shard) -> torch.Tensor:
    """A full tensor cut as the DTensor `shard` is, as a DTensor."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(shard.device), shard.device_mesh, shard.placements)


def _check_config(cfg: TrainConfig, world_size: int) -> None:
    if cfg.steps < 1 or cfg.grad_accum < 1 or cfg.warmup_steps < 0 or cfg.log_every < 1 or cfg.ckpt_every < 1:
        raise UserError("steps, grad_accum, log_every and ckpt_every must be >= 1 and warmup_steps >= 0")
    if cfg.schedule not in ("steps", "time") or (cfg.schedule == "time" and cfg.max_minutes <= 0):
        raise UserError(f"schedule must be 'steps' or 'time' (with max_minutes > 0), got {cfg.schedule!r}")
    if cfg.min_steps < 0 or (cfg.min_steps and (cfg.schedule != "time" or cfg.stretch_minutes < cfg.max_minutes)):
        raise UserError("min_steps needs schedule 'time' and stretch_minutes >= max_minutes (the latest stop)")
    for name in ("extras_from", "curriculum_until"):
        if not 0 <= getattr(cfg.objective, name) <= 1:
            raise UserError(
                f"objective.{name} must be a share of training in [0, 1], got {getattr(cfg.objective, name)}"
            )
    if not 0 < cfg.objective.length_rows <= 1:
        raise UserError(
            f"objective.length_rows must be a share of the batch in (0, 1], got {cfg.objective.length_rows}"
        )
    if not 0 <= cfg.ema < 1:
        raise UserError(f"ema is the decay of the weights' moving average, in [0, 1) (0: off), got {cfg.ema}")
    if cfg.batch_size % (world_size * cfg.grad_accum):
        raise UserError(
            f"batch_size {cfg.batch_size} must be divisible by ranks x grad_accum = {world_size} x {cfg.grad_accum}"
        )


def _resumed_config(cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume a run whose model differs from the one this config (fitted to the data) describes."""
    saved = load_json(TrainConfig, out / paths.CONFIG).model
    check_architecture(saved, str(out))
    diff = [
        f"{f.name}: run has {getattr(saved, f.name)}, now {getattr(cfg.model, f.name)}"
        for f in dataclasses.fields(ModelConfig)
        if getattr(saved, f.name) != getattr(cfg.model, f.name)
    ]
    if diff:
        raise UserError(f"cannot resume {out}: the model it holds differs from this data/config ({'; '.join(diff)})")


class _Means:
    """Running means of metrics whose keys may come and go (accumulation steps, steps since the last log)."""

    def __init__(self):
        self.sums, self.counts, self.n, self.start, self.cpu = {}, {}, 0, time.monotonic(), time.process_time()

    def add(self, metrics: dict[str, float]) -> None:
        self.n += 1
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def train(
    cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> Path:
    """Train a MAGVLT (or ARGVLT) transformer on tokenized data into out_dir; returns out_dir (App. A).

    The model's token fields are taken from the data's meta.json. Under torchrun, runs DDP (or FSDP2 when
    cfg.fsdp) with one part of every global batch per rank; only rank 0 writes files. Stops with a
    checkpoint at cfg.steps or when cfg.max_minutes of wall time are spent (the learning-rate schedule runs over
    that time when cfg.schedule is "time"); a non-finite loss stops the run with a UserError naming the step,
    leaving the last good checkpoint in place.
    """
    t0 = time.monotonic()
    info = dist.init_distributed()
    deterministic = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(info.device.type == "cpu")
    try:
        return _train(dataclasses.replace(cfg), Path(data_dir), Path(out_dir), resume, progress, info, t0)
    finally:
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        dist.close_distributed(info)


def _say(info: dist.DistInfo, message: str) -> None:
    if info.is_main:
        print(f"magvlt: {message}", file=sys.stderr)


def _open_run(cfg: TrainConfig, out: Path, resume: bool, meta: dict, info: dist.DistInfo) -> None:
    """Check that out/ can be resumed (same model) or started (no run there yet); start writes config and tokenizers."""
    if info.is_main:
        rundir.finish_commit(out)
    dist.barrier(info)
    if resume and not rundir.has_checkpoint(out):
        raise UserError(f"nothing to resume: {out} holds no checkpoint ({paths.STATE})")
    if resume:
        _resumed_config(cfg, out)
    elif rundir.has_checkpoint(out):
        raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another output directory")
    elif info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_json(cfg, out / paths.CONFIG)
        rundir.copy_tokenizers(meta, out)
        (out / paths.METRICS).unlink(missing_ok=True)


def _build(cfg: TrainConfig, info: dist.DistInfo) -> tuple[TrainingObjective, nn.Module, torch.optim.Optimizer]:
    """The seeded transformer inside its objective, that wrapped for torchrun (DDP or FSDP2), and AdamW."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Transformer(cfg.model)
    objective = TrainingObjective(model.to(info.device), cfg.objective)
    if cfg.activation_checkpointing:
        dist.checkpoint_activations(model.blocks)
    if cfg.compile:
        model.compile()
    wrapped = dist.wrap(objective, model.blocks, info, cfg.fsdp)
    optimizer = torch.optim.AdamW(
        param_groups(objective, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=info.device.type == "cuda"
    )
    return objective, wrapped, optimizer


def _batch_stream(cfg: TrainConfig, dataset: TokenizedDataset, info: dist.DistInfo) -> BatchStream:
    """This rank's micro-batches of each global batch, re-tokenized with BPE dropout when the data names its tokenizer."""
    tokenizer = None
    if cfg.bpe_dropout > 0 and dataset.meta.get("text_dir"):
        from magvlt.text import load_text_tokenizer

        tokenizer = load_text_tokenizer(dataset.meta["text_dir"])
    elif cfg.bpe_dropout > 0:
        _say(info, "BPE dropout is off: the data's meta.json names no text tokenizer")
    accum = cfg.grad_accum
    return BatchStream(
        dataset,
        batch_size=cfg.batch_size,
        n_micro=info.world_size * accum,
        seed=cfg.seed,
        micro_ids=range(info.rank * accum, (info.rank + 1) * accum),
        tokenizer=tokenizer,
        bpe_dropout=cfg.bpe_dropout,
        shuffle_shards=cfg.shuffle_shards,
    )


def _train(
    cfg: TrainConfig, data_dir: Path, out: Path, resume: bool, progress: bool, info: dist.DistInfo, t0: float
) -> Path:
    dataset = TokenizedDataset(data_dir, max_open=max(128, 2 * cfg.shuffle_shards))  # a window and the next
    cfg.model, notes = fit_to_data(cfg.model, dataset.meta)
    for note in notes:
        _say(info, note)
    _check_config(cfg, info.world_size)
    _open_run(cfg, out, resume, dataset.meta, info)
    objective, wrapped, optimizer = _build(cfg, info)
    stream = _batch_stream(cfg, dataset, info)
    bf16 = use_bf16(cfg.precision, info.device)
    step, elapsed_before = 0, 0.0
    ema = WeightEMA(objective.model, cfg.ema) if cfg.ema else None
    if resume:
        saved, state = rundir.load_checkpoint(out)
        weights = state.get("weights", saved)  # a run with an average keeps its last weights in the state
        if ema:  # (a run without one starts its average here)
            ema.load(saved)
        dist.load_full_state(
            wrapped, objective, optimizer, {f"model.{k}": v for k, v in weights.items()}, state["optimizer"]
        )
        stream.load_state_dict(state["data"])
        step, elapsed_before = int(state["step"]), float(state["elapsed"])
        if info.is_main:
            rundir.truncate_metrics(out, step)
        _say(info, f"resuming {out} at step {step}")
    else:
        _say(
            info,
            f"{objective.model.num_params() / 1e6:.2f}M parameters, {len(dataset)} pairs, "
            f"{info.world_size} rank(s) on {info.device}, {'bf16 autocast' if bf16 else 'fp32'}",
        )

    def checkpoint() -> None:
        model_state, optim_state = dist.full_state(wrapped, optimizer, info)
        averaged = ema.full() if ema else None
        if info.is_main:
            weights = {k.removeprefix("model."): v for k, v in model_state.items()}
            state = {
                "step": step,
                "optimizer": optim_state,
                "data": stream.state_dict(),
                "elapsed": elapsed_before + time.monotonic() - t0,
            }
            if averaged:  # the average is what gets sampled; the last weights are what training resumes from
                state["weights"] = weights
                weights = averaged
            rundir.save_checkpoint(out, weights, state)
            rundir.plot_losses(out)
        dist.barrier(info)

    tokens_per_step = cfg.batch_size * (cfg.model.image_tokens + cfg.model.text_len + 2)
    window, last_saved, elapsed = _Means(), step, elapsed_before
    wrapped.train()
    bar = _progress_bar(cfg, step, elapsed, progress and info.is_main)
    tuner = ThreadTuner() if cfg.tune_threads and info.device.type == "cpu" and info.world_size == 1 else None
    with threads_set():  # the tuner changes the count; the caller gets its own back
        try:
            while step < cfg.steps:
                started = time.monotonic()
                if tuner:
                    tuner.before_step()
                lr = lr_at(step, cfg, elapsed)
                objective.cfg = objective_at(cfg.objective, progress_at(step, cfg, elapsed))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                metrics = _accumulate(wrapped, objective, next(stream), step, stream.micro_ids, cfg, info, bf16)
                norm = nn.utils.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
                norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                loss, elapsed = all_reduce_mean([metrics.pop("loss"), elapsed_before + time.monotonic() - t0], info)
                time_up = budget_spent(step + 1, cfg, elapsed)
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    kept = (
                        f"the last good checkpoint (step {last_saved}) is kept in {out}"
                        if last_saved
                        else "no checkpoint was written"
                    )
                    raise UserError(
                        f"training diverged at step {step + 1}: loss {loss}, gradient norm {norm}; stopped, {kept}"
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if ema:
                    ema.update(objective.model, step)
                if tuner:
                    tuner.after_step(time.monotonic() - started)
                window.add({"loss": loss, **metrics, "grad_norm": norm})
                bar.update(1 if cfg.schedule == "steps" else int(100 * progress_at(step, cfg, elapsed)) - bar.n)
                if step % cfg.log_every == 0 or step == cfg.steps or time_up:
                    seconds = time.monotonic() - window.start
                    record = {
                        "step": step,
                        **window.means(),
                        "lr": lr,
                        "precision": "bf16" if bf16 else "fp32",
                        "tokens_per_s": tokens_per_step * window.n / seconds,
                        # CPU time this process got, per thread and second: well under 1 when other work shares the cores
                        "cpu_share": (time.process_time() - window.cpu) / (seconds * torch.get_num_threads()),
                        "elapsed": elapsed,
                        **({"threads": tuner.current} if tuner else {}),
                    }
                    if info.is_main:
                        rundir.append_metrics(out, record)
                    bar.set_postfix(step=step, loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
                    window = _Means()
                if step % cfg.ckpt_every == 0 or step == cfg.steps or time_up:
                    checkpoint()
                    last_saved = step
                if time_up:
                    _say(
                        info,
                        f"time budget spent: stopped at step {step} after {elapsed / 60:.1f} min with a checkpoint",
                    )
                    break
        finally:
            bar.close()
    _say(info, f"run saved in {out} at step {step}")
    return out


def _accumulate(
    wrapped: nn.Module,
    objective: TrainingObjective,
    micro_batches: list[dict[str, torch.Tensor]],
    step: int,
    micro_ids: list[int],
    cfg: TrainConfig,
    info: dist.DistInfo,
    bf16: bool,
) -> dict[str, float]:
    """Forward and backward over this rank's micro-batches; gradients averaged over the global batch.

    Returns the metrics averaged over the micro-batches ("loss" is the mean loss).
    """
    means = _Means()
    devices = [info.device] if info.device.type == "cuda" else []
    task = objective.sample_task(torch.Generator().manual_seed(derive_seed("task", cfg.seed, step)))
    for a, (k, batch) in enumerate(zip(micro_ids, micro_batches)):
        batch = {key: v.to(info.device, non_blocking=True) for key, v in batch.items()}
        generator = torch.Generator().manual_seed(derive_seed("masks", cfg.seed, step, k))
        with dist.gradient_sync(wrapped, a == len(micro_batches) - 1), torch.random.fork_rng(devices=devices):
            torch.manual_seed(derive_seed("dropout", cfg.seed, step, k))
            with autocast(bf16, info.device):
                loss, metrics = wrapped(batch, generator, task)
            (loss / len(micro_batches)).backward()
        metrics.pop("task")
        means.add(metrics)
    return means.means()


def all_reduce_mean(values: list[float], info: dist.DistInfo) -> list[float]:
    """Means over ranks (one collective per step): every rank then agrees on the loss, the elapsed time that drives
    a "time" schedule and whether the time budget is spent."""
    totals = dist.all_reduce_sum(torch.tensor(values, dtype=torch.float64), info)
    return [float(t) / info.world_size for t in totals]


def _progress_bar(cfg: TrainConfig, step: int, elapsed: float, show: bool) -> tqdm:
    """Counts updates, or percent of the time budget when the schedule runs over time."""
    disable = None if show else True
    if cfg.schedule == "time":
        done = int(100 * progress_at(step, cfg, elapsed))
        return tqdm(total=100, initial=done, unit="%", desc="train", disable=disable)
    return tqdm(total=cfg.steps, initial=step, unit="step", desc="train", disable=disable)


@torch.no_grad()
def evaluate_masked_accuracy(
    model: Transformer, batches: Iterable[dict[str, torch.Tensor]], *, seed: int = 0
) -> dict[str, float]:
    """Masked-token accuracy per task on held-out batches, masks drawn as in training (Sec. 3.1) from a fixed seed.

    Keys: "t2i/image" (image tokens, text clean), "i2t/text" (text tokens, image clean), "it2it/image" and
    "it2it/text" (both masked), each the fraction of all masked tokens of all batches predicted right; and
    "<key>/majority", the accuracy of always guessing the most common target (the real chance level: in
    the shapes world most image tokens are background).
    """
    if model.cfg.causal:
        raise UserError("masked-token accuracy applies to MAGVLT (bidirectional) models, not ARGVLT")
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    correct: dict[str, int] = {}
    targets: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        image, text, length = (batch[k].to(device) for k in ("image", "text", "length"))
        for task in TASKS:
            ex = mask_task(task, model.vocab, image, text, length, generator)
            pred = predict_masked(model, ex, 0.0)
            for modality, logits, target in (
                ("image", pred.image_logits, ex.image_target[ex.image_mask]),
                ("text", pred.text_logits, ex.text_target[ex.text_mask]),
            ):
                if target.numel():
                    key = f"{task}/{modality}"
                    correct[key] = correct.get(key, 0) + int((logits.argmax(-1) == target).sum())
                    targets.setdefault(key, []).append(target.cpu())
    model.train(was_training)
    result = {}
    for key, parts in targets.items():
        counts = torch.cat(parts).bincount()
        result[key] = correct[key] / int(counts.sum())
        result[f"{key}/majority"] = int(counts.max()) / int(counts.sum())
    return result
