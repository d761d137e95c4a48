"""Evaluation runs (Sec. 4): T2I, I2T, inpainting and infilling of a pipeline on held-out pairs, with the paper's
metrics and, on shapes-world data, the exact judge.

Any object that is called and has the methods of `magvlt.pipeline.MAGVLTPipeline` (caption, inpaint, infill, each
taking `num_candidates=`, `generator=` and `preset=` and returning `.images` or `.texts`) and an `image_size`
can be evaluated, so the metrics can be checked on stand-ins.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from magvlt.checkpoint import atomic_write_text
from magvlt.data.pairs import iter_pairs
from magvlt.data.shapes import iter_split, phrasings
from magvlt.errors import UserError
from magvlt.eval.benchmarks import NOCAPS_DOMAINS, Benchmark, is_benchmark, load_benchmark, read_images
from magvlt.eval.judge import judge_captions, judge_images, parse_caption
from magvlt.eval.metrics import (
    FID,
    INCEPTION_SCORE_UNAVAILABLE,
    CaptionMetrics,
    as_uint8,
    clip_score,
    coco_references,
    repeat_rate,
)
from magvlt.images import fit_image
from magvlt.schedulers import Preset, get_preset

TASKS = ("t2i", "i2t", "inpaint", "infill")
TEXT_TASKS = ("i2t", "infill")
DEFAULT_N = 500  # pairs of a shapes split or a pairs folder evaluated unless told otherwise


@dataclass
class EvalData:
    """Held-out pairs: images, one caption each, every reference caption, whether the shapes judge applies, and
    each image's NoCaps domain (caption metrics are also reported per domain)."""

    name: str
    images: np.ndarray  # uint8 [n, h, w, 3]
    captions: list[str]
    references: list[list[str]]
    shapes: bool
    domains: list[str] | None = None

    def head(self, n: int | None) -> EvalData:
        domains = None if self.domains is None else self.domains[:n]
        return EvalData(self.name, self.images[:n], self.captions[:n], self.references[:n], self.shapes, domains)


