"""Caption metrics against exact values, FID against closed forms and known cases, CLIP score."""

import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from magvlt.data.shapes import render_split
from magvlt.errors import UserError
from magvlt.eval import metrics
from magvlt.eval.metrics import (
    FID,
    CaptionMetrics,
    as_uint8,
    clip_score,
    coco_references,
    frechet_distance,
    repeat_rate,
)


@pytest.fixture(scope="module")
def captions():
    with CaptionMetrics() as scorer:
        yield scorer


def cider_d(candidates, references, n=4, sigma=6.0):
    """CIDEr-D written from Vedantam et al. (2015): clipped tf-idf cosine per n, Gaussian length penalty, x10."""
    grams = lambda s, k: Counter(tuple(s.split()[i : i + k]) for i in range(len(s.split()) - k + 1))
    df = Counter(g for refs in references for g in {g for r in refs for k in range(1, n + 1) for g in grams(r, k)})
    idf = lambda g: math.log(len(references)) - math.log(max(1, df[g]))
    scores = []
    for cand, refs in zip(candidates, references):
        total = 0.0
        for k in range(1, n + 1):
            vc = {g: c * idf(g) for g, c in grams(cand, k).items()}
            for ref in refs:
                vr = {g: c * idf(g) for g, c in grams(ref, k).items()}
                dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vc.items())
                norm = math.sqrt(sum(v * v for v in vc.values())) * math.sqrt(sum(v * v for v in vr.values()))
                penalty = math.exp(-((len(cand.split()) - len(ref.split())) ** 2) / (2 * sigma**2))
                total += (dot / norm if norm else dot) * penalty
        scores.append(10 * total / (n * len(refs)))
    return sum(scores) / len(scores)


REFS = [
    ["a small red circle on the left"],
    ["a large blue square above a small white triangle", "a small white triangle below a large blue square"],
    [
        "a large green square to the left of a small red circle",
        "a small red circle to the right of a large green square",
    ],
]


def test_identical_captions_score_the_maximum(captions):
    out = captions([refs[0] for refs in REFS], REFS)
    assert out["bleu4"] == pytest.approx(100, abs=1e-6)
    assert out["meteor"] == pytest.approx(100)
    assert out["rouge_l"] == pytest.approx(100)
    assert out["cider"] == pytest.approx(100 * cider_d([refs[0] for refs in REFS], REFS), rel=1e-9)


def test_cider_matches_an_independent_implementation(captions):
    cands = ["A small red circle.", "a large blue square above a white triangle", "a small red circle on the right"]
    out = captions(cands, REFS)
    tokenized = ["a small red circle", cands[1], cands[2]]  # what the PTB tokenizer makes of them
    assert out["cider"] == pytest.approx(100 * cider_d(tokenized, REFS), rel=1e-9)
    assert 0 < out["bleu4"] < 100 and 0 < out["meteor"] < 100 and 0 < out["rouge_l"] < 100


def test_wrong_captions_score_lower_than_right_ones(captions):
    right = captions(["a small red circle on the left", REFS[1][1], REFS[2][0]], REFS)
    wrong = captions(["a large white triangle", "a small red circle on the top", "a blue blue blue"], REFS)
    for key in ("bleu4", "meteor", "rouge_l", "cider"):
        assert wrong[key] < right[key] / 2, key


def test_spice_is_reported_unavailable_with_its_reason(captions):
    out = captions(["a small red circle on the left"] * 3, REFS)
    reason = metrics.spice_unavailable()
    if reason is None:
        assert isinstance(out["spice"], float)
    else:
        assert out["spice"] is None and out["spice_unavailable"] == reason


def test_spice_detection_looks_for_the_corenlp_jars(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "_package_dir", lambda name: tmp_path)
    assert "stanford-corenlp-3.6.0.jar" in metrics.spice_unavailable()
    (tmp_path / "spice" / "lib").mkdir(parents=True)
    for name in metrics.CORENLP_JARS:
        (tmp_path / "spice" / "lib" / name).write_bytes(b"")
    assert metrics.spice_unavailable() in (None, "SPICE needs Java")


