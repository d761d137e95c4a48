"""`magvlt demo`: the whole method on the built-in shapes world, on a CPU, with nothing downloaded.

Stages (each cached under the output folder and reused by a second run unless `fresh`): shapes-world pairs on
disk -> caption BPE -> VQ-GAN -> pre-tokenized shards -> contrastive scorer -> MAGVLT (8:1:1 tasks, UnrollMask,
MixSel) -> evaluation on `val` and `novel` with the judge -> samples.png, refinement.gif, loss.png, metrics.json.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from magvlt.config import TRAIN_PRESETS, VQ_PRESETS, TrainConfig, preset
from magvlt.errors import UserError

if TYPE_CHECKING:  # torch-backed modules load lazily, so registering the CLI stays fast
    import torch

    from magvlt.schedulers import Preset


TOKENIZERS = ("palette", "vq-gan")


@dataclass
class DemoConfig:
    """What the demo builds and how long each trained stage may take (defaults: ~20 minutes on 2 cores)."""

    out: Path = Path("runs/demo")
    minutes: float = 12.0  # the MAGVLT transformer
    # ...and at least `min_rate` updates a minute of it: where other processes share the cores, training goes on
    # past `minutes` to make them, up to `stretch` x minutes (quiet 2-core AVX2 EPYCs made 236-287 a minute, a
    # Xeon with AMX ~350; one thread beside a `yes` ~140)
    min_rate: float = 250.0
    stretch: float = 5 / 3
    # the image tokenizer: "palette" (a colour code and a pattern code per 8 x 8 patch, fitted in seconds, exact on
    # the shapes world, novel colour-shape pairs made of seen codes) or "vq-gan" (the paper's, trained for
    # vq_minutes)
    tokenizer: str = "palette"
    vq_minutes: float = 5.0
    # ...but at least this many steps: a quiet 2-core AVX2 machine makes ~700 in the 5 minutes (28.7 dB, the judge
    # reads back 91.5% of val scenes); under a 5x load the 5 minutes gave 131 steps and codes too coarse to learn
    vq_min_steps: int = 600
    clip_minutes: float = 1.0
    n_train: int = 20000
    n_eval: int = 200  # `val` pairs judged
    # `novel` pairs judged (at most n_eval): judging the 4 tasks on 200 pairs took 3.6 min of a quiet 2-core EPYC
    n_novel: int = 100
    # evaluation as in the paper's Sec. 4.2-4.3: sample candidates, keep the best by the contrastive scorer (the
    # paper: the best of 32 images / 64 captions by CLIP); the decoding rules and counts are the "demo" preset's
    # (magvlt.schedulers.PRESETS), these override them when set: images and captions per input, and one
    # temperature for both
    candidates: int | None = None
    caption_candidates: int | None = None
    temperature: float | None = None
    size: int = 32
    text_len: int = 32  # fits two joined captions for MixSel
    # a narrower model on smaller batches: with a few minutes of CPU, 4 x 128 (batch 32) took 3.75x the updates of
    # 4 x 256 (batch 64) and judged better on every attribute after 3 minutes
    width: int = 128
    batch_size: int = 32
    # the run-to-run spread was the learning rate: over 3,000 updates, val T2I / I2T (100 pairs) judged 65 / 69,
    # 99 / 89 and 85 / 86% for training seeds 1-3 at 2e-3 (seed 1 gave sizes and shapes to the wrong object), and
    # 97 / 83, 94 / 88 and 97 / 93% at 1e-3 (96-97% T2I already at 2,000 updates; benchmarks/demo_spread.py)
    lr: float = 1e-3
    # the share of the MAGVLT budget before UnrollMask and MixSel join (a curriculum): an update with them costs as
    # much as ~3 without; from 0.75 instead of 0.5 a fresh demo judged val T2I / I2T 98.0 / 93.0% instead of
    # 70.0 / 69.5% (with the demo preset's decoding, which judged 76.5 / 78.0% on the 0.5 model)
    extras_from: float = 0.75
    # T2I:I2T:IT2IT of the timed demo (the paper's 8:1:1 in `magvlt reproduce`): with palette tokens, 8 minutes of
    # 8:1:1 judged val T2I / I2T 95 / 18% and 12 minutes of 2:2:1 44 / 58%
    task_weights: tuple[float, float, float] = (6.0, 2.0, 1.0)
    # ...after the first quarter of the budget on I2T alone (reading before writing): at 2,400 updates val T2I / I2T
    # judged 78 / 64% against 42-49 / 49% without it (best of 4), and I2T learned which objects a scene holds
    # (the second object's words given the first's: 100% against 24-39%)
    read_first: float = 0.25
    # the share of an I2T or IT2IT batch whose caption length is predicted (objective.length_rows): a quarter makes
    # an I2T update as cheap as a T2I one (one thread: 515 -> 321 ms, T2I 307) and the length head still learns
    length_rows: float = 0.25
    seed: int = 0
    fresh: bool = False
    progress: bool = True

    @property
    def min_updates(self) -> int:
        """The update floor of the MAGVLT budget."""
        return round(self.min_rate * self.minutes)

    @property
    def max_minutes(self) -> float:
        """The latest the MAGVLT training stops, floor made or not."""
        return self.stretch * self.minutes

    def judged(self, split: str) -> int:
        """How many pairs of an evaluation split ("val" or "novel") are rendered and judged."""
        return self.n_eval if split == "val" else min(self.n_novel, self.n_eval)


class Stages:
    """Cached build stages in order: a stage reruns when its result is missing, and then so do all after it."""

    def __init__(self, fresh: bool):
        self.dirty = fresh

    def __call__(self, name: str, path: Path, build: Callable[[], object]) -> Path:
        done = path / ".done"
        if self.dirty or not done.exists():
            print(f"[demo] {name} ...", flush=True)
            start = time.monotonic()
            if path.exists():
                shutil.rmtree(path)
            path.mkdir(parents=True)
            build()
            done.write_text(f"{time.monotonic() - start:.1f}\n")
            self.dirty = True
        else:
            print(f"[demo] {name}: cached in {path}", flush=True)
        return path


def demo_train_config(cfg: DemoConfig, steps: int | None = None, name: str = "tiny") -> TrainConfig:
    """A CPU preset ("tiny", or "tiny-ar" for ARGVLT) with the paper's 8:1:1 tasks, UnrollMask and MixSel, at the
    demo's width, batch and learning rate: trained for `steps` updates, or (None) for cfg.minutes of wall time and
    at least cfg.min_rate updates a minute of it (a loaded machine trains longer, up to cfg.stretch x minutes), the
    learning rate decayed over that budget and UnrollMask and MixSel joining after cfg.extras_from of it."""
    train = preset(TRAIN_PRESETS, name)
    train.seed, train.batch_size, train.lr = cfg.seed, cfg.batch_size, cfg.lr
    train.model.text_len, train.model.n_embd = cfg.text_len, cfg.width
    # with the small caption BPE, dropout inflates lengths ~28% and the length head learns a noisy target,
    # which showed up as repeated words in I2T (40% of captions with dropout vs 0% without, 600+ steps)
    train.bpe_dropout = 0.0
    if steps is None:
        # UnrollMask and MixSel join late (cfg.extras_from): an update without them costs a third; joining halfway,
        # 4 minutes judged val T2I / I2T 18 / 15% exact against 11 / 4% with them from the start (674 vs 349 updates)
        train.objective.extras_from, train.objective.task_weights = cfg.extras_from, cfg.task_weights
        train.objective.curriculum_weights, train.objective.curriculum_until = (0.0, 1.0, 0.0), cfg.read_first
        train.objective.length_rows = cfg.length_rows
        train.schedule, train.max_minutes, train.steps = "time", cfg.minutes, 10**9
        train.min_steps, train.stretch_minutes = cfg.min_updates, cfg.max_minutes
        train.warmup_steps, train.ckpt_every = 40, 200
        train.tune_threads = True  # beside another busy process, 1 thread ran 2-15x faster steps than 2
    else:
        train.steps, train.warmup_steps, train.ckpt_every = steps, max(10, steps // 20), max(50, steps // 5)
    return train


@dataclass
class Prepared:
    """What the training stages read: pairs per split, the tokenizers, the pre-tokenized training set, the scorer."""

    data: Path
    text: Path
    vq: Path
    tokens: Path
    scorer: Path
    stage: Stages


def prepare(cfg: DemoConfig) -> Prepared:
    """Build (or reuse) the shapes-world pairs, the caption BPE, the VQ-GAN, the shards and the scorer."""
    from magvlt.data.pairs import load_pairs, write_pairs
    from magvlt.data.shapes import render_split
    from magvlt.text import CaptionBPE, load_text_tokenizer
    from magvlt.train.clip import train_clip

    if cfg.tokenizer not in TOKENIZERS:
        raise UserError(f"unknown image tokenizer {cfg.tokenizer!r}; choose one of: {', '.join(TOKENIZERS)}")
    out, stage = Path(cfg.out), Stages(cfg.fresh)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    for split, n in (("train", cfg.n_train), ("val", cfg.judged("val")), ("novel", cfg.judged("novel"))):
        stage(
            f"shapes world {split} ({n} pairs)",
            data / split,
            lambda split=split, n=n: write_pairs(data / split, *render_split(split, n, cfg.seed, cfg.size)),
        )
    images, captions = load_pairs(data / "train")
    text = stage(
        "caption BPE",
        out / "text",
        lambda: CaptionBPE.train(captions, vocab_size=256, length=cfg.text_len).save(out / "text"),
    )
    # a folder per kind, so that choosing the other kind rebuilds everything after it
    palette = cfg.tokenizer == "palette"
    name, folder = ("palette tokenizer", "palette") if palette else (f"VQ-GAN ({cfg.vq_minutes:g} min)", "vq")
    vq = stage(name, out / folder, lambda: build_image_tokenizer(images, cfg, out / folder))
    tokens = stage(
        "pre-tokenize", out / "tokens", lambda: tokenize(images, captions, text, vq, out / "tokens", cfg.progress)
    )
    scorer = stage(
        f"contrastive scorer ({cfg.clip_minutes:g} min)",
        out / "clip",
        lambda: train_clip(
            images,
            captions,
            load_text_tokenizer(text),
            out / "clip",
            minutes=cfg.clip_minutes,
            seed=cfg.seed,
            progress=cfg.progress,
        ),
    )
    return Prepared(data, text, vq, tokens, scorer, stage)


def build_image_tokenizer(images: np.ndarray, cfg: DemoConfig, out: Path) -> Path:
    """Fit the palette tokenizer (on the images and MixSel's squeezed copies) or train the VQ-GAN, into `out`."""
    from magvlt.train.vq import fit_palette, train_vq
    from magvlt.vq import save_vq

    if cfg.tokenizer == "palette":
        return save_vq(fit_palette(images), out)
    train_vq(
        images,
        preset(VQ_PRESETS, "tiny"),
        minutes=cfg.vq_minutes,
        min_steps=cfg.vq_min_steps,
        seed=cfg.seed,
        out=out,
        progress=cfg.progress,
    )
    return out


def tokenize(images: np.ndarray, captions: list[str], text: Path, vq: Path, out: Path, progress: bool) -> Path:
    """Pre-tokenized shards of in-memory pairs with the tokenizers saved in `text` and `vq`."""
    from magvlt.data.tokenize import tokenize_pairs
    from magvlt.text import load_text_tokenizer
    from magvlt.vq import load_vq

    return tokenize_pairs(
        images,
        captions,
        load_vq(vq),
        load_text_tokenizer(text),
        out,
        vq_dir=vq.resolve(),
        text_dir=text.resolve(),
        progress=progress,
    )


def run_demo(cfg: DemoConfig) -> dict:
    """Prepare every stage, train MAGVLT, evaluate and draw; returns the metrics written to metrics.json."""
    from magvlt.train.loop import train

    prep, out = prepare(cfg), Path(cfg.out)

    model_dir = prep.stage(
        f"MAGVLT ({cfg.minutes:g} min)",
        out / "model",
        lambda: train(demo_train_config(cfg), prep.tokens, out / "model", progress=cfg.progress),
    )
    return evaluate_and_draw(cfg, out, model_dir, prep.scorer)


def evaluate_and_draw(cfg: DemoConfig, out: Path, model_dir: Path, scorer_dir: Path) -> dict:
    """Judge-based evaluation on val and novel, then the pictures a person looks at first."""
    from magvlt.checkpoint import atomic_write_text
    from magvlt.eval.run import evaluate, markdown
    from magvlt.pipeline import MAGVLTPipeline, save_preset
    from magvlt.train.threads import threads_set

    save_preset(demo_preset(cfg), model_dir)
    copy_scorer(scorer_dir, model_dir)
    pipe = MAGVLTPipeline.from_pretrained(model_dir)
    metrics = {"train": _train_summary(model_dir)}
    with threads_set(metrics["train"].get("threads")):  # the count training last found faster here
        for split in ("val", "novel"):
            print(f"[demo] evaluating on {split} ...", flush=True)
            metrics[split] = evaluate(
                pipe, f"shapes:{split}:{cfg.judged(split)}", n=cfg.judged(split), seed=cfg.seed, fid=None
            )  # FID: `magvlt eval` (CPU Inception is slow)
        draw_samples(pipe, out / "samples.png", cfg)
        draw_refinement(pipe, out / "refinement.gif", cfg.seed)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "metrics.md", "\n\n".join(f"### {s}\n\n{markdown(metrics[s])}" for s in ("val", "novel")))
    shutil.copy(model_dir / "loss.png", out / "loss.png")
    print(summary(metrics, out, cfg), flush=True)
    return metrics


