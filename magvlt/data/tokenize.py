"""Pre-tokenization (`magvlt tokenize`): image-caption pairs -> VQ codes and caption ids, written as shards.

Images are brought to one size as the paper's code does (`magvlt.images`: shorter side to the size,
bilinear, center crop). Each image is then encoded three times: at full size, squeezed to half width and
squeezed to half height (PIL's BOX filter, i.e. the mean of each pair of pixels), so MixSel (Sec. 3.4) can
join the codes of two half-size encodings without running the VQ-GAN while training. Captions are tokenized
without dropout and kept beside each shard for BPE dropout at training time; characters the text vocabulary
cannot spell are removed and counted.

The work is cut into the units of `magvlt.data.sources` (a tar shard, or a chunk of a folder); unit i becomes
shard i. Under torchrun rank r takes units r, r + world, ...; each unit is read, decoded (a thread pool) and
encoded (batches; bf16 autocast on GPU) on its own, then written with a record of what it kept and skipped
in `progress/`. A restarted run skips the units with a record, so it continues where it stopped and writes
exactly what an uninterrupted run writes. Rank 0 waits for every record, then writes `report.json` (counts
per reason and a summary line), `skipped.jsonl` (every skipped sample) and, last, `meta.json`.
"""

from __future__ import annotations

import collections
import hashlib
import json
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from magvlt.checkpoint import atomic_write_text
from magvlt.data.sources import Sample, Skipped, Unit
from magvlt.data.tokenized import FIELDS, META, as_rows, shard_dtypes, write_meta, write_shard
from magvlt.errors import UserError
from magvlt.images import BadSample, fit_image, load_image

JOB, PROGRESS, REPORT, SKIPPED = "tokenize.json", "progress", "report.json", "skipped.jsonl"


def squeeze(images: np.ndarray, axis: str) -> np.ndarray:
    """uint8 images [B, H, W, 3] resized to half width (axis "w") or half height ("h") with PIL's BOX filter."""
    _, h, w, _ = images.shape
    size = (w // 2, h) if axis == "w" else (w, h // 2)
    return np.stack([np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BOX)) for im in images])


