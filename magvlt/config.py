"""Typed configs with named presets (paper Table 8, App. A), saved as JSON beside every checkpoint."""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path

from magvlt.errors import UserError


@dataclass
class ModelConfig:
    """The transformer of Sec. 3.1: bidirectional (MAGVLT) or causal (ARGVLT)."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    image_vocab: int = 512
    image_grid: tuple[int, int] = (8, 8)  # image tokens, rows x columns, raster order
    text_vocab: int = 49408
    text_len: int = 64
    dropout: float = 0.1  # residual dropout
    attn_dropout: float = 0.1
    causal: bool = False  # True: ARGVLT
    # the released code's architecture and layouts (docs/official.md sections 4-6, 13), the only one magvlt builds;
    # false marks a run of magvlt's former architecture, which no longer loads (magvlt.model.check_architecture)
    official: bool = True

    @property
    def image_tokens(self) -> int:
        return self.image_grid[0] * self.image_grid[1]


@dataclass
class VQConfig:
    """The taming-transformers VQ-GAN (Esser et al.) that turns images into a grid of codes."""

    arch: str = "taming"  # "taming" (conv + attention) or "patch" (each f x f patch encoded and drawn on its own)
    resolution: int = 32
    in_channels: int = 3
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (8,)
    z_channels: int = 32
    embed_dim: int = 32
    n_embed: int = 512
    dropout: float = 0.0
    beta: float = 0.25  # commitment loss weight
    # training (magvlt.train.vq); a checkpoint ignores these when it is only used for encoding and decoding
    rec_loss: str = "l2"  # reconstruction loss: "l2" (MSE, learns the sparse shapes faster) or "l1"
    ema_decay: float = 0.99  # EMA codebook updates (the codebook gets no gradient)
    kmeans_iters: int = 10  # k-means init of the codebook from the first encoder outputs (512 images)
    dead_code_fraction: float = 0.25  # restart codes whose EMA usage drops below this fraction of uniform usage
    squeeze_fraction: float = 0.25  # batches squeezed to half width or half height, as MixSel encodes them
    disc_weight: float = 0.0  # PatchGAN hinge adversarial term (taming); 0 = off
    disc_start: int = 1000  # steps of pure reconstruction before the adversarial term starts

    @property
    def grid(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)


@dataclass
class PaletteConfig:
    """A patch tokenizer for flat-colour scenes (`magvlt.vq.palette`): each patch is two codes, its colour and the
    binary pattern of the pixels carrying it, so colour and shape are separate tokens and new pairs of them need
    no new code. Fitted, not trained: the palette and the patterns are those of the training images."""

    arch: str = "palette"
    patch: int = 8  # pixels per patch side; the patch's two codes sit side by side in the token grid
    n_colors: int = 7  # palette size, background (the most frequent colour) first
    max_patterns: int = 4096  # the most frequent patterns are kept; a rarer one is coded as its nearest
    n_patterns: int = 0  # the patterns the fit kept (so the vocabulary is n_colors + n_patterns)
    # a pixel belongs to a patch's object when its distance from the background exceeds this share of the
    # smallest distance between the background and another palette colour (half-blended edges of MixSel's
    # squeezed images count)
    threshold: float = 0.25

    @property
    def n_embed(self) -> int:
        return self.n_colors + self.n_patterns


@dataclass
class ObjectiveConfig:
    """The training tasks and losses of Sec. 3.1-3.5; every ablation switch of Tables 6-7 and App. E."""

    task_weights: tuple[float, float, float] = (8.0, 1.0, 1.0)  # T2I : I2T : IT2IT, sampled per batch
    label_smoothing: float = 0.1
    length_weight: float = 0.01  # lambda_TL
    # the share of each I2T / IT2IT batch whose length query is run: the query is a forward of its own (as long as
    # the masked input's), so at 1 it doubles an I2T update, and the length head is right on ~100% of training
    # captions within a few hundred updates either way
    length_rows: float = 1.0
    unroll_mask: bool = True  # Sec. 3.3, for T2I and I2T
    unroll_weight: float = 1.0  # lambda_UM
    unroll_remask: str = "confidence"  # which positions UnrollMask re-masks: "confidence" (lowest) or "random"
    unroll_image_steps: int = 10  # UnrollMask re-masks at the next step of a T-step schedule (Sec. 3.2: T = 10)
    unroll_text_steps: int = 12  # likewise for text (T = 12)
    mix: str = "mixsel"  # Sec. 3.4: "mixsel", "mixrandom" (no selector token, App. E) or "off"
    mix_weight: float = 0.5  # lambda_MS
    # curriculum: the share of training (of the steps, or of the time budget) before UnrollMask and MixSel join;
    # until then each update is plain mask prediction at a third of the cost (0: from the start, as in the paper)
    extras_from: float = 0.0
    # curriculum: T2I : I2T : IT2IT weights for the first `curriculum_until` share of training (None: task_weights
    # throughout); the demo reads before it writes, (0, 1, 0) for its first quarter
    curriculum_weights: tuple[float, float, float] | None = None
    curriculum_until: float = 0.0
    cond_dropout: float = (
        0.0  # fraction of samples whose condition is replaced by the null one (classifier-free guidance)
    )
    ar_condition_weight: float = 0.1  # ARGVLT: loss weight on the condition (0.9 on the generated modality)


@dataclass
class TrainConfig:
    """One training run: model, objective and optimisation (App. A)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    steps: int = 2000
    batch_size: int = 64  # global batch, split over ranks and accumulation steps
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.96)
    grad_clip: float = 4.0
    bpe_dropout: float = 0.1  # text BPE dropout while training (0 at inference)
    shuffle_shards: int = 64  # shuffle buffer: each epoch mixes the rows of this many shards at a time (0: all)
    precision: str = "auto"  # "auto": bf16 autocast where the hardware has fast bf16 (magvlt.precision); "bf16"; "fp32"
    compile: bool = False
    activation_checkpointing: bool = False  # recompute each block in backward: far less memory, ~1/3 more compute
    fsdp: bool = False  # FSDP2 fully_shard instead of DDP under torchrun
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    max_minutes: float = 0.0  # stop (and checkpoint) after this much wall time in all (resumes included); 0: no limit
    # what the warmup + cosine decay runs over: "steps", or "time" (max_minutes of wall time: a fixed time budget
    # that ends with the learning rate decayed however many updates a loaded machine manages; steps is then a cap)
    schedule: str = "steps"
    # schedule "time" only: go on past max_minutes until min_steps updates, but stop at stretch_minutes at the latest
    # (a shared machine trains longer instead of fewer updates); the decay runs over whichever budget ends last
    min_steps: int = 0
    stretch_minutes: float = 0.0
    # > 0: keep an exponential moving average of the weights with this decay (warming up as (1 + t) / (10 + t)) and
    # save it as the run's weights, the ones sampled; the last weights go into the training state for resuming
    ema: float = 0.0
    # CPU, one process: now and then try the other thread count (all, or one) for a few steps and keep the faster
    # (magvlt.train.threads); a timed run on shared cores gains, a run that must repeat bit for bit should not
    tune_threads: bool = False