def demo_preset(cfg: DemoConfig) -> Preset:
    """How the demo's model samples (saved as its scheduler.json, so `magvlt generate` samples the same way): the
    "demo" preset with the candidate counts and temperature the config sets.

    I2T keeps the most likely length for every candidate: lengths sampled at temperature 1 (`length_temperature`)
    gave 23.0% exact instead of 24.5% on a default demo's val split (845 updates), with 15.5% of captions outside
    the grammar instead of 9.0%."""
    from magvlt.schedulers import get_preset

    preset = get_preset("demo")
    if cfg.temperature is not None:
        preset.image = dataclasses.replace(preset.image, temperature=cfg.temperature)
        preset.text = dataclasses.replace(preset.text, temperature=cfg.temperature)
    if cfg.candidates is not None:
        preset.image_candidates = cfg.candidates
    if cfg.caption_candidates is not None:
        preset.text_candidates = cfg.caption_candidates
    return preset


def copy_scorer(scorer_dir: Path, model_dir: Path) -> None:
    """Put the scorer inside the model's directory, where the pipeline loads it by default."""
    from magvlt.paths import SCORER_DIR

    shutil.rmtree(model_dir / SCORER_DIR, ignore_errors=True)
    shutil.copytree(scorer_dir, model_dir / SCORER_DIR)


