"""The paper's zero-shot benchmarks (Sec. 4.2-4.3, Appendix B) read from the files people download.

MS-COCO 2014: a COCO-format caption file (`captions_val2014.json`: `images` [{id, file_name}], `annotations`
[{image_id, caption}]), all its images, or Karpathy's split file (`dataset_coco.json`: `images` [{filepath,
filename, split, cocoid, sentences: [{raw}]}]), its test split (5,000 images: the captioning benchmark). NoCaps
validation: `nocaps_val_4500_captions.json`, COCO-format with each image's `domain`. As the official evaluation
(kakaobrain/magvlt eval_t2i.py, eval_i2t.py) reads them: images in image-id order, an image's references are all
its captions after the official cleaning (`pre_caption`), and its first one is its T2I prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from magvlt.errors import UserError
from magvlt.eval.metrics import references_by_image
from magvlt.images import fit_image, read_image
from magvlt.official.text import pre_caption

KINDS = ("coco", "nocaps")
DEFAULT_LIMIT = 30_000  # the official eval_t2i.py: FID over the first 30,000 val2014 images and their prompts
NOCAPS_DOMAINS = ("in-domain", "near-domain", "out-domain")
USAGE = "use coco:IMAGES_DIR:CAPTIONS_JSON[:N] or nocaps:IMAGES_DIR:NOCAPS_JSON[:N]"
COCO_FORMAT = "a COCO-format caption file (images [{id, file_name}], annotations [{image_id, caption}])"
EXPECTED = {
    "coco": f"{COCO_FORMAT} or Karpathy's split file dataset_coco.json "
    "(images [{filepath, filename, split, cocoid, sentences: [{raw}]}])",
    "nocaps": f"a NoCaps caption file: {COCO_FORMAT} with each image's domain",
}


@dataclass(frozen=True)
class Entry:
    """One benchmark image: where it may lie (the first that exists), its references and its NoCaps domain."""

    paths: tuple[Path, ...]
    references: tuple[str, ...]
    domain: str | None = None


@dataclass(frozen=True)
class Benchmark:
    """The selected images of a `coco:` / `nocaps:` spec and their files; name: the spec that selects exactly them."""

    kind: str
    name: str
    entries: list[Entry]
    files: list[Path]


def is_benchmark(spec) -> bool:
    """Whether a --data spec names a benchmark (coco:... or nocaps:...)."""
    return str(spec).split(":", 1)[0] in KINDS


def parse_spec(spec: str) -> tuple[str, Path, Path, int | None]:
    """`KIND:IMAGES_DIR:JSON[:N]` -> (kind, images_dir, json, N or None); a UserError says what is wrong."""
    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[0] not in KINDS or not all(parts[1:3]):
        raise UserError(f"bad data spec {spec!r}: {USAGE}")
    count = None
    if len(parts) == 4:
        if not parts[3].isdigit() or int(parts[3]) < 1:
            raise UserError(f"bad sample count in {spec!r}: expected a positive integer")
        count = int(parts[3])
    images_dir, path = Path(parts[1]), Path(parts[2])
    if not images_dir.is_dir():
        raise UserError(f"image folder {images_dir} not found (data spec {spec!r})")
    if not path.is_file():
        raise UserError(f"captions file {path} not found (data spec {spec!r})")
    return parts[0], images_dir, path, count


def _cleaned(captions) -> tuple[str, ...]:
    return tuple(pre_caption(str(c)) for c in captions)


def coco_entries(images_dir: Path, data: dict) -> list[Entry]:
    """A COCO-format file: its images that have captions, in id order, at IMAGES_DIR/file_name."""
    refs = references_by_image(data["annotations"])
    images = sorted(data["images"], key=lambda im: int(im["id"]))
    return [
        Entry((images_dir / im["file_name"],), _cleaned(refs[int(im["id"])]), im.get("domain"))
        for im in images
        if int(im["id"]) in refs
    ]


def karpathy_entries(images_dir: Path, data: dict) -> list[Entry]:
    """Karpathy's split file: its test split in cocoid order, at IMAGES_DIR/filepath/filename or IMAGES_DIR/filename."""
    test = sorted((im for im in data["images"] if im["split"] == "test"), key=lambda im: int(im["cocoid"]))
    return [
        Entry(
            tuple(dict.fromkeys((images_dir / im.get("filepath", "") / im["filename"], images_dir / im["filename"]))),
            _cleaned(s["raw"] for s in im["sentences"]),
        )
        for im in test
        if im["sentences"]
    ]


def _read_json(path: Path, kind: str) -> dict:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} as JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"{path} is not {EXPECTED[kind]}")
    return data


def _entries(kind: str, images_dir: Path, path: Path) -> list[Entry]:
    """The file's images by its format (detected from its keys), checked for what the kind needs."""
    data = _read_json(path, kind)
    karpathy = "annotations" not in data and bool(data["images"]) and "sentences" in data["images"][0]
    if "annotations" not in data and not (kind == "coco" and karpathy):
        raise UserError(f"{path} is not {EXPECTED[kind]}")
    try:
        entries = karpathy_entries(images_dir, data) if karpathy else coco_entries(images_dir, data)
    except (KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path} has a malformed entry ({type(e).__name__}: {e}); expected {EXPECTED[kind]}") from None
    except ValueError as e:
        raise UserError(f"{path} has a non-integer image id ({e})") from None
    if kind == "nocaps":
        odd = next((e for e in entries if e.domain not in NOCAPS_DOMAINS), None)
        if odd is not None:
            raise UserError(
                f"{path}: image {odd.paths[0].name} has domain {odd.domain!r}; NoCaps images have one of "
                f"{', '.join(NOCAPS_DOMAINS)}"
            )
    if not entries:
        raise UserError(f"{path} lists no {'test-split ' if karpathy else ''}images with captions")
    return entries


def _files(entries: list[Entry]) -> list[Path]:
    """Where each entry's image lies; a UserError names the first missing one and how many are missing."""
    found = [next((p for p in e.paths if p.is_file()), None) for e in entries]
    missing = [e.paths for e, p in zip(entries, found) if p is None]
    if missing:
        also = f" (also looked for {', '.join(map(str, missing[0][1:]))})" if len(missing[0]) > 1 else ""
        raise UserError(
            f"{len(missing)} of the {len(entries)} images to evaluate are missing; the first: {missing[0][0]}{also}"
        )
    return found


def load_benchmark(spec: str, n: int | None) -> Benchmark:
    """The first images of a spec (N of the spec or n, whichever is smaller, else up to DEFAULT_LIMIT), checked to
    exist but not read yet."""
    kind, images_dir, path, count = parse_spec(spec)
    limit = min((c for c in (count, n) if c is not None), default=DEFAULT_LIMIT)
    entries = _entries(kind, images_dir, path)[:limit]
    return Benchmark(kind, f"{kind}:{images_dir}:{path}:{len(entries)}", entries, _files(entries))


def read_images(files: list[Path], size: tuple[int, int]) -> np.ndarray:
    """Image files read by magvlt.images' rules and fitted to (H, W): uint8 [n, H, W, 3]."""
    images = np.empty((len(files), *size, 3), np.uint8)
    for i, path in enumerate(tqdm(files, desc="images", leave=False, disable=None)):
        images[i] = fit_image(read_image(path), size)
    return images