def shapes_data(spec: str, n: int, size: int) -> EvalData:
    """`shapes:SPLIT[:N]`: the first N (default n) samples of a shapes-world split at the model's image size;
    the references of a scene are all its valid phrasings."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or parts[0] != "shapes":
        raise UserError(f"bad data spec {spec!r}: use shapes:SPLIT or shapes:SPLIT:N (e.g. shapes:val:500)")
    if len(parts) == 3:
        if not parts[2].isdigit() or int(parts[2]) < 1:
            raise UserError(f"bad sample count in {spec!r}: expected a positive integer")
        n = int(parts[2])
    images, captions, references = [], [], []
    for ims, caps, scenes in iter_split(parts[1], n, size=size):
        images.append(ims)
        captions += caps
        references += [phrasings(s) for s in scenes]
    return EvalData(f"shapes:{parts[1]}:{n}", np.concatenate(images), captions, references, shapes=True)


def pairs_data(path: str | Path, n: int, image_size: tuple[int, int], references: Path | None = None) -> EvalData:
    """The first n pairs of a folder / tar shards, fitted to the model's image size. References: the COCO-format
    file's captions for the pair's image_id (its metadata's, else its numeric key); else, when every caption is
    a shapes-world caption, all phrasings of its scene (and the judge applies); else the pair's own caption."""
    pairs = list(itertools.islice(iter_pairs(path), n))
    if not pairs:
        raise UserError(f"no pairs found at {path}")
    images = np.stack([fit_image(p.image, image_size) for p in pairs])
    captions = [p.caption for p in pairs]
    scenes = [parse_caption(c) for c in captions]
    shapes = all(s is not None for s in scenes)
    if references is not None:
        coco = coco_references(references)
        refs = []
        for p in pairs:
            image_id = (p.meta or {}).get("image_id", p.key.rpartition("/")[2])
            if not str(image_id).isdigit() or int(image_id) not in coco:
                raise UserError(f"{references} has no captions for pair {p.key} (image_id {image_id})")
            refs.append(coco[int(image_id)])
    else:
        refs = [phrasings(s) for s in scenes] if shapes else [[c] for c in captions]
    return EvalData(f"{path}:{len(pairs)}", images, captions, refs, shapes)


def benchmark_data(bench: Benchmark, image_size: tuple[int, int]) -> EvalData:
    """A `coco:` / `nocaps:` selection (Sec. 4.2-4.3, magvlt.eval.benchmarks): its images fitted to the model's size,
    all their captions as references, the first as the prompt."""
    references = [list(e.references) for e in bench.entries]
    domains = [e.domain for e in bench.entries] if bench.kind == "nocaps" else None
    images = read_images(bench.files, image_size)
    return EvalData(bench.name, images, [r[0] for r in references], references, shapes=False, domains=domains)


def load_data(
    spec: str | Path | Benchmark, n: int | None, image_size: tuple[int, int], references: Path | None = None
) -> EvalData:
    """`shapes:SPLIT[:N]`, `coco:IMAGES_DIR:CAPTIONS_JSON[:N]` / `nocaps:IMAGES_DIR:NOCAPS_JSON[:N]` (or their
    Benchmark, see benchmark_data), or a folder / tar shards of image-caption pairs (see pairs_data); n None:
    DEFAULT_N pairs, or a benchmark's default selection."""
    if isinstance(spec, Benchmark) or is_benchmark(spec):
        if references is not None:
            raise UserError("--references is for pairs on disk; a coco: or nocaps: spec's references are its captions")
        return benchmark_data(spec if isinstance(spec, Benchmark) else load_benchmark(str(spec), n), image_size)
    n = DEFAULT_N if n is None else n
    if str(spec).startswith("shapes:"):
        if image_size[0] != image_size[1]:
            raise UserError(f"shapes-world images are square; this model makes {image_size[0]}x{image_size[1]}")
        if references is not None:
            raise UserError("--references is for pairs on disk; a shapes split's references are its phrasings")
        return shapes_data(str(spec), n, image_size[0])
    return pairs_data(spec, n, image_size, references)


def _chunks(n: int, size: int, desc: str):
    return tqdm([slice(lo, min(n, lo + size)) for lo in range(0, n, size)], desc=desc, leave=False, disable=None)


class _Run:
    """One evaluation: the pipeline, the data, the shared metric objects and the decoding options."""

    def __init__(
        self,
        pipeline,
        data: EvalData,
        candidates: int | None,
        scorer,
        seed: int,
        batch_size: int,
        preset: str | Preset | None,
        captions: CaptionMetrics | None,
        fid: FID | None,
    ):
        self.pipeline, self.data, self.k, self.scorer, self.seed = pipeline, data, candidates, scorer, seed
        self.chunk = max(1, batch_size // (candidates or 1))
        self.preset, self.captions, self.fid = preset, captions, fid
        self.generate_seconds: dict[str, float] = {}

    def _generate(self, task: str, call) -> list:
        """call(slice, **kwargs) over chunks of the data, input i drawing from its own generator seeded seed + i
        (so results do not depend on the chunk size); timed."""
        out, start = [], time.perf_counter()
        for sl in _chunks(len(self.data.captions), self.chunk, task):
            generators = [torch.Generator().manual_seed(self.seed + i) for i in range(sl.start, sl.stop)]
            out += call(sl, num_candidates=self.k, generator=generators, preset=self.preset)
        self.generate_seconds[task] = round(time.perf_counter() - start, 2)
        return out

    def _image_metrics(self, images: np.ndarray) -> dict:
        d = self.data
        if self.fid is None:
            out = {"fid": None, "fid_unavailable": "not requested"}
        else:
            out = {"fid": self.fid(images, d.images)}
        if self.scorer is None:
            out.update(clip_score=None, clip_score_unavailable="no contrastive scorer given")
        else:
            sims = [self.scorer.score(images[sl], d.captions[sl]) for sl in _chunks(len(images), self.chunk, "clip")]
            out["clip_score"] = clip_score(torch.cat(sims))
        if d.shapes:
            out["judge"] = judge_images(images, d.captions)
        return out

    def _caption_scores(self, captions: list[str], keep: list[int] | None = None) -> dict:
        """Caption metrics and repeats of the captions (of the images at `keep` only, if given)."""
        refs = self.data.references
        if keep is not None:
            captions, refs = [captions[i] for i in keep], [refs[i] for i in keep]
        return {**self.captions(captions, refs), "repeats": repeat_rate(captions)}

    def _text_metrics(self, captions: list[str]) -> dict:
        out = self._caption_scores(captions)
        if self.data.domains is not None:
            out["domains"] = {}
            for domain in NOCAPS_DOMAINS:  # per domain, as NoCaps reports (each on its own images only)
                keep = [i for i, d in enumerate(self.data.domains) if d == domain]
                if keep:
                    out["domains"][domain] = {"n": len(keep), **self._caption_scores(captions, keep)}
        if self.data.shapes:
            out["judge"] = judge_captions(captions, self.data.captions)
        return out

    def t2i(self) -> dict:
        d, p = self.data, self.pipeline
        images = as_uint8(self._generate("t2i", lambda sl, **kw: p(d.captions[sl], **kw).images))
        out = self._image_metrics(images)
        out.update(inception_score=None, inception_score_unavailable=INCEPTION_SCORE_UNAVAILABLE)
        return out

    def i2t(self) -> dict:
        d, p = self.data, self.pipeline
        return self._text_metrics(self._generate("i2t", lambda sl, **kw: p.caption(d.images[sl], **kw).texts))

    def inpaint(self) -> dict:
        d, p = self.data, self.pipeline
        images = self._generate("inpaint", lambda sl, **kw: p.inpaint(d.images[sl], None, d.captions[sl], **kw).images)
        return self._image_metrics(as_uint8(images))

    def infill(self) -> dict:
        d, p = self.data, self.pipeline
        captions = self._generate("infill", lambda sl, **kw: p.infill(d.images[sl], d.captions[sl], **kw).texts)
        return self._text_metrics(captions)


def evaluate(
    pipeline,
    data: str | Path | Benchmark | EvalData,
    tasks: Sequence[str] = TASKS,
    *,
    n: int | None = None,
    num_candidates: int | None = None,
    scorer=None,
    seed: int = 0,
    batch_size: int = 32,
    preset: str | Preset | None = None,
    caption_metrics: CaptionMetrics | None = None,
    fid: FID | str | None = "inception",
    references: Path | None = None,
) -> dict:
    """Run the tasks on the first n pairs of `data` (default: DEFAULT_N, or a benchmark's selection) and measure
    them (Sec. 4.2-4.3).

    t2i: images from captions -> FID vs the real images, CLIP score, judge. i2t: captions of the images ->
    BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE where available), judge. inpaint: the central half of the token grid
    regenerated given the rest and the caption -> FID, CLIP score, judge. infill: the central half of the
    caption's tokens regenerated given the rest and the image -> caption metrics, judge. On NoCaps the caption
    metrics are also given per domain (`domains`: in-domain, near-domain, out-domain, each on its own images).
    Outputs are decoded with `preset` (default: the pipeline's own) and the best of num_candidates (default: the
    preset's) kept by the pipeline's scorer (Sec. 4.2-4.3). `scorer` (default: the pipeline's) gives the CLIP score.
    fid: "inception" (FID.inception on the pipeline's device), an FID object (pass one to reuse its memoized
    real-image features across evaluations), or None to skip FID (it costs ~0.2 CPU-seconds per image).
    `caption_metrics` may be passed in likewise to reuse one METEOR process (~12 CPU-seconds to start).
    """
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise UserError(f"unknown task(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(TASKS)}")
    if (n is not None and n < 2) or (num_candidates or 1) < 1 or batch_size < 1:
        raise UserError(f"need n >= 2, candidates >= 1 and batch size >= 1, got {n}, {num_candidates}, {batch_size}")
    if not isinstance(data, EvalData):
        data = load_data(data, n, tuple(pipeline.image_size), references)
    data = data.head(n)
    if len(data.captions) < 2:
        raise UserError(f"{data.name} has {len(data.captions)} pair(s); evaluation needs at least 2")
    scorer = scorer if scorer is not None else getattr(pipeline, "scorer", None)
    own_captions = caption_metrics is None and any(t in TEXT_TASKS for t in tasks)
    captions = CaptionMetrics() if own_captions else caption_metrics
    if fid == "inception":
        fid = FID.inception(device=getattr(pipeline, "device", None)) if {"t2i", "inpaint"} & set(tasks) else None
    elif fid is not None and not isinstance(fid, FID):
        raise UserError(f"fid must be 'inception', an FID object or None, got {fid!r}")
    run = _Run(pipeline, data, num_candidates, scorer, seed, batch_size, preset, captions, fid)
    results = {
        "data": data.name,
        "n": len(data.captions),
        "seed": seed,
        "preset": preset if isinstance(preset, str) else None,
        "rerank": _rerank(pipeline, preset, num_candidates),
        "fid_features": None if fid is None else fid.name,
    }
    try:
        for task in tqdm(tasks, desc="evaluate", disable=None):
            start = time.perf_counter()
            results[task] = getattr(run, task)()
            results[task].update(
                generate_seconds=run.generate_seconds[task], seconds=round(time.perf_counter() - start, 2)
            )
    finally:
        if own_captions:
            captions.close()
    return results


def _rerank(pipeline, preset: str | Preset | None, num_candidates: int | None) -> dict:
    """How many candidates per input the pipeline decodes (images, texts) and what picks the best."""
    resolved = get_preset(preset or pipeline.preset) if preset or hasattr(pipeline, "preset") else None
    image = num_candidates or (resolved.image_candidates if resolved else 1)
    text = num_candidates or (resolved.text_candidates if resolved else 1)
    by = "contrastive scorer" if getattr(pipeline, "scorer", None) is not None else "model log-probability"
    weight = getattr(pipeline, "text_channel_weight", None)
    channel = weight(resolved, text) if resolved and weight else 0.0
    if channel > 0:
        by += f" (captions: + {channel:g} x the model's log p(image | caption))"
    return {"image_candidates": image, "text_candidates": text, "by": None if image == text == 1 else by}


# ---------------------------------------------------------------- report

JUDGE_COLUMNS = (
    ("exact", "judge exact"),
    ("size", "size"),
    ("color", "color"),
    ("shape", "shape"),
    ("position", "position"),
)
IMAGE_COLUMNS = (("fid", "FID"), ("clip_score", "CLIP score"), ("generate_seconds", "generation (s)"))
TEXT_COLUMNS = (
    ("bleu4", "BLEU-4"),
    ("meteor", "METEOR"),
    ("rouge_l", "ROUGE-L"),
    ("cider", "CIDEr"),
    ("spice", "SPICE"),
    ("repeats", "repeats (%)"),
    ("generate_seconds", "generation (s)"),
)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _rows(results: dict, tasks: Sequence[str]):
    """(label, metrics) of each task, then of each of its NoCaps domains."""
    for t in tasks:
        yield t, results[t]
        for domain, metrics in results[t].get("domains", {}).items():
            yield f"{t} {domain}", metrics


def _table(results: dict, tasks: Sequence[str], columns, judge_columns) -> list[str]:
    header = [label for _, label in judge_columns] + [label for _, label in columns]
    lines = ["| task | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for label, metrics in _rows(results, tasks):
        judge = metrics.get("judge", {})
        cells = [_cell(judge.get(key)) for key, _ in judge_columns] + [_cell(metrics.get(key)) for key, _ in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    """The results as markdown tables (image tasks, text tasks) with notes on what each metric used."""
    lines = [f"# magvlt eval: {results['data']} (n = {results['n']}, seed {results['seed']})", ""]
    rerank = results["rerank"]
    k = (rerank["image_candidates"], rerank["text_candidates"])
    lines.append(
        "Reranking: off." if k == (1, 1) else f"Reranking: best of {k[0]} images / {k[1]} texts by {rerank['by']}."
    )
    image_tasks = [t for t in ("t2i", "inpaint") if t in results]
    text_tasks = [t for t in TEXT_TASKS if t in results]
    judged = any("judge" in results[t] for t in image_tasks + text_tasks)
    judge_cols = JUDGE_COLUMNS if judged else ()
    if image_tasks:
        lines += ["", "## Image generation", ""] + _table(results, image_tasks, IMAGE_COLUMNS, judge_cols)
    if text_tasks:
        invalid = (("invalid", "invalid"),) if judged else ()
        lines += ["", "## Text generation", ""] + _table(results, text_tasks, TEXT_COLUMNS, judge_cols + invalid)
    notes = []
    if judged:
        notes.append(
            "Judge columns: shapes-world judge accuracy in %, exact scene and per attribute; "
            "invalid: % of captions outside the grammar."
        )
    domains = {d: m["n"] for t in text_tasks for d, m in results[t].get("domains", {}).items()}
    if domains:
        counts = ", ".join(f"{d} {k}" for d, k in domains.items())
        notes.append(f"NoCaps domain rows: the metrics on that domain's images only ({counts} images).")
    if results.get("fid_features"):
        notes.append(f"FID features: {results['fid_features']}.")
    if text_tasks:
        notes.append(
            "Caption metrics: pycocoevalcap after PTB tokenization, x100 as in the paper; repeats: % of "
            "captions with a word straight after itself."
        )
    if rerank["by"] == "contrastive scorer" and any(results[t].get("clip_score") is not None for t in image_tasks):
        notes.append("The CLIP score uses the contrastive model that reranked, so reranking raises it by construction.")
    for key, name in (
        ("fid", "FID"),
        ("inception_score", "Inception Score"),
        ("clip_score", "CLIP score"),
        ("spice", "SPICE"),
    ):
        reasons = {results[t].get(f"{key}_unavailable") for t in image_tasks + text_tasks} - {None}
        notes += [f"{name} unavailable: {reason}." for reason in sorted(reasons)]
    lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write metrics.json and metrics.md into out_dir."""
    out = Path(out_dir)
    atomic_write_text(out / "metrics.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "metrics.md", markdown(results))
    return out / "metrics.json", out / "metrics.md"