def _train_summary(model_dir: Path) -> dict:
    """The last training record, with the CPU share averaged over the run."""
    from magvlt.train.rundir import read_metrics

    records = read_metrics(model_dir)
    last = records[-1] if records else {}
    out = {k: last[k] for k in ("step", "loss", "elapsed", "tokens_per_s", "precision", "threads") if k in last}
    shares = [r["cpu_share"] for r in records if "cpu_share" in r]
    if shares:
        out["cpu_share"] = sum(shares) / len(shares)
    return out


def _updates_line(train: dict, cfg: DemoConfig) -> str:
    """How many updates the transformer got in how long, and whether it trained past cfg.minutes to make its floor."""
    minutes = train.get("elapsed", 0) / 60
    line = f"  MAGVLT: {train['step']} updates in {minutes:.1f} min, {train.get('precision', 'fp32')} arithmetic" + (
        f" on {train['threads']} thread(s) (the faster count here)" if "threads" in train else ""
    )
    if "cpu_share" in train:
        line += f"; training got {min(train['cpu_share'], 1.0):.0%} of the CPU time of its threads"
    if minutes > 1.01 * cfg.minutes:
        line += (
            f"\n  this machine (its load included) made fewer than {cfg.min_updates} updates in "
            f"{cfg.minutes:g} min, so training went on to make them (for at most {cfg.max_minutes:g} min)"
        )
    return line


