"""The shapes-world judge: exact on fresh renders, zero on mismatched captions, every grammar form parsed, CLI."""

import itertools
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from magvlt.cli import main
from magvlt.data.pairs import write_pairs
from magvlt.data.shapes import (
    ANCHORS,
    COLORS,
    PAIR_LAYOUTS,
    SHAPES,
    SIZES,
    SPLITS,
    Obj,
    iter_split,
    phrasings,
    render_split,
)
from magvlt.errors import UserError
from magvlt.eval.judge import judge_captions, judge_images, parse_caption, parse_image, parse_objects


def renders(size, n=300):
    """n fresh renders of every split (indices past those the other tests use), with their scenes."""
    images, captions, scenes = [], [], []
    for split in SPLITS:
        for im, caps, sc in iter_split(split, n, seed=7, size=size, start=5000):
            images.append(im)
            captions += caps
            scenes += sc
    return np.concatenate(images), captions, scenes


@pytest.fixture(scope="module", params=[32, 64])
def fresh(request):
    return renders(request.param)


def test_judge_scores_fresh_renders_exactly(fresh):
    images, captions, scenes = fresh
    assert sum(len(s) == 2 for s in scenes) > len(scenes) // 3  # two-object scenes are well represented
    result = judge_images(images, captions)
    assert result["n"] == len(images) == 1200
    assert result["exact"] >= 99.5
    assert min(result[k] for k in ("size", "color", "shape", "position", "count")) >= 99.5


def test_judge_scores_mismatched_captions_zero(fresh):
    images, captions, scenes = fresh
    perm = np.random.default_rng(0).permutation(len(captions))
    derange = np.roll(perm, 1)  # image perm[i] gets the caption of image perm[i-1]: nobody keeps their own
    keep = [i for i, j in zip(perm, derange) if scenes[i] != scenes[j]]  # equal scenes would match by right
    source = dict(zip(perm, derange))
    assert len(keep) > 0.95 * len(captions)
    result = judge_images(images[keep], [captions[source[i]] for i in keep])
    assert result["exact"] == 0.0 and result["n_exact"] == 0


def test_judge_tolerates_slight_blur_and_noise():
    images, captions, _ = renders(32, n=100)
    rng = np.random.default_rng(1)
    blurred = np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(0.5))) for im in images])
    noisy = np.clip(blurred.astype(int) + rng.integers(-15, 16, blurred.shape), 0, 255).astype(np.uint8)
    assert judge_images(noisy, captions)["exact"] >= 99.0


def all_scenes():
    objs = [(s, c, h) for s in SIZES for c in COLORS for h in SHAPES]
    for a in ANCHORS:
        for o in objs:
            yield frozenset({Obj(*o, a)})
    for (a, b), (x, y) in itertools.product(PAIR_LAYOUTS, itertools.product(objs, objs)):
        yield frozenset({Obj(*x, a), Obj(*y, b)})


def test_every_grammar_form_round_trips():
    count = 0
    for scene in all_scenes():
        captions = phrasings(scene)
        assert len(captions) == len(scene)
        for caption in captions:
            assert parse_caption(caption) == scene, caption
            count += 1
    assert count == 36 * 5 + 2 * 2 * 36 * 36
    assert parse_caption("  a small red circle   to the left of a large blue square\n") is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a small red circle on the center",
        "a red small circle",
        "A small red circle",
        "a small red circle.",
        "a small orange circle",
        "a small red circle to the left of",
        "a small red circle left of a large red square",
        "a small red circle on the left of a large red square",
        "the small red circle",
        "a small red circle and a big one",
    ],
)
def test_captions_outside_the_grammar_are_invalid(text):
    assert parse_caption(text) is None


def test_per_attribute_accuracy_matches_objects_to_the_best_agreement():
    ref = "a small red circle to the left of a large blue square"
    out = judge_captions(["a small red circle to the left of a large blue triangle"], [ref])
    assert out["exact"] == 0 and out["shape"] == 50 and out["size"] == out["color"] == out["position"] == 100
    out = judge_captions(["a large blue square to the right of a small red circle", "no idea"], [ref, ref])
    assert out["exact"] == 50 and out["invalid"] == 50 and out["n_invalid"] == 1 and out["size"] == 50
    out = judge_captions(["a small red circle on the left"], [parse_caption(ref)])  # a scene as reference
    assert out["count"] == 0 and out["color"] == 50 and out["position"] == 50
    scene = parse_caption(ref)
    assert judge_captions([ref], [phrasings(scene)])["exact"] == 100  # all phrasings as references


def test_image_parsing_ignores_specks_and_counts_extra_objects():
    image, _ = render_split("train", 1, size=32)
    blank = np.zeros((32, 32, 3), np.uint8)
    blank[3, 3] = blank[3, 4] = COLORS["red"]  # a 2-pixel speck is noise
    assert parse_image(blank) == frozenset()
    (scene_objs,) = parse_objects(image)
    extra = image.copy()
    extra[0, 1:6, 1:6] = COLORS["green"]  # a fifth object-sized blob in a corner
    assert len(parse_objects(extra)[0]) == len(scene_objs) + 1
    caption = phrasings(frozenset(scene_objs))[0]
    assert judge_images(extra, [caption])["exact"] == 0 and judge_images(extra, [caption])["count"] == 0


def test_bad_judge_input_is_a_user_error():
    images, captions = render_split("val", 2)
    with pytest.raises(UserError, match="grammar"):
        judge_images(images, ["a small red blob", captions[1]])
    with pytest.raises(UserError):
        judge_images(images[:, :, :30], captions)
    with pytest.raises(UserError):
        judge_captions(captions, captions[:1])


def test_cli_judges_pairs_numbered_images_and_captions(tmp_path):
    images, captions = render_split("novel", 12)
    write_pairs(tmp_path / "pairs", images, captions, shard_size=5)
    assert main(["judge", "images", "--dir", str(tmp_path / "pairs")]) == 0
    assert json.loads((tmp_path / "pairs" / "judge.json").read_text())["exact"] == 100
    (tmp_path / "gen").mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / "gen" / f"{i}.png")  # 0..11: numeric order, not 0, 1, 10, 11, 2
    (tmp_path / "prompts.txt").write_text("\n".join(captions) + "\n")
    out = tmp_path / "r.json"
    assert (
        main(
            [
                "judge",
                "images",
                "--dir",
                str(tmp_path / "gen"),
                "--captions",
                str(tmp_path / "prompts.txt"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["exact"] == 100
    generated = [{"key": f"{i:09d}", "caption": c} for i, c in enumerate(captions)][::-1]  # by key, not order
    generated[0]["caption"] = "gibberish"
    (tmp_path / "gen.jsonl").write_text("".join(json.dumps(g) + "\n" for g in generated))
    assert main(["judge", "captions", "--file", str(tmp_path / "gen.jsonl"), "--refs", str(tmp_path / "pairs")]) == 0
    report = json.loads((tmp_path / "gen.judge.json").read_text())
    assert report["n"] == 12 and report["n_exact"] == 11 and report["n_invalid"] == 1


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["judge", "images", "--dir", str(tmp_path / "nothing")]) == 2
    (tmp_path / "c.txt").write_text("a small red circle\n")
    assert main(["judge", "captions", "--file", str(tmp_path / "c.txt"), "--refs", str(tmp_path / "nothing.txt")]) == 2
    (tmp_path / "two.txt").write_text("a small red circle\na large red circle\n")
    assert main(["judge", "captions", "--file", str(tmp_path / "c.txt"), "--refs", str(tmp_path / "two.txt")]) == 2
    assert capsys.readouterr().err.count("magvlt: error:") == 3
