"""The pipeline and `magvlt generate` on a tiny random-weight run directory: every task, files, errors."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic import write_run

from magvlt.cli import main
from magvlt.data.shapes import render_split
from magvlt.errors import UserError
from magvlt.images import blend, mask_tokens
from magvlt.pipeline import MAGVLTPipeline, save_preset
from magvlt.schedulers import get_preset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def pipe(run):
    return MAGVLTPipeline.from_pretrained(run)


@pytest.fixture(scope="module")
def images():
    ims, _ = render_split("train", 3, seed=1, size=16)
    return [Image.fromarray(im) for im in ims]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_every_task_returns_pil_images_and_strings(pipe, images):
    out = pipe(["a large red circle", "a small blue square on the left"], num_inference_steps=3)
    assert [im.size for im in out.images] == [(16, 16)] * 2 and all(im.mode == "RGB" for im in out.images)
    assert out.intermediates is None
    captions = pipe.caption(images, num_inference_steps=3).texts
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert len(pipe.inpaint(images, None, "a large red circle", num_inference_steps=2).images) == 3
    filled = pipe.infill(images, ["a large [MASK] circle"] * 3, num_inference_steps=2).texts
    assert all(c.startswith("a large ") and c.endswith(" circle") for c in filled)
    assert len(pipe.infill(images[0], "a large green triangle on the top", num_inference_steps=2).texts) == 1
    pairs = pipe.generate_pairs(2, num_inference_steps=2)
    assert len(pairs.images) == 2 and pairs.images[0].size == (16, 16) and isinstance(pairs.texts[0], str)


def test_seeded_and_with_intermediates(pipe):
    a = pipe("a large red circle", num_inference_steps=4, generator=_gen(3), output_intermediates=True)
    b = pipe("a large red circle", num_inference_steps=4, generator=_gen(3))
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    frames = a.intermediates
    assert (
        len(frames) == 1 and len(frames[0]) == 4 and np.array_equal(np.asarray(frames[0][-1]), np.asarray(a.images[0]))
    )
    text = pipe.caption(np.zeros((16, 16, 3), np.uint8), num_inference_steps=5, output_intermediates=True)
    assert len(text.intermediates[0]) == 5 and "_" in text.intermediates[0][0]


def test_a_generator_per_prompt_makes_each_output_independent_of_the_batch(pipe):
    prompts = ["a large red circle", "a small blue square on the left", "a small white triangle"]
    batch = pipe(prompts, num_inference_steps=3, generator=[_gen(s) for s in (1, 2, 3)]).images
    alone = pipe(prompts[1], num_inference_steps=3, generator=[_gen(2)]).images
    assert np.array_equal(np.asarray(batch[1]), np.asarray(alone[0]))
    with pytest.raises(UserError, match="one per input"):
        pipe(prompts, generator=[_gen(1)])


def test_callback_on_step_end_sees_every_step(pipe):
    calls = []

    def callback(p, step, timestep, kwargs):
        calls.append((step, p.decode_images(kwargs["sample"]).shape, kwargs["inputs"]))

    pipe(["a large red circle", "a small white triangle"], num_inference_steps=3, callback_on_step_end=callback)
    assert [c[0] for c in calls] == [0, 1, 2] and calls[0][1] == (2, 16, 16, 3) and calls[0][2] == slice(0, 2)


def test_presets_by_name_and_object(pipe, images):
    greedy = get_preset("official").greedy()
    a = pipe.caption(images, preset=greedy, num_candidates=1, generator=_gen(0)).texts
    b = pipe.caption(images, preset=greedy, num_candidates=1, generator=_gen(1)).texts
    assert a == b
    with pytest.raises(UserError, match="choose one of"):
        pipe("a large red circle", preset="nonsense")
    with pytest.raises(UserError, match="num_candidates"):
        pipe("a large red circle", num_candidates=0)


def test_a_run_samples_with_its_own_preset(run, tmp_path):
    for item in run.iterdir():
        (tmp_path / item.name).symlink_to(item)
    save_preset(get_preset("demo"), tmp_path)
    assert MAGVLTPipeline.from_pretrained(tmp_path).preset == get_preset("demo")
    assert MAGVLTPipeline.from_pretrained(run).preset == get_preset("default")


def test_candidates_keep_the_best_by_scorer(pipe):
    class Redness:
        def score(self, images, captions):
            self.seen = np.asarray(images)
            return torch.as_tensor(self.seen[..., 0].astype(float).mean(axis=(1, 2)))

    pipe.scorer = scorer = Redness()
    try:
        best = pipe(["a large red circle", "a small blue square"], num_inference_steps=2, num_candidates=5).images
    finally:
        pipe.scorer = None
    assert scorer.seen.shape == (10, 16, 16, 3)
    for i, image in enumerate(best):
        group = scorer.seen[5 * i : 5 * i + 5]
        assert np.array_equal(np.asarray(image), group[group[..., 0].mean(axis=(1, 2)).argmax()])


def test_text_channel_adds_the_models_image_likelihood_to_the_ranking(pipe, images, monkeypatch):
    """With text_channel > 0 the kept caption is the best by standardized scorer + weight x log p(image | caption):
    with a scorer that ties every candidate, the one whose caption makes the image most likely."""
    from magvlt import sampling

    class Tie:
        def score(self, images, captions):
            return torch.zeros(len(captions))

    seen = {}
    real = sampling.image_log_likelihood

    def spy(model, image, text, length):
        seen["loglik"], seen["text"], seen["length"] = real(model, image, text, length), text.clone(), length.clone()
        return seen["loglik"]

    monkeypatch.setattr(sampling, "image_log_likelihood", spy)
    monkeypatch.setattr(pipe, "scorer", Tie())
    preset = get_preset("default")
    preset = dataclasses.replace(preset, text_channel=1.0, text=dataclasses.replace(preset.text, temperature=1.0))
    written = pipe.caption(images[:1], num_inference_steps=2, num_candidates=4, preset=preset, generator=_gen(0)).texts
    best = int(seen["loglik"].argmax())
    assert seen["loglik"].shape == (4,) and best != 0  # the scorer's tie alone would keep the first
    assert written == pipe.tokenizer.decode(seen["text"][best : best + 1], seen["length"][best : best + 1])
    assert pipe.text_channel_weight(preset, 4) == 1.0 and pipe.text_channel_weight(preset, 1) == 0.0


def test_reranking_never_scores_or_keeps_an_empty_caption(pipe, images, monkeypatch):
    class Length:
        def score(self, images, captions):
            assert all(c.strip() for c in captions), "the scorer's tokenizer refuses empty captions"
            self.seen = list(captions)
            return torch.tensor([float(len(c)) for c in captions])

    written = ["", "a b", "", "", "", ""]  # image 0: one caption written among three; image 1: none
    monkeypatch.setattr(pipe, "decode_texts", lambda sample: list(written))
    monkeypatch.setattr(pipe, "scorer", Length())
    assert pipe.caption(images[:2], num_inference_steps=2, num_candidates=3).texts == ["a b", ""]
    assert pipe.scorer.seen == ["a b"]


def test_inpainting_keeps_the_pixels_far_from_the_mask(pipe, images):
    mask = Image.new("L", (16, 16), 0)
    mask.paste(255, (0, 0, 8, 8))
    out = pipe.inpaint(images[0], mask, "a small red circle", num_inference_steps=2).images[0]
    original = np.asarray(images[0])
    assert np.array_equal(np.asarray(out)[12:, 12:], original[12:, 12:])
    assert not np.array_equal(np.asarray(out)[:6, :6], original[:6, :6])


def test_mask_image_rule_any_white_pixel_marks_its_token():
    mask = Image.new("L", (32, 32), 0)
    mask.putpixel((17, 0), 255)  # x = 17 lies in token column 2 of a 4x4 grid over 32 px (8 px a cell)
    tokens = mask_tokens(mask, (32, 32), (4, 4)).view(4, 4)
    assert tokens.tolist() == [[False, False, True, False]] + [[False] * 4] * 3
    big = Image.new("L", (64, 64), 0)
    big.paste(255, (32, 32, 64, 64))  # fitted to 32 px like its image: the lower right quarter
    assert mask_tokens(big, (32, 32), (4, 4)).view(4, 4)[2:, 2:].all()
    with pytest.raises(UserError, match="all black"):
        mask_tokens(Image.new("L", (32, 32), 0), (32, 32), (4, 4))


def test_blend_is_the_input_outside_and_the_generation_inside():
    grid, orig, gen = (4, 4), np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 200, np.uint8)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[5] = mask[6] = mask[9] = mask[10] = True  # the central 2x2 cells
    out = blend(orig, gen, mask, grid)
    assert (out[:3] == 0).all() and (out[:, :3] == 0).all() and (out[14:18, 14:18] == 200).all()
    assert 0 < out[8, 16, 0] < 200 and 0 < out[7, 16, 0] < out[8, 16, 0]


def test_argvlt_run_generates_and_captions(tmp_path, images):
    pipe = MAGVLTPipeline.from_pretrained(write_run(tmp_path, causal=True))
    assert pipe("a large red circle", preset=_top_k(5)).images[0].size == (16, 16)
    assert isinstance(pipe.caption(images[:1]).texts[0], str)
    assert pipe.text_channel_weight(get_preset("demo"), 16) == 0.0  # no image likelihood from a causal model
    for call in (
        lambda: pipe.inpaint(images[:1], None, "a large red circle"),
        lambda: pipe("a large red circle", output_intermediates=True),
        lambda: pipe("a large red circle", num_inference_steps=4),
    ):
        with pytest.raises(UserError, match="ARGVLT"):
            call()


def _top_k(k):
    preset = get_preset("default")
    preset.image = dataclasses.replace(preset.image, top_k=k)
    return preset


def test_options_that_do_not_apply_are_errors(pipe, images):
    with pytest.raises(UserError, match="condition dropout"):
        pipe("a large red circle", guidance_scale=3.0)
    with pytest.raises(UserError, match="mask is 8x8 but the image is 16x16"):
        pipe.inpaint(images[0], Image.new("L", (8, 8), 255), "a large red circle")
    with pytest.raises(UserError, match="2 images but 1 prompts"):
        pipe.inpaint(images[:2], None, ["a large red circle"])


def test_bad_run_directories_and_inputs_are_user_errors(tmp_path, run, pipe):
    with pytest.raises(UserError, match="missing"):
        MAGVLTPipeline.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    for name in ("text", "vq"):
        (tmp_path / name).symlink_to(run / name)
    (tmp_path / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(UserError, match="safetensors"):
        MAGVLTPipeline.from_pretrained(tmp_path)
    with pytest.raises(UserError, match="empty"):
        pipe(["  "])
    with pytest.raises(UserError, match="at most"):
        pipe(["a large red circle " * 10])


def test_a_run_of_the_former_architecture_is_asked_to_be_retrained(tmp_path, run):
    for name in ("model.safetensors", "text", "vq"):
        (tmp_path / name).symlink_to(run / name)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"].update(official=False, tie_embeddings=True)  # what such a run's config.json holds
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=f"{tmp_path} is magvlt's former architecture .* retrain it"):
        MAGVLTPipeline.from_pretrained(tmp_path)


def test_cli_writes_pngs_jsonl_and_gifs(tmp_path, run, images, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle\n\na small blue square on the left\n")
    assert (
        main(
            [
                "generate",
                "t2i",
                "--model",
                str(run),
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "t2i"),
                "--steps",
                "3",
                "--gif",
                str(tmp_path / "gif"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "t2i").iterdir()) == ["0000.png", "0001.png"]
    gif = Image.open(tmp_path / "gif" / "0001.gif")
    assert gif.n_frames == 3
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(images):
        im.save(folder / f"{i}.png")
    out = tmp_path / "captions.jsonl"
    assert (
        main(
            [
                "generate",
                "i2t",
                "--model",
                str(run),
                "--images",
                str(folder),
                "--out",
                str(out),
                "--steps",
                "2",
                "--gif",
                str(tmp_path / "tgif"),
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in lines] == [str(folder / f"{i}.png") for i in range(3)]
    assert Image.open(tmp_path / "tgif" / "0000.gif").n_frames == 2
    assert (
        main(
            [
                "generate",
                "inpaint",
                "--model",
                str(run),
                "--image",
                str(folder / "0.png"),
                "--caption",
                "a large red circle",
                "--box",
                "0,0,8,8",
                "--out",
                str(tmp_path / "inp"),
                "--steps",
                "2",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "generate",
                "infill",
                "--model",
                str(run),
                "--image",
                str(folder / "0.png"),
                "--text",
                "a [MASK] red circle",
                "--steps",
                "2",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["caption"].startswith("a ")
    assert (
        main(["generate", "joint", "--model", str(run), "-n", "2", "--out", str(tmp_path / "joint"), "--steps", "2"])
        == 0
    )
    assert len((tmp_path / "joint" / "captions.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["t2i", "--prompt", ""], "empty"),
        (["t2i", "--prompt", "a large red circle " * 10], "at most"),
        (["i2t", "--image", "{tmp}/broken.png"], "cannot read image"),
        (["i2t", "--image", "{tmp}/ok.png", "--model", "{tmp}"], "not a complete run"),
        (["i2t", "--image", "{tmp}/ok.png", "--preset", "fastest"], "unknown preset"),
        (["t2i", "--prompt", "a large red circle", "--guidance-scale", "3"], "condition dropout"),
        (["inpaint", "--image", "{tmp}/ok.png", "--caption", "a red circle", "--box", "4,4,2,2"], "box"),
    ],
)
def test_cli_bad_input_exits_2_with_a_message(tmp_path, run, capsys, argv, message):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    model = [] if "--model" in argv else ["--model", str(run)]
    out = [] if argv[0] == "i2t" else ["--out", str(tmp_path / "o")]
    assert main(["generate", argv[0], *model, *out, *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("magvlt: error:") and message in err and "Traceback" not in err