def _device(vq) -> torch.device:
    param = next(vq.parameters(), None) if isinstance(vq, torch.nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


def encode_images(vq, images: np.ndarray) -> dict[str, np.ndarray]:
    """VQ codes [B, tokens] of the images at full size, half width and half height (raster order)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=_device(vq).type == "cuda"):
        codes = {
            "image": vq.encode(images),
            "image_half_w": vq.encode(squeeze(images, "w")),
            "image_half_h": vq.encode(squeeze(images, "h")),
        }
    return {k: v.flatten(1).cpu().numpy() for k, v in codes.items()}


def prepare_image(image: bytes | np.ndarray, size: int | None) -> np.ndarray:
    """An image file's bytes or a uint8 [H, W, 3] array -> uint8 [size, size, 3] (as is when size is None)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise UserError(f"images must be uint8 RGB [H, W, 3], got {image.dtype} {list(image.shape)}")
        return image if size is None else fit_image(image, (size, size))
    pil = load_image(image, draft_size=size)
    return np.asarray(pil) if size is None else fit_image(pil, (size, size))


def _prepared(image: bytes | np.ndarray, size: int | None) -> np.ndarray | BadSample:
    try:
        return prepare_image(image, size)
    except BadSample as e:
        return e


def _batches(items: Iterable[Sample | Skipped], batch_size: int, skipped: list[Skipped], bar) -> Iterator[list[Sample]]:
    """Samples in batches of batch_size (the last one shorter); Skipped records go to `skipped` (and the bar)."""
    batch = []
    for item in items:
        if isinstance(item, Skipped):
            skipped.append(item)
            bar.update(1)
            continue
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _prefetched(
    batches: Iterable[list[Sample]], pool: ThreadPoolExecutor, size: int | None
) -> Iterator[tuple[list[Sample], list]]:
    """Each batch with its images prepared in the pool; the next batch is prepared while this one is encoded."""
    pending: tuple[list[Sample], list[Future]] | None = None
    for batch in batches:
        futures = [pool.submit(_prepared, s.image, size) for s in batch]
        if pending:
            yield pending[0], [f.result() for f in pending[1]]
        pending = (batch, futures)
    if pending:
        yield pending[0], [f.result() for f in pending[1]]


class _UnitWriter:
    """Tokenizes the samples of one unit and writes its shard and its progress record."""

    def __init__(self, vq, tok, out: Path, dtypes: dict[str, type]):
        self.vq, self.tok, self.out, self.dtypes = vq, tok, out, dtypes

    def run(self, index: int, unit: Unit, pool: ThreadPoolExecutor, size: int | None, batch_size: int, bar) -> dict:
        """Tokenize unit `index` into shard-{index}; returns its progress record (also written to progress/)."""
        rows: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS}
        captions, skipped, unknown, shapes = [], [], set(), set()
        stats = {"images": 0, "captions_with_unknown_characters": 0, "truncated_captions": 0}
        for batch, images in _prefetched(_batches(unit.read(), batch_size, skipped, bar), pool, size):
            kept, texts, repeats = [], [], []
            for sample, image in zip(batch, images):
                if isinstance(image, BadSample):
                    skipped.append(Skipped(sample.where, image.reason, image.detail))
                    continue
                mine = self._captions(sample, skipped, unknown, stats)
                if mine:
                    kept.append(image)
                    texts += mine
                    repeats.append(len(mine))
            bar.update(len(batch))
            if not kept:
                continue
            shapes |= {im.shape for im in kept}
            if len(shapes) > 1:
                raise UserError(f"images of several sizes in {unit.name} ({sorted(shapes)}); give an image size")
            batch_rows = self._encode(np.stack(kept), texts, np.array(repeats), stats)
            for key, value in as_rows(batch_rows, len(texts), self.dtypes).items():
                rows[key].append(value)
            captions += texts
            stats["images"] += len(kept)
        name = f"shard-{index:05d}"
        if captions:
            write_shard(self.out, name, {k: np.concatenate(v) for k, v in rows.items()}, captions)
        record = {
            "unit": unit.name,
            "shard": name if captions else None,
            "count": len(captions),
            "image_size": list(next(iter(shapes))[:2]) if shapes else None,
            **stats,
            "unknown_characters": "".join(sorted(unknown)),
            "skipped": [s.to_json() for s in skipped],
        }
        atomic_write_text(self.out / PROGRESS / f"{index:05d}.json", json.dumps(record) + "\n")
        return record

    def _captions(self, sample: Sample, skipped: list[Skipped], unknown: set[str], stats: dict) -> list[str]:
        """The sample's captions the tokenizer can spell (unknown characters removed and counted)."""
        kept = []
        for caption in sample.captions:
            text, missing = self.tok.drop_unknown(caption)
            if missing:
                unknown.update(missing)
                stats["captions_with_unknown_characters"] += 1
                if not text:
                    skipped.append(Skipped(sample.where, "no known characters in caption", caption[:200]))
                    continue
            kept.append(text if missing else caption)
        return kept

    def _encode(self, images: np.ndarray, texts: list[str], repeats: np.ndarray, stats: dict) -> dict[str, np.ndarray]:
        codes = encode_images(self.vq, images)
        rows = {k: np.repeat(v, repeats, axis=0) for k, v in codes.items()}
        with warnings.catch_warnings(record=True) as truncated:
            warnings.simplefilter("always")
            rows["text"], rows["length"] = self.tok.encode(texts)
        if truncated:
            stats["truncated_captions"] += sum(len(self.tok.bpe_ids(t)) > self.tok.length - 2 for t in texts)
        return rows


def _check_job(out: Path, job: dict) -> None:
    """Start out/ for this job, or check that it holds an earlier run of the same job (then it is resumed)."""
    path = out / JOB
    if path.is_file():
        if json.loads(path.read_text()) != job:
            raise UserError(
                f"{out} holds the tokens of other data, image size or tokenizers; "
                "give a new --out folder (or delete it to start over)"
            )
        return
    if (out / META).is_file():
        raise UserError(f"{out} already holds tokenized data; give a new --out folder")
    (out / PROGRESS).mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(job, indent=1) + "\n")


