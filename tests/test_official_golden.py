"""docs/official.md's model and greedy samplers (tests/official_reference.py) reproduce the official code's outputs.

The fixtures were recorded by tools/official_fixtures.py from the official code on a tiny random checkpoint; this
reads that checkpoint with magvlt.official.checkpoint and the prompts with magvlt.official.text.
"""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from magvlt.official.checkpoint import load_official
from magvlt.official.text import OfficialTokenizer
from official_reference import Reference

FIX = Path(__file__).parent / "fixtures" / "official"
RECORD = json.loads((FIX / "outputs.json").read_text())


@pytest.fixture(scope="module")
def ref():
    ckpt = load_official(FIX / "magvlt.ckpt", heads=RECORD["architecture"]["heads"])
    return Reference(ckpt.transformer, ckpt.arch)


@pytest.fixture(scope="module")
def out():
    return {k: v.long() if v.dtype == torch.int32 else v for k, v in load_file(str(FIX / "outputs.safetensors")).items()}


@pytest.fixture(scope="module")
def prompts(out):
    ids, lengths = OfficialTokenizer().encode(RECORD["prompts"])
    assert torch.equal(ids, out["prompt_ids"]) and torch.equal(lengths, out["prompt_mask"].sum(-1))
    return ids, lengths


def test_t2i_image_logits(ref, out, prompts):
    with torch.no_grad():
        logits = ref.t2i_image_logits(*prompts, out["codes"], out["t2i_img_mask"])
    torch.testing.assert_close(logits, out["t2i_logits"], atol=1e-5, rtol=0)


def test_i2t_text_logits(ref, out, prompts):
    with torch.no_grad():
        logits = ref.i2t_text_logits(out["codes"], *prompts, out["i2t_caption_mask"])
    stride = RECORD["i2t_logits_probe_stride"]
    torch.testing.assert_close(logits[..., ::stride], out["i2t_logits_strided"], atol=1e-5, rtol=0)
    top = logits.topk(out["i2t_logits_top_values"].shape[-1], dim=-1)
    torch.testing.assert_close(top.values, out["i2t_logits_top_values"], atol=1e-5, rtol=0)
    assert torch.equal(top.indices, out["i2t_logits_top_ids"])
    torch.testing.assert_close(torch.logsumexp(logits, -1), out["i2t_logits_logsumexp"], atol=1e-5, rtol=0)


def test_length_logits(ref, out):
    with torch.no_grad():
        torch.testing.assert_close(ref.length_logits(out["codes"]), out["length_logits"], atol=1e-5, rtol=0)


def test_greedy_t2i_codes(ref, out, prompts):
    with torch.no_grad():
        codes = ref.greedy_t2i(*prompts, steps=RECORD["t2i_steps"])
    assert torch.equal(codes, out["greedy_t2i_codes"])


def test_greedy_i2t_captions(ref, out):
    with torch.no_grad():
        lengths, rows = ref.greedy_i2t(out["codes"], steps=RECORD["i2t_steps"])
    assert torch.equal(lengths, out["greedy_i2t_lengths"])
    assert torch.equal(rows, out["greedy_i2t_ids"])
    assert OfficialTokenizer().decode(rows) == RECORD["greedy_i2t_captions"]


def test_greedy_inpainting_codes(ref, out, prompts):
    with torch.no_grad():
        codes = ref.greedy_t2i(*prompts, steps=RECORD["t2i_steps"], codes=out["codes"], keep=out["it2i_keep"])
    assert torch.equal(codes, out["greedy_it2i_codes"])
    assert torch.equal(codes[out["it2i_keep"]], out["codes"][out["it2i_keep"]])
