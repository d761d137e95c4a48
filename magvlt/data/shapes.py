"""Shapes world (spec v1, shared/specs/shapes-world.md): drawn scenes whose captions can be checked exactly.

A scene is a frozenset of `Obj(size, color, shape, anchor)`. Every sample is a pure function of
(split, seed, index): its random numbers are read from SHAKE-256 of the text "shapes-world/v1/{split}/{seed}/{index}"
(see `_uniforms`), so no global RNG is involved, no numpy version can change the stream, and any
re-implementation reproduces it.

Rasterization is exact integer arithmetic, the same on every machine and Pillow version: an object of
half-extent r at (cx, cy) owns the pixel box of width w = floor(2r + 1/2) starting at
x0 = floor(cx - w/2 + 1/2) (y0 likewise), and a pixel of that box is painted iff its center lies inside the
shape inscribed in the box (circle: inside the disc; triangle: apex at the top middle, base along the
bottom edge), computed in exact integers (`stamp`). No anti-aliasing, solid fills, black background.

Sampling: one or two objects with equal odds; one object stands at a uniform anchor, two at left/right or
top/bottom with equal odds; size and color are uniform, the shape uniform among those the split allows for the
color (so at bias 0 train's color and shape marginals are both uniform); the caption is a uniform choice
among the scene's phrasings.

Splits: `train` never holds the held-out (color, shape) pairs; `val` is drawn from the same distribution as
`train` (same knobs) under a different split name, so its samples are separate draws, never copies of
train's (its scenes can recur, as train has only 150 one-object and 1,800 two-object scenes: val measures
fresh renders of the training distribution); `novel` holds at least one held-out pair in every scene; `counter` holds only
objects whose shape breaks the bias rule, using compositions seen in train (so it isolates the bias from
compositional generalization). The bias knob applies to train and val only.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from magvlt.errors import UserError

SIZES = ("small", "large")
COLORS = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 70, 240),
    "yellow": (235, 225, 30),
    "purple": (170, 40, 210),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")
ANCHORS = ("left", "right", "top", "bottom", "center")
ANCHOR_XY = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "center": (0.5, 0.5)}
PAIR_LAYOUTS = (("left", "right"), ("top", "bottom"))
HALF_EXTENT = {"small": 0.09, "large": 0.17}  # fraction of S
HELD_OUT = (("green", "triangle"), ("purple", "square"), ("yellow", "circle"))
BIAS_RULE = {
    "red": "circle",
    "blue": "square",
    "white": "triangle",
    "green": "circle",
    "purple": "triangle",
    "yellow": "square",
}
SPLITS = ("train", "val", "novel", "counter")
MIN_SIZE = 16  # renders; the judge needs >= 24 px to tell a small circle, square and triangle apart

_N_UNIFORMS = 18  # 4 per scene + 7 per object


@dataclass(frozen=True, order=True)
class Obj:
    """One object of a scene: what a caption says about it."""

    size: str
    color: str
    shape: str
    anchor: str


Scene = frozenset  # frozenset[Obj]


@dataclass(frozen=True)
class Placement:
    """An object as drawn: its box center (cx, cy) and half-extent r, in pixels."""

    obj: Obj
    cx: float
    cy: float
    r: float


# ---------------------------------------------------------------- captions


def describe(obj: Obj) -> str:
    """`{size} {color} {shape}`, an object as every caption names it."""
    return f"{obj.size} {obj.color} {obj.shape}"


def phrasings(scene: Scene) -> list[str]:
    """Every valid caption of a scene: one for one object, both orders for two (the CIDEr references)."""
    objs = sorted(scene, key=lambda o: ANCHORS.index(o.anchor))
    if len(objs) == 1:
        (o,) = objs
        return [f"a {describe(o)}" if o.anchor == "center" else f"a {describe(o)} on the {o.anchor}"]
    if len(objs) == 2:
        a, b = objs  # left before right, top before bottom
        if (a.anchor, b.anchor) == ("left", "right"):
            return [
                f"a {describe(a)} to the left of a {describe(b)}",
                f"a {describe(b)} to the right of a {describe(a)}",
            ]
        if (a.anchor, b.anchor) == ("top", "bottom"):
            return [f"a {describe(a)} above a {describe(b)}", f"a {describe(b)} below a {describe(a)}"]
    raise UserError(f"not a shapes-world scene: {sorted(scene)}")


def scene_to_json(scene: Scene) -> list[dict]:
    return [dict(size=o.size, color=o.color, shape=o.shape, anchor=o.anchor) for o in sorted(scene)]


def scene_from_json(objs: Sequence[dict]) -> Scene:
    try:
        return frozenset(Obj(o["size"], o["color"], o["shape"], o["anchor"]) for o in objs)
    except (KeyError, TypeError):
        raise UserError(f"not a scene (list of {{size, color, shape, anchor}}): {objs!r}") from None


# ---------------------------------------------------------------- sampling


def _check(split: str, size: int, bias: float, seed: int) -> None:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if int(size) != size or size < MIN_SIZE:
        raise UserError(f"image size must be an integer >= {MIN_SIZE}, got {size}")
    if not 0.0 <= bias <= 1.0:
        raise UserError(f"bias must lie in [0, 1], got {bias}")
    if int(seed) != seed or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed}")


def _uniforms(split: str, seed: int, index: int) -> tuple[float, ...]:
    """The sample's random numbers in [0, 1): the little-endian uint32 words of
    SHAKE-256("shapes-world/v1/{split}/{seed}/{index}"), each divided by 2**32."""
    words = hashlib.shake_256(f"shapes-world/v1/{split}/{seed}/{index}".encode()).digest(4 * _N_UNIFORMS)
    return tuple(w * 2.0**-32 for w in struct.unpack(f"<{_N_UNIFORMS}I", words))


def _pick(u: float, options: Sequence):
    return options[min(int(u * len(options)), len(options) - 1)]


def _composition(split: str, u_color: float, u_shape: float, u_coin: float, bias: float, force_novel: bool):
    """(color, shape) of one object under the split's rule."""
    if split == "novel" and force_novel:
        return _pick(u_color, HELD_OUT)
    color = _pick(u_color, tuple(COLORS))
    if split == "novel":
        return color, _pick(u_shape, SHAPES)
    if split == "counter":
        return color, _pick(u_shape, [s for s in SHAPES if s != BIAS_RULE[color] and (color, s) not in HELD_OUT])
    if u_coin < bias:
        return color, BIAS_RULE[color]
    return color, _pick(u_shape, [s for s in SHAPES if (color, s) not in HELD_OUT])


