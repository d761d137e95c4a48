"""Where I2T fails on two-object scenes: teacher-forced probes of a trained run on shapes-world `val`.

A two-object caption reads `a {A} <relation> a {B}`. Each probe feeds the true caption with some of its words
masked and checks the model's most likely token at every masked position in one forward (greedy infilling in
one step, no iterative decoding), so it separates what the model knows from what the decoder does with it:

- B given A and the relation: "the second object is the other one";
- the relation given A and B: which of the two objects is on the left (top), i.e. binding attributes to places;
- A and B given the relation: filling both slots from where the relation says each object is.

    python benchmarks/i2t_binding.py runs/demo/model --n 400
"""

from __future__ import annotations

import argparse

import torch

from magvlt import sampling
from magvlt.data.shapes import iter_split
from magvlt.pipeline import MAGVLTPipeline
from magvlt.schedulers import MaskPredictScheduler

PROBES = {
    "B given A + relation": ("B",),
    "A given B + relation": ("A",),
    "relation given A + B": ("relation",),
    "A + B given relation": ("A", "B"),
    "A + B + relation (all but articles)": ("A", "B", "relation"),
}


def word_slots(caption: str, bpe_ids) -> dict[str, list[int]]:
    """Token positions (sot at 0) of the words of A's attributes, of the relation and of B's attributes."""
    words, spans, p = caption.split(), [], 1
    for w in words:
        n = len(bpe_ids(w))
        spans.append(list(range(p, p + n)))
        p += n
    second = words.index("a", 1)

    def pick(idx: range) -> list[int]:
        return [q for i in idx for q in spans[i]]

    return {"A": pick(range(1, 4)), "relation": pick(range(4, second)), "B": pick(range(second + 1, second + 4))}


def probe(
    pipe: MAGVLTPipeline,
    codes: torch.Tensor,
    ids: torch.Tensor,
    length: torch.Tensor,
    slots: list[dict[str, list[int]]],
    parts: tuple[str, ...],
) -> tuple[float, float]:
    """(% captions with every masked token right, % masked tokens right) when the words in `parts` are masked."""
    targets = [[q for part in parts for q in s[part]] for s in slots]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, positions in enumerate(targets):
        mask[row, positions] = True
    pred = sampling.infill(pipe.model, codes, ids, length, mask, MaskPredictScheduler(1)).text
    right = [pred[row, positions] == ids[row, positions] for row, positions in enumerate(targets)]
    return (100 * sum(bool(r.all()) for r in right) / len(right), 100 * float(torch.cat(right).float().mean()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run directory of `magvlt train` (e.g. runs/demo/model)")
    parser.add_argument("--n", type=int, default=400, help="val pairs to draw; the two-object ones are probed")
    args = parser.parse_args()
    pipe = MAGVLTPipeline.from_pretrained(args.model)
    images, captions, scenes = next(iter_split("val", args.n, seed=0, size=pipe.image_size[0]))
    two = [i for i, scene in enumerate(scenes) if len(scene) == 2]
    captions = [captions[i] for i in two]
    _, codes = pipe.encode_images(list(images[two]))
    ids, length = pipe.encode_text(captions)
    slots = [word_slots(c, pipe.tokenizer.bpe_ids) for c in captions]
    print(f"{args.model}: {len(two)} two-object `val` scenes, true caption with the named words masked, one forward\n")
    print("| masked | captions all right (%) | masked tokens right (%) |")
    print("|---|---:|---:|")
    for name, parts in PROBES.items():
        all_right, tokens_right = probe(pipe, codes, ids, length, slots, parts)
        print(f"| {name} | {all_right:.1f} | {tokens_right:.1f} |")


if __name__ == "__main__":
    main()
