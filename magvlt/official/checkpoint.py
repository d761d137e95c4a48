"""Read the authors' released checkpoints (MAGVLT's Lightning .ckpt, taming's last.ckpt) without running pickled code.

Both are `torch.save` pickles that name a few classes besides tensors (Lightning's AttributeDict, a pickled HF
tokenizer). They are loaded with `weights_only=True`; every class the file names and torch does not allow by default
is replaced by an inert stand-in that only keeps its constructor arguments and state (dict subclasses such as
Lightning's AttributeDict become plain OrderedDicts, as the restricted unpickler fills only those). A file naming anything outside
the modules such a checkpoint uses (Lightning, tokenizers, omegaconf, numpy, ...) is refused before unpickling.
"""

from __future__ import annotations

import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from magvlt.config import VQConfig
from magvlt.errors import UserError

MODEL_PREFIX, VQ_PREFIX = "model.", "model_vqvae."
HEAD_CHANNELS = 128  # both released models: base 1024 / 8 heads, large 1280 / 10 heads
STANDIN_MODULES = (
    "lightning_fabric",
    "pytorch_lightning",
    "lightning",
    "tokenizers",
    "omegaconf",
    "numpy",
    "argparse",
    "pathlib",
    "collections",
    "typing",
    "magvlt",
    "taming",
)


class Inert:
    """Stand-in for a pickled class: construction arguments and state are recorded, no code of the real class runs."""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args = args
        return obj

    def __setstate__(self, state):
        self.state = state


class InertMapping:
    """Stand-in for a pickled dict subclass (Lightning's AttributeDict): it unpickles as a plain OrderedDict."""

    def __new__(cls, *args, **kwargs):
        return OrderedDict()


def _standins(names: list[str], path: Path) -> list[tuple[type, str]]:
    """Inert classes for the globals a checkpoint names; a name from an unexpected module is refused."""
    foreign = sorted(n for n in names if n.split(".")[0] not in STANDIN_MODULES)
    if foreign:
        raise UserError(f"refusing {path}: it names {', '.join(foreign)}, which no released checkpoint pickles")
    standins = []
    for name in names:
        module, _, cls = name.rpartition(".")
        base = InertMapping if cls.lower().endswith("dict") else Inert
        standins.append((type(cls, (base,), {"__module__": module}), name))
    return standins


def read_pickle(path: str | Path):
    """torch.load(weights_only=True) of a torch.save file, its non-tensor classes replaced by inert stand-ins."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    names = []
    if zipfile.is_zipfile(path):
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except (ValueError, RuntimeError, KeyError) as e:
            raise UserError(f"{path} is not a torch.save checkpoint: {e}") from None
    standins = _standins(names, path)
    try:
        with torch.serialization.safe_globals(standins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign, corrupt or unsafe files
        raise UserError(f"cannot read {path} safely (weights_only=True): {e}") from None


def _tensor_dict(ckpt, path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's `state_dict` as a plain dict of tensors, or a clear error."""
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a Lightning checkpoint: expected a dict whose 'state_dict' holds tensors")
    return dict(state)


@dataclass(frozen=True)
class OfficialArch:
    """MAGVLT's Transformer1d as the released state dict determines it (heads are not recorded)."""

    width: int
    layers: int
    heads: int
    vocab_img: int
    vocab_txt: int
    ctx_len_img: int
    ctx_len_txt: int
    special_tokens: int
    length_head: bool


@dataclass
class OfficialCheckpoint:
    """A released MAGVLT checkpoint: transformer tensors (without `model.`), VQ-GAN tensors (without `model_vqvae.`)."""

    transformer: dict[str, torch.Tensor]
    vq: dict[str, torch.Tensor]
    arch: OfficialArch


def _shape(state: dict[str, torch.Tensor], key: str, path: Path) -> tuple[int, ...]:
    if key not in state:
        raise UserError(f"{path} is not a MAGVLT checkpoint: it has no '{MODEL_PREFIX}{key}'")
    return tuple(state[key].shape)


