"""Shapes world: determinism on every machine, the splits' composition rules, the bias knob, exact geometry, CLI."""

import hashlib
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from magvlt.cli import main
from magvlt.data.pairs import iter_pairs
from magvlt.data.shapes import (
    BIAS_RULE,
    COLORS,
    HELD_OUT,
    SHAPES,
    SPLITS,
    draw,
    iter_split,
    phrasings,
    render_split,
    sample,
    stamp,
)
from magvlt.errors import UserError

# sha256 of the first 100 renders (32 px, seed 0) and their captions: the stream of spec v1, fixed forever
GOLDEN = {
    "train": "378bf7ece1fdb92b4e84998ec563272f563697e3938025b74f1a7a6fac9cebb3",
    "val": "664509af83f70ce4e56ce5226f0f99f1e8130a85bedad12e86030ea777cdaeeb",
    "novel": "9ab4f386625d4605fe74b9e818c68a26f2d3325d19d591542c22361d27601b23",
    "counter": "166f6bac64dfa2c55c54f24a84af13a5a3f983fd9fe9f463392d1b0e9bc6de45",
}
DIGEST = "hashlib.sha256(im.tobytes() + '\\n'.join(c).encode()).hexdigest()"


def objects(split, n, bias=0.0, seed=0):
    return [p.obj for i in range(n) for p in draw(split, i, seed, bias=bias)[0]]


def test_render_split_shapes_and_palette():
    for size in (32, 64, 97):
        images, captions = render_split("train", 50, size=size)
        assert images.shape == (50, size, size, 3) and images.dtype == np.uint8 and len(captions) == 50
        packed = lambda rgb: (np.asarray(rgb, np.int64) * (1 << 16, 1 << 8, 1)).sum(-1)  # noqa: E731
        palette = set(packed([(0, 0, 0), *COLORS.values()]).tolist())
        assert set(np.unique(packed(images)).tolist()) <= palette  # solid fills, no anti-aliasing
        assert (images[:, [0, -1]] == 0).all() and (images[:, :, [0, -1]] == 0).all()  # nothing touches the border


def test_splits_match_the_pinned_stream_in_this_and_a_fresh_process():
    code = (
        "import hashlib; from magvlt.data.shapes import render_split\n"
        f"for s in {SPLITS!r}:\n im, c = render_split(s, 100)\n print({DIGEST})"
    )
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    here = []
    for split in SPLITS:
        im, c = render_split(split, 100)
        here.append(hashlib.sha256(im.tobytes() + "\n".join(c).encode()).hexdigest())  # DIGEST, in this process
    assert here == fresh == [GOLDEN[s] for s in SPLITS]


def test_samples_depend_only_on_split_seed_and_index():
    images, captions = render_split("novel", 30, seed=3)
    tail, tail_caps = render_split("novel", 10, seed=3, start=20)
    assert (tail == images[20:]).all() and tail_caps == captions[20:]
    image, caption, scene = sample("novel", 25, seed=3)
    assert (image == images[25]).all() and caption == captions[25] and caption in phrasings(scene)
    chunked = [c for _, caps, _ in iter_split("novel", 30, seed=3, chunk=7) for c in caps]
    assert chunked == captions
    other_seed, _ = render_split("novel", 30, seed=4)
    val, _ = render_split("val", 30, seed=3)
    train, _ = render_split("train", 30, seed=3)
    assert not (other_seed == images).all(axis=(1, 2, 3)).all()
    assert (val != train).any(axis=(1, 2, 3)).mean() > 0.9  # val is its own draw, not train's


def test_train_and_val_never_hold_a_held_out_composition():
    for split, bias in (("train", 0.0), ("train", 0.7), ("val", 0.0)):
        seen = Counter((o.color, o.shape) for o in objects(split, 10000, bias))
        assert not set(seen) & set(HELD_OUT), split
    assert len(seen) == 15  # every other composition occurs


def test_novel_scenes_hold_a_held_out_composition():
    scenes = [frozenset(p.obj for p in draw("novel", i)[0]) for i in range(3000)]
    assert all(any((o.color, o.shape) in HELD_OUT for o in s) for s in scenes)
    assert {(o.color, o.shape) for s in scenes for o in s} >= set(HELD_OUT)
    assert {len(s) for s in scenes} == {1, 2}


def test_counter_objects_all_break_the_bias_rule():
    objs = objects("counter", 3000)
    assert all(o.shape != BIAS_RULE[o.color] for o in objs)
    assert not {(o.color, o.shape) for o in objs} & set(HELD_OUT)
    assert {o.color for o in objs} == set(COLORS)


