"""`magvlt judge images|captions`: the shapes-world judge on generated images or captions, printed and saved as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def register(subparsers) -> None:
    parser = subparsers.add_parser("judge", help="score generated shapes-world images or captions exactly")
    sub = parser.add_subparsers(dest="judge_command", required=True, metavar="WHAT")
    p = sub.add_parser(
        "images",
        help="parse generated images into scenes and compare them with their captions",
        description="Exact accuracy, per-attribute accuracy (size, color, shape, position) and counts of "
        "generated images against the captions they were generated from.",
    )
    p.add_argument(
        "--dir",
        type=Path,
        required=True,
        help="image-caption pairs (folder, tar shards or one .tar), or with --captions a folder of "
        "numbered images (0.png, 1.png, ...)",
    )
    p.add_argument(
        "--captions",
        type=Path,
        help="the prompts of the numbered images: one caption per line in image order, or JSON lines "
        '{"key": IMAGE_NAME_WITHOUT_EXTENSION, "caption": ...}',
    )
    p.add_argument("--out", type=Path, help="JSON report (default DIR/judge.json)")
    p.set_defaults(func=run_images)
    c = sub.add_parser(
        "captions",
        help="parse generated captions and compare them with reference scenes",
        description="Exact accuracy, per-attribute accuracy, the rate of captions outside the grammar and counts "
        "of generated captions against reference scenes.",
    )
    c.add_argument(
        "--file",
        type=Path,
        required=True,
        help='generated captions: one per line, or JSON lines {"key": ..., "caption": ...}',
    )
    c.add_argument(
        "--refs",
        type=Path,
        required=True,
        help="reference pairs (folder, tar shards or .tar; their .json scene, else their caption) or a "
        "file of reference captions in the format of --file; matched by key when both have keys, "
        "else by order",
    )
    c.add_argument("--out", type=Path, help="JSON report (default FILE's name with .judge.json)")
    c.set_defaults(func=run_captions)


def _read_captions(path: Path) -> list[tuple[str | None, str]]:
    """(key or None, caption) per line of a caption file: plain lines, or JSON lines with key and caption."""
    from magvlt.errors import UserError

    if not path.is_file():
        raise UserError(f"caption file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text") from None
    if not any(line.lstrip().startswith("{") for line in lines):
        return [(None, line) for line in lines]
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            out.append((None if record.get("key") is None else str(record["key"]), str(record["caption"])))
        except (json.JSONDecodeError, AttributeError, KeyError):
            raise UserError(
                f'{path}:{i}: expected a JSON object with "caption" (and "key"), got {line[:80]!r}'
            ) from None
    return out


def _numbered_images(folder: Path) -> list[tuple[str, object]]:
    """(name without extension, image) for the image files of a folder, in numeric order of their names."""
    from magvlt.data.pairs import decode_image
    from magvlt.errors import UserError

    if not folder.is_dir():
        raise UserError(f"image folder not found: {folder}")
    files = [f for f in folder.iterdir() if f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".")]
    files.sort(key=lambda f: (0, int(f.stem), "") if f.stem.isdigit() else (1, 0, f.stem))
    return [(f.stem, decode_image(f.read_bytes(), str(f))) for f in files]


def _align(
    items: list[tuple[str | None, object]], refs: list[tuple[str | None, object]], what: str
) -> tuple[list, list]:
    """Pair items with references by key when both carry keys, else by position."""
    from magvlt.errors import UserError

    if all(k is not None for k, _ in items) and all(k is not None for k, _ in refs):
        table = dict(refs)
        missing = [k for k, _ in items if k not in table]
        if missing:
            raise UserError(f"{len(missing)} {what} have no reference with their key, e.g. {missing[0]!r}")
        return [x for _, x in items], [table[k] for k, _ in items]
    if len(items) != len(refs):
        raise UserError(f"{len(items)} {what} but {len(refs)} references, and no keys to match them by")
    return [x for _, x in items], [r for _, r in refs]


def _report(result: dict, out: Path, what: str) -> None:
    from magvlt.checkpoint import atomic_write_text

    keys = ("exact", "size", "color", "shape", "position", "count")
    cells = [f"{k} {result[k]:.2f}%" for k in keys]
    if "invalid" in result:
        cells.append(f"outside grammar {result['invalid']:.2f}%")
    print(f"judge {what} (n = {result['n']}): " + "  ".join(cells))
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def run_images(args: argparse.Namespace) -> int:
    import numpy as np

    from magvlt.data.pairs import iter_pairs
    from magvlt.errors import UserError
    from magvlt.eval.judge import judge_images

    if args.captions is not None:
        images, captions = _align(_numbered_images(args.dir), _read_captions(args.captions), "images")
    else:
        pairs = list(iter_pairs(args.dir))
        images, captions = [p.image for p in pairs], [p.caption for p in pairs]
    if not images:
        raise UserError(f"no images found in {args.dir}")
    if len({im.shape for im in images}) > 1:
        raise UserError(f"images in {args.dir} differ in size: {sorted({im.shape[:2] for im in images})}")
    result = judge_images(np.stack(images), captions)
    result["source"] = str(args.dir)
    default = args.dir / "judge.json" if args.dir.is_dir() else args.dir.with_suffix(".judge.json")
    _report(result, args.out or default, "images")
    return 0


def run_captions(args: argparse.Namespace) -> int:
    from magvlt.data.pairs import iter_pairs
    from magvlt.data.shapes import scene_from_json
    from magvlt.eval.judge import judge_captions

    generated = _read_captions(args.file)
    if args.refs.is_file() and args.refs.suffix != ".tar":
        refs = _read_captions(args.refs)
    else:
        refs = [
            (p.key, scene_from_json(p.meta["scene"]) if p.meta and "scene" in p.meta else p.caption)
            for p in iter_pairs(args.refs)
        ]
    captions, references = _align(generated, refs, "captions")
    result = judge_captions(captions, references)
    result.update(source=str(args.file), references=str(args.refs))
    _report(result, args.out or args.file.with_name(f"{args.file.stem}.judge.json"), "captions")
    return 0
