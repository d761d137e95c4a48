"""How far apart do demo recipes land? Judged val T2I / I2T along one run, by updates, for one training seed.

Trains the demo's MAGVLT recipe (DemoConfig: tasks, curriculum, UnrollMask and MixSel joining late, length rows)
for a fixed number of updates, its schedule and curriculum driven by updates rather than time, on the demo's
cached stages (--demo), on a fixed thread count. Every --every updates the weights are kept, and each kept
model is judged afterwards on the first --n `val` pairs with the demo's decoding. Run several --seed values side
by side to see the spread of one recipe; set a DemoConfig field with `field=value` (JSON values), a TrainConfig
field with `train.field=value`.

    python benchmarks/demo_spread.py --steps 3000 --seed 1 [--every 500] [--n 100] [task_weights=[6,2,1]] [train.model.n_head=8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from magvlt import paths
from magvlt.config import apply_overrides
from magvlt.demo import DemoConfig, copy_scorer, demo_preset, demo_train_config, prepare
from magvlt.eval.run import evaluate
from magvlt.pipeline import MAGVLTPipeline, save_preset
from magvlt.train import rundir
from magvlt.train.loop import train


def steps_recipe(cfg: DemoConfig, steps: int, seed: int, every: int, ema: float):
    """The demo's timed recipe with its progress counted in updates (stages at the same shares of `steps`)."""
    train_cfg = demo_train_config(cfg)
    train_cfg.schedule, train_cfg.steps, train_cfg.max_minutes = "steps", steps, 0.0
    train_cfg.min_steps, train_cfg.stretch_minutes, train_cfg.tune_threads = 0, 0.0, False
    train_cfg.seed, train_cfg.ckpt_every, train_cfg.ema = seed, every, ema
    return train_cfg


def snapshotting(keep: Path):
    """rundir.save_checkpoint that also keeps a copy of each checkpoint's weights, named by step."""
    save = rundir.save_checkpoint

    def save_and_keep(out: Path, weights: dict, state: dict) -> None:
        save(out, weights, state)
        shutil.copy(out / paths.WEIGHTS, keep / f"{state['step']:06d}.safetensors")
        if "weights" in state:  # an EMA run: its last weights as well
            save_file(state["weights"], str(keep / f"{state['step']:06d}-last.safetensors"))

    return save_and_keep


def judge(run: Path, weights: Path, cfg: DemoConfig, n: int) -> dict:
    """Judged exact-scene accuracy (and invalid captions) of one kept model on the first n val pairs."""
    shutil.copy(weights, run / paths.WEIGHTS)
    pipe = MAGVLTPipeline.from_pretrained(run)
    res = evaluate(pipe, f"shapes:val:{n}", tasks=("t2i", "i2t"), n=n, seed=cfg.seed, fid=None)
    return {
        "t2i": res["t2i"]["judge"]["exact"],
        "i2t": res["i2t"]["judge"]["exact"],
        "invalid": res["i2t"]["judge"]["invalid"],
        "t2i_attr": {k: res["t2i"]["judge"][k] for k in ("size", "color", "shape", "position")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1, help="the training seed (the data stays the demo's)")
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--n", type=int, default=100, help="val pairs judged per kept model")
    parser.add_argument("--judge-from", type=int, default=0, help="judge the models kept from this update on")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="the demo's output folder (its cache)")
    parser.add_argument("--ema", type=float, default=0.0, help="TrainConfig.ema (then the last weights are judged too)")
    parser.add_argument("--keep-run", type=Path, help="copy the finished run here")
    parser.add_argument("--log", type=Path, help="append the JSON result here")
    parser.add_argument("overrides", nargs="*", help="DemoConfig field=value, or train.<TrainConfig field>=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = apply_overrides(DemoConfig(out=args.demo, progress=False), [o for o in args.overrides if "." not in o])
    prep = prepare(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        run, keep = Path(tmp) / "run", Path(tmp) / "keep"
        keep.mkdir()
        rundir.save_checkpoint = snapshotting(keep)
        recipe = steps_recipe(cfg, args.steps, args.seed, args.every, args.ema)
        recipe = apply_overrides(recipe, [o.removeprefix("train.") for o in args.overrides if "." in o])
        start = time.perf_counter()
        train(recipe, prep.tokens, run, progress=True)
        seconds = time.perf_counter() - start
        save_preset(demo_preset(cfg), run)
        copy_scorer(prep.scorer, run)
        if args.keep_run:
            shutil.copytree(run, args.keep_run, dirs_exist_ok=True)
        curve = {
            w.stem: judge(run, w, cfg, args.n)
            for w in sorted(keep.glob("*.safetensors"))
            if int(w.stem[:6]) >= args.judge_from
        }
    result = {
        "seed": args.seed,
        "steps": args.steps,
        "overrides": args.overrides,
        "train_seconds": round(seconds),
        "threads": args.threads,
        "ema": args.ema,
        "recipe": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "progress", "fresh")},
        "curve": curve,
    }
    line = json.dumps(result, default=str)
    print(line)
    if args.log:
        with args.log.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
