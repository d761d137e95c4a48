"""evaluate() end to end on stand-in pipelines: a perfect one scores the maximum, a wrong one scores low."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from magvlt.cli import main
from magvlt.errors import UserError
from magvlt.eval.metrics import FID, CaptionMetrics
from magvlt.eval.run import EvalData, evaluate, load_data, markdown, shapes_data, write_report
from magvlt.pipeline import ImagePipelineOutput, TextPipelineOutput

N = 12


@pytest.fixture(scope="module")
def captions():
    with CaptionMetrics() as scorer:
        yield scorer


@pytest.fixture(scope="module")
def data():
    return shapes_data("shapes:val", N, 32)


def mean_color_fid():
    return FID(lambda x: x.float().mean(dim=(1, 2)), "mean color (test)")


class Oracle:
    """Knows the data: the real render for T2I, the input back for inpainting, the true caption for I2T/infilling."""

    image_size = (32, 32)
    scorer = None

    def __init__(self, data: EvalData):
        self.render = {c: im for im, c in zip(data.images, data.captions)}
        self.truth = {im.tobytes(): c for im, c in zip(data.images, data.captions)}
        self.calls = []

    def __call__(self, prompts, **kw):
        self.calls.append(("t2i", len(prompts), kw))
        return ImagePipelineOutput([Image.fromarray(self.render[c]) for c in prompts])

    def caption(self, images, **kw):
        self.calls.append(("i2t", len(images), kw))
        return TextPipelineOutput([self.truth[np.asarray(im).tobytes()] for im in images])

    def inpaint(self, images, mask_image, prompts, **kw):
        assert mask_image is None and len(prompts) == len(images)  # None: the central half of the grid
        self.calls.append(("inpaint", len(images), kw))
        return ImagePipelineOutput([Image.fromarray(im) for im in images])

    def infill(self, images, texts, **kw):
        self.calls.append(("infill", len(images), kw))
        return TextPipelineOutput([self.truth[np.asarray(im).tobytes()] for im in images])


class Wrong(Oracle):
    """Blank images with a grey square, and a caption outside the grammar."""

    def __call__(self, prompts, **kw):
        im = np.zeros((32, 32, 3), np.uint8)
        im[8:24, 8:24] = 128
        return ImagePipelineOutput([Image.fromarray(im)] * len(prompts))

    def caption(self, images, **kw):
        return TextPipelineOutput(["the blue"] * len(images))

    inpaint = lambda self, images, mask_image, prompts, **kw: self(prompts)
    infill = lambda self, images, texts, **kw: self.caption(images)


class TruthScorer:
    """Cosine 1 for a true (image, caption) pair, 0 otherwise."""

    def __init__(self, oracle: Oracle):
        self.truth = oracle.truth

    def score(self, images, captions):
        return torch.tensor([float(self.truth.get(np.asarray(im).tobytes()) == c) for im, c in zip(images, captions)])


def test_a_perfect_pipeline_scores_the_maximum(data, captions):
    oracle = Oracle(data)
    out = evaluate(
        oracle, data, n=N, scorer=TruthScorer(oracle), batch_size=5, caption_metrics=captions, fid=mean_color_fid()
    )
    for task in ("t2i", "inpaint"):
        assert out[task]["judge"]["exact"] == 100.0
        assert out[task]["fid"] == pytest.approx(0, abs=1e-6)
        assert out[task]["clip_score"] == pytest.approx(100)
    for task in ("i2t", "infill"):
        assert (
            out[task]["judge"]["exact"] == 100.0
            and out[task]["judge"]["invalid"] == 0.0
            and out[task]["repeats"] == 0.0
        )
        assert out[task]["bleu4"] == pytest.approx(100, abs=1e-6)
        assert out[task]["meteor"] == pytest.approx(100) and out[task]["rouge_l"] == pytest.approx(100)
    assert out["t2i"]["inception_score"] is None and out["t2i"]["inception_score_unavailable"]
    assert [c[1] for c in oracle.calls if c[0] == "t2i"] == [5, 5, 2]  # batches with a progress bar
    seeds = [[g.initial_seed() for g in c[2]["generator"]] for c in oracle.calls if c[0] == "t2i"]
    assert seeds == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]  # input i draws from seed + i, whatever the batch


def test_a_wrong_pipeline_scores_low(data, captions):
    good = evaluate(Oracle(data), data, n=N, caption_metrics=captions, fid=mean_color_fid())
    bad = evaluate(Wrong(data), data, n=N, caption_metrics=captions, fid=mean_color_fid())
    for task in ("t2i", "inpaint"):
        assert bad[task]["judge"]["exact"] == 0.0
        assert bad[task]["fid"] > 100
        assert bad[task]["clip_score"] is None and "scorer" in bad[task]["clip_score_unavailable"]
    for task in ("i2t", "infill"):
        assert bad[task]["judge"]["exact"] == 0.0 and bad[task]["judge"]["invalid"] == 100.0
        for key in ("bleu4", "meteor", "rouge_l", "cider"):
            assert bad[task][key] < good[task][key] / 2, (task, key)


def test_reranking_and_the_preset_are_passed_to_the_pipeline(data, captions):
    oracle = Oracle(data)
    out = evaluate(
        oracle, data, ("t2i", "i2t"), n=4, num_candidates=3, preset="demo", caption_metrics=captions, fid=None
    )
    assert out["t2i"]["fid"] is None and out["t2i"]["fid_unavailable"] and out["fid_features"] is None
    kwargs = {task: kw for task, _, kw in oracle.calls}
    assert kwargs["t2i"]["num_candidates"] == 3 and kwargs["i2t"]["preset"] == "demo"
    assert out["preset"] == "demo" and out["rerank"]["image_candidates"] == out["rerank"]["text_candidates"] == 3


def test_report_files(data, captions, tmp_path):
    out = evaluate(Oracle(data), data, ("t2i", "i2t"), n=4, caption_metrics=captions, fid=mean_color_fid())
    json_path, md_path = write_report(out, tmp_path / "report")
    assert json.loads(json_path.read_text()) == out
    md = md_path.read_text()
    assert md == markdown(out)
    assert "| t2i |" in md and "| i2t |" in md and "mean color (test)" in md and "SPICE" in md


def test_shapes_spec_and_bad_specs():
    d = load_data("shapes:novel:3", 100, (32, 32))
    assert d.images.shape == (3, 32, 32, 3) and len(d.references) == 3 and d.shapes
    assert all(c in refs for c, refs in zip(d.captions, d.references))
    for spec in ("shapes:val:x", "shapes:nosuch", "shapes", "/no/such/dir"):
        with pytest.raises(UserError):
            load_data(spec, 4, (32, 32))
    with pytest.raises(UserError):
        evaluate(Oracle(d), d, ("t2i", "x2y"), n=3)


def test_pairs_on_disk_with_shapes_or_coco_references(data, tmp_path):
    from magvlt.data.pairs import write_pairs

    write_pairs(tmp_path / "pairs", data.images[:4], data.captions[:4], shard_size=3)
    d = load_data(tmp_path / "pairs", 100, (16, 16))
    assert d.images.shape == (4, 16, 16, 3) and d.shapes and d.references == data.references[:4]
    coco = tmp_path / "captions.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": i, "caption": f"caption {i}"} for i in range(4)]}))
    d = load_data(tmp_path / "pairs", 3, (32, 32), references=coco)
    assert d.references == [["caption 0"], ["caption 1"], ["caption 2"]] and np.array_equal(d.images, data.images[:3])
    write_pairs(tmp_path / "web", data.images[:2], ["a photo of a cat", "a dog"], tar=False)
    d = load_data(tmp_path / "web", 10, (32, 32))
    assert not d.shapes and d.references == [["a photo of a cat"], ["a dog"]]
    coco.write_text(json.dumps({"annotations": [{"image_id": 7, "caption": "x"}]}))
    with pytest.raises(UserError):
        load_data(tmp_path / "pairs", 3, (32, 32), references=coco)


@pytest.mark.parametrize(
    "argv",
    [
        ["--model", "/no/such/run", "--data", "shapes:val"],
        ["--model", "/no/such/run", "--data", "shapes:val", "--tasks", "t2i,caption"],
        ["--model", "/no/such/run", "--data", "shapes:val", "--n", "1"],
    ],
)
def test_cli_bad_input_exits_2(argv, capsys):
    assert main(["eval", *argv]) == 2
    assert "magvlt: error:" in capsys.readouterr().err
