"""The pipeline and `magvlt generate` on a tiny random-weight run directory: every task, files, errors."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from magvlt.checkpoint import save_weights
from magvlt.cli import main
from magvlt.config import ModelConfig, TrainConfig, VQConfig, save_json
from magvlt.data.shapes import render_split
from magvlt.errors import UserError
from magvlt.model import Transformer
from magvlt.pipeline import MAGVLT, blend
from magvlt.text import CaptionBPE
from magvlt.vq import VQGAN, save_vq

VQ = VQConfig(resolution=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), z_channels=8, embed_dim=8, n_embed=32)


def write_run(root, causal=False):
    """config.json, model.safetensors, text/ and vq/ of an untrained tiny model on 16x16 images (8x8 tokens)."""
    _, captions = render_split("train", 200, seed=0, size=16)
    tok = CaptionBPE.train(captions, vocab_size=128, length=20)
    tok.save(root / "text")
    torch.manual_seed(0)
    save_vq(VQGAN(VQ), root / "vq")
    cfg = ModelConfig(n_layer=1, n_head=2, n_embd=32, image_vocab=VQ.n_embed, image_grid=(8, 8),
                      text_vocab=tok.vocab_size, text_len=tok.length, causal=causal)
    save_json(TrainConfig(model=cfg), root / "config.json")
    save_weights(root / "model.safetensors", Transformer(cfg).state_dict())
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def pipe(run):
    return MAGVLT.load(run, device="cpu")


@pytest.fixture(scope="module")
def images():
    ims, _ = render_split("train", 3, seed=1, size=16)
    return [Image.fromarray(im) for im in ims]


def test_every_task_returns_pil_images_and_strings(pipe, images):
    out = pipe.generate_images(["a large red circle", "a small blue square on the left"], steps=3)
    assert [im.size for im in out] == [(16, 16)] * 2 and all(im.mode == "RGB" for im in out)
    captions = pipe.caption(images, steps=3)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    assert len(pipe.inpaint(images, caption="a large red circle", steps=2)) == 3
    filled = pipe.infill(["a large [MASK] circle"] * 3, images, steps=2)
    assert all(c.startswith("a large ") and c.endswith(" circle") for c in filled)
    assert len(pipe.infill("a large green triangle on the top", images[0], steps=2)) == 1
    pairs = pipe.generate_pairs(2, steps=2)
    assert len(pairs) == 2 and pairs[0][0].size == (16, 16) and isinstance(pairs[0][1], str)


def test_seeded_and_traced(pipe):
    a, frames = pipe.generate_images(["a large red circle"], steps=4, seed=3, trace=True)
    b = pipe.generate_images(["a large red circle"], steps=4, seed=3)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert len(frames) == 1 and len(frames[0]) == 4 and np.array_equal(np.asarray(frames[0][-1]), np.asarray(a[0]))
    _, text_frames = pipe.caption([np.zeros((16, 16, 3), np.uint8)], steps=5, trace=True)
    assert len(text_frames[0]) == 5 and "_" in text_frames[0][0]


def test_candidates_keep_the_best_by_scorer(pipe):
    class Redness:
        def score(self, images, captions):
            self.seen = np.asarray(images)
            return torch.as_tensor(self.seen[..., 0].astype(float).mean(axis=(1, 2)))

    pipe.scorer = scorer = Redness()
    try:
        best = pipe.generate_images(["a large red circle", "a small blue square"], steps=2, candidates=5, seed=0)
    finally:
        pipe.scorer = None
    assert scorer.seen.shape == (10, 16, 16, 3)
    for i, image in enumerate(best):
        group = scorer.seen[5 * i : 5 * i + 5]
        assert np.array_equal(np.asarray(image), group[group[..., 0].mean(axis=(1, 2)).argmax()])


def test_reranking_never_scores_or_keeps_an_empty_caption(pipe, images, monkeypatch):
    class Length:
        def score(self, images, captions):
            assert all(c.strip() for c in captions), "the scorer's tokenizer refuses empty captions"
            self.seen = list(captions)
            return torch.tensor([float(len(c)) for c in captions])

    written = ["", "a b", "", "", "", ""]  # image 0: one caption written among three; image 1: none
    monkeypatch.setattr(pipe, "decode_text", lambda sample: list(written))
    monkeypatch.setattr(pipe, "scorer", Length())
    assert pipe.caption(images[:2], steps=2, candidates=3, temperature=1.0) == ["a b", ""]
    assert pipe.scorer.seen == ["a b"]


def test_inpainting_keeps_the_pixels_far_from_the_box(pipe, images):
    out = pipe.inpaint(images[:1], (0, 0, 8, 8), "a small red circle", steps=2)[0]
    original = np.asarray(images[0])
    assert np.array_equal(np.asarray(out)[12:, 12:], original[12:, 12:])


def test_blend_is_the_input_outside_and_the_generation_inside():
    grid, orig, gen = (4, 4), np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 200, np.uint8)
    mask = torch.zeros(16, dtype=torch.bool)
    mask[5] = mask[6] = mask[9] = mask[10] = True  # the central 2x2 cells
    out = blend(orig, gen, mask, grid)
    assert (out[:3] == 0).all() and (out[:, :3] == 0).all() and (out[14:18, 14:18] == 200).all()
    assert 0 < out[8, 16, 0] < 200 and 0 < out[7, 16, 0] < out[8, 16, 0]


def test_argvlt_run_generates_and_captions(tmp_path, images):
    pipe = MAGVLT.load(write_run(tmp_path, causal=True), device="cpu")
    assert pipe.generate_images(["a large red circle"], top_k=5)[0].size == (16, 16)
    assert isinstance(pipe.caption(images[:1])[0], str)
    with pytest.raises(UserError, match="ARGVLT"):
        pipe.inpaint(images[:1], caption="a large red circle")


def test_bad_run_directories_and_inputs_are_user_errors(tmp_path, run, pipe):
    with pytest.raises(UserError, match="missing"):
        MAGVLT.load(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    for name in ("text", "vq"):
        (tmp_path / name).symlink_to(run / name)
    (tmp_path / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(UserError, match="safetensors"):
        MAGVLT.load(tmp_path)
    with pytest.raises(UserError, match="empty"):
        pipe.generate_images(["  "])
    with pytest.raises(UserError, match="at most"):
        pipe.generate_images(["a large red circle " * 10])
    with pytest.raises(UserError, match="box"):
        pipe.inpaint([np.zeros((16, 16, 3), np.uint8)], (4, 4, 2, 2), "a large red circle")


def test_cli_writes_pngs_jsonl_and_gifs(tmp_path, run, images, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle\n\na small blue square on the left\n")
    assert main(["generate", "t2i", "--model", str(run), "--prompts", str(prompts), "--out", str(tmp_path / "t2i"),
                 "--steps", "3", "--gif", str(tmp_path / "gif")]) == 0
    assert sorted(p.name for p in (tmp_path / "t2i").iterdir()) == ["0000.png", "0001.png"]
    gif = Image.open(tmp_path / "gif" / "0001.gif")
    assert gif.n_frames == 3
    folder = tmp_path / "images"
    folder.mkdir()
    for i, im in enumerate(images):
        im.save(folder / f"{i}.png")
    out = tmp_path / "captions.jsonl"
    assert main(["generate", "i2t", "--model", str(run), "--images", str(folder), "--out", str(out), "--steps", "2",
                 "--gif", str(tmp_path / "tgif")]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["image"] for r in lines] == [str(folder / f"{i}.png") for i in range(3)]
    assert Image.open(tmp_path / "tgif" / "0000.gif").n_frames == 2
    assert main(["generate", "inpaint", "--model", str(run), "--image", str(folder / "0.png"), "--caption",
                 "a large red circle", "--box", "0,0,8,8", "--out", str(tmp_path / "inp"), "--steps", "2"]) == 0
    assert main(["generate", "infill", "--model", str(run), "--image", str(folder / "0.png"), "--text",
                 "a [MASK] red circle", "--steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["caption"].startswith("a ")
    assert main(["generate", "joint", "--model", str(run), "-n", "2", "--out", str(tmp_path / "joint"),
                 "--steps", "2"]) == 0
    assert len((tmp_path / "joint" / "captions.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("argv, message", [
    (["t2i", "--prompt", ""], "empty"),
    (["t2i", "--prompt", "a large red circle " * 10], "at most"),
    (["i2t", "--image", "{tmp}/broken.png"], "cannot read image"),
    (["i2t", "--image", "{tmp}/ok.png", "--model", "{tmp}"], "not a complete run"),
])
def test_cli_bad_input_exits_2_with_a_message(tmp_path, run, capsys, argv, message):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (16, 16)).save(tmp_path / "ok.png")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    model = [] if "--model" in argv else ["--model", str(run)]
    out = [] if argv[0] == "i2t" else ["--out", str(tmp_path / "o")]
    assert main(["generate", argv[0], *model, *out, *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("magvlt: error:") and message in err and "Traceback" not in err
