"""HFClipScorer on a tiny random CLIPModel saved locally in the openai/clip-vit-base-patch32 layout."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from magvlt.clip_hf import HFClipScorer, clip_pixels  # noqa: E402
from magvlt.errors import UserError  # noqa: E402
from magvlt.official.text import clip_bpe_tables  # noqa: E402
from magvlt.text import ClipTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    vocab, merges = clip_bpe_tables()
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(d)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, max_position_embeddings=77, **small),
        vision_config=dict(image_size=32, patch_size=16, **small),
        projection_dim=8,
    )
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(d)
    return d


def test_tokens_are_clips(clip_dir):
    scorer = HFClipScorer(clip_dir)
    caption = "A dog's 2 balls, café!"
    ids = scorer.tokenizer([caption]).input_ids[0]
    ours, lengths = ClipTokenizer().encode([caption])
    assert ids == ours[0, : lengths[0]].tolist()


def test_scores_are_rowwise_cosines(clip_dir):
    scorer = HFClipScorer(clip_dir)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 40, 56, 3), dtype=np.uint8)
    captions = ["a red car", "two dogs on the grass", "a bowl of soup"]
    scores = scorer.score(images, captions)
    assert scores.shape == (3,) and torch.all(scores.abs() <= 1 + 1e-6)
    assert torch.allclose(scorer.score(images[::-1], captions[::-1]), scores.flip(0), atol=1e-6)
    assert torch.allclose(scorer.score(images[:1], captions[:1]), scores[:1], atol=1e-6)


def test_clip_transform_centre_crops():
    x = clip_pixels(np.zeros((1, 30, 60, 3), dtype=np.uint8), 24)
    assert x.shape == (1, 3, 24, 24)
    assert torch.allclose(
        x[0, :, 0, 0],
        -torch.tensor([0.48145466, 0.4578275, 0.40821073]) / torch.tensor([0.26862954, 0.26130258, 0.27577711]),
    )


def test_bad_inputs(tmp_path, clip_dir):
    with pytest.raises(UserError, match="not a CLIP directory"):
        HFClipScorer(tmp_path)
    with pytest.raises(UserError, match="captions"):
        HFClipScorer(clip_dir).score(np.zeros((2, 32, 32, 3), dtype=np.uint8), ["one"])


def test_load_scorer_takes_a_transformers_clip_directory(clip_dir):
    from magvlt.rerank import load_scorer

    scorer = load_scorer(clip_dir)
    assert isinstance(scorer, HFClipScorer)
    images = np.zeros((2, 32, 32, 3), np.uint8)
    assert scorer.score(images, ["a cat", "a dog"]).shape == (2,)
