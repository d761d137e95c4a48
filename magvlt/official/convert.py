"""Convert the authors' released MAGVLT checkpoint into a magvlt run directory (docs/official.md section 13).

The run holds config.json (a TrainConfig whose model is the inferred `official` architecture), model.safetensors
(the official tensors under magvlt's names, q/k/v concatenated into qkv), text/ (the official tokenizer), vq/ (the
VQ-GAN inside the .ckpt, or taming's last.ckpt given separately, as the official loader prefers) and scheduler.json
(the official sampling preset), so every `magvlt generate` command and MAGVLTPipeline load it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from magvlt import paths
from magvlt.checkpoint import save_weights
from magvlt.config import ModelConfig, TrainConfig, save_json
from magvlt.errors import UserError
from magvlt.official.checkpoint import OfficialArch, infer_vq_config, load_official, load_taming
from magvlt.official.text import OfficialTokenizer
from magvlt.schedulers import get_preset
from magvlt.vq.io import load_state_strict, save_vq
from magvlt.vq.model import VQGAN

RENAMES = {  # official name -> magvlt name (blocks.{i}. prefixes kept)
    "tok_emb.weight": "tok_emb.weight",
    "tok_emb_spc.weight": "spc_emb.weight",
    "pos_emb_img.pos_embed": "pos_img.weight",
    "pos_emb_txt.pos_embed": "pos_txt.weight",
    "pos_emb_spc.pos_embed": "pos_spc.weight",
    "lm_layer.linear.weight": "head_fc.weight",
    "lm_layer.linear.bias": "head_fc.bias",
    "lm_layer.ln.weight": "head_ln.weight",
    "lm_layer.ln.bias": "head_ln.bias",
    "lm_layer.output_bias": "output_bias",
    "length_predictor.weight": "length_head.weight",
}
BLOCK_RENAMES = {"ln1": "ln1", "ln2": "ln2", "attn.proj": "attn.proj", "mlp.0": "mlp.fc", "mlp.2": "mlp.proj"}


def model_config(arch: OfficialArch) -> ModelConfig:
    """The magvlt ModelConfig of an official architecture (square image grid, no dropout at sampling)."""
    side = math.isqrt(arch.ctx_len_img)
    if side * side != arch.ctx_len_img or arch.special_tokens != 10 or not arch.length_head:
        raise UserError(
            f"unsupported MAGVLT checkpoint: {arch.ctx_len_img} image positions (not a square grid), "
            f"{arch.special_tokens} special tokens (expected 10), length head {arch.length_head}"
        )
    return ModelConfig(
        n_layer=arch.layers,
        n_head=arch.heads,
        n_embd=arch.width,
        image_vocab=arch.vocab_img,
        image_grid=(side, side),
        text_vocab=arch.vocab_txt,
        text_len=arch.ctx_len_txt,
        dropout=0.0,
        attn_dropout=0.0,
        official=True,
    )


def magvlt_state(official: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The official Transformer1d tensors under magvlt's names (the table of docs/official.md section 13)."""
    state = {new: official[old] for old, new in RENAMES.items()}
    for i in range(layers):
        p = f"blocks.{i}."
        for old, new in BLOCK_RENAMES.items():
            for kind in ("weight", "bias"):
                state[f"{p}{new}.{kind}"] = official[f"{p}{old}.{kind}"]
        for kind in ("weight", "bias"):
            state[f"{p}attn.qkv.{kind}"] = torch.cat(
                [official[f"{p}attn.{n}.{kind}"] for n in ("query", "key", "value")]
            )
    return state


def convert(ckpt: str | Path, out: str | Path, vq: str | Path | None = None, heads: int | None = None) -> TrainConfig:
    """Write a run directory for a released MAGVLT .ckpt (and optionally taming's last.ckpt); returns its config."""
    from magvlt.model import Transformer
    from magvlt.pipeline import save_preset

    official = load_official(ckpt, heads)
    cfg = TrainConfig(model=model_config(official.arch))
    model = Transformer(cfg.model)
    try:
        model.load_state_dict(magvlt_state(official.transformer, official.arch.layers))
    except (KeyError, RuntimeError) as e:
        raise UserError(f"{ckpt} does not hold the official Transformer1d tensors: {str(e).splitlines()[0]}") from None
    vq_state = load_taming(vq) if vq is not None else official.vq
    if not vq_state:
        raise UserError(f"{ckpt} holds no VQ-GAN ('model_vqvae.*'); give taming's last.ckpt with --vq")
    vq_model = VQGAN(infer_vq_config(vq_state, cfg.model.image_grid[0]))
    load_state_strict(vq_model, vq_state, str(vq or ckpt))
    if vq_model.cfg.n_embed != cfg.model.image_vocab:
        raise UserError(
            f"the VQ-GAN has {vq_model.cfg.n_embed} codes but the transformer reads {cfg.model.image_vocab}"
        )
    out = Path(out)
    save_weights(out / paths.WEIGHTS, model.state_dict())
    save_vq(vq_model, out / paths.VQ_DIR)
    OfficialTokenizer(cfg.model.text_len).save(out / paths.TEXT_DIR)
    save_preset(get_preset("official"), out)
    save_json(cfg, out / paths.CONFIG)  # last: a run directory is complete once its config exists
    return cfg
