"""Safe reading of the released checkpoint format (tests/fixtures/official, recorded by tools/official_fixtures.py)."""

import argparse
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from magvlt.errors import UserError
from magvlt.official.checkpoint import infer_arch, infer_vq_config, load_official, load_taming, read_pickle
from magvlt.official.vq import official_input, official_uint8
from magvlt.vq.io import load_state_strict
from magvlt.vq.model import VQGAN

FIX = Path(__file__).parent / "fixtures" / "official"
RECORD = json.loads((FIX / "outputs.json").read_text())
ARCH = RECORD["architecture"]


@pytest.fixture(scope="module")
def ckpt():
    return load_official(FIX / "magvlt.ckpt", heads=ARCH["heads"])


@pytest.fixture(scope="module")
def outputs():
    return load_file(str(FIX / "outputs.safetensors"))


def test_architecture_inferred_from_shapes(ckpt):
    a = ckpt.arch
    assert (a.width, a.layers, a.heads, a.vocab_img, a.vocab_txt) == (
        ARCH["width"],
        ARCH["layers"],
        ARCH["heads"],
        ARCH["vocab_img"],
        49408,
    )
    assert (a.ctx_len_img, a.ctx_len_txt, a.special_tokens, a.length_head) == (
        ARCH["ctx_len_img"],
        ARCH["ctx_len_txt"],
        10,
        True,
    )
    assert all(isinstance(v, torch.Tensor) for v in ckpt.transformer.values())
    assert "lm_layer.output_bias" in ckpt.transformer and "quantize.embedding.weight" in ckpt.vq


def test_heads_default_to_width_over_128():
    with pytest.raises(UserError, match="--heads"):
        load_official(FIX / "magvlt.ckpt")
    with pytest.raises(UserError, match="does not divide"):
        load_official(FIX / "magvlt.ckpt", heads=3)


def test_heads_are_width_over_128_when_the_width_allows():
    D, I, T = 256, 4, 8
    state = {
        "tok_emb.weight": torch.zeros(49408 + 32, D),
        "lm_layer.output_bias": torch.zeros(49408 + 32),
        "pos_emb_img.pos_embed": torch.zeros(I, D),
        "pos_emb_txt.pos_embed": torch.zeros(T, D),
        "pos_emb_spc.pos_embed": torch.zeros(I + T + 4, D),
        "tok_emb_spc.weight": torch.zeros(10, D),
        **{f"blocks.{i}.ln1.weight": torch.zeros(D) for i in range(3)},
    }
    arch = infer_arch(state, Path("x.ckpt"))
    assert (arch.heads, arch.layers, arch.vocab_img, arch.length_head) == (2, 3, 32, False)
    state["pos_emb_spc.pos_embed"] = torch.zeros(I + T, D)
    with pytest.raises(UserError, match="inconsistent"):
        infer_arch(state, Path("x.ckpt"))


def test_pickled_tokenizer_and_attribute_dict_become_inert():
    hp = read_pickle(FIX / "magvlt.ckpt")["hyper_parameters"]
    assert list(hp) == ["tokenizer"]
    assert type(hp["tokenizer"]).__module__ == "tokenizers.implementations.char_level_bpe"


def test_taming_checkpoint_drops_the_loss(ckpt):
    vq = load_taming(FIX / "vqgan.ckpt")
    assert not any(k.startswith("loss.") for k in vq)
    assert vq.keys() == ckpt.vq.keys() and all(torch.equal(vq[k], ckpt.vq[k]) for k in vq)


def test_checkpoints_swapped_give_clear_errors():
    with pytest.raises(UserError, match="taming VQ-GAN checkpoint"):
        load_official(FIX / "vqgan.ckpt")
    with pytest.raises(UserError, match="MAGVLT checkpoint"):
        load_taming(FIX / "magvlt.ckpt")


def test_foreign_files_give_clear_errors(tmp_path):
    cases = {
        "tensor.pt": lambda p: torch.save(torch.zeros(3), p),
        "plain.pkl": lambda p: p.write_bytes(pickle.dumps({"a": 1})),
        "junk.ckpt": lambda p: p.write_bytes(os.urandom(256)),
        "empty.ckpt": lambda p: torch.save({"state_dict": {}}, p),
    }
    for name, write in cases.items():
        write(tmp_path / name)
        with pytest.raises(UserError):
            load_official(tmp_path / name, heads=2)
    with pytest.raises(UserError, match="not found"):
        load_official(tmp_path / "missing.ckpt")


def test_other_lightning_content_is_tolerated(tmp_path, ckpt):
    """Lightning 1.x names, numpy scalars in callback states and an argparse Namespace load as inert objects."""
    state = {"model." + k: v for k, v in ckpt.transformer.items()}
    extra = {
        "callbacks": {"ModelCheckpoint": {"best_model_score": np.float64(0.5), "dirpath": Path("/runs")}},
        "hyper_parameters": argparse.Namespace(lr=1e-4, tasks=["t2i"]),
    }
    torch.save({"state_dict": state, **extra}, tmp_path / "other.ckpt")
    assert load_official(tmp_path / "other.ckpt", heads=ARCH["heads"]).arch == ckpt.arch


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": Exploit(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(UserError, match="system"):
        load_official(tmp_path / "evil.ckpt", heads=2)
    assert not marker.exists()


def test_vq_config_inferred_and_official_pixels_reproduced(ckpt, outputs):
    grid = int(ARCH["ctx_len_img"] ** 0.5)
    vq = VQGAN(infer_vq_config(ckpt.vq, grid))
    load_state_strict(vq, ckpt.vq, "fixture")
    vq.eval()
    codes = vq.encode(official_input(outputs["images"].numpy()))
    assert torch.equal(codes.flatten(1), outputs["codes"].long())
    pixels = official_uint8(vq.reconstruct(vq.quantize.lookup(outputs["greedy_t2i_codes"].long().view(-1, grid, grid))))
    assert torch.equal(pixels, outputs["greedy_t2i_pixels"])
