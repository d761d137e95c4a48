"""End to end on real photographs (scikit-image's samples) and broken files: tar shards -> `magvlt tokenize`
on 2 ranks -> `magvlt train` on 2 ranks -> resume -> `magvlt generate`, every step through the command line."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magvlt.config import VQConfig
from magvlt.data.tokenized import TokenizedDataset
from magvlt.text import CaptionBPE
from magvlt.train.rundir import load_checkpoint
from magvlt.vq import VQGAN, save_vq

skdata = pytest.importorskip("skimage.data")

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
}

# (skimage sample, how it is stored, caption)
PHOTOS = [
    ("astronaut", "jpg", "an astronaut in a white suit in front of a flag"),
    ("coffee", "exif", "a cup of coffee on a saucer"),  # stored sideways with an EXIF rotation
    ("chelsea", "cmyk", "a tabby cat looking to the left"),
    ("rocket", "webp", "a rocket on its launch pad"),
    ("camera", "png16", "a man with a camera on a tripod"),
    ("coins", "png", "a grid of old coins"),
    ("logo", "rgba", "the scikit image logo"),
    ("hubble_deep_field", "jpg", "galaxies in the deep field of the hubble telescope"),
    ("immunohistochemistry", "jpg", "stained tissue under a microscope"),
    ("colorwheel", "palette", "a wheel of colors"),
    ("clock", "jpg", "a clock on a wall"),
    ("moon", "png", "the surface of the moon"),
]


def encode(name: str, kind: str) -> tuple[str, bytes]:
    """The sample image as a crawler may find it: (extension, file bytes)."""
    a = getattr(skdata, name)()
    buf = io.BytesIO()
    if kind == "png16":
        Image.fromarray(a.astype(np.uint16) * 257).save(buf, format="PNG")
        return "png", buf.getvalue()
    image = Image.fromarray(a)
    if kind == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(buf, format="JPEG", exif=exif.tobytes())
    elif kind == "cmyk":
        image.convert("CMYK").save(buf, format="JPEG")
    elif kind == "palette":
        image.convert("P").save(buf, format="PNG")
    elif kind in ("webp", "rgba"):
        image.save(buf, format="WEBP")
    else:
        image.save(buf, format="PNG" if kind == "png" else "JPEG")
    return (
        "jpg"
        if kind in ("exif", "cmyk")
        else "webp"
        if kind in ("webp", "rgba")
        else "png"
        if kind == "palette"
        else kind
    ), buf.getvalue()


def write_shards(out: Path) -> None:
    """Two tar shards of the photos plus broken samples: empty, truncated, no caption, non-UTF-8, not a PNG."""
    out.mkdir()
    members = []
    for i, (name, kind, caption) in enumerate(PHOTOS):
        ext, data = encode(name, kind)
        members.append([(f"{i:09d}.{ext}", data), (f"{i:09d}.txt", caption.encode()), (f"{i:09d}.json", b"{}")])
    jpeg = members[0][0][1]
    broken = [
        [("100.jpg", b""), ("100.txt", b"an empty file")],
        [("101.jpg", jpeg[: len(jpeg) // 3]), ("101.txt", b"a truncated photo")],
        [("102.jpg", jpeg)],
        [("103.jpg", jpeg), ("103.txt", "caf\u00e9".encode("latin-1"))],
        [("104.png", b"\x89PNG\r\n\x1a\n" + bytes(8) + b"not a png"), ("104.txt", b"a broken png")],
    ]
    for shard, part in enumerate((members[:6] + broken[:2], members[6:] + broken[2:])):
        with tarfile.open(out / f"{shard:05d}.tar", "w") as tar:
            for name, data in (f for sample in part for f in sample):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def cli(*args: str, ranks: int = 0, timeout: int = 240) -> str:
    """Run `magvlt ARGS` (under torchrun with `ranks` processes) and return its stderr + stdout."""
    launch = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "-m", "magvlt"]
        if ranks
        else [sys.executable, "-m", "magvlt"]
    )
    proc = subprocess.Popen(
        [*launch, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output = proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:  # a hung collective: end torchrun and its ranks together
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-5000:]
    return output


@pytest.mark.slow
def test_photos_to_a_resumed_two_rank_run_and_a_caption(tmp_path):
    write_shards(tmp_path / "shards")
    vq = VQGAN(
        VQConfig(resolution=32, ch=32, ch_mult=(1, 2, 2), attn_resolutions=(), z_channels=8, embed_dim=8, n_embed=64)
    ).eval()
    save_vq(vq, tmp_path / "vq")
    CaptionBPE.train([c for *_, c in PHOTOS], vocab_size=120, length=16).save(tmp_path / "text")

    output = cli(
        "tokenize",
        "--data",
        str(tmp_path / "shards" / "{00000..00001}.tar"),
        "--vq",
        str(tmp_path / "vq"),
        "--text",
        str(tmp_path / "text"),
        "--out",
        str(tmp_path / "tokens"),
        "--workers",
        "2",
        ranks=2,
    )
    report = json.loads((tmp_path / "tokens" / "report.json").read_text())
    assert report["pairs"] == len(PHOTOS) and report["skipped_by_reason"] == {
        "caption not UTF-8": 1,
        "corrupt image": 2,
        "empty file": 1,
        "no caption": 1,
    }
    assert "magvlt: tokenized 12 pairs (12 images) from 2 units; skipped 5" in output
    data = TokenizedDataset(tmp_path / "tokens")
    assert data.meta["image_size"] == [32, 32] and data.meta["image_grid"] == [8, 8]
    assert data.rows(np.arange(12))[1] == [c for *_, c in PHOTOS]

    train = ["train", "--data", str(tmp_path / "tokens"), "--out", str(tmp_path / "run"), "--no-progress"]
    small = [
        "model.n_layer=1",
        "model.n_head=2",
        "model.n_embd=64",
        "batch_size=8",
        "warmup_steps=1",
        "log_every=1",
        "ckpt_every=2",
        "precision=fp32",
        "shuffle_shards=1",
        "bpe_dropout=0.1",
    ]
    cli(*train, "--config", "tiny", "--steps", "2", *small, ranks=2)
    assert load_checkpoint(tmp_path / "run")[1]["data"] == {"epoch": 1, "position": 8}  # 12 pairs: one batch an epoch
    output = cli(*train, "--resume", "--steps", "3", ranks=2)
    assert "resuming" in output and load_checkpoint(tmp_path / "run")[1]["step"] == 3
    assert load_checkpoint(tmp_path / "run")[1]["data"] == {"epoch": 2, "position": 8}

    photo = tmp_path / "chelsea.png"
    Image.fromarray(skdata.chelsea()).save(photo)
    output = cli("generate", "i2t", "--model", str(tmp_path / "run"), "--image", str(photo), "--steps", "2")
    line = json.loads(output.strip().splitlines()[-1])
    assert line["image"] == str(photo) and isinstance(line["caption"], str)
