"""Image-caption sources for `magvlt tokenize`, read leniently and cut into units of work.

A source is one of the layouts users have: webdataset / img2dataset tar shards (a folder of `*.tar`, one
`.tar`, or a brace pattern such as `shards/{00000..00999}.tar`), a plain folder of `{key}.jpg` + `{key}.txt`,
or a COCO-style captions JSON (`images`: id, file_name; `annotations`: image_id, caption) with its image
folder. It is cut into units: one per tar shard, or `chunk` keys / images of a folder or JSON. A unit is
read on its own, always in the same order, which is what makes tokenization resumable and splittable over
ranks. Reading yields `Sample`s (image bytes still encoded, captions checked) and `Skipped` records: a
missing or empty caption, non-UTF-8 text, a key with no image, a missing or unreadable shard never stop a run.
"""

from __future__ import annotations

import functools
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from braceexpand import braceexpand

from magvlt.data.pairs import (
    caption_file,
    caption_text,
    folder_members,
    folder_names,
    group,
    image_file,
    split_name,
    tar_members,
)
from magvlt.errors import UserError
from magvlt.images import BadSample


@dataclass(frozen=True)
class Sample:
    """One image (file bytes, not decoded yet) with its caption(s)."""

    key: str
    where: str
    image: bytes
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Skipped:
    """A sample (or the rest of a shard) left out, and why."""

    where: str
    reason: str
    detail: str = ""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Unit:
    """A piece of a source that is read and written on its own; size: its number of samples, if known."""

    name: str
    read: Callable[[], Iterator[Sample | Skipped]]
    size: int | None = None


def open_source(spec: str | Path, images: str | Path | None = None, chunk: int = 10000) -> list[Unit]:
    """The units of a source (layouts in the module docstring); UserError if there is nothing to read."""
    if chunk < 1:
        raise UserError(f"chunk must be positive, got {chunk}")
    text = str(spec)
    if "{" in text:
        return _tar_units([Path(p) for p in braceexpand(text)], text)
    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        if images is None:
            raise UserError(f"{path} is a captions JSON: give its image folder with --images")
        return _coco_units(path, Path(images), chunk)
    if images is not None:
        raise UserError("--images goes with a COCO-style captions JSON given as --data")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise UserError(
                f"{path} is not a tar shard; give a .tar file, a folder, a brace pattern or a captions JSON"
            )
        return _tar_units([path], text)
    if not path.is_dir():
        raise UserError(f"no pairs at {path}: not a folder, a tar file, a brace pattern or a captions JSON")
    shards = sorted(path.glob("*.tar"))
    return _tar_units(shards, text) if shards else _folder_units(path, chunk)


def _tar_units(paths: list[Path], spec: str) -> list[Unit]:
    if not any(p.is_file() for p in paths):
        raise UserError(f"no tar shards at {spec}")
    return [Unit(str(p), functools.partial(_read_tar, p), _img2dataset_successes(p)) for p in paths]


def _img2dataset_successes(shard: Path) -> int | None:
    """The samples img2dataset wrote into a shard, from the `{shard}_stats.json` it leaves beside it."""
    try:
        return int(json.loads(shard.with_name(f"{shard.stem}_stats.json").read_text())["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _samples(groups, where: str) -> Iterator[Sample | Skipped]:
    """(key, files) groups -> samples, skipping keys without a usable image or caption; a shard that breaks
    off yields one "unreadable shard" record for the rest of it."""
    try:
        for key, files in groups:
            try:
                (name, image), caption = image_file(files), caption_file(files)
            except BadSample as e:
                yield Skipped(next(iter(files.values()))[0], e.reason, e.detail)
                continue
            yield Sample(key, name, image, (caption,))
    except BadSample as e:
        yield Skipped(where, e.reason, e.detail)


def _read_tar(path: Path) -> Iterator[Sample | Skipped]:
    if not path.is_file():
        yield Skipped(str(path), "missing shard")
        return
    yield from _samples(group(tar_members(path)), str(path))


def _folder_units(path: Path, chunk: int) -> list[Unit]:
    names = folder_names(path)
    if not names:
        raise UserError(f"no pairs found at {path}")
    keys: list[list[str]] = []  # the file names of each key, keys in sorted order
    for name in names:
        if keys and split_name(keys[-1][0])[0] == split_name(name)[0]:
            keys[-1].append(name)
        else:
            keys.append([name])
    parts = [keys[i : i + chunk] for i in range(0, len(keys), chunk)]
    return [
        Unit(f"{path}[{i * chunk}:{i * chunk + len(p)}]", functools.partial(_read_folder, path, p), len(p))
        for i, p in enumerate(parts)
    ]


def _read_folder(path: Path, keys: list[list[str]]) -> Iterator[Sample | Skipped]:
    yield from _samples(group(folder_members(path, (n for names in keys for n in names))), str(path))


def _coco_units(path: Path, image_dir: Path, chunk: int) -> list[Unit]:
    try:
        data = json.loads(path.read_bytes())
        images = [(str(im["id"]), str(im["file_name"])) for im in data["images"]]
        captions: dict[str, list] = {key: [] for key, _ in images}
        for ann in data["annotations"]:
            captions.setdefault(str(ann["image_id"]), []).append(ann.get("caption"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise UserError(
            f"{path} is not a COCO-style captions JSON (images: id, file_name; annotations: image_id, caption): {e!r}"
        ) from None
    if not image_dir.is_dir():
        raise UserError(f"image folder {image_dir} not found")
    rows = [(key, name, captions.pop(key, [])) for key, name in images]
    orphans = [
        Skipped(f"{path} annotation of image_id {key}", "no image", "image_id not in images")
        for key, raw in captions.items()
        for _ in raw
    ]  # what is left names no listed image
    parts = [rows[i : i + chunk] for i in range(0, len(rows), chunk)]
    return [
        Unit(
            f"{path}[{i * chunk}:{i * chunk + len(p)}]",
            functools.partial(_read_coco, image_dir, p, orphans if i == 0 else []),
            len(p),
        )
        for i, p in enumerate(parts)
    ]


def _read_coco(
    image_dir: Path, rows: list[tuple[str, str, list]], orphans: list[Skipped]
) -> Iterator[Sample | Skipped]:
    yield from orphans
    for key, name, raw in rows:
        where = str(image_dir / name)
        kept = []
        for n, caption in enumerate(raw):
            try:
                kept.append(caption_text(caption.encode() if isinstance(caption, str) else b""))
            except BadSample as e:
                yield Skipped(f"{where} caption {n}", e.reason, e.detail)
        if not raw:
            yield Skipped(where, "no caption")
        if not kept:
            continue
        try:
            image = (image_dir / name).read_bytes()
        except OSError as e:
            yield Skipped(where, "no image", str(e))
            continue
        yield Sample(key, where, image, tuple(kept))
