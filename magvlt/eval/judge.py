"""The shapes-world judge (spec v1): images and captions parsed into scenes and compared exactly.

Image -> scene. A pixel belongs to the palette color c whose blend with the black background, t*c for t in
[0, 1], passes nearest to it, provided it is at least half covered (t >= MIN_COVERAGE, which puts the edge of a
blurred object where the sharp one had it) and lies within MAX_COLOR_DISTANCE (Euclidean RGB) of that blend;
other pixels are background. Each 8-connected group of same-color pixels is an object, except groups smaller
than MIN_AREA_FRACTION * S^2 pixels (about a quarter of the smallest drawable object), which are noise. Shape:
of the renderer's own stamps drawn at the object's width, the one whose outline overlaps the object best
(bottom-aligned IoU); this is what the bounding-box fills (square 1.0, circle ~0.79, triangle ~0.5) and the
outline (triangle: narrow top, full base) say. Size: the box side implied by the area and the shape's ideal
fill, small below SIZE_SPLIT * S. Position: the anchor nearest to the centroid. On fresh renders from 24 px up
it is exact (at 16 px a small object is 3 px wide and shapes blur into each other), and it stays exact under a
Gaussian blur of sigma 0.5 px plus +-15 noise.

Scoring. A scene is correct when it equals the reference as a multiset of (size, color, shape, anchor).
Per-attribute accuracy: the parsed objects are matched one-to-one to the reference objects so as to agree on as
many attributes as possible; an attribute's accuracy is the fraction of reference objects whose matched object
agrees on it (an unmatched reference object is wrong on every attribute); position means the anchor. `count`
is the fraction of scenes with the right number of objects. Rates are percentages.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence

import numpy as np

from magvlt.data.shapes import ANCHOR_XY, ANCHORS, COLORS, SHAPES, SIZES, Obj, Scene, stamp
from magvlt.errors import UserError

MAX_COLOR_DISTANCE = 80.0
MIN_COVERAGE = 0.5
MIN_AREA_FRACTION = 0.003
SIZE_SPLIT = 0.26  # between a small box (0.18 S) and a large one (0.34 S)
IDEAL_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
ATTRIBUTES = ("size", "color", "shape", "position")

_PALETTE = np.array(list(COLORS.values()), np.float64)
_COLOR_NAMES = (None, *COLORS)  # class 0 = no object

# ---------------------------------------------------------------- caption -> scene

_OBJ = rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
_ONE = re.compile(rf"{_OBJ}(?: on the (left|right|top|bottom))?")
_TWO = re.compile(rf"{_OBJ} (to the left of|to the right of|above|below) {_OBJ}")
_RELATION = {
    "to the left of": ("left", "right"),
    "to the right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}


def parse_caption(text: str) -> Scene | None:
    """A caption's scene by the spec's grammar (whitespace runs count as one space); None outside the grammar."""
    text = " ".join(str(text).split())
    if m := _ONE.fullmatch(text):
        size, color, shape, anchor = m.groups()
        return frozenset({Obj(size, color, shape, anchor or "center")})
    if m := _TWO.fullmatch(text):
        a_size, a_color, a_shape, relation, b_size, b_color, b_shape = m.groups()
        a_anchor, b_anchor = _RELATION[relation]
        return frozenset({Obj(a_size, a_color, a_shape, a_anchor), Obj(b_size, b_color, b_shape, b_anchor)})
    return None


# ---------------------------------------------------------------- image -> scene


def _classes(images: np.ndarray) -> np.ndarray:
    """Palette class per pixel, 1..6, or 0 for no object: the palette color c whose segment t*c (t in [0, 1],
    i.e. c blended with the black background) passes nearest the pixel, if t >= MIN_COVERAGE and the pixel
    lies within MAX_COLOR_DISTANCE of t*c."""
    x = images.reshape(-1, 3)
    cls = np.zeros(len(x), np.int64)
    lit = np.flatnonzero(x.any(1))  # exact black is background; measure only the rest
    v, p = x[lit].astype(np.float32), _PALETTE.astype(np.float32)
    t = np.clip(v @ p.T / (p * p).sum(1), 0.0, 1.0)
    d2 = ((v[:, None, :] - t[..., None] * p) ** 2).sum(-1)
    best = d2.argmin(1)
    rows = np.arange(len(lit))
    on = (t[rows, best] >= MIN_COVERAGE) & (d2[rows, best] <= MAX_COLOR_DISTANCE**2)
    cls[lit] = np.where(on, best + 1, 0)
    return cls.reshape(images.shape[:-1])


def _label(cls: np.ndarray) -> np.ndarray:
    """8-connected components of same-class object pixels, batched: each pixel's label is the smallest flat
    index in its component (min-label propagation with pointer jumping); non-object pixels get -1."""
    c = np.pad(cls, ((0, 0), (1, 1), (1, 1)), constant_values=0)
    fg = c > 0
    big = c.size
    lab = np.where(fg, np.arange(c.size).reshape(c.shape), big)
    h, w = cls.shape[1:]
    window = lambda a, dy, dx: a[:, 1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx]
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    same = [(window(c, dy, dx) == cls) & (cls > 0) for dy, dx in shifts]
    while True:
        new = lab.copy()
        inner = window(new, 0, 0)
        for (dy, dx), m in zip(shifts, same):
            np.minimum(inner, window(lab, dy, dx), out=inner, where=m)
        new = np.append(new.ravel(), big)[new]  # pointer jumping: adopt the label's own label
        if np.array_equal(new, lab):
            return np.where(fg, lab, -1)[:, 1:-1, 1:-1]
        lab = new


def _trimmed(shape: str, w: int) -> np.ndarray:
    m = stamp(shape, w)
    return m[m.any(1)]


def _shape(mask: np.ndarray) -> str:
    """The shape whose stamp at the object's width, bottom-aligned, overlaps the object's mask best (IoU)."""
    h, w = mask.shape

    def iou(t: np.ndarray) -> float:
        a, b = np.zeros((2, max(h, len(t)), w), bool)
        a[len(a) - h :], b[len(b) - len(t) :] = mask, t
        return (a & b).sum() / (a | b).sum()

    return max(SHAPES, key=lambda shape: iou(_trimmed(shape, w)))


def _object(cls: np.ndarray, pixels: np.ndarray, s: int) -> Obj:
    """One connected group of same-color pixels (flat indices within its image) as an object."""
    ys, xs = pixels // s, pixels % s
    y0, x0 = ys.min(), xs.min()
    mask = np.zeros((ys.max() - y0 + 1, xs.max() - x0 + 1), bool)
    mask[ys - y0, xs - x0] = True
    shape = _shape(mask)
    size = "small" if np.sqrt(len(pixels) / IDEAL_FILL[shape]) < SIZE_SPLIT * s else "large"
    centroid = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
    anchor = min(ANCHORS, key=lambda a: ((np.array(ANCHOR_XY[a]) * s - centroid) ** 2).sum())
    return Obj(size, _COLOR_NAMES[cls[pixels[0]]], shape, anchor)


def parse_objects(images: np.ndarray) -> list[list[Obj]]:
    """The objects found in each image of a batch uint8 [n, S, S, 3], with multiplicity, sorted."""
    images = _check_images(images)
    n, s = images.shape[:2]
    cls = _classes(images)
    lab = _label(cls).reshape(n, -1)
    scenes = []
    for labels, classes in zip(lab, cls.reshape(n, -1)):
        pixels = np.flatnonzero(labels >= 0)
        order = np.argsort(labels[pixels], kind="stable")
        _, starts, counts = np.unique(labels[pixels[order]], return_index=True, return_counts=True)
        groups = [pixels[order[a : a + c]] for a, c in zip(starts, counts) if c >= MIN_AREA_FRACTION * s * s]
        scenes.append(sorted(_object(classes, g, s) for g in groups))
    return scenes


def parse_image(image: np.ndarray) -> Scene:
    """The scene drawn in one uint8 image [S, S, 3] (spec: the judge, image -> scene)."""
    return frozenset(parse_objects(np.asarray(image)[None])[0])


def _check_images(images) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[1] != a.shape[2] or a.dtype != np.uint8:
        raise UserError(f"the judge reads square uint8 RGB images [n, S, S, 3], got {a.dtype} {list(a.shape)}")
    return a


# ---------------------------------------------------------------- scoring


def _agree(ref: Obj, got: Obj | None) -> tuple[bool, bool, bool, bool]:
    if got is None:
        return (False,) * 4
    return ref.size == got.size, ref.color == got.color, ref.shape == got.shape, ref.anchor == got.anchor


def match(reference: Sequence[Obj], found: Sequence[Obj]) -> list[tuple[bool, bool, bool, bool]]:
    """Per reference object, which of (size, color, shape, position) its matched object shares, under the
    one-to-one matching that agrees on the most attributes (unmatched: none)."""
    ref, found = sorted(reference), sorted(found)
    options = itertools.permutations([*found, *[None] * len(ref)], len(ref))
    best = max(options, key=lambda got: sum(sum(_agree(r, g)) for r, g in zip(ref, got)))
    return [_agree(r, g) for r, g in zip(ref, best)]


def _score(references: Sequence[Sequence[Obj]], found: Sequence[Sequence[Obj] | None]) -> dict:
    """Exact, per-attribute and count accuracy (%) of found scenes (None: invalid) against references."""
    n = len(references)
    exact = sum(f is not None and sorted(f) == sorted(r) for r, f in zip(references, found))
    count = sum(f is not None and len(f) == len(r) for r, f in zip(references, found))
    agree = [a for r, f in zip(references, found) for a in match(r, f or [])]
    out = {"n": n, "exact": _percent(exact, n)}
    out.update({name: _percent(sum(a[i] for a in agree), len(agree)) for i, name in enumerate(ATTRIBUTES)})
    out.update(count=_percent(count, n), n_exact=exact, n_objects=len(agree))
    return out


def _percent(k: int, total: int) -> float:
    return 100.0 * k / total if total else 0.0


def _caption_scene(caption: str, what: str) -> Scene:
    scene = parse_caption(caption)
    if scene is None:
        raise UserError(f"{what} {caption!r} is outside the shapes-world grammar")
    return scene


def judge_images(images, captions: Sequence[str]) -> dict:
    """Generated images vs the captions they were made from (spec: the judge): exact and per-attribute
    accuracy, count accuracy (%) and counts."""
    images = _check_images(images)
    if len(images) != len(captions):
        raise UserError(f"{len(images)} images but {len(captions)} captions")
    references = [sorted(_caption_scene(c, f"caption {i}")) for i, c in enumerate(captions)]
    found = [objs for lo in range(0, len(images), 256) for objs in parse_objects(images[lo : lo + 256])]
    return _score(references, found)


def reference_scene(reference, what: str = "reference") -> Scene:
    """A reference given as a scene, a caption, or a list of captions of one scene (e.g. all its phrasings)."""
    if isinstance(reference, frozenset):
        return reference
    if isinstance(reference, str):
        return _caption_scene(reference, what)
    scenes = {_caption_scene(c, what) for c in reference}
    if len(scenes) != 1:
        raise UserError(f"{what} captions {list(reference)!r} do not describe one scene")
    return scenes.pop()


def judge_captions(captions: Sequence[str], references: Sequence) -> dict:
    """Generated captions vs reference scenes (scenes, captions, or lists of captions): exact, per-attribute
    and count accuracy, the rate of captions outside the grammar (%) and counts."""
    if len(captions) != len(references):
        raise UserError(f"{len(captions)} captions but {len(references)} references")
    refs = [sorted(reference_scene(r, f"reference {i}")) for i, r in enumerate(references)]
    found = [parse_caption(c) for c in captions]
    out = _score(refs, found)
    invalid = sum(f is None for f in found)
    out.update(invalid=_percent(invalid, len(found)), n_invalid=invalid)
    return out
