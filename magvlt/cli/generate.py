"""`magvlt generate t2i|i2t|inpaint|infill|joint`: use a trained run on prompts, images and files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from magvlt.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _common(parser: argparse.ArgumentParser, modality: str) -> None:
    parser.add_argument(
        "--model", type=Path, required=True, help="run directory from `magvlt train` or `magvlt convert`"
    )
    parser.add_argument("--preset", help="decoding preset: default, paper, official, demo (default: the run's own)")
    parser.add_argument(
        "--greedy", action="store_true", help="argmax tokens, no confidence noise, deterministic re-masking"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed; input i draws from seed + i (same seed, same output)"
    )
    parser.add_argument("--steps", type=int, help="refinement steps (default: the preset's)")
    parser.add_argument(
        "--temperature", type=float, help="sampling temperature of the tokens, 0 = argmax (default: the preset's)"
    )
    parser.add_argument("--top-k", type=int, help="sample among the top-k tokens (default: the preset's)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (default: the preset's)")
    if modality == "image":
        parser.add_argument("--choice-temperature", type=float, help="MaskGIT's confidence noise at the first step")
    parser.add_argument("--gif", type=Path, metavar="DIR", help="also write each sample's refinement as DIR/NNNN.gif")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")


def _guided(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=1.0,
        help="classifier-free guidance, > 1 to use (models trained with condition dropout)",
    )
    parser.add_argument("--candidates", type=int, help="samples per input, the best is kept (default: the preset's)")
    parser.add_argument(
        "--scorer",
        "--clip",
        dest="scorer",
        type=Path,
        help="reranker: a `magvlt clip train` directory or a local openai/clip-vit-base-patch32 (transformers) "
        "directory (default: the run's scorer/, else the model's likelihood)",
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser("generate", help="generate images, captions, inpaintings, infillings or pairs")
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")

    t2i = sub.add_parser("t2i", help="text to image: numbered PNGs in --out")
    _common(t2i, "image")
    _guided(t2i)
    src = t2i.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a caption (repeat for several)")
    src.add_argument("--prompts", type=Path, help="a text file with one caption per line")
    t2i.add_argument("--out", type=Path, required=True, help="output directory")
    t2i.set_defaults(func=run_t2i)

    i2t = sub.add_parser("i2t", help="image to text: captions as JSON lines")
    _common(i2t, "text")
    _guided(i2t)
    _images(i2t)
    i2t.add_argument("--out", type=Path, help="JSON-lines output file (default: print to stdout)")
    i2t.add_argument("--length-beam", type=int, help="decode the top-k predicted lengths, keep the best")
    i2t.add_argument(
        "--length-temperature",
        type=float,
        help="sample each caption's length at this temperature (0 = the most likely length); "
        "lets --candidates differ in length",
    )
    i2t.set_defaults(func=run_i2t)

    inpaint = sub.add_parser("inpaint", help="regenerate part of an image from the rest and a caption")
    _common(inpaint, "image")
    _guided(inpaint)
    _images(inpaint)
    inpaint.add_argument("--caption", required=True, help="caption of the wanted image")
    where = inpaint.add_mutually_exclusive_group()
    where.add_argument("--mask", type=Path, help="mask image of the input's size, white = regenerate")
    where.add_argument("--box", help="x0,y0,x1,y1 pixel box to regenerate (default: the central half of the grid)")
    inpaint.add_argument("--out", type=Path, required=True, help="output directory")
    inpaint.set_defaults(func=run_inpaint)

    infill = sub.add_parser("infill", help="regenerate part of a caption given the rest and the image")
    _common(infill, "text")
    _guided(infill)
    _images(infill)
    infill.add_argument(
        "--text",
        required=True,
        help="caption with [MASK] markers (one token each); without markers its central half is redone",
    )
    infill.add_argument("--out", type=Path, help="JSON-lines output file (default: print to stdout)")
    infill.set_defaults(func=run_infill)

    joint = sub.add_parser("joint", help="unconditional image + caption pairs (App. D)")
    _common(joint, "image")
    joint.add_argument("-n", type=int, default=4, help="number of pairs")
    joint.add_argument("--out", type=Path, required=True, help="output directory (PNGs and captions.jsonl)")
    joint.set_defaults(func=run_joint)


def _images(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--image", type=Path, action="append", help="an image file (repeat for several)")
    src.add_argument("--images", type=Path, help="a folder of images (sorted by name)")


def _load(args):
    import torch

    from magvlt.pipeline import MAGVLTPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return MAGVLTPipeline.from_pretrained(args.model, scorer=getattr(args, "scorer", None)).to(device)


_OVERRIDES = {
    "image": {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "choice_temperature": "noise"},
    "text": {
        "temperature": "temperature",
        "top_k": "top_k",
        "top_p": "top_p",
        "length_beam": "length_beam",
        "length_temperature": "length_temperature",
    },
}


def _options(args, pipe, modality: str, n: int) -> dict:
    """The pipeline's keyword arguments from the command line: the preset with the flags given, one generator per
    input, steps, candidates and guidance where the task has them."""
    import dataclasses

    import torch

    from magvlt.schedulers import get_preset

    preset = get_preset(args.preset or pipe.preset)
    preset = preset.greedy() if args.greedy else preset
    for m, fields in _OVERRIDES.items():
        given = {field: getattr(args, flag) for flag, field in fields.items() if getattr(args, flag, None) is not None}
        if given:
            setattr(preset, m, dataclasses.replace(getattr(preset, m), **given))
    options = {
        "preset": preset,
        "num_inference_steps": args.steps,
        "output_intermediates": args.gif is not None,
        "generator": [torch.Generator().manual_seed(args.seed + i) for i in range(n)],
    }
    if hasattr(args, "candidates"):
        options.update(num_candidates=args.candidates, guidance_scale=args.guidance_scale)
    return options


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
    from magvlt.images import read_image

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
    out = pipe(prompts, **_options(args, pipe, "image", len(prompts)))
    for path, prompt in zip(write_pngs(out.images, args.out), prompts):
        print(f"{path}\t{prompt}")
    if out.intermediates:
        write_gifs([[frame_image(f) for f in sample] for sample in out.intermediates], args.gif)
    return 0


def run_i2t(args: argparse.Namespace) -> int:
    paths = image_paths(args)
    images = read_images(paths)
    pipe = _load(args)
    out = pipe.caption(images, **_options(args, pipe, "text", len(images)))
    write_jsonl([{"image": str(p), "caption": c} for p, c in zip(paths, out.texts)], args.out)
    _text_gifs(pipe, images, out.intermediates, args.gif)
    return 0


def _text_gifs(pipe, images, frames, out: Path | None) -> None:
    """Text refinement drawn under the (model-size) input image."""
    if out is None:
        return
    from PIL import Image

    from magvlt.images import fit_image

    gifs = []
    for image, steps in zip(images, frames):
        pixels = Image.fromarray(fit_image(image, pipe.image_size))
        gifs.append([frame_image(pixels, t) for t in steps])
    write_gifs(gifs, out)


def _mask_image(args, images):
    """The --mask file, or a --box drawn white on black at the inputs' size; None for the central half."""
    if args.mask is not None:
        from magvlt.images import read_image

        return read_image(args.mask).convert("L")
    if args.box is None:
        return None
    try:
        box = tuple(float(v) for v in args.box.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise UserError(f"--box must be four numbers x0,y0,x1,y1, got {args.box!r}")
    sizes = {im.size for im in images}
    if len(sizes) > 1:
        raise UserError("--box needs images of one size")
    (w, h), (x0, y0, x1, y1) = sizes.pop(), box
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise UserError(f"box {args.box} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
    from PIL import Image, ImageDraw

    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    return mask


def run_inpaint(args: argparse.Namespace) -> int:
    paths = image_paths(args)
    images = read_images(paths)
    mask = _mask_image(args, images)
    pipe = _load(args)
    out = pipe.inpaint(images, mask, args.caption, **_options(args, pipe, "image", len(images)))
    for path, source in zip(write_pngs(out.images, args.out), paths):
        print(f"{path}\t{source}")
    if out.intermediates:
        write_gifs([[frame_image(f) for f in sample] for sample in out.intermediates], args.gif)
    return 0


def run_infill(args: argparse.Namespace) -> int:
    paths = image_paths(args)
    images = read_images(paths)
    pipe = _load(args)
    out = pipe.infill(images, args.text, **_options(args, pipe, "text", len(images)))
    write_jsonl([{"image": str(p), "text": args.text, "caption": c} for p, c in zip(paths, out.texts)], args.out)
    _text_gifs(pipe, images, out.intermediates, args.gif)
    return 0


def run_joint(args: argparse.Namespace) -> int:
    pipe = _load(args)
    out = pipe.generate_pairs(args.n, **_options(args, pipe, "image", args.n))
    paths = write_pngs(out.images, args.out)
    write_jsonl([{"image": p.name, "caption": c} for p, c in zip(paths, out.texts)], args.out / "captions.jsonl")
    for path, caption in zip(paths, out.texts):
        print(f"{path}\t{caption}")
    if out.intermediates:
        write_gifs([[frame_image(im, t) for im, t in sample] for sample in out.intermediates], args.gif)
    return 0
