"""`magvlt convert official` + magvlt's own model and samplers reproduce the official code (docs/official.md).

The fixtures were recorded by tools/official_fixtures.py from the official code on a tiny random checkpoint: logits
within 1e-5 (fp32, CPU), greedy T2I codes and pixels, greedy inpainting codes and greedy I2T captions identical on
8 inputs, through `magvlt generate ... --preset official --greedy --candidates 1` where the CLI has the task.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from magvlt import sampling
from magvlt.cli import main
from magvlt.masking import text_valid
from magvlt.model import LENGTH_QUERY, Task, official_segments
from magvlt.official.text import OfficialTokenizer
from magvlt.pipeline import MAGVLTPipeline
from magvlt.schedulers import get_preset

FIX = Path(__file__).parent / "fixtures" / "official"
RECORD = json.loads((FIX / "outputs.json").read_text())
GREEDY = ["--preset", "official", "--greedy", "--candidates", "1"]
# logits match the official code's to float32 summation order: the fixtures came from an AVX2 CPU, an AVX-512
# Xeon differs by up to 3e-5; a wrong layout or weight differs by orders of magnitude more
ATOL = 1e-4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("converted")
    assert (
        main(
            [
                "convert",
                "official",
                str(FIX / "magvlt.ckpt"),
                "--out",
                str(out),
                "--heads",
                str(RECORD["architecture"]["heads"]),
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="module")
def pipe(run):
    return MAGVLTPipeline.from_pretrained(run)


@pytest.fixture(scope="module")
def out():
    return {
        k: v.long() if v.dtype == torch.int32 else v for k, v in load_file(str(FIX / "outputs.safetensors")).items()
    }


@pytest.fixture(scope="module")
def prompts(out):
    ids, lengths = OfficialTokenizer().encode(RECORD["prompts"])
    assert torch.equal(ids, out["prompt_ids"]) and torch.equal(lengths, out["prompt_mask"].sum(-1))
    return ids, lengths


@pytest.fixture(scope="module")
def image_dir(out, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, pixels in enumerate(out["images"].numpy()):
        Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return folder


def test_the_run_is_official_and_samples_the_official_way(pipe):
    cfg = pipe.model.cfg
    assert cfg.official and (cfg.n_embd, cfg.n_layer, cfg.n_head, cfg.image_vocab) == (16, 2, 2, 1024)
    assert cfg.image_grid == (4, 4) and cfg.text_len == 64 and pipe.vq.cfg.n_embed == 1024
    assert isinstance(pipe.tokenizer, OfficialTokenizer) and pipe.preset == get_preset("official")


def test_t2i_image_logits(pipe, out, prompts):
    ids, lengths = prompts
    with torch.no_grad():
        h = pipe.model.official(
            Task.T2I, out["codes"], out["t2i_img_mask"], ids, torch.zeros_like(ids, dtype=torch.bool), lengths
        )
        logits = pipe.model.image_logits(h[:, official_segments(Task.T2I, pipe.cfg).image])
    torch.testing.assert_close(logits, out["t2i_logits"], atol=ATOL, rtol=0)


def test_i2t_text_logits(pipe, out, prompts):
    ids, lengths = prompts
    codes = out["codes"]
    with torch.no_grad():
        h = pipe.model.official(
            Task.I2T, codes, torch.zeros_like(codes, dtype=torch.bool), ids, out["i2t_caption_mask"], lengths
        )
        logits = pipe.model.text_logits(h[:, official_segments(Task.I2T, pipe.cfg).text])
    torch.testing.assert_close(
        logits[..., :: RECORD["i2t_logits_probe_stride"]], out["i2t_logits_strided"], atol=ATOL, rtol=0
    )
    top = logits.topk(out["i2t_logits_top_values"].shape[-1], dim=-1)
    torch.testing.assert_close(top.values, out["i2t_logits_top_values"], atol=ATOL, rtol=0)
    assert torch.equal(top.indices, out["i2t_logits_top_ids"])
    torch.testing.assert_close(torch.logsumexp(logits, -1), out["i2t_logits_logsumexp"], atol=ATOL, rtol=0)


def test_length_logits(pipe, out):
    assert LENGTH_QUERY == 16
    torch.testing.assert_close(
        sampling.length_logits(pipe.model, out["codes"]), out["length_logits"], atol=ATOL, rtol=0
    )


def test_greedy_t2i_pngs(run, out, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(RECORD["prompts"]) + "\n")
    assert (
        main(
            ["generate", "t2i", "--model", str(run), "--prompts", str(prompts), "--out", str(tmp_path / "png"), *GREEDY]
        )
        == 0
    )
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:04d}.png" for i in range(len(RECORD["prompts"]))]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in pngs])
    assert np.array_equal(pixels, out["greedy_t2i_pixels"].numpy())


def test_greedy_t2i_codes(pipe, out, prompts):
    codes = sampling.generate_images(pipe.model, *prompts, get_preset("official").greedy().image).image
    assert torch.equal(codes, out["greedy_t2i_codes"])


def test_greedy_i2t_captions(run, image_dir, tmp_path):
    jsonl = tmp_path / "captions.jsonl"
    assert main(["generate", "i2t", "--model", str(run), "--images", str(image_dir), "--out", str(jsonl), *GREEDY]) == 0
    captions = [json.loads(line)["caption"] for line in jsonl.read_text().splitlines()]
    assert captions == RECORD["greedy_i2t_captions"]


def test_greedy_i2t_rows(pipe, out):
    result = sampling.generate_text(pipe.model, out["codes"], get_preset("official").greedy().text)
    assert torch.equal(result.length, out["greedy_i2t_lengths"])
    rows = torch.where(text_valid(result.length, pipe.cfg.text_len), result.text, pipe.model.eos)
    assert torch.equal(rows, out["greedy_i2t_ids"])


def test_greedy_inpainting(run, pipe, out, prompts, image_dir, tmp_path):
    keep = out["it2i_keep"]
    assert torch.equal(~keep[0], sampling.central_mask(pipe.cfg.image_grid))  # the official central half
    codes = sampling.inpaint(pipe.model, out["codes"], ~keep, *prompts, get_preset("official").greedy().image).image
    assert torch.equal(codes, out["greedy_it2i_codes"])
    caption = RECORD["prompts"][0]
    assert (
        main(
            [
                "generate",
                "inpaint",
                "--model",
                str(run),
                "--images",
                str(image_dir),
                "--caption",
                caption,
                "--out",
                str(tmp_path / "png"),
                *GREEDY,
            ]
        )
        == 0
    )
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted((tmp_path / "png").glob("*.png"))])
    ids, lengths = OfficialTokenizer().encode([caption] * len(codes))
    expected = sampling.inpaint(pipe.model, out["codes"], ~keep, ids, lengths, get_preset("official").greedy().image)
    assert np.array_equal(pixels, pipe.decode_images(expected))


def test_foreign_files_are_refused(tmp_path, capsys):
    cases = {
        "vqgan.ckpt": FIX / "vqgan.ckpt",  # a taming checkpoint where the MAGVLT one belongs
        "text.ckpt": tmp_path / "text.ckpt",
        "tensors.ckpt": tmp_path / "tensors.ckpt",
    }
    cases["text.ckpt"].write_text("not a checkpoint")
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, cases["tensors.ckpt"])
    for name, path in cases.items():
        assert main(["convert", "official", str(path), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("magvlt: error:") and "Traceback" not in err, err
        assert not (tmp_path / name / "config.json").exists()
    assert (
        main(
            [
                "convert",
                "official",
                str(FIX / "magvlt.ckpt"),
                "--out",
                str(tmp_path / "x"),
                "--heads",
                "2",
                "--vq",
                str(FIX / "magvlt.ckpt"),
            ]
        )
        == 2
    )
    assert "MAGVLT checkpoint" in capsys.readouterr().err
    assert main(["convert", "official", str(FIX / "magvlt.ckpt"), "--out", str(tmp_path / "y"), "--heads", "3"]) == 2
    assert "does not divide" in capsys.readouterr().err


def test_taming_vq_replaces_the_one_inside(tmp_path):
    assert (
        main(
            [
                "convert",
                "official",
                str(FIX / "magvlt.ckpt"),
                "--out",
                str(tmp_path / "run"),
                "--heads",
                "2",
                "--vq",
                str(FIX / "vqgan.ckpt"),
            ]
        )
        == 0
    )
    assert MAGVLTPipeline.from_pretrained(tmp_path / "run").vq.cfg.n_embed == 1024


def test_long_prompts_are_truncated_as_the_official_code_does(pipe):
    prompt = "a dog and a cat " * 30
    ids, lengths = pipe.encode_text([prompt])
    expected_ids, expected_lengths = OfficialTokenizer().encode([prompt])
    assert torch.equal(ids, expected_ids) and lengths.tolist() == expected_lengths.tolist() == [64]


def test_infilling_a_converted_run(pipe, out):
    image = Image.fromarray(out["images"][0].numpy())
    marked = pipe.infill(
        image, "a [MASK] playing with a ball", preset=get_preset("official").greedy(), num_candidates=1
    )
    plain = pipe.infill(image, "a dog playing with a ball", preset=get_preset("official").greedy(), num_candidates=1)
    assert marked.texts[0].endswith(" .") and plain.texts[0].endswith(" .")
    ids, lengths, span = pipe.encode_masked_text(["a [MASK] playing"])
    assert span[0].nonzero().flatten().tolist() == [1] and ids[0, 0] != pipe.tokenizer.eos
