"""The paper's zero-shot benchmarks (`coco:` and `nocaps:` data specs) on a small COCO-format fixture made here:
COCO 2014 val photos as JPEGs, captions_val2014.json, Karpathy's dataset_coco.json and a NoCaps-style file."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from magvlt.cli import main
from magvlt.errors import UserError
from magvlt.eval import benchmarks
from magvlt.eval.benchmarks import NOCAPS_DOMAINS
from magvlt.eval.metrics import CaptionMetrics
from magvlt.eval.run import evaluate, load_data, markdown
from magvlt.images import fit_image, read_image
from magvlt.pipeline import TextPipelineOutput

FIX = Path(__file__).parent / "fixtures" / "official"
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry")
IDS = (42, 7, 19, 3, 25, 11)  # the images' COCO ids, listed out of order
CAPTIONS = {
    42: ["An astronaut in a white suit poses with a flag.", "a woman in a space suit smiling"],
    7: ["A tabby cat looks to the side.", "an orange cat sitting indoors", "a cat with green eyes"],
    19: ["A cup of coffee on a saucer.", "black coffee in a white cup"],
    3: ["A rocket on its launch pad.", "a space shuttle ready to launch"],
    25: ["A man with a camera on a tripod.", "a black-and-white photo of a photographer"],
    11: [],  # an image without captions is left out
}
SIZE = (16, 16)


def coco_name(i: int) -> str:
    return f"COCO_val2014_{i:012d}.jpg"


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """root/val2014/*.jpg, root/captions_val2014.json, root/dataset_coco.json, root/nocaps/ + its json."""
    root = tmp_path_factory.mktemp("coco")
    (root / "val2014").mkdir()
    for i, name in zip(IDS, PHOTOS):
        im = Image.fromarray(getattr(skimage.data, name)())
        im.reduce(8).save(root / "val2014" / coco_name(i), quality=90)
    annotations = [{"image_id": i, "caption": c} for i in reversed(IDS) for c in CAPTIONS[i]]
    images = [{"id": i, "file_name": coco_name(i)} for i in IDS]
    (root / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    splits = {42: "train", 7: "test", 19: "val", 3: "test", 25: "test", 11: "restval"}
    karpathy = [
        {
            "filepath": "val2014",
            "filename": coco_name(i),
            "split": splits[i],
            "cocoid": i,
            "sentences": [{"raw": c, "tokens": c.split()} for c in CAPTIONS[i]],
        }
        for i in IDS
    ]
    (root / "dataset_coco.json").write_text(json.dumps({"images": karpathy, "dataset": "coco"}))
    (root / "nocaps").mkdir()
    domains = {3: "in-domain", 7: "in-domain", 19: "near-domain", 25: "near-domain", 42: "out-domain"}
    for i in domains:
        shutil.copy(root / "val2014" / coco_name(i), root / "nocaps" / f"{i:04d}.jpg")
    nocaps = {
        "images": [{"id": i, "file_name": f"{i:04d}.jpg", "domain": d} for i, d in domains.items()],
        "annotations": [a for a in annotations if a["image_id"] in domains],
    }
    (root / "nocaps_val_4500_captions.json").write_text(json.dumps(nocaps))
    return root


def fitted(path: Path) -> np.ndarray:
    return fit_image(read_image(path), SIZE)


def test_a_coco_caption_file_gives_its_captioned_images_in_id_order(coco):
    d = load_data(f"coco:{coco / 'val2014'}:{coco / 'captions_val2014.json'}", None, SIZE)
    ids = [3, 7, 19, 25, 42]
    assert d.name.endswith(":5") and d.domains is None and not d.shapes
    assert np.array_equal(d.images, np.stack([fitted(coco / "val2014" / coco_name(i)) for i in ids]))
    assert d.references[1] == [
        "a tabby cat looks to the side.",
        "an orange cat sitting indoors",
        "a cat with green eyes",
    ]
    assert d.references[3][1] == "a black and white photo of a photographer"  # the official pre_caption
    assert d.captions == [refs[0] for refs in d.references]  # the T2I prompt: the first caption


def test_karpathy_split_file_gives_the_test_split_in_either_layout(coco):
    for images_dir in (coco, coco / "val2014"):  # IMAGES_DIR/filepath/filename or IMAGES_DIR/filename
        d = load_data(f"coco:{images_dir}:{coco / 'dataset_coco.json'}", 100, SIZE)
        assert [r[0] for r in d.references] == [
            "a rocket on its launch pad.",
            "a tabby cat looks to the side.",
            "a man with a camera on a tripod.",
        ]
        assert np.array_equal(d.images[0], fitted(coco / "val2014" / coco_name(3)))
        assert [len(r) for r in d.references] == [2, 3, 2]


def test_the_count_limits_what_is_read(coco, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(benchmarks, "DEFAULT_LIMIT", 4)  # 30,000 in the paper's protocol
    assert len(load_data(f"coco:{coco / 'val2014'}:{coco / 'captions_val2014.json'}", None, SIZE).captions) == 4
    shutil.copytree(coco / "val2014", tmp_path / "val2014")
    (tmp_path / "val2014" / coco_name(25)).unlink()  # the third of the test split
    spec = f"coco:{tmp_path}:{coco / 'dataset_coco.json'}"
    assert len(load_data(f"{spec}:2", None, SIZE).captions) == 2
    assert len(load_data(f"{spec}:5", 2, SIZE).captions) == 2  # the smaller of N and n
    missing = rf"1 of the 3 images to evaluate are missing; the first: .*val2014/{coco_name(25)} \(also looked for .*\)"
    with pytest.raises(UserError, match=missing):
        load_data(spec, None, SIZE)
    assert main(["eval", "--model", str(tmp_path / "no-run"), "--data", spec]) == 2
    assert re.search(missing, capsys.readouterr().err)


class EchoCaptioner:
    """Captions an in-domain image with its first reference and every other image with a wrong caption."""

    image_size = SIZE

    def __init__(self, data):
        self.truth = {
            im.tobytes(): refs[0] if domain == "in-domain" else "a plate of spaghetti on a table"
            for im, refs, domain in zip(data.images, data.references, data.domains)
        }

    def caption(self, images, **kw):
        return TextPipelineOutput([self.truth[np.asarray(im).tobytes()] for im in images])


def test_nocaps_metrics_per_domain(coco):
    d = load_data(f"nocaps:{coco / 'nocaps'}:{coco / 'nocaps_val_4500_captions.json'}", None, SIZE)
    assert d.domains == ["in-domain", "in-domain", "near-domain", "near-domain", "out-domain"]  # id order: 3 7 19 25 42
    with CaptionMetrics() as captions:
        out = evaluate(EchoCaptioner(d), d, ("i2t",), caption_metrics=captions)
        domains = out["i2t"]["domains"]
        assert list(domains) == list(NOCAPS_DOMAINS) and [m["n"] for m in domains.values()] == [2, 2, 1]
        near = captions(["a plate of spaghetti on a table"] * 2, d.references[2:4])
    assert domains["in-domain"]["bleu4"] == pytest.approx(100, abs=1e-6)
    assert {k: domains["near-domain"][k] for k in near} == near  # scored on its own images only
    assert domains["out-domain"]["cider"] < 1 < out["i2t"]["cider"] < domains["in-domain"]["cider"]
    assert "| i2t in-domain |" in markdown(out) and "in-domain 2, near-domain 2, out-domain 1 images" in markdown(out)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("coco:{root}", "bad data spec"),
        ("coco:{root}/val2014:{root}/captions_val2014.json:x", "bad sample count"),
        ("coco:{root}/nosuch:{root}/captions_val2014.json", "image folder .*nosuch not found"),
        ("coco:{root}/val2014:{root}/nosuch.json", "captions file .*nosuch.json not found"),
        ("coco:{root}/val2014:{root}/other.json", "is not a COCO-format caption file"),
        ("coco:{root}/val2014:{root}/malformed.json", "malformed.json has a malformed entry \\(KeyError: 'caption'\\)"),
        ("nocaps:{root}/val2014:{root}/dataset_coco.json", "is not a NoCaps caption file"),
        ("nocaps:{root}/val2014:{root}/captions_val2014.json", "has domain None"),
    ],
)
def test_bad_specs_exit_2_with_a_clear_message(coco, spec, message, capsys):
    (coco / "other.json").write_text(json.dumps({"images": [{"id": 1}], "info": {}}))
    (coco / "malformed.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": [{"image_id": 1}]}))
    spec = spec.format(root=coco)
    with pytest.raises(UserError, match=message):
        load_data(spec, None, SIZE)
    assert main(["eval", "--model", str(coco / "no-run"), "--data", spec]) == 2
    err = capsys.readouterr().err
    assert re.search(f"magvlt: error: .*{message}", err) and "no-run" not in err  # checked before the model loads


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The converted official fixture checkpoint: a tiny released-architecture run (8x8 images)."""
    out = tmp_path_factory.mktemp("converted")
    heads = json.loads((FIX / "outputs.json").read_text())["architecture"]["heads"]
    assert main(["convert", "official", str(FIX / "magvlt.ckpt"), "--out", str(out), "--heads", str(heads)]) == 0
    return out


def test_eval_end_to_end_on_a_converted_official_run(coco, run, tmp_path, capsys):
    spec = f"coco:{coco}:{coco / 'dataset_coco.json'}"
    argv = ["eval", "--model", str(run), "--preset", "official", "--data", spec, "--tasks", "t2i,i2t"]
    assert main([*argv, "--n", "3", "--candidates", "2", "--no-fid", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "metrics.json").read_text())
    assert results["data"] == f"{spec}:3" and results["n"] == 3 and results["preset"] == "official"
    assert results["t2i"]["fid"] is None and isinstance(results["t2i"]["generate_seconds"], float)
    for key in ("bleu4", "meteor", "rouge_l", "cider", "repeats"):
        assert isinstance(results["i2t"][key], float), key
    assert "domains" not in results["i2t"]
    assert "| i2t |" in capsys.readouterr().out and (tmp_path / "metrics.md").is_file()