MODEL_PRESETS: dict[str, ModelConfig] = {
    # every preset, MAGVLT and ARGVLT, is the released architecture (docs/official.md section 13)
    # minutes-long CPU runs underfit, and dropout costs ~20% of a CPU step, so the CPU preset skips it
    "tiny": ModelConfig(n_layer=4, n_head=4, n_embd=256, dropout=0.0, attn_dropout=0.0),
    "small": ModelConfig(n_layer=8, n_head=8, n_embd=512),
    "mid": ModelConfig(n_layer=12, n_head=12, n_embd=768, image_vocab=16384, image_grid=(16, 16)),
    "base": ModelConfig(n_layer=24, n_head=8, n_embd=1024, image_vocab=16384, image_grid=(16, 16)),
    "large": ModelConfig(n_layer=36, n_head=10, n_embd=1280, image_vocab=16384, image_grid=(16, 16)),
}

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(model=MODEL_PRESETS["tiny"]),
    "tiny-ar": TrainConfig(model=dataclasses.replace(MODEL_PRESETS["tiny"], causal=True)),
    "small": TrainConfig(model=MODEL_PRESETS["small"], batch_size=128, lr=6e-4),
    "base": TrainConfig(
        model=MODEL_PRESETS["base"], batch_size=4096, steps=40000, lr=4.5e-4, warmup_steps=2000, fsdp=True
    ),
    "large": TrainConfig(
        model=MODEL_PRESETS["large"], batch_size=4096, steps=40000, lr=3e-4, warmup_steps=2000, fsdp=True
    ),
}

VQ_PRESETS: dict[str, VQConfig] = {
    "tiny": VQConfig(),
    # each 4 x 4 patch coded on its own: shapes-world's training set holds only ~860 distinct patches, so 1,024
    # codes nearly give each its own and the black background is always one code; 10x faster to train and 35.8 dB
    # in 3 minutes, but the demo's MAGVLT learned far worse from these sparse tokens (README, "Open problems")
    "tiny-patch": VQConfig(arch="patch", num_res_blocks=2, n_embed=1024, dead_code_fraction=0.02),
    "f16_16384": VQConfig(
        resolution=256,
        ch=128,
        ch_mult=(1, 1, 2, 2, 4),
        num_res_blocks=2,
        attn_resolutions=(16,),
        z_channels=256,
        embed_dim=256,
        n_embed=16384,
    ),
}


# fields saved by older runs that nothing reads any more; dropped when a config is read, so those runs still load
RETIRED_FIELDS: dict[type, tuple[str, ...]] = {ModelConfig: ("tie_embeddings",)}  # magvlt's former architecture


def preset(table: dict, name: str):
    """A fresh copy of a named preset, or a clear error listing the names."""
    if name not in table:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(table)}")
    return copy.deepcopy(table[name])


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, data: dict):
    """Build a config dataclass from JSON data; nested dataclasses and tuples are restored, retired fields dropped."""
    data = {k: v for k, v in data.items() if k not in RETIRED_FIELDS.get(cls, ())}
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise UserError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value)
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def save_json(cfg, path: str | Path) -> None:
    from magvlt.checkpoint import atomic_write_text

    atomic_write_text(Path(path), json.dumps(to_dict(cfg), indent=2) + "\n")


def load_json(cls, path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    return from_dict(cls, data)


def apply_overrides(cfg, overrides: list[str]):
    """Apply `a.b=value` overrides (values parsed as JSON, else kept as strings) to a config."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"override {item!r} must look like key=value")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        *parents, leaf = key.split(".")
        target = cfg
        for name in parents:
            if not hasattr(target, name):
                raise UserError(f"unknown config section {name!r} in {item!r}")
            target = getattr(target, name)
        if not dataclasses.is_dataclass(target) or leaf not in {f.name for f in dataclasses.fields(target)}:
            raise UserError(f"unknown config field {key!r}")
        current = getattr(target, leaf)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif current is not None and not isinstance(value, type(current)):
            raise UserError(f"{key} expects {type(current).__name__}, got {raw!r}")
        setattr(target, leaf, value)
    return cfg