def test_ptb_tokenize_matches_pycocoevalcap():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    sentences = ["A small, red Circle.", "", "it's (big) -- isn't it?", "two  spaces\nand a newline"]
    theirs = PTBTokenizer().tokenize({i: [{"caption": s}] for i, s in enumerate(sentences)})
    assert metrics.ptb_tokenize(sentences) == [theirs[i][0] for i in range(len(sentences))]


def test_caption_metrics_reject_mismatched_references(captions):
    with pytest.raises(UserError):
        captions(["a", "b"], [["a"]])
    with pytest.raises(UserError):
        captions(["a"], [[]])


def test_coco_references(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(
        '{"annotations": [{"image_id": 3, "caption": "x"}, {"image_id": 3, "caption": "y"},'
        ' {"image_id": 5, "caption": "z"}]}'
    )
    assert coco_references(path) == {3: ["x", "y"], 5: ["z"]}
    path.write_text('{"images": []}')
    with pytest.raises(UserError):
        coco_references(path)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    a, b = rng.uniform(0.1, 3, size=5), rng.uniform(0.1, 3, size=5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # diagonal covariances
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))  # a common rotation changes nothing
    rotated = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)
    s = q @ np.diag(a) @ q.T
    assert frechet_distance(mu1, s, mu1, s) == pytest.approx(0, abs=1e-9)


@pytest.mark.parametrize("n", [3, 40])
def test_feature_frechet_distance_equals_the_covariance_form(n):
    rng = np.random.default_rng(n)
    a, b = rng.normal(size=(n, 8)), rng.normal(1, 2, size=(n + 5, 8)) @ rng.normal(size=(8, 8))
    expected = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert metrics.feature_frechet_distance(a, b) == pytest.approx(expected, rel=1e-7)  # eigh of a singular S


def test_fid_on_features_identical_sets_zero_different_sets_large():
    fid = FID(lambda x: x.float().mean(dim=(1, 2)), "mean color")  # 3-d features: cheap and exact
    real, _ = render_split("val", 64, size=16)
    other, _ = render_split("val", 64, size=16, start=64)
    white = np.full_like(real, 255)
    white[:, :8] = 0
    assert fid(real, real.copy()) == pytest.approx(0, abs=1e-6)
    assert fid(real, white) > 100 * fid(real, other)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-core machine shared with other jobs: one thread avoids oversubscription
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_inception_fid_known_cases(one_thread):
    fid = FID.inception()
    assert "Inception" in fid.name
    real, _ = render_split("val", 2)
    noise = np.random.default_rng(0).integers(0, 256, real.shape, dtype=np.uint8)
    assert fid.features(real).shape == (2, 2048)
    assert abs(fid(real, real.copy())) < 1e-2
    assert fid(real, noise) > 100


def test_fid_needs_two_images():
    with pytest.raises(UserError):
        FID(lambda x: x.float().mean(dim=(1, 2)), "mean color")(
            np.zeros((1, 4, 4, 3), np.uint8), np.zeros((3, 4, 4, 3), np.uint8)
        )


def test_as_uint8_accepts_pil_lists_and_rejects_floats():
    images = [Image.new("RGB", (8, 8), (255, 0, 0)), Image.new("L", (8, 8), 7)]
    arr = as_uint8(images)
    assert arr.shape == (2, 8, 8, 3) and arr[0, 0, 0].tolist() == [255, 0, 0] and arr[1, 0, 0].tolist() == [7, 7, 7]
    with pytest.raises(UserError):
        as_uint8(np.zeros((2, 8, 8, 3), np.float32))


def test_clip_score_is_100_times_the_clipped_mean_cosine():
    assert clip_score(torch.tensor([0.3, -0.2, 0.5])) == pytest.approx(100 * 0.8 / 3)


def test_repeat_rate_counts_captions_with_a_word_straight_after_itself():
    captions = ["a a red circle", "a red circle to the left of a blue square", "a small Small square", "", "red red"]
    assert repeat_rate(captions) == pytest.approx(60.0)
    assert repeat_rate(["a large red circle above a small red square"]) == 0.0  # repeated, but not adjacent
