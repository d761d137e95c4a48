"""Save and load a VQ-GAN as config.json + model.safetensors; every load checks names and shapes strictly."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from magvlt.checkpoint import load_weights, save_weights
from magvlt.config import PaletteConfig, VQConfig, from_dict, save_json
from magvlt.errors import UserError
from magvlt.paths import CONFIG, WEIGHTS
from magvlt.vq.model import VQGAN
from magvlt.vq.palette import PaletteTokenizer


def _listing(names, limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_state_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Copy every model tensor from `state_dict`, refusing missing, unexpected or mis-shaped entries."""
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state_dict.keys(), state_dict.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_listing(unexpected)}")
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_listing(wrong, 3)}")
    if problems:
        raise UserError(f"{source} does not match this VQ-GAN config: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)


def save_vq(model: VQGAN | PaletteTokenizer, directory: str | Path) -> Path:
    """Write config.json and model.safetensors into `directory` (each file atomically)."""
    directory = Path(directory)
    save_weights(directory / WEIGHTS, model.state_dict())
    save_json(model.cfg, directory / CONFIG)
    return directory


def load_vq(directory: str | Path, device: str | torch.device = "cpu") -> VQGAN | PaletteTokenizer:
    """The image tokenizer saved by `save_vq` (a VQ-GAN or a palette tokenizer, by the config's "arch"), in eval
    mode; a directory holding another kind of model is refused."""
    directory = Path(directory)
    if not (directory / CONFIG).is_file() or not (directory / WEIGHTS).is_file():
        raise UserError(f"{directory} is not a saved VQ-GAN (expected {CONFIG} and {WEIGHTS})")
    try:
        data = json.loads((directory / CONFIG).read_text())
        palette = data.get("arch") == "palette"
        cfg = from_dict(PaletteConfig if palette else VQConfig, data)
    except (UserError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise UserError(f"{directory} does not hold a VQ-GAN config: {e}") from None
    model = PaletteTokenizer(cfg) if palette else VQGAN(cfg)
    load_state_strict(model, load_weights(directory / WEIGHTS), str(directory / WEIGHTS))
    return model.to(device).eval()
