"""The contrastive reranker: it learns on shapes-world pairs, saves and loads, and the open_clip adapter scores."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from magvlt.data.shapes import render_split
from magvlt.errors import UserError
from magvlt.rerank import ContrastiveConfig, OpenClipScorer, best_of, load_scorer, standardized
from magvlt.text import CaptionBPE
from magvlt.train.clip import train_clip


def test_best_of_picks_the_highest_score_in_each_group():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.5, 0.2, 0.4])
    assert best_of(scores, 3).tolist() == [1, 3]
    assert best_of(scores, 1).tolist() == list(range(6))


def test_standardized_scores_have_mean_0_and_deviation_1_per_group_and_losers_stay_losers():
    scores = torch.tensor([1.0, 2.0, 3.0, -50.0, float("-inf"), -48.0])
    z = standardized(scores, 3)
    assert torch.allclose(z[:3], torch.tensor([-1.0, 0.0, 1.0]) * 1.5**0.5, atol=1e-5)
    assert z[4] == float("-inf") and torch.allclose(z[[3, 5]], torch.tensor([-1.0, 1.0]), atol=1e-5)
    assert best_of(standardized(scores, 3) + 0.5 * standardized(-scores.nan_to_num(neginf=0.0), 3), 3).tolist() == [
        2,
        5,
    ]


class FakeClip(torch.nn.Module):
    """open_clip's duck type: encode_image on preprocessed pixels, encode_text on tokenizer output."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.eye(3))

    def encode_image(self, pixels):
        return pixels.mean(dim=(2, 3)) @ self.w

    def encode_text(self, tokens):
        return tokens.float() @ self.w


def test_open_clip_adapter_scores_cosine_similarity():
    palette = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0]}
    tokenizer = lambda texts: torch.tensor([palette[t] for t in texts])  # noqa: E731
    preprocess = lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)  # noqa: E731
    scorer = OpenClipScorer(FakeClip(), tokenizer, preprocess)
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[0, ..., 0], images[1, ..., 2] = 255, 255
    scores = scorer.score(images, ["red", "red"])
    assert torch.allclose(scores, torch.tensor([1.0, 0.0]), atol=1e-6)
    expected = F.cosine_similarity(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.6, 0.8]]))
    scorer.tokenizer = lambda texts: torch.tensor([[0.0, 0.6, 0.8]])
    assert torch.allclose(scorer.score(images[1:], ["mix"]), expected)


@pytest.mark.slow
def test_contrastive_model_learns_to_match_shapes_and_round_trips(tmp_path):
    images, captions = render_split("train", 1100, seed=0, size=16)
    tok = CaptionBPE.train(captions, vocab_size=96, length=20)
    cfg = ContrastiveConfig(image_size=16, channels=(16, 32), width=64, layers=1, heads=2, embed_dim=64)
    metrics = train_clip(
        images,
        captions,
        tok,
        tmp_path,
        steps=150,
        minutes=5,
        batch_size=64,
        lr=2e-3,
        cfg=cfg,
        holdout=100,
        progress=False,
    )
    assert metrics["steps"] == 150
    assert metrics["heldout_i2t_top1"] > 0.2  # chance is 1 / 100
    scorer = load_scorer(tmp_path)
    test_images, test_captions = render_split("train", 32, seed=1, size=16)
    matched = scorer.score(test_images, test_captions)
    shuffled = scorer.score(test_images, test_captions[1:] + test_captions[:1])
    assert (matched > shuffled).float().mean() > 0.7
    again = load_scorer(tmp_path).score(test_images, test_captions)
    assert torch.allclose(matched, again)


def test_load_scorer_refuses_other_directories(tmp_path):
    with pytest.raises(UserError, match="clip train"):
        load_scorer(tmp_path)


def test_cli_trains_and_scores(tmp_path, capsys):
    from PIL import Image

    from magvlt.cli import main
    from magvlt.data.pairs import write_pairs

    images, captions = render_split("train", 40, seed=0, size=16)
    write_pairs(tmp_path / "pairs", images, captions)
    CaptionBPE.train(captions, vocab_size=96, length=20).save(tmp_path / "text")
    args = [
        "clip",
        "train",
        "--data",
        str(tmp_path / "pairs"),
        "--text",
        str(tmp_path / "text"),
        "--out",
        str(tmp_path / "scorer"),
        "--steps",
        "2",
        "--batch-size",
        "8",
    ]
    assert main(args) == 0
    assert "held-out" in capsys.readouterr().out
    Image.fromarray(images[0]).save(tmp_path / "x.png")
    assert (
        main(
            [
                "clip",
                "score",
                "--scorer",
                str(tmp_path / "scorer"),
                "--image",
                str(tmp_path / "x.png"),
                captions[0],
                captions[1],
            ]
        )
        == 0
    )
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main([*args[:3], str(tmp_path / "nothing"), *args[4:]]) == 2
    assert "no pairs" in capsys.readouterr().err
