"""`magvlt generate t2i|i2t|inpaint|infill|joint`: use a trained run on prompts, images and files."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from magvlt.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _common(parser: argparse.ArgumentParser, steps: int, temperature: float) -> None:
    parser.add_argument("--model", type=Path, required=True, help="run directory from `magvlt train`")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same output)")
    parser.add_argument("--steps", type=int, default=steps, help=f"refinement steps (default {steps})")
    parser.add_argument("--temperature", type=float, default=temperature,
                        help=f"sampling temperature of the tokens, 0 = argmax (default {temperature})")
    parser.add_argument("--gif", type=Path, metavar="DIR", help="also write each sample's refinement as DIR/NNNN.gif")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def _guided(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--guidance", type=float, default=0.0,
                        help="classifier-free guidance scale, 0 = off (for models trained with condition dropout)")
    parser.add_argument("--candidates", type=int, default=1, help="samples per input; the best is kept (paper: 32 / 64)")
    parser.add_argument("--scorer", type=Path, help="reranker directory from `magvlt clip train` (else: model likelihood)")


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images, captions, inpaintings, infillings or pairs")
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")

    t2i = sub.add_parser("t2i", help="text to image: numbered PNGs in --out")
    _common(t2i, 10, 1.0)
    _guided(t2i)
    src = t2i.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a caption (repeat for several)")
    src.add_argument("--prompts", type=Path, help="a text file with one caption per line")
    t2i.add_argument("--out", type=Path, required=True, help="output directory")
    t2i.add_argument("--choice-temperature", type=float, default=4.5, help="MaskGIT's annealed confidence noise")
    t2i.add_argument("--top-k", type=int, help="ARGVLT runs: sample among the top-k tokens")
    t2i.add_argument("--top-p", type=float, help="ARGVLT runs: nucleus sampling")
    t2i.set_defaults(func=run_t2i)

    i2t = sub.add_parser("i2t", help="image to text: captions as JSON lines")
    _common(i2t, 12, 0.0)
    _guided(i2t)
    _images(i2t)
    i2t.add_argument("--out", type=Path, help="JSON-lines output file (default: print to stdout)")
    i2t.add_argument("--length-beam", type=int, default=1, help="decode the top-k predicted lengths, keep the best")
    i2t.add_argument("--length-temperature", type=float, default=0.0,
                     help="sample each caption's length at this temperature (0 = the most likely length); "
                          "lets --candidates differ in length")
    i2t.add_argument("--top-k", type=int, help="ARGVLT runs: sample among the top-k tokens")
    i2t.add_argument("--top-p", type=float, help="ARGVLT runs: nucleus sampling")
    i2t.set_defaults(func=run_i2t)

    inpaint = sub.add_parser("inpaint", help="regenerate part of an image from the rest and a caption")
    _common(inpaint, 10, 1.0)
    _guided(inpaint)
    _images(inpaint)
    inpaint.add_argument("--caption", required=True, help="caption of the wanted image")
    inpaint.add_argument("--box", help="x0,y0,x1,y1 pixel box to regenerate (default: the central half of the grid)")
    inpaint.add_argument("--out", type=Path, required=True, help="output directory")
    inpaint.add_argument("--choice-temperature", type=float, default=4.5, help="MaskGIT's annealed confidence noise")
    inpaint.set_defaults(func=run_inpaint)

    infill = sub.add_parser("infill", help="regenerate part of a caption given the rest and the image")
    _common(infill, 12, 0.0)
    _guided(infill)
    _images(infill)
    infill.add_argument("--text", required=True,
                        help="caption with [MASK] markers (one token each); without markers its central half is redone")
    infill.add_argument("--out", type=Path, help="JSON-lines output file (default: print to stdout)")
    infill.set_defaults(func=run_infill)

    joint = sub.add_parser("joint", help="unconditional image + caption pairs (App. D)")
    _common(joint, 10, 1.0)
    joint.add_argument("-n", type=int, default=4, help="number of pairs")
    joint.add_argument("--out", type=Path, required=True, help="output directory (PNGs and captions.jsonl)")
    joint.add_argument("--choice-temperature", type=float, default=4.5, help="MaskGIT's annealed confidence noise")
    joint.set_defaults(func=run_joint)


def _images(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, action="append", help="an image file (repeat for several)")
    src.add_argument("--images", type=Path, help="a folder of images (sorted by name)")


def _load(args):
    from magvlt.pipeline import MAGVLT

    if getattr(args, "candidates", 1) < 1:
        raise UserError(f"--candidates must be >= 1, got {args.candidates}")
    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    return MAGVLT.load(args.model, device=args.device, scorer=getattr(args, "scorer", None))


def read_prompts(args) -> list[str]:
    if args.prompt is not None:
        return args.prompt
    try:
        lines = args.prompts.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompts file {args.prompts}: {e}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"{args.prompts} holds no prompts (one caption per line)")
    return prompts


def image_paths(args) -> list[Path]:
    if args.image is not None:
        return args.image
    if not args.images.is_dir():
        raise UserError(f"{args.images} is not a folder")
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"{args.images} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def read_images(paths: list[Path]):
    from magvlt.pipeline import read_image

    return [read_image(p) for p in paths]


def write_pngs(images, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(out / f"{i:04d}.png")
        image.save(paths[-1])
    return paths


def write_jsonl(records: list[dict], out: Path | None) -> None:
    text = "".join(json.dumps(r) + "\n" for r in records)
    if out is None:
        sys.stdout.write(text)
        return
    from magvlt.checkpoint import atomic_write_text

    atomic_write_text(out, text)
    print(f"wrote {len(records)} lines to {out}", file=sys.stderr)


def _with_frames(result, trace: bool):
    """(outputs, frames): a pipeline call returns frames only when asked for them."""
    return result if trace else (result, None)


def frame_image(image, text: str | None = None, side: int = 256):
    """A GIF frame: the image scaled up (nearest) to `side`, with the text drawn under it if given."""
    from PIL import Image, ImageDraw

    scale = max(1, side // max(image.size))
    big = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    if text is None:
        return big
    lines = _wrap(text, max(8, big.width // 7))
    canvas = Image.new("RGB", (big.width, big.height + 14 * len(lines) + 8), (255, 255, 255))
    canvas.paste(big, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, big.height + 4 + 14 * k), line, fill=(0, 0, 0))
    return canvas


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split() or [""]:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def write_gifs(frames: list[list], out: Path, ms: int = 300) -> None:
    """One animated GIF per sample from its frames (PIL images), the last held longer."""
    out.mkdir(parents=True, exist_ok=True)
    for i, sample in enumerate(frames):
        durations = [ms] * (len(sample) - 1) + [ms * 5]
        sample[0].save(out / f"{i:04d}.gif", save_all=True, append_images=sample[1:], duration=durations, loop=0)
    print(f"wrote {len(frames)} refinement GIFs to {out}", file=sys.stderr)


def run_t2i(args: argparse.Namespace) -> int:
    prompts = read_prompts(args)
    pipe = _load(args)
    images, frames = _with_frames(pipe.generate_images(
        prompts, steps=args.steps, temperature=args.temperature, choice_temperature=args.choice_temperature,
        guidance=args.guidance, top_k=args.top_k, top_p=args.top_p, candidates=args.candidates, seed=args.seed,
        trace=args.gif is not None), args.gif is not None)
    for path, prompt in zip(write_pngs(images, args.out), prompts):
        print(f"{path}\t{prompt}")
    if frames:
        write_gifs([[frame_image(f) for f in sample] for sample in frames], args.gif)
    return 0


def run_i2t(args: argparse.Namespace) -> int:
    paths = image_paths(args)
    images = read_images(paths)
    pipe = _load(args)
    captions, frames = _with_frames(pipe.caption(
        images, steps=args.steps, length_beam=args.length_beam, length_temperature=args.length_temperature,
        temperature=args.temperature, guidance=args.guidance,
        top_k=args.top_k, top_p=args.top_p, candidates=args.candidates, seed=args.seed, trace=args.gif is not None),
        args.gif is not None)
    write_jsonl([{"image": str(p), "caption": c} for p, c in zip(paths, captions)], args.out)
    _text_gifs(pipe, images, frames, args.gif)
    return 0


def _text_gifs(pipe, images, frames, out: Path | None) -> None:
    """Text refinement drawn under the (model-size) input image."""
    if out is None:
        return
    from PIL import Image

    from magvlt.pipeline import fit_image

    gifs = []
    for image, steps in zip(images, frames):
        pixels = Image.fromarray(fit_image(image, pipe.image_size)[0])
        gifs.append([frame_image(pixels, t) for t in steps])
    write_gifs(gifs, out)


def _box(text: str | None):
    if text is None:
        return None
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise UserError(f"--box must be four numbers x0,y0,x1,y1, got {text!r}")
    return box


def run_inpaint(args: argparse.Namespace) -> int:
    box = _box(args.box)
    paths = image_paths(args)
    images = read_images(paths)
    if len({im.size for im in images}) > 1 and box is not None:
        raise UserError("--box needs images of one size")
    pipe = _load(args)
    results, frames = _with_frames(pipe.inpaint(
        images, box, args.caption, steps=args.steps, temperature=args.temperature,
        choice_temperature=args.choice_temperature, guidance=args.guidance, candidates=args.candidates,
        seed=args.seed, trace=args.gif is not None), args.gif is not None)
    for path, source in zip(write_pngs(results, args.out), paths):
        print(f"{path}\t{source}")
    if frames:
        write_gifs([[frame_image(f) for f in sample] for sample in frames], args.gif)
    return 0


def run_infill(args: argparse.Namespace) -> int:
    paths = image_paths(args)
    images = read_images(paths)
    pipe = _load(args)
    captions, frames = _with_frames(pipe.infill(
        [args.text] * len(images), images, steps=args.steps, temperature=args.temperature, guidance=args.guidance,
        candidates=args.candidates, seed=args.seed, trace=args.gif is not None), args.gif is not None)
    write_jsonl([{"image": str(p), "text": args.text, "caption": c} for p, c in zip(paths, captions)], args.out)
    _text_gifs(pipe, images, frames, args.gif)
    return 0


def run_joint(args: argparse.Namespace) -> int:
    pipe = _load(args)
    pairs, frames = _with_frames(pipe.generate_pairs(
        args.n, steps=args.steps, temperature=args.temperature, choice_temperature=args.choice_temperature,
        seed=args.seed, trace=args.gif is not None), args.gif is not None)
    paths = write_pngs([image for image, _ in pairs], args.out)
    write_jsonl([{"image": p.name, "caption": c} for p, (_, c) in zip(paths, pairs)], args.out / "captions.jsonl")
    for path, (_, caption) in zip(paths, pairs):
        print(f"{path}\t{caption}")
    if frames:
        write_gifs([[frame_image(im, t) for im, t in sample] for sample in frames], args.gif)
    return 0
