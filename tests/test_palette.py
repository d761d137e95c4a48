"""The two-code palette tokenizer: exact round trips on the shapes world, novel pairs from seen codes, MixSel."""

import json

import numpy as np
import pytest
import torch

from magvlt.config import PaletteConfig
from magvlt.data.shapes import COLORS, render_split
from magvlt.data.tokenize import squeeze
from magvlt.errors import UserError
from magvlt.eval.judge import parse_caption, parse_image
from magvlt.objectives import join_halves
from magvlt.vq import PaletteTokenizer, load_vq, save_vq


@pytest.fixture(scope="module")
def fitted():
    images, _ = render_split("train", 2000)
    return PaletteTokenizer.fit(images, PaletteConfig(), extra=(squeeze(images, "w"), squeeze(images, "h")))


def test_fit_finds_the_palette_background_first(fitted):
    colors = {tuple(c) for c in fitted.palette.tolist()}
    assert tuple(fitted.palette[0].tolist()) == (0, 0, 0)
    assert colors == {(0, 0, 0), *map(tuple, COLORS.values())}
    assert not fitted.patterns[0].any()  # the empty pattern comes first
    assert fitted.cfg.n_embed == 7 + fitted.cfg.n_patterns == 7 + len(fitted.patterns)


@pytest.mark.parametrize("split", ["val", "novel"])
def test_round_trip_is_exact_and_judged_right_on_unseen_pairs(fitted, split):
    images, captions = render_split(split, 300, seed=3)
    codes = fitted.encode(images)
    assert codes.shape == (300, 4, 8) and fitted.cell == (8, 4)
    assert (codes[..., 0::2] < 7).all() and (codes[..., 1::2] >= 7).all()  # colours, then patterns
    decoded = fitted.decode(codes.flatten(1), grid=(4, 8)).numpy()
    np.testing.assert_array_equal(decoded, images)
    assert all(parse_image(d) == parse_caption(c) for d, c in zip(decoded, captions))


def test_an_unseen_pattern_is_coded_as_its_nearest(fitted):
    known = {bytes(p) for p in fitted.patterns.numpy()}
    pattern = fitted.patterns[3].numpy().copy()
    flips = [i for i in range(64) if bytes(np.where(np.arange(64) == i, ~pattern, pattern)) not in known]
    pattern[flips[0]] ^= True  # one pixel off a training pattern, giving a pattern training never had
    image = np.where(pattern.reshape(1, 8, 8, 1), np.uint8([[[[230, 30, 30]]]]), np.uint8(0))
    code = fitted.encode(image)[0, 0]
    decoded = fitted.decode(code[None, None])[0].numpy()
    assert code[0].item() == fitted.palette.tolist().index([230, 30, 30])
    assert (decoded != image[0]).any(axis=-1).sum() == 1


def test_mixsel_halves_join_into_the_codes_of_the_joined_image(fitted):
    images, _ = render_split("val", 8, seed=5)
    for axis, vertical in (("w", False), ("h", True)):
        halves = squeeze(images, axis)
        first, second = fitted.encode(halves[:4]).flatten(1), fitted.encode(halves[4:]).flatten(1)
        joined = np.concatenate([halves[:4], halves[4:]], axis=1 if vertical else 2)
        np.testing.assert_array_equal(join_halves(first, second, (4, 8), vertical), fitted.encode(joined).flatten(1))


def test_codes_in_the_wrong_place_draw_background(fitted):
    codes = torch.tensor([[[fitted.cfg.n_colors + 3, 2]]])  # a pattern where the colour goes and vice versa
    assert (fitted.decode(codes) == 0).all()


def test_save_load_round_trip_and_bad_input(fitted, tmp_path):
    save_vq(fitted, tmp_path / "vq")
    loaded = load_vq(tmp_path / "vq")
    assert isinstance(loaded, PaletteTokenizer) and loaded.cfg == fitted.cfg
    images, _ = render_split("val", 4)
    assert torch.equal(loaded.encode(images), fitted.encode(images))
    with pytest.raises(UserError, match="divisible by 8"):
        fitted.encode(np.zeros((1, 12, 16, 3), np.uint8))
    with pytest.raises(UserError, match=r"lie in \[0"):
        fitted.decode(torch.full((1, 4, 8), fitted.cfg.n_embed))
    with pytest.raises(UserError, match="grid"):
        fitted.decode(torch.zeros(1, 32, dtype=torch.long))
    with pytest.raises(UserError, match="colours"):
        PaletteTokenizer.fit(np.zeros((2, 8, 8, 3), np.uint8), PaletteConfig())


def test_cli_fits_a_palette_that_tokenizes_and_evaluates(tmp_path, capsys):
    from magvlt.cli import main
    from magvlt.data.pairs import write_pairs

    write_pairs(tmp_path / "pairs", *render_split("train", 300))
    assert main(["vq", "fit-palette", "--data", str(tmp_path / "pairs"), "--out", str(tmp_path / "vq")]) == 0
    assert "7 colours" in capsys.readouterr().out
    assert main(["vq", "eval", "--vq", str(tmp_path / "vq"), "--data", str(tmp_path / "pairs")]) == 0
    assert json.loads(capsys.readouterr().out)["psnr"] > 100  # lossless
    assert main(["vq", "fit-palette", "--data", str(tmp_path / "pairs"), "--out", str(tmp_path / "x"), "patch=3"]) == 2
