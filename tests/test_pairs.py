"""Pairs on disk: webdataset-style tar shards and folders round-trip; odd images become RGB uint8; bad files are named."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from magvlt.data.pairs import decode_image, encode_png, iter_pairs, load_pairs, write_pairs
from magvlt.data.shapes import render_split
from magvlt.errors import UserError


@pytest.fixture(scope="module")
def data():
    return render_split("train", 25, size=32)


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("tar", [True, False])
def test_round_trip(tmp_path, data, tar):
    images, captions = data
    meta = [{"index": i} for i in range(len(captions))]
    assert write_pairs(tmp_path / "d", iter(images), iter(captions), shard_size=10, tar=tar, meta=iter(meta)) == 25
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    if tar:
        assert names == ["00000.tar", "00001.tar", "00002.tar"]
    else:
        assert names[:3] == ["000000000.json", "000000000.png", "000000000.txt"] and len(names) == 75
    pairs = list(iter_pairs(tmp_path / "d"))
    assert [p.key for p in pairs] == [f"{i:09d}" for i in range(25)]
    assert [p.caption for p in pairs] == captions and [p.meta for p in pairs] == meta
    assert all(p.image.dtype == np.uint8 and (p.image == im).all() for p, im in zip(pairs, images))
    loaded, caps = load_pairs(tmp_path / "d")
    assert (loaded == images).all() and caps == captions


def test_shards_follow_the_webdataset_layout(tmp_path, data):
    images, captions = data
    write_pairs(tmp_path, images[:3], captions[:3])
    with tarfile.open(tmp_path / "00000.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == [f"00000000{i}.{e}" for i in range(3) for e in ("png", "txt")]
        assert all(m.isfile() and m.mode == 0o644 for m in members)
        assert tar.extractfile("000000001.txt").read().decode() == captions[1]
        with Image.open(tar.extractfile("000000002.png")) as im:
            assert im.mode == "RGB" and (np.asarray(im) == images[2]).all()
    assert [p.caption for p in iter_pairs(tmp_path / "00000.tar")] == captions[:3]  # one shard on its own


def test_encode_png_is_lossless_for_any_rgb():
    a = np.random.default_rng(0).integers(0, 256, (7, 13, 3), dtype=np.uint8)
    with Image.open(io.BytesIO(encode_png(a))) as im:
        assert (np.asarray(im) == a).all()
    with pytest.raises(UserError):
        encode_png(a[..., :2])


def test_images_are_converted_to_rgb_uint8():
    gray = np.array([[0, 128], [255, 7]], np.uint8)
    assert (decode_image(png(gray), "g.png") == gray[..., None]).all()
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0], rgba[0, 1] = (200, 100, 50, 255), (200, 100, 50, 128)
    assert decode_image(png(rgba), "a.png").tolist() == [[[200, 100, 50], [100, 50, 25]]]  # over black
    deep = np.array([[0, 257, 65535, 32896]], np.uint16)
    assert decode_image(png(deep), "d.png")[..., 0].tolist() == [[0, 1, 255, 128]]  # round(v * 255 / 65535)
    pal = Image.fromarray(np.array([[0, 1]], np.uint8)).convert("P")
    pal.putpalette([10, 20, 30, 40, 50, 60])
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert decode_image(buf.getvalue(), "p.png").tolist() == [[[10, 20, 30], [40, 50, 60]]]


def test_bad_files_are_user_errors_naming_the_file(tmp_path, data):
    images, captions = data
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x1.png").write_bytes(b"not a png")
    (tmp_path / "a" / "x1.txt").write_text("a small red circle")
    with pytest.raises(UserError, match="x1.png"):
        list(iter_pairs(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "k.png").write_bytes(encode_png(images[0]))
    with pytest.raises(UserError, match="'k'.*caption"):
        list(iter_pairs(tmp_path / "b"))
    with pytest.raises(UserError, match="no pairs"):
        list(iter_pairs(tmp_path / "missing"))
    with pytest.raises(UserError, match="already holds pairs"):
        write_pairs(tmp_path / "a", images[:1], captions[:1])
    with pytest.raises(UserError, match="differ in number"):
        write_pairs(tmp_path / "c", images[:3], captions[:2])
    with pytest.raises(UserError, match="meta differ"):
        write_pairs(tmp_path / "d", images[:3], captions[:3], meta=[{}])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no pairs found"):
        load_pairs(tmp_path / "empty")


def test_reading_streams_shard_by_shard(tmp_path, data):
    images, captions = data
    write_pairs(tmp_path, images, captions, shard_size=10)
    (tmp_path / "00001.tar").write_bytes(b"\0garbage" * 100)
    stream = iter_pairs(tmp_path)
    first = [next(stream) for _ in range(10)]  # the good first shard comes out before the bad one is touched
    assert [p.caption for p in first] == captions[:10]
    with pytest.raises(UserError, match="00001.tar"):
        next(stream)
