"""Image-caption pairs on disk in the web-scale convention (img2dataset / webdataset).

A pair is `{key}.png` + `{key}.txt` (+ optional `{key}.json` metadata) with the files of one key next to each
other, either in tar shards `00000.tar`, `00001.tar`, ... or in a plain folder. The key is a file name up to
its first dot. Readers stream one pair at a time, so the same code reads the shapes world and real data.
Shards are plain ustar archives that `webdataset.WebDataset(urls).decode("rgb8")` reads as they are; they are
written and read with the standard library instead of that package, whose import brings torch and whose
defaults split shards by DataLoader worker and refuse to run under torchrun without a node splitter. Shards are
renamed into place when complete; a plain folder (for small sets and inspection) is written file by file.

Images are read as uint8 RGB by the rules of `magvlt.images` (alpha over black, the shapes-world
background). `magvlt.data.sources` reads the same layouts leniently, for `magvlt tokenize`.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magvlt.errors import UserError
from magvlt.images import BadSample, load_image

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp")
CAPTION_EXT = "txt"
META_EXT = "json"
_MISSING = object()


@dataclass(frozen=True)
class Pair:
    """One image-caption pair as read from disk."""

    key: str
    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    meta: dict | None


# ---------------------------------------------------------------- writing


def encode_png(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> PNG bytes (8-bit RGB, no row filter, zlib level 6): a few microseconds, where
    Pillow's encoder spends most of its time in Python for images this small."""
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise UserError(f"pairs are written from uint8 [H, W, 3] images, got {a.dtype} {list(a.shape)}")
    h, w, _ = a.shape
    rows = np.concatenate([np.zeros((h, 1), np.uint8), a.reshape(h, w * 3)], axis=1)  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8 bits per sample, RGB, deflate, no interlace
    pixels = zlib.compress(rows.tobytes(), 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _files(key: str, image, caption: str, meta: dict | None) -> list[tuple[str, bytes]]:
    files = [(f"{key}.png", encode_png(image)), (f"{key}.{CAPTION_EXT}", caption.encode())]
    if meta is not None:
        files.append((f"{key}.{META_EXT}", json.dumps(meta, sort_keys=True).encode()))
    return files


def _tar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file (mode 644, owner 0, mtime 0), as tarfile writes it."""
    h = bytearray(512)
    h[0:100] = name.encode().ljust(100, b"\0")
    h[100:136] = b"0000644\x000000000\x000000000\x00" + b"%011o\x00" % size  # mode, uid, gid, size
    h[136:157] = b"00000000000\x00        0"  # mtime, checksum placeholder, type: regular file
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _write_shard(path: Path, members: list[tuple[str, bytes]]) -> None:
    """One tar shard, written beside its final name and renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        for name, data in members:
            f.write(_tar_header(name, len(data)) + data + bytes(-len(data) % 512))
        f.write(bytes(1024))  # end of archive
    os.replace(tmp, path)


def write_pairs(
    out_dir: str | Path,
    images: Iterable[np.ndarray],
    captions: Iterable[str],
    *,
    shard_size: int = 10000,
    tar: bool = True,
    meta: Iterable[dict] | None = None,
) -> int:
    """Write pairs keyed 000000000, 000000001, ... as tar shards of shard_size pairs, or as a plain folder;
    returns the number written."""
    out = Path(out_dir)
    if shard_size < 1:
        raise UserError(f"shard_size must be positive, got {shard_size}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(split_name(f.name)[1] in (*IMAGE_EXTS, CAPTION_EXT, "tar") for f in out.iterdir()):
        raise UserError(f"{out} already holds pairs; write into an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    streams = (images, captions) if meta is None else (images, captions, meta)
    n, shard = 0, []
    for row in itertools.zip_longest(*streams, fillvalue=_MISSING):
        if any(x is _MISSING for x in row):
            what = "images and captions" if meta is None else "images, captions and meta"
            raise UserError(f"{what} differ in number (pair {n} is missing something)")
        image, caption, *extra = row
        if "\n" in caption:
            raise UserError(f"caption {n} holds a newline: {caption!r}")
        files = _files(f"{n:09d}", image, caption, extra[0] if extra else None)
        n += 1
        if not tar:
            for name, data in files:
                (out / name).write_bytes(data)
            continue
        shard += files
        if n % shard_size == 0:
            _write_shard(out / f"{n // shard_size - 1:05d}.tar", shard)
            shard = []
    if shard:
        _write_shard(out / f"{n // shard_size:05d}.tar", shard)
    return n


# ---------------------------------------------------------------- reading


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Image file bytes -> uint8 RGB [H, W, 3] (the rules of magvlt.images); UserError naming the file."""
    try:
        return np.asarray(load_image(data))
    except BadSample as e:
        raise UserError(f"cannot read image {name}: {e}") from None


def split_name(name: str) -> tuple[str, str]:
    """'dir/000001.png' -> ('dir/000001', 'png'): the key ends at the first dot of the base name."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def caption_text(data: bytes) -> str:
    """Caption file bytes -> the stripped UTF-8 text; BadSample if it is not UTF-8 or empty."""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadSample("caption not UTF-8") from None
    if not text:
        raise BadSample("empty caption")
    return text


def image_file(files: dict[str, tuple[str, bytes]]) -> tuple[str, bytes]:
    """The (where, bytes) of a key's image file; BadSample "no image" if it has none."""
    found = next((files[e] for e in IMAGE_EXTS if e in files), None)
    if found is None:
        raise BadSample("no image", "no " + "/".join(IMAGE_EXTS) + " file")
    if found[1] is None:
        raise BadSample("unreadable file", found[0])
    return found


def caption_file(files: dict[str, tuple[str, bytes]]) -> str:
    """A key's caption text (see caption_text); BadSample "no caption" if it has no .txt file."""
    if CAPTION_EXT not in files:
        raise BadSample("no caption", f"no .{CAPTION_EXT} file")
    where, data = files[CAPTION_EXT]
    if data is None:
        raise BadSample("unreadable file", where)
    return caption_text(data)


def _pair(key: str, files: dict[str, tuple[str, bytes]]) -> Pair:
    where = next(iter(files.values()))[0]
    try:
        image, caption = image_file(files), caption_file(files)
    except BadSample as e:
        raise UserError(f"pair {key!r} ({where}): {e}") from None
    meta = None
    if META_EXT in files:
        name, data = files[META_EXT]
        try:
            meta = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read metadata {name}: {e}") from None
    return Pair(key, decode_image(image[1], image[0]), caption, meta)


def group(members: Iterator[tuple[str, str, bytes]]) -> Iterator[tuple[str, dict[str, tuple[str, bytes]]]]:
    """Consecutive (name, where, bytes) files sharing a key -> (key, {ext: (where, bytes)}) (the webdataset rule)."""
    key, files = None, {}
    try:
        for name, where, data in members:
            k, ext = split_name(name)
            if k != key and files:
                yield key, files
                files = {}
            key = k
            files[ext] = (where, data)
    except BadSample:  # a shard that breaks off: the key read in full before the break still counts
        if files:
            yield key, files
        raise
    if files:
        yield key, files


def _hidden(name: str) -> bool:
    return name.rpartition("/")[2].startswith(".")


def tar_members(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """The files of a tar shard in order; a shard that cannot be read (on) raises BadSample "unreadable shard"."""
    try:
        with tarfile.open(path, "r|*") as tar:
            for info in tar:
                if info.isfile() and not _hidden(info.name):
                    yield info.name, f"{path}:{info.name}", tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise BadSample("unreadable shard", f"cannot read tar shard {path}: {e}") from None


def folder_members(path: Path, names: Iterable[str]) -> Iterator[tuple[str, str, bytes | None]]:
    """(name, where, bytes) of the named files of a folder, in the given order; None for a file that cannot be
    read (permissions, vanished), which `image_file` and `caption_file` report as a bad sample."""
    for name in names:
        try:
            data = (path / name).read_bytes()
        except OSError:
            data = None
        yield name, str(path / name), data


def folder_names(path: Path) -> list[str]:
    """The sorted names of a folder's visible files."""
    return sorted(e.name for e in os.scandir(path) if e.is_file() and not _hidden(e.name))


def iter_pairs(path: str | Path) -> Iterator[Pair]:
    """Stream the pairs of a folder of tar shards, a single .tar, or a plain folder of {key}.png + {key}.txt;
    the first bad file ends the stream with a UserError naming it (`magvlt tokenize` skips and counts instead)."""
    path = Path(path)
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise UserError(f"{path} is not a tar shard; give a .tar file or a folder of pairs")
        groups = group(tar_members(path))
    elif path.is_dir():
        shards = sorted(path.glob("*.tar"))
        groups = (
            itertools.chain.from_iterable(group(tar_members(s)) for s in shards)
            if shards
            else group(folder_members(path, folder_names(path)))
        )
    else:
        raise UserError(f"no pairs at {path}: not a folder or a tar file")
    for key, files in groups:
        yield _pair(key, files)


def load_pairs(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """All pairs at path in memory: (images uint8 [n, H, W, 3], captions); for small sets of one image size."""
    images, captions = [], []
    for pair in iter_pairs(path):
        if images and pair.image.shape != images[0].shape:
            raise UserError(
                f"pair {pair.key} is {pair.image.shape[:2]}, the first was {images[0].shape[:2]}; "
                "load_pairs needs one image size"
            )
        images.append(pair.image)
        captions.append(pair.caption)
    if not images:
        raise UserError(f"no pairs found at {path}")
    return np.stack(images), captions