def infer_arch(state: dict[str, torch.Tensor], path: Path, heads: int | None = None) -> OfficialArch:
    """Width, depth, vocabularies and context lengths from tensor shapes; heads = width / 128 unless given."""
    rows, width = _shape(state, "tok_emb.weight", path)
    (vocab_total,) = _shape(state, "lm_layer.output_bias", path)
    (ctx_img, _), (ctx_txt, _) = (
        _shape(state, "pos_emb_img.pos_embed", path),
        _shape(state, "pos_emb_txt.pos_embed", path),
    )
    (special, _), (spc_rows, _) = (
        _shape(state, "tok_emb_spc.weight", path),
        _shape(state, "pos_emb_spc.pos_embed", path),
    )
    layers = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    if vocab_total != rows or spc_rows != ctx_img + ctx_txt + 4 or layers == 0:
        raise UserError(f"{path} is not a MAGVLT checkpoint: inconsistent token, position or block tensors")
    vocab_txt = 49408  # CLIP's BPE ids; the image vocabulary is the rest of the shared token table
    if rows <= vocab_txt:
        raise UserError(
            f"{path} has a token table of {rows} rows, fewer than CLIP's {vocab_txt} text ids plus image codes"
        )
    if heads is None:
        if width % HEAD_CHANNELS:
            raise UserError(f"width {width} is not a multiple of {HEAD_CHANNELS}; give the number of heads (--heads)")
        heads = width // HEAD_CHANNELS
    if heads < 1 or width % heads:
        raise UserError(f"--heads {heads} does not divide the width {width}")
    return OfficialArch(
        width, layers, heads, rows - vocab_txt, vocab_txt, ctx_img, ctx_txt, special, "length_predictor.weight" in state
    )


def load_official(path: str | Path, heads: int | None = None) -> OfficialCheckpoint:
    """The tensors and architecture of a released MAGVLT .ckpt (state_dict with `model.*` and `model_vqvae.*`)."""
    path = Path(path)
    state = _tensor_dict(read_pickle(path), path)
    transformer = {k.removeprefix(MODEL_PREFIX): v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
    vq = {k.removeprefix(VQ_PREFIX): v for k, v in state.items() if k.startswith(VQ_PREFIX)}
    if not transformer:
        kind = "a taming VQ-GAN checkpoint" if "quantize.embedding.weight" in state else "not a MAGVLT checkpoint"
        raise UserError(f"{path} is {kind}: it has no '{MODEL_PREFIX}*' transformer tensors")
    return OfficialCheckpoint(transformer, vq, infer_arch(transformer, path, heads))


def load_taming(path: str | Path) -> dict[str, torch.Tensor]:
    """The VQ-GAN tensors of taming's last.ckpt (its `state_dict` without the training loss `loss.*`)."""
    path = Path(path)
    state = _tensor_dict(read_pickle(path), path)
    if "quantize.embedding.weight" not in state:
        kind = (
            "a MAGVLT checkpoint (its VQ-GAN is inside it)"
            if any(k.startswith(MODEL_PREFIX) for k in state)
            else "not a taming VQ-GAN checkpoint"
        )
        raise UserError(f"{path} is {kind}: it has no 'quantize.embedding.weight'")
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def infer_vq_config(state: dict[str, torch.Tensor], grid: int) -> VQConfig:
    """The taming VQ-GAN's config from its tensor shapes; grid (codes per side, sqrt of ctx_len_img) fixes attention."""
    try:
        n_embed, embed_dim = state["quantize.embedding.weight"].shape
        ch = state["encoder.conv_in.weight"].shape[0]
        z_channels = state["post_quant_conv.weight"].shape[0]
        levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down."))
        ch_mult = tuple(state[f"encoder.down.{i}.block.0.conv2.weight"].shape[0] // ch for i in range(levels))
        blocks = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down.0.block."))
    except (KeyError, ValueError, IndexError) as e:
        raise UserError(f"the VQ-GAN tensors do not have taming's layout ({e})") from None
    resolution = grid * 2 ** (levels - 1)
    attn = tuple(resolution // 2**i for i in range(levels) if f"encoder.down.{i}.attn.0.q.weight" in state)
    return VQConfig(
        resolution=resolution,
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=blocks,
        attn_resolutions=attn,
        z_channels=z_channels,
        embed_dim=embed_dim,
        n_embed=n_embed,
    )
