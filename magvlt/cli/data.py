"""`magvlt data shapes`: write a shapes-world split as image-caption pairs (tar shards or a folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

PREVIEW_COLUMNS, PREVIEW_ROWS = 8, 4


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="build datasets of image-caption pairs")
    sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATASET")
    p = sub.add_parser(
        "shapes",
        help="write a shapes-world split (spec: shared/specs/shapes-world.md)",
        description="Render samples start .. start+N-1 of a shapes-world split and write them as {key}.png + "
        "{key}.txt + {key}.json (the scene) in tar shards 00000.tar, ... or a plain folder.",
    )
    p.add_argument("--split", default="train", help="train, val, novel or counter (default train)")
    p.add_argument("--n", type=int, required=True, help="number of pairs")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--start", type=int, default=0, help="index of the first sample (default 0)")
    p.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    p.add_argument(
        "--bias",
        type=float,
        default=0.0,
        help="probability that a train/val object's shape follows its color (default 0)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    layout = p.add_mutually_exclusive_group()
    layout.add_argument("--tar", dest="tar", action="store_true", default=True, help="tar shards (default)")
    layout.add_argument("--folder", dest="tar", action="store_false", help="a plain folder of files")
    p.add_argument("--shard-size", type=int, default=10000, help="pairs per tar shard (default 10000)")
    p.add_argument("--preview", type=Path, help="also write a PNG grid of the first 32 images with their captions")
    p.set_defaults(func=run_shapes)


def run_shapes(args: argparse.Namespace) -> int:
    import itertools
    import operator

    from tqdm import tqdm

    from magvlt.data.pairs import write_pairs
    from magvlt.data.shapes import iter_split, scene_to_json
    from magvlt.errors import UserError

    if args.n < 1:
        raise UserError(f"--n must be positive, got {args.n}")
    chunks = iter_split(args.split, args.n, args.seed, args.size, args.bias, args.start)

    def samples():
        index = args.start
        for images, captions, scenes in chunks:
            for image, caption, scene in zip(images, captions, scenes):
                yield (
                    image,
                    caption,
                    {
                        "scene": scene_to_json(scene),
                        "split": args.split,
                        "seed": args.seed,
                        "index": index,
                        "bias": args.bias,
                    },
                )
                index += 1

    with tqdm(samples(), total=args.n, desc=f"shapes {args.split}", unit="pair", disable=None) as bar:
        images, captions, meta = (map(operator.itemgetter(i), s) for i, s in enumerate(itertools.tee(bar, 3)))
        n = write_pairs(args.out, images, captions, shard_size=args.shard_size, tar=args.tar, meta=meta)
    print(f"wrote {n} {args.split} pairs to {args.out}")
    if args.preview is not None:
        write_preview(args)
        print(f"wrote {args.preview}")
    return 0


def write_preview(args: argparse.Namespace) -> None:
    """The first images of the requested samples in a grid, each over its caption."""
    from magvlt.checkpoint import atomic_write
    from magvlt.data.shapes import render_split
    from magvlt.eval.figures import Tile, grid

    images, captions = render_split(
        args.split, min(args.n, PREVIEW_COLUMNS * PREVIEW_ROWS), args.seed, args.size, args.bias, args.start
    )
    tiles = [Tile(image, caption) for image, caption in zip(images, captions)]
    rows = {
        f"{args.split} #{args.start + lo}": tiles[lo : lo + PREVIEW_COLUMNS]
        for lo in range(0, len(tiles), PREVIEW_COLUMNS)
    }
    picture = grid(rows)
    atomic_write(args.preview, lambda tmp: picture.save(tmp, format="PNG"))