def tokenize_units(
    units: Sequence[Unit],
    vq,
    tok,
    out_dir: str | Path,
    *,
    vq_dir: str | Path | None,
    text_dir: str | Path | None,
    image_size: int | None,
    batch_size: int = 64,
    workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> Path:
    """Tokenize this rank's units into out_dir (see the module docstring); rank 0 then writes meta.json and the
    report once every rank's units are done. Returns out_dir."""
    if batch_size < 1 or workers < 1:
        raise UserError(f"batch size and workers must be >= 1, got {batch_size} and {workers}")
    if not units:
        raise UserError("no image-caption pairs to tokenize")
    if image_size is not None and (image_size < 1 or image_size % (2 * vq.factor)):
        raise UserError(
            f"image size {image_size} must be a multiple of {2 * vq.factor}: the VQ-GAN's factor "
            f"{vq.factor} at half size too (MixSel's half-width and half-height encodings)"
        )
    out = Path(out_dir)
    job = {
        "units": [u.name for u in units],
        "image_size": image_size,
        "image_vocab": vq.cfg.n_embed,
        "text_vocab": tok.vocab_size,
        "text_len": tok.length,
        "vq_dir": _resolved(vq_dir),
        "text_dir": _resolved(text_dir),
    }
    _check_job(out, job)
    todo = [i for i in range(rank, len(units), world_size) if not (out / PROGRESS / f"{i:05d}.json").is_file()]
    writer = _UnitWriter(vq, tok, out, shard_dtypes(job))
    sizes = [units[i].size for i in todo]
    total = None if None in sizes else sum(sizes)  # the bar counts samples read (kept or skipped)
    desc = f"tokenize (rank {rank})" if world_size > 1 else "tokenize"
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=total, unit="pair", desc=desc, disable=None if progress else True) as bar,
    ):
        skipped = 0
        for done, i in enumerate(todo, 1):
            skipped += len(writer.run(i, units[i], pool, image_size, batch_size, bar)["skipped"])
            bar.set_postfix(units=f"{done}/{len(todo)}", skipped=skipped)
    if rank == 0:
        _finish(out, job, vq.cell, progress)
    return out