def draw(split: str, index: int, seed: int = 0, size: int = 32, bias: float = 0.0) -> tuple[tuple[Placement, ...], str]:
    """The placements and caption of sample `index` of a split (no pixels yet)."""
    _check(split, size, bias, seed)
    u = _uniforms(split, seed, index)
    anchors = _pick(u[1], PAIR_LAYOUTS) if u[0] >= 0.5 else (_pick(u[1], ANCHORS),)
    novel_slot = _pick(u[3], range(len(anchors)))
    jitter = max(1.0, size / 32)
    placements = []
    for k, anchor in enumerate(anchors):
        v = u[4 + 7 * k : 11 + 7 * k]
        obj_size = _pick(v[0], SIZES)
        color, shape = _composition(split, v[1], v[2], v[3], bias, k == novel_slot)
        ax, ay = ANCHOR_XY[anchor]
        placements.append(
            Placement(
                Obj(obj_size, color, shape, anchor),
                cx=ax * size + (2 * v[5] - 1) * jitter,
                cy=ay * size + (2 * v[6] - 1) * jitter,
                r=HALF_EXTENT[obj_size] * size + (2 * v[4] - 1) * 0.5 * size / 32,
            )
        )
    captions = phrasings(frozenset(p.obj for p in placements))
    return tuple(placements), _pick(u[2], captions)


# ---------------------------------------------------------------- rendering


@functools.cache
def stamp(shape: str, w: int) -> np.ndarray:
    """Boolean w x w mask of a shape inscribed in a w-pixel box, tested at pixel centers in exact integers."""
    c = 2 * np.arange(w) + 1 - w  # doubled pixel-center offsets from the box center
    x, y = c[None, :], c[:, None]
    if shape == "circle":
        return x**2 + y**2 <= w**2
    if shape == "square":
        return np.ones((w, w), bool)
    if shape == "triangle":  # apex at the top middle, base along the bottom edge
        return 2 * np.abs(x) <= y + w
    raise UserError(f"unknown shape {shape!r}")


def render(scenes: Sequence[Sequence[Placement]], size: int = 32) -> np.ndarray:
    """Rasterize placed scenes into uint8 images [n, size, size, 3]: solid fills, no anti-aliasing."""
    images = np.zeros((len(scenes), size, size, 3), np.uint8)
    for image, placements in zip(images, scenes):
        for p in placements:
            w = math.floor(2 * p.r + 0.5)
            x0, y0 = math.floor(p.cx - w / 2 + 0.5), math.floor(p.cy - w / 2 + 0.5)
            mask = stamp(p.obj.shape, w)[max(0, -y0) : size - y0, max(0, -x0) : size - x0]
            image[max(0, y0) : y0 + w, max(0, x0) : x0 + w][mask] = COLORS[p.obj.color]
    return images


def sample(split: str, index: int, seed: int = 0, size: int = 32, bias: float = 0.0) -> tuple[np.ndarray, str, Scene]:
    """One sample: (image uint8 [size, size, 3], caption, scene)."""
    placements, caption = draw(split, index, seed, size, bias)
    return render([placements], size)[0], caption, frozenset(p.obj for p in placements)


def iter_split(
    split: str, n: int, seed: int = 0, size: int = 32, bias: float = 0.0, start: int = 0, chunk: int = 2048
) -> Iterator[tuple[np.ndarray, list[str], list[Scene]]]:
    """Samples start .. start+n-1 of a split in chunks of (images, captions, scenes); checks the knobs at once."""
    _check(split, size, bias, seed)
    if n < 0 or start < 0:
        raise UserError(f"n and start must be non-negative, got n={n}, start={start}")
    return _chunks(split, n, seed, size, bias, start, chunk)


def _chunks(split: str, n: int, seed: int, size: int, bias: float, start: int, chunk: int):
    for lo in range(start, start + n, chunk):
        drawn = [draw(split, i, seed, size, bias) for i in range(lo, min(lo + chunk, start + n))]
        yield (
            render([d[0] for d in drawn], size),
            [d[1] for d in drawn],
            [frozenset(p.obj for p in d[0]) for d in drawn],
        )


def render_split(
    split: str, n: int, seed: int = 0, size: int = 32, bias: float = 0.0, start: int = 0
) -> tuple[np.ndarray, list[str]]:
    """Samples start .. start+n-1 of a split as (images uint8 [n, size, size, 3], captions)."""
    images, captions = [np.zeros((0, size, size, 3), np.uint8)], []
    for im, caps, _ in iter_split(split, n, seed, size, bias, start):
        images.append(im)
        captions += caps
    return np.concatenate(images), captions
