"""`magvlt reproduce`: the paper's comparisons and ablations on the shapes world, equal compute per run.

Table 1/3 analogue: MAGVLT vs ARGVLT. Table 6 analogue: task mixes T2I:I2T:IT2IT. Table 7 / App. E analogue: with
and without UnrollMask and MixSel (and MixRandom), trained on the biased split (bias 0.8: a shape mostly follows
its color) and judged on the `counter` split, where every object breaks that rule. Every run trains the same
number of updates on the same global batch with the demo's tokenizers; results are mean +- spread over seeds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from magvlt.checkpoint import atomic_write_text
from magvlt.config import apply_overrides
from magvlt.demo import DemoConfig, demo_train_config, prepare, tokenize


@dataclass(frozen=True)
class Run:
    """One trained configuration: preset, overrides, training data ("uniform" or "biased") and judged split."""

    preset: str
    overrides: tuple[str, ...] = ()
    data: str = "uniform"
    split: str = "val"

    @property
    def key(self) -> str:
        return "|".join([self.preset, self.data, self.split, *self.overrides])


FULL = Run("tiny")
TABLES: dict[str, list[tuple[str, Run]]] = {
    "Table 1/3 analogue: MAGVLT vs ARGVLT (val)": [("MAGVLT", FULL), ("ARGVLT", Run("tiny-ar"))],
    "Table 6 analogue: task mix T2I:I2T:IT2IT (val)": [
        (name, Run("tiny", (f"objective.task_weights={weights}",)) if weights != "[8,1,1]" else FULL)
        for name, weights in (
            ("1:0:0", "[1,0,0]"),
            ("0:1:0", "[0,1,0]"),
            ("0:0:1", "[0,0,1]"),
            ("8:2:0", "[8,2,0]"),
            ("8:1:1", "[8,1,1]"),
        )
    ],
    "Table 7 / App. E analogue: trained on bias 0.8, judged on counter": [
        (name, Run("tiny", overrides, "biased", "counter"))
        for name, overrides in (
            ("UnrollMask + MixSel", ()),
            ("w/o MixSel", ("objective.mix=off",)),
            ("w/o UnrollMask", ("objective.unroll_mask=false",)),
            ("w/o both", ("objective.mix=off", "objective.unroll_mask=false")),
            ("UnrollMask + MixRandom", ("objective.mix=mixrandom",)),
        )
    ],
}


@dataclass
class GridConfig:
    """Size of the grid; the default fits about 90 minutes on 2 cores, --quick a few minutes."""

    out: Path = Path("runs/reproduce")
    demo: DemoConfig = field(default_factory=DemoConfig)  # where the shared tokenizers are built or reused
    steps: int = 250  # measured: ~3.3 min a run with its judging, ~75 min for the 22 runs
    seeds: tuple[int, ...] = (0, 1)
    n_eval: int = 200
    bias: float = 0.8
    progress: bool = True


def quick(cfg: GridConfig) -> GridConfig:
    """The --quick grid: minutes instead of an hour and a half (numbers are noisy at this size)."""
    cfg.steps, cfg.n_eval, cfg.seeds = 30, 32, (0, 1)
    return cfg


def tokenizer_id(*dirs: Path) -> str:
    """A short hash of the tokenizers' files: runs and results made with other tokenizers are never reused."""
    digest = hashlib.sha1()
    for path in sorted(p for d in dirs for p in Path(d).rglob("*") if p.is_file() and p.name != ".done"):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:8]


def result_key(run: Run, seed: int, steps: int, tok: str) -> str:
    """Where results.jsonl keeps one run's measurements: configuration, seed, updates and tokenizers."""
    return f"{run.key}#{seed}#{steps}#{tok}"


def train_run(run: Run, seed: int, grid: GridConfig, data: dict[str, Path], tok: str) -> Path:
    """Train one configuration with one seed (cached in its own run directory)."""
    from magvlt import paths
    from magvlt.train import rundir
    from magvlt.train.loop import train

    name = run.key.replace("|", "_").replace("=", "-").replace(".", "-")
    out = grid.out / "runs" / f"{name}_seed{seed}_steps{grid.steps}_tok{tok}"  # never reuse a --quick run as a full one
    if (out / paths.CONFIG).exists() and rundir.has_checkpoint(out):
        return out
    cfg = apply_overrides(demo_train_config(grid.demo, grid.steps, run.preset), list(run.overrides))
    cfg.seed, cfg.ckpt_every, cfg.max_minutes = seed, grid.steps, 0.0  # equal updates per run, no time cap
    if out.exists():
        shutil.rmtree(out)
    return train(cfg, data[run.data], out, progress=grid.progress)


