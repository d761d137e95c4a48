"""`magvlt reproduce`: the ablation grid of the paper's Tables 1/3, 6 and 7 on the shapes world."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="train the paper's ablation grid on the shapes world and print its tables",
        description="MAGVLT vs ARGVLT, task mixes, and UnrollMask/MixSel/MixRandom on biased data, "
        "equal updates per run, at least 2 seeds; about 90 minutes on 2 cores "
        "(--quick: minutes). Reuses the demo's tokenizers (built if missing).",
    )
    p.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    p.add_argument("--demo-dir", type=Path, default=Path("runs/demo"), help="where the demo's tokenizers live")
    p.add_argument("--steps", type=int, help="updates per run (default 250; --quick 30)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per configuration (default 2)")
    p.add_argument("--quick", action="store_true", help="a small grid that runs in minutes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from magvlt.demo import DemoConfig
    from magvlt.errors import UserError
    from magvlt.reproduce import GridConfig, quick, run_grid

    if args.seeds < 1 or (args.steps is not None and args.steps < 1):
        raise UserError("--seeds and --steps must be positive")
    grid = GridConfig(out=args.out, demo=DemoConfig(out=args.demo_dir))
    if args.quick:
        grid = quick(grid)
    grid.seeds = tuple(range(args.seeds))
    if args.steps:
        grid.steps = args.steps
    print(run_grid(grid))
    return 0
