"""Official sampler vs magvlt on the same random weights: greedy T2I and I2T time, and whether outputs are identical.

For each size, the official side (run with the official code's Python, e.g. /work/official-venv) builds the official
MaskGITModel with random weights (tools/official_fixtures.py's tiny config, resized), saves it as a released-format
.ckpt, and times its greedy T2I (`sample_t2i`, one batch) and greedy I2T (`sample_i2t`, one image per call: with
more than one row per call it only runs on CUDA). magvlt converts that .ckpt with `magvlt convert official` and
times `MAGVLTPipeline` greedy T2I and I2T with --candidates 1 on the same prompts and images. fp32, CPU.

    python benchmarks/official_speed.py /work/official --official-python /work/official-venv/bin/python \\
        --sizes tiny base --batches 1 32
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = {"tiny": (256, 4, 2), "base": (1024, 24, 8)}  # width, layers, heads (16x16 codes, 64 text positions)
SIDE = 16
TOOLS = Path(__file__).resolve().parent.parent / "tools"


def official_side(args) -> None:
    """In the official environment: build, save, time and record greedy outputs."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(TOOLS))
    import official_fixtures as fx

    width, layers, heads = SIZES[args.size]
    fx.WIDTH, fx.LAYERS, fx.HEADS, fx.IMG_SIDE = width, layers, heads, SIDE
    fx.VQ.update(resolution=SIDE * 2)  # the fixture's tiny VQ-GAN (factor 2): the transformer dominates the time
    fx.install_clip_stub()
    sys.path.insert(0, str(Path(args.repo).resolve()))
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    cfg, tokutil, model = fx.build(Path(args.repo))
    out = Path(args.out)
    torch.save(fx.lightning_checkpoint(model), out / "magvlt.ckpt")
    prompts = [fx.PROMPTS[i % len(fx.PROMPTS)] for i in range(args.batch)]
    img = np.concatenate([fx.images(len(fx.PROMPTS))] * (args.batch // len(fx.PROMPTS) + 1))[: args.batch]
    txt, txt_mask = fx.text_batch(tokutil, prompts)
    start = time.perf_counter()
    codes, _ = fx.greedy_t2i(cfg, model, txt, txt_mask)
    t2i = time.perf_counter() - start
    pixels = fx.to_model_pixels(img)
    start = time.perf_counter()
    captions = [fx.greedy_i2t(cfg, tokutil, model, pixels[b : b + 1])[2][0] for b in range(args.batch)]
    i2t = time.perf_counter() - start
    save_file({"codes": codes.int().contiguous(), "images": torch.from_numpy(img)}, str(out / "official.safetensors"))
    (out / "official.json").write_text(
        json.dumps({"prompts": prompts, "captions": captions, "t2i_s": t2i, "i2t_s": i2t})
    )


def magvlt_side(run: Path, out: Path, threads: int) -> dict:
    """Convert, then time magvlt's greedy T2I and I2T on the official side's prompts and images."""
    import torch
    from PIL import Image
    from safetensors.torch import load_file

    from magvlt.official.convert import convert
    from magvlt.pipeline import MAGVLTPipeline
    from magvlt.sampling import generate_images
    from magvlt.schedulers import get_preset

    torch.set_num_threads(threads)
    convert(out / "magvlt.ckpt", run)
    pipe = MAGVLTPipeline.from_pretrained(run)
    record, tensors = json.loads((out / "official.json").read_text()), load_file(str(out / "official.safetensors"))
    greedy = get_preset("official").greedy()
    start = time.perf_counter()
    ids, lengths = pipe.encode_text(record["prompts"])
    with torch.no_grad():
        codes = generate_images(pipe.model, ids, lengths, greedy.image).image
        pipe.vq.decode_float(codes, pipe.cfg.image_grid)
    t2i = time.perf_counter() - start
    images = [Image.fromarray(a) for a in tensors["images"].numpy()]
    start = time.perf_counter()
    captions = pipe.caption(images, preset=greedy, num_candidates=1).texts
    i2t = time.perf_counter() - start
    return {
        "t2i_s": t2i,
        "i2t_s": i2t,
        "t2i_identical": bool(torch.equal(codes, tensors["codes"].long())),
        "i2t_identical": captions == record["captions"],
        "official": record,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repo", help="a checkout of kakaobrain/magvlt (commit 4654615)")
    parser.add_argument(
        "--official-python", default=sys.executable, help="Python with the official code's dependencies"
    )
    parser.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=sorted(SIZES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", help=argparse.SUPPRESS)  # the official side's own arguments
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.out is not None:
        return official_side(args)
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            with tempfile.TemporaryDirectory() as tmp:
                tmp = Path(tmp)
                subprocess.run(
                    [
                        args.official_python,
                        __file__,
                        args.repo,
                        "--size",
                        size,
                        "--batch",
                        str(batch),
                        "--out",
                        str(tmp),
                        "--threads",
                        str(args.threads),
                    ],
                    check=True,
                )
                m = magvlt_side(tmp / "run", tmp, args.threads)
            o = m.pop("official")
            row = {
                "size": size,
                "batch": batch,
                "official_t2i_s": round(o["t2i_s"], 2),
                "magvlt_t2i_s": round(m["t2i_s"], 2),
                "t2i_speedup": round(o["t2i_s"] / m["t2i_s"], 2),
                "official_i2t_s": round(o["i2t_s"], 2),
                "magvlt_i2t_s": round(m["i2t_s"], 2),
                "i2t_speedup": round(o["i2t_s"] / m["i2t_s"], 2),
                "t2i_identical": m["t2i_identical"],
                "i2t_identical": m["i2t_identical"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        "\n| size | batch | T2I official s | T2I magvlt s | speed-up | I2T official s | I2T magvlt s | speed-up | identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r['batch']} | {r['official_t2i_s']} | {r['magvlt_t2i_s']} | {r['t2i_speedup']}x | "
            f"{r['official_i2t_s']} | {r['magvlt_i2t_s']} | {r['i2t_speedup']}x | "
            f"{r['t2i_identical'] and r['i2t_identical']} |"
        )


if __name__ == "__main__":
    main()
