"""The official tokenizer and caption cleaning against ids and strings recorded from the official code."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from magvlt.official.text import OfficialTokenizer, post_caption
from magvlt.text import ClipTokenizer

FIX = Path(__file__).parent / "fixtures" / "official"
RECORD = json.loads((FIX / "outputs.json").read_text())


@pytest.fixture(scope="module")
def tok():
    return OfficialTokenizer()


def test_ids_match_the_official_tokenizer(tok):
    cases = RECORD["tokenizer"]
    assert len(cases) >= 50
    ids, lengths = tok.encode([c["text"] for c in cases])
    for c, row, n in zip(cases, ids.tolist(), lengths.tolist()):
        assert (row, n) == (c["ids"], c["n_txt"]), c["text"]


def test_differs_from_clips_own_tokenizer(tok):
    """No start token, EOS padding, BERT pre-tokenization: apostrophes and digit runs give other ids than CLIP's."""
    ours, _ = ClipTokenizer().encode(["it's 1234"])
    official, n = tok.encode(["it's 1234"])
    assert ours[0, 0] == 49406 and official[0, 0] != 49406
    assert official[0, : n[0]].tolist() != ours[0, 1 : n[0] + 1].tolist()
    assert set(official[0, n[0] - 1 :].tolist()) == {tok.eos}


def test_post_caption_matches_the_official(tok):
    for c in RECORD["post_caption"]:
        assert post_caption(c["text"]) == c["clean"], c["text"]


def test_generated_rows_decode_to_the_official_captions(tok):
    ids = load_file(str(FIX / "outputs.safetensors"))["greedy_i2t_ids"]
    assert tok.decode(ids) == RECORD["greedy_i2t_captions"]


def test_cleaning_examples():
    assert post_caption("A dog dog playing. with a ball") == "a dog playing ."
    assert post_caption("...a black-and-white photo/print") == "a black and white photo print ."
    assert post_caption("") == " ."  # the official post_caption raises IndexError on an empty caption