def summary(metrics: dict, out: Path, cfg: DemoConfig) -> str:
    """A few lines for the terminal: exact-scene accuracy per task and split."""
    rerank = metrics["val"]["rerank"]
    k = {rerank["image_candidates"], rerank["text_candidates"]}
    protocol = "sampled once" if k == {1} else f"best of {'/'.join(map(str, sorted(k)))} by the {rerank['by']}"
    lines = [
        f"[demo] done: {out}/samples.png (green frame: judged right, red: wrong), refinement.gif, loss.png, "
        f"metrics.json  (judged: {protocol})"
    ]
    train = metrics.get("train", {})
    if train:
        lines.append(_updates_line(train, cfg))
    for split in ("val", "novel"):
        m = metrics[split]
        lines.append(
            f"  {split:5s}  T2I exact {m['t2i']['judge']['exact']:.1f}%   I2T exact {m['i2t']['judge']['exact']:.1f}% "
            f"(outside grammar {m['i2t']['judge']['invalid']:.1f}%, repeats {m['i2t']['repeats']:.1f}%, "
            f"CIDEr {m['i2t']['cider']:.1f})   "
            f"inpaint exact {m['inpaint']['judge']['exact']:.1f}%   infill exact {m['infill']['judge']['exact']:.1f}%"
        )
    return "\n".join(lines)


