"""`magvlt tokenize` on data as crawlers leave it: odd and broken samples are skipped and reported, never fatal;
brace patterns, folders and COCO JSON read; runs resume and split over ranks with identical output."""

import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from magvlt.cli import main as cli_main
from magvlt.config import VQConfig
from magvlt.data.sources import open_source
from magvlt.data.tokenize import PROGRESS, REPORT, SKIPPED, tokenize_units
from magvlt.data.tokenized import TokenizedDataset
from magvlt.errors import UserError
from magvlt.text import CaptionBPE
from magvlt.vq import VQGAN, save_vq

WORDS = ["a red circle", "a photo of a cat", "two dogs on grass", "the blue sky"]


def image_bytes(w: int, h: int, mode: str = "RGB", fmt: str = "JPEG", seed: int = 0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    im = Image.fromarray(a, "RGBA").convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def write_tar(path, members: list[tuple[str, bytes]], cut: bool = False) -> None:
    """A tar of the members; with cut, it breaks off in the middle of the last member (an interrupted download)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            end = buf.tell() + 512 + len(data) // 2  # a short name takes one 512-byte header block
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue()[:end] if cut else buf.getvalue())


def shard_members(start: int) -> list[tuple[str, bytes]]:
    """A shard of every kind of sample a crawl brings, good and bad (keys numbered from start)."""
    good = [
        (image_bytes(40, 30, seed=start), WORDS[0]),
        (image_bytes(16, 50, "L", "PNG"), WORDS[1]),
        (image_bytes(30, 30, "RGBA", "WEBP"), WORDS[2]),
        (image_bytes(33, 20, "CMYK"), WORDS[3]),
        (image_bytes(20, 20, "P", "PNG"), "a cat \U0001f431 on grass"),
    ]
    members = []
    for i, (image, caption) in enumerate(good):
        ext = "png" if image.startswith(b"\x89PNG") else "webp" if image[8:12] == b"WEBP" else "jpg"
        members += [
            (f"{start + i:06d}.{ext}", image),
            (f"{start + i:06d}.txt", caption.encode()),
            (f"{start + i:06d}.json", b'{"url": "x"}'),
        ]
    k = start + len(good)
    return members + [
        (f"{k:06d}.jpg", b""),
        (f"{k:06d}.txt", b"empty image"),
        (f"{k + 1:06d}.jpg", image_bytes(40, 40)[:200]),
        (f"{k + 1:06d}.txt", b"truncated"),
        (f"{k + 2:06d}.jpg", image_bytes(20, 20)),  # no caption
        (f"{k + 3:06d}.jpg", image_bytes(20, 20)),
        (f"{k + 3:06d}.txt", b"  \n"),
        (f"{k + 4:06d}.jpg", image_bytes(20, 20)),
        (f"{k + 4:06d}.txt", b"caf\xe9 latin-1"),
        (f"{k + 5:06d}.txt", b"a caption without its image"),
        (f"{k + 6:06d}.jpg", image_bytes(20, 20)),
        (f"{k + 6:06d}.txt", "\U0001f431\U0001f431".encode()),
    ]


SKIPS = {
    "empty file": 1,
    "corrupt image": 1,
    "no caption": 1,
    "empty caption": 1,
    "caption not UTF-8": 1,
    "no image": 1,
    "no known characters in caption": 1,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions on a shared 2-core machine: one thread is ~100x faster than two fighting over it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Shards 00000, 00001 (cut short in its last member), no 00002, and 00003; a 16 px VQ-GAN and a caption BPE."""
    tmp = tmp_path_factory.mktemp("sources")
    (tmp / "shards").mkdir()
    write_tar(tmp / "shards" / "00000.tar", shard_members(0))
    write_tar(
        tmp / "shards" / "00001.tar", shard_members(100) + [("000199.jpg", image_bytes(64, 64, seed=9))], cut=True
    )
    write_tar(tmp / "shards" / "00003.tar", shard_members(300)[:6])
    vq = VQGAN(
        VQConfig(resolution=16, ch=32, ch_mult=(1, 2), attn_resolutions=(), z_channels=8, embed_dim=8, n_embed=32)
    ).eval()
    save_vq(vq, tmp / "vq")
    tok = CaptionBPE.train([*WORDS, "a cat on grass", "empty image truncated"], vocab_size=80, length=12)
    tok.save(tmp / "text")
    return tmp, vq, tok


def run(setup, out, **kw):
    tmp, vq, tok = setup
    units = open_source(str(tmp / "shards" / "{00000..00003}.tar"))
    return tokenize_units(
        units,
        vq,
        tok,
        tmp / out,
        vq_dir=tmp / "vq",
        text_dir=tmp / "text",
        image_size=16,
        batch_size=3,
        workers=2,
        progress=False,
        **kw,
    )


def files(out) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_bad_samples_are_skipped_counted_and_listed(setup):
    out = run(setup, "one")
    report = json.loads((out / REPORT).read_text())
    ds = TokenizedDataset(out)
    assert ds.meta["image_size"] == [16, 16] and ds.meta["image_grid"] == [8, 8]
    # shard 0: 5 good; shard 1: 5 good, the rest cut off; shard 3: 2 good
    assert len(ds) == report["pairs"] == 12 and [s["name"] for s in ds.meta["shards"]] == [
        "shard-00000",
        "shard-00001",
        "shard-00003",
    ]
    expected = {k: 2 * v for k, v in SKIPS.items()} | {"missing shard": 1, "unreadable shard": 1}
    assert report["skipped_by_reason"] == dict(sorted(expected.items())) and report["skipped"] == sum(expected.values())
    assert report["captions_with_unknown_characters"] == 4 and report["unknown_characters"] == "\U0001f431"
    lines = [json.loads(line) for line in (out / SKIPPED).read_text().splitlines()]
    assert len(lines) == report["skipped"] and {"unit", "where", "reason", "detail"} <= set(lines[0])
    assert any(s["reason"] == "missing shard" and s["where"].endswith("00002.tar") for s in lines)
    _, captions = ds.rows(np.arange(len(ds)))
    assert captions[:5] == [*WORDS, "a cat on grass"]
    assert "skipped 16" in report["summary"] and "1 missing shard" in report["summary"]


def test_two_ranks_and_a_resumed_run_write_what_one_run_writes(setup):
    tmp = setup[0]
    reference = files(run(setup, "one"))
    run(setup, "ranks", rank=1, world_size=2)  # rank 1 first: rank 0 waits for every unit
    assert sorted((tmp / "ranks" / PROGRESS).iterdir())[0].name == "00001.json"
    assert files(run(setup, "ranks", rank=0, world_size=2)) == reference
    killed = tmp / "killed"
    run(setup, "killed")
    (killed / "meta.json").unlink()  # as if killed inside unit 3: its shard half written, no record
    (killed / PROGRESS / "00003.json").unlink()
    (killed / "shard-00003.safetensors").write_bytes(b"partial")
    assert files(run(setup, "killed")) == reference


def test_folder_and_coco_sources(setup, tmp_path):
    _, vq, tok = setup
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, caption in enumerate(WORDS):
        (folder / f"img{i}.jpg").write_bytes(image_bytes(30 + i, 20, seed=i))
        (folder / f"img{i}.txt").write_text(caption)
    units = open_source(folder, chunk=3)
    assert [u.name.rpartition("[")[2] for u in units] == ["0:3]", "3:4]"]
    coco = {
        "images": [{"id": i, "file_name": f"img{i}.jpg"} for i in range(4)] + [{"id": 9, "file_name": "gone.jpg"}],
        "annotations": [{"image_id": i, "caption": c} for i, c in enumerate(WORDS)]
        + [
            {"image_id": 0, "caption": WORDS[3]},
            {"image_id": 1, "caption": ""},
            {"image_id": 9, "caption": WORDS[0]},
            {"image_id": 77, "caption": WORDS[1]},
        ],
    }
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    out = tokenize_units(
        open_source(tmp_path / "captions.json", folder),
        vq,
        tok,
        tmp_path / "coco",
        vq_dir=None,
        text_dir=None,
        image_size=16,
        progress=False,
    )
    rows, captions = TokenizedDataset(out).rows(np.arange(5))
    assert captions == [WORDS[0], WORDS[3], *WORDS[1:]]  # image 0 has two captions: one encoding, two rows
    assert (rows["image"][0] == rows["image"][1]).all()
    assert json.loads((out / REPORT).read_text())["skipped_by_reason"] == {"empty caption": 1, "no image": 2}
    with pytest.raises(UserError, match="--images"):
        open_source(tmp_path / "captions.json")


def test_cli_reports_and_refuses_other_data_in_the_same_folder(setup, capsys):
    tmp = setup[0]
    argv = [
        "tokenize",
        "--data",
        str(tmp / "shards"),
        "--vq",
        str(tmp / "vq"),
        "--text",
        str(tmp / "text"),
        "--out",
        str(tmp / "cli"),
        "--workers",
        "1",
    ]
    assert cli_main(argv) == 0
    err = capsys.readouterr().err
    assert "magvlt: tokenized 12 pairs (12 images) from 3 units; skipped 15" in err  # no 00002 in a folder
    assert TokenizedDataset(tmp / "cli").meta["image_size"] == [16, 16]  # the VQ-GAN's resolution by default
    assert cli_main([*argv, "--image-size", "32"]) == 2
    assert "holds the tokens of other data" in capsys.readouterr().err
    both = [
        *argv[:2],
        str(tmp / "shards" / "00000.tar"),
        str(tmp / "shards" / "00003.tar"),
        *argv[3:7],
        "--out",
        str(tmp / "both"),
    ]
    assert cli_main(both) == 0 and len(TokenizedDataset(tmp / "both")) == 7  # several sources joined


def test_an_image_size_the_vq_gan_cannot_halve_is_refused(setup, capsys):
    tmp = setup[0]
    argv = [
        "tokenize",
        "--data",
        str(tmp / "shards"),
        "--vq",
        str(tmp / "vq"),
        "--text",
        str(tmp / "text"),
        "--out",
        str(tmp / "odd"),
        "--image-size",
        "18",
    ]
    assert cli_main(argv) == 2 and "must be a multiple of 4" in capsys.readouterr().err


def test_a_file_that_cannot_be_read_is_a_skipped_sample(setup, tmp_path):
    _, vq, tok = setup
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, caption in enumerate(WORDS[:3]):
        (folder / f"img{i}.jpg").write_bytes(image_bytes(24, 20, seed=i))
        (folder / f"img{i}.txt").write_text(caption)
    units = open_source(folder)
    (folder / "img1.jpg").unlink()  # listed, then gone: root reads through permissions, a vanished file does not
    out = tokenize_units(units, vq, tok, tmp_path / "out", vq_dir=None, text_dir=None, image_size=16, progress=False)
    assert json.loads((out / REPORT).read_text())["skipped_by_reason"] == {"unreadable file": 1}
    assert TokenizedDataset(out).rows(np.arange(2))[1] == [WORDS[0], WORDS[2]]