def measure(run_dir: Path, split: str, n: int, seed: int, caption_metrics) -> dict:
    """Judge accuracy of T2I and I2T on a shapes split, I2T CIDEr, and decode seconds per sample."""
    import torch

    from magvlt.data.shapes import iter_split, phrasings
    from magvlt.eval.judge import judge_captions, judge_images
    from magvlt.pipeline import MAGVLTPipeline

    pipe = MAGVLTPipeline.from_pretrained(run_dir)
    images, captions, scenes = next(iter_split(split, n, seed=1000 + seed, size=pipe.image_size[0], chunk=n))
    start = time.perf_counter()
    generated = pipe(captions, preset="default", generator=torch.Generator().manual_seed(seed)).images
    t2i_seconds = (time.perf_counter() - start) / n
    written = pipe.caption(images, preset="default", generator=torch.Generator().manual_seed(seed)).texts
    read = judge_captions(written, captions)
    return {
        "t2i": judge_images(generated, captions)["exact"],
        "i2t": read["exact"],
        "invalid": read["invalid"],
        "cider": caption_metrics(written, [phrasings(s) for s in scenes])["cider"],
        "t2i_ms": 1000 * t2i_seconds,
    }


def run_grid(grid: GridConfig) -> str:
    """Train and measure every run of every table (results cached in results.jsonl) and return the tables."""
    from magvlt.data.shapes import render_split
    from magvlt.eval.metrics import CaptionMetrics

    prep = prepare(grid.demo)
    tok = tokenizer_id(prep.text, prep.vq)
    images, captions = render_split("train", grid.demo.n_train, grid.demo.seed, grid.demo.size, bias=grid.bias)
    biased_dir = grid.out / f"tokens-biased-tok{tok}"
    biased = prep.stage(
        f"biased training split (bias {grid.bias})",
        biased_dir,
        lambda: tokenize(images, captions, prep.text, prep.vq, biased_dir, grid.progress),
    )
    data = {"uniform": prep.tokens, "biased": biased}
    results_path = grid.out / "results.jsonl"
    results = _read_results(results_path)
    runs = list(dict.fromkeys(run for rows in TABLES.values() for _, run in rows))
    with CaptionMetrics() as caption_metrics:
        for run in runs:
            for seed in grid.seeds:
                key = result_key(run, seed, grid.steps, tok)
                if key in results:
                    continue
                print(f"[reproduce] {run.key} seed {seed}", flush=True)
                run_dir = train_run(run, seed, grid, data, tok)
                results[key] = measure(run_dir, run.split, grid.n_eval, seed, caption_metrics)
                with open(results_path, "a") as f:
                    f.write(json.dumps({"key": key, **results[key]}) + "\n")
    report = tables(results, grid, tok)
    atomic_write_text(grid.out / "tables.md", report)
    return report


def _read_results(path: Path) -> dict[str, dict]:
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r.pop("key"): r for r in rows}


def _cell(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean = statistics.fmean(values) * scale
    spread = (statistics.stdev(values) * scale) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def tables(results: dict[str, dict], grid: GridConfig, tok: str) -> str:
    """Markdown tables in the form of the paper's: judge accuracy (%), CIDEr and T2I decode time, mean ± std,
    of the runs made with the tokenizers `tok` (see `tokenizer_id`)."""
    lines = [
        f"{grid.steps} updates x batch {grid.demo.batch_size} per run, seeds {list(grid.seeds)}, "
        f"{grid.n_eval} judged samples per run.\n"
    ]
    for title, rows in TABLES.items():
        lines += [
            f"#### {title}",
            "",
            "| run | T2I judge exact (%) | I2T judge exact (%) | I2T CIDEr | "
            "I2T outside grammar (%) | T2I decode (ms/image) |",
            "|---|---|---|---|---|---|",
        ]
        for name, run in rows:
            got = [results[k] for k in (result_key(run, s, grid.steps, tok) for s in grid.seeds) if k in results]
            if not got:
                continue
            col = lambda key, scale=1.0, digits=1, got=got: _cell([g[key] for g in got], scale, digits)
            lines.append(
                f"| {name} | {col('t2i')} | {col('i2t')} | {col('cider')} | {col('invalid')} | {col('t2i_ms', 1, 2)} |"
            )
        lines.append("")
    return "\n".join(lines)