def draw_samples(pipe, path: Path, cfg: DemoConfig, n: int = 6) -> None:
    """samples.png: T2I, I2T, inpainting, infilling and joint generation, each a row of captioned tiles, sampled
    as the evaluation samples (the best of the preset's candidates); the judge frames each result green (right)
    or red (wrong); a joint pair is right when its image shows its caption."""
    from magvlt.data.shapes import render_split
    from magvlt.eval.figures import Tile, grid

    seed = cfg.seed
    images, captions = render_split("val", n, seed=seed + 1, size=pipe.image_size[0])
    generated = pipe(captions, generator=_generators(seed, n)).images
    written = pipe.caption(images, generator=_generators(seed, n)).texts
    holed = _with_hole(images)
    inpainted = pipe.inpaint(images, None, captions, generator=_generators(seed, n)).images
    masked_text = [_mask_middle(c) for c in captions]
    infilled = pipe.infill(images, masked_text, generator=_generators(seed, n)).texts
    pairs = pipe.generate_pairs(n, generator=_generators(seed, n))
    rows = {
        "text -> image": [Tile(g, c, _shows(g, c)) for g, c in zip(generated, captions)],
        "image -> text": [Tile(i, w, _same_scene(w, c)) for i, w, c in zip(images, written, captions)],
        "inpainting: input": [Tile(h, c) for h, c in zip(holed, captions)],
        "inpainting: result": [Tile(p, "", _shows(p, c)) for p, c in zip(inpainted, captions)],
        "infilling": [
            Tile(i, f"{m}\n-> {f}", _same_scene(f, c)) for i, m, f, c in zip(images, masked_text, infilled, captions)
        ],
        "joint image + text": [Tile(i, c, _shows(i, c)) for i, c in zip(pairs.images, pairs.texts)],
    }
    grid(rows).save(path)


def _shows(image, caption: str) -> bool:
    """The judge's verdict: the image shows exactly the caption's scene."""
    from magvlt.eval.judge import parse_caption, parse_image

    scene = parse_caption(caption)
    return scene is not None and parse_image(np.asarray(image)) == scene


def _same_scene(caption: str, reference: str) -> bool:
    from magvlt.eval.judge import parse_caption

    scene = parse_caption(caption)
    return scene is not None and scene == parse_caption(reference)


def _with_hole(images: np.ndarray) -> np.ndarray:
    """The inpainting input as shown: the central half of the image (the masked tokens) greyed out."""
    holed = images.copy()
    h, w = images.shape[1:3]
    holed[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 128
    return holed


def _mask_middle(caption: str) -> str:
    words = caption.split()
    lo, hi = len(words) // 4, len(words) - len(words) // 4
    return " ".join(words[:lo] + ["[MASK]"] * (hi - lo) + words[hi:])


def draw_refinement(pipe, path: Path, seed: int) -> None:
    """refinement.gif: one T2I and one I2T decoded step by step, side by side."""
    from magvlt.data.shapes import render_split
    from magvlt.eval.figures import Tile, animate

    images, captions = render_split("val", 1, seed=seed + 2, size=pipe.image_size[0])
    image_frames = pipe(
        captions, generator=_generators(seed, 1), num_candidates=1, output_intermediates=True
    ).intermediates
    text_frames = pipe.caption(
        images, generator=_generators(seed, 1), num_candidates=1, output_intermediates=True
    ).intermediates
    frames = []
    for t in range(max(len(image_frames[0]), len(text_frames[0]))):
        im = image_frames[0][min(t, len(image_frames[0]) - 1)]
        tx = text_frames[0][min(t, len(text_frames[0]) - 1)]
        frames.append({"text -> image": [Tile(im, captions[0])], "image -> text": [Tile(images[0], tx)]})
    animate(frames, path)


def _generators(seed: int, n: int) -> list[torch.Generator]:
    import torch

    return [torch.Generator().manual_seed(seed + i) for i in range(n)]