def _resolved(path: str | Path | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _wait_for(paths: list[Path], progress: bool) -> None:
    """Block until every path exists (the other ranks' progress records)."""
    missing = [p for p in paths if not p.is_file()]
    with tqdm(
        total=len(paths),
        initial=len(paths) - len(missing),
        unit="unit",
        desc="waiting for other ranks",
        disable=None if progress and missing else True,
    ) as bar:
        while missing:
            time.sleep(1.0)
            still = [p for p in missing if not p.is_file()]
            bar.update(len(missing) - len(still))
            missing = still


def _finish(out: Path, job: dict, cell: tuple[int, int], progress: bool) -> None:
    """The report, the list of skipped samples and meta.json, from every unit's progress record."""
    paths = [out / PROGRESS / f"{i:05d}.json" for i in range(len(job["units"]))]
    _wait_for(paths, progress)
    records = [json.loads(p.read_text()) for p in paths]
    reasons = collections.Counter(s["reason"] for r in records for s in r["skipped"])
    skipped_lines = [json.dumps({"unit": r["unit"], **s}) + "\n" for r in records for s in r["skipped"]]
    atomic_write_text(out / SKIPPED, "".join(skipped_lines))
    kept = [r for r in records if r["count"]]
    sizes = {tuple(r["image_size"]) for r in kept}
    if len(sizes) > 1:
        raise UserError(f"units hold images of several sizes {sorted(sizes)}; give an image size")
    totals = {
        k: sum(r[k] for r in records)
        for k in ("count", "images", "captions_with_unknown_characters", "truncated_captions")
    }
    unknown = "".join(sorted({c for r in records for c in r["unknown_characters"]}))
    report = {
        "pairs": totals["count"],
        "images": totals["images"],
        "units": len(records),
        "skipped": sum(reasons.values()),
        "skipped_by_reason": dict(sorted(reasons.items())),
        "captions_with_unknown_characters": totals["captions_with_unknown_characters"],
        "unknown_characters": unknown,
        "truncated_captions": totals["truncated_captions"],
        "skipped_list": SKIPPED,
    }
    report["summary"] = _summary(report)
    atomic_write_text(out / REPORT, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    if not kept:
        raise UserError(f"no usable pairs: every sample was skipped ({report['summary']}); see {out / SKIPPED}")
    ((h, w),) = sizes
    write_meta(
        out,
        {
            "image_size": [h, w],
            "image_grid": [h // cell[0], w // cell[1]],
            "image_vocab": job["image_vocab"],
            "text_vocab": job["text_vocab"],
            "text_len": job["text_len"],
            "preprocess": "shorter side to the image size (bilinear), center crop",
            "squeeze": "PIL BOX to half width / half height",
            "vq_dir": job["vq_dir"],
            "text_dir": job["text_dir"],
        },
        [{"name": r["shard"], "count": r["count"]} for r in kept],
    )


def _summary(report: dict) -> str:
    """One line: what was kept, what was skipped and why."""
    line = f"{report['pairs']:,} pairs ({report['images']:,} images) from {report['units']:,} units"
    if report["skipped"]:
        why = ", ".join(f"{n:,} {reason}" for reason, n in report["skipped_by_reason"].items())
        line += f"; skipped {report['skipped']:,} ({why})"
    else:
        line += "; nothing skipped"
    if report["captions_with_unknown_characters"]:
        line += (
            f"; {report['captions_with_unknown_characters']:,} captions lost characters the text vocabulary "
            f"cannot spell ({report['unknown_characters'][:40]!r})"
        )
    if report["truncated_captions"]:
        line += f"; {report['truncated_captions']:,} captions truncated"
    return line


def _memory_units(images: Sequence[np.ndarray], captions: Sequence[str], shard_size: int) -> list[Unit]:
    """In-memory pairs as units of shard_size pairs, each named by a hash of its content (so a folder of
    other pairs is never taken for an earlier run to resume)."""

    def read(start: int, stop: int) -> Iterator[Sample]:
        for i in range(start, stop):
            yield Sample(str(i), f"pair {i}", images[i], (captions[i],))

    def digest(start: int, stop: int) -> str:
        h = hashlib.blake2b(digest_size=8)
        for i in range(start, stop):
            h.update(np.ascontiguousarray(images[i]).tobytes())
            h.update(captions[i].encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()

    bounds = [(i, min(i + shard_size, len(captions))) for i in range(0, len(captions), shard_size)]
    return [Unit(f"memory[{a}:{b}] {digest(a, b)}", lambda a=a, b=b: read(a, b), b - a) for a, b in bounds]


def tokenize_pairs(
    images: np.ndarray | Sequence[np.ndarray],
    captions: Sequence[str],
    vq,
    tok,
    out_dir: str | Path,
    *,
    vq_dir: str | Path | None,
    text_dir: str | Path | None,
    shard_size: int = 4096,
    batch_size: int = 64,
    image_size: int | None = None,
    progress: bool = True,
) -> Path:
    """Tokenize in-memory images (uint8 [n, H, W, 3]) and their captions into shards; vq_dir/text_dir go to
    meta.json. The images keep their size unless image_size is given."""
    if len(images) != len(captions):
        raise UserError(f"{len(images)} images but {len(captions)} captions")
    if shard_size < 1:
        raise UserError(f"shard size must be >= 1, got {shard_size}")
    return tokenize_units(
        _memory_units(images, captions, shard_size),
        vq,
        tok,
        out_dir,
        vq_dir=vq_dir,
        text_dir=text_dir,
        image_size=image_size,
        batch_size=batch_size,
        workers=1,
        progress=progress,
    )