@pytest.mark.parametrize("bias", [0.0, 0.5, 0.9, 1.0])
def test_bias_knob_rate(bias):
    objs = objects("train", 4000, bias)
    rate = np.mean([o.shape == BIAS_RULE[o.color] for o in objs])
    # with prob. bias the shape follows the rule; otherwise a uniform allowed shape hits it by chance:
    # 1/3 for the three colors with three allowed shapes, 1/2 for the three with two -> 5/12 on average
    expected = bias + (1 - bias) * 5 / 12
    sigma = np.sqrt(expected * (1 - expected) / len(objs))
    assert abs(rate - expected) <= 4 * sigma + 1e-9, (rate, expected)


def test_unbiased_train_draws_colors_and_shapes_uniformly():
    objs = objects("train", 6000)
    for values, attr in ((list(COLORS), "color"), (SHAPES, "shape"), (("small", "large"), "size")):
        counts = Counter(getattr(o, attr) for o in objs)
        expected = len(objs) / len(values)
        assert all(abs(counts[v] - expected) < 5 * np.sqrt(expected) for v in values), (attr, counts)


def test_captions_use_both_phrasings_and_the_exact_grammar():
    captions, forms = [], Counter()
    for i in range(400):
        placements, caption = draw("train", i)
        scene = frozenset(p.obj for p in placements)
        assert caption in phrasings(scene)
        captions.append(caption)
    for c in captions:
        forms[
            next((r for r in ("to the left of", "to the right of", "above", "below", "on the") if r in c), "center")
        ] += 1
    assert set(forms) == {"to the left of", "to the right of", "above", "below", "on the", "center"}
    assert all(c == " ".join(c.split()) and c == c.lower() and c.startswith("a ") for c in captions)


@pytest.mark.parametrize("size", [32, 64, 128])
def test_objects_fill_their_spec_box(size):
    """Each single object's painted bounding box is the spec's [cx - r, cx + r] to within a pixel."""
    images, _ = render_split("train", 200, size=size)
    for i, image in enumerate(images):
        placements = draw("train", i, size=size)[0]
        if len(placements) != 1:
            continue
        (p,) = placements
        ys, xs = np.nonzero(image.any(-1))
        assert abs(xs.min() - (p.cx - p.r)) <= 1 and abs(xs.max() + 1 - (p.cx + p.r)) <= 1
        assert abs(ys.max() + 1 - (p.cy + p.r)) <= 1
        assert tuple(image[ys[0], xs[0]]) == COLORS[p.obj.color]


def test_stamps_are_the_inscribed_shapes():
    assert stamp("square", 4).all()
    assert stamp("circle", 5).astype(int).tolist() == [
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
    ]
    assert stamp("triangle", 5).astype(int).tolist() == [
        [0, 0, 1, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ]
    fills = {s: stamp(s, 41).mean() for s in SHAPES}
    assert fills["square"] == 1 and abs(fills["circle"] - np.pi / 4) < 0.01 and abs(fills["triangle"] - 0.5) < 0.02


@pytest.mark.parametrize("kwargs", [dict(split="test"), dict(bias=1.5), dict(bias=-0.1), dict(size=8), dict(seed=-1)])
def test_bad_knobs_are_user_errors(kwargs):
    with pytest.raises(UserError):
        render_split(**{"split": "train", "n": 2, **kwargs})


def test_cli_writes_shards_and_a_preview(tmp_path):
    out, preview = tmp_path / "val", tmp_path / "grid.png"
    argv = ["data", "shapes", "--split", "val", "--n", "40", "--seed", "2", "--out", str(out), "--shard-size", "16"]
    assert main(argv + ["--preview", str(preview)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.tar", "00001.tar", "00002.tar"]
    pairs = list(iter_pairs(out))
    images, captions = render_split("val", 40, seed=2)
    assert [p.caption for p in pairs] == captions and all((p.image == im).all() for p, im in zip(pairs, images))
    assert pairs[7].meta["index"] == 7 and pairs[7].meta["split"] == "val"
    with Image.open(preview) as im:
        assert im.width >= 8 * 128 and im.height >= 4 * 128  # 32 px images upscaled so captions stay readable
    assert main(argv + ["--folder"]) == 2  # the folder already holds pairs
    assert main(["data", "shapes", "--split", "val", "--n", "3", "--folder", "--out", str(tmp_path / "f")]) == 0
    assert len(list((tmp_path / "f").glob("*.json"))) == 3


@pytest.mark.parametrize("bad", [["--split", "test"], ["--bias", "2"], ["--n", "0"], ["--size", "4"]])
def test_cli_bad_input_exits_2(tmp_path, bad, capsys):
    assert main(["data", "shapes", "--n", "3", "--out", str(tmp_path / "x"), *bad]) == 2
    assert "magvlt: error:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # checked before anything is written
