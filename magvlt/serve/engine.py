"""The only module of the server that calls the model: batch-oriented tasks over today's `MAGVLT` pipeline.

Every method takes one list entry per request and returns one result per request, in order. Today's pipeline
draws a whole call from one seed, so requests are grouped by seed (and, for inpainting, by mask) and each group
is one pipeline call: a request's output is fixed by its seed when it runs alone, and by its seed and the other
requests of its group when batched. A pipeline that takes one generator per sample makes a whole batch one
call and every output seed-exact. Refinement frames (`on_step`) are delivered after each call, since `trace=True`
returns them at the end; a pipeline with a step callback can deliver them live through the same hook.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image

from magvlt.pipeline import MAGVLT, fit_image

OnStep = Callable[[int, int, int, object], None]  # (request index, step, steps, frame: PIL image or str)
ALL_TASKS = ("t2i", "i2t", "inpaint", "infill", "pairs")


def grouped(keys: Sequence[Hashable], run: Callable[[list[int], Hashable], list]) -> list:
    """Call run(indices, key) once per distinct key and put its results back in request order."""
    out: list = [None] * len(keys)
    for key in dict.fromkeys(keys):
        rows = [i for i, k in enumerate(keys) if k == key]
        for i, result in zip(rows, run(rows, key)):
            out[i] = result
    return out


def emit(on_step: OnStep, rows: list[int], frames: list[list]) -> None:
    """Hand every refinement frame of every request in rows to on_step."""
    for i, steps in zip(rows, frames):
        for k, frame in enumerate(steps):
            on_step(i, k + 1, len(steps), frame)


class Engine:
    """A loaded run directory behind five batch calls: t2i, i2t, inpaint, infill and pairs."""

    def __init__(self, pipe: MAGVLT, name: str = "model"):
        self.pipe, self.name = pipe, name

    @classmethod
    def load(cls, model_dir: str | Path, device: str | None = None, scorer: str | Path | None = None) -> Engine:
        """Load a run directory of `magvlt train` (UserError when it is missing or incomplete)."""
        return cls(MAGVLT.load(model_dir, device=device, scorer=scorer), "/".join(Path(model_dir).resolve().parts[-2:]))

    # ---------------------------------------------------------------- what the model accepts

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images the model reads and writes."""
        return self.pipe.image_size

    @property
    def max_prompt_tokens(self) -> int:
        return self.pipe.tokenizer.length - 2

    @property
    def tasks(self) -> tuple[str, ...]:
        """An ARGVLT (causal) run only does t2i and i2t."""
        return ALL_TASKS[:2] if self.pipe.cfg.causal else ALL_TASKS

    def check_prompt(self, prompt: str) -> None:
        """UserError when the prompt is empty or longer than the model reads."""
        self.pipe.encode_text([prompt])

    def check_masked_text(self, text: str) -> None:
        """UserError when a text with [MASK] markers is empty or longer than the model reads."""
        self.pipe.encode_masked_text([text])

    def fit(self, image: Image.Image) -> Image.Image:
        """The image resized (shorter side) and center-cropped to the model's size, as the pipeline reads it."""
        return Image.fromarray(fit_image(image, self.image_size)[0])

    def token_mask(self, mask: Image.Image) -> np.ndarray:
        """A mask image (white = regenerate) of the input's size -> bool [N_I]: a token is regenerated when at
        least half of its pixels are white after the mask is resized and center-cropped exactly like the image."""
        h, w = self.image_size
        gh, gw = self.pipe.cfg.image_grid
        white = fit_image(mask.convert("L").convert("RGB"), (h, w))[0][..., 0] >= 128
        return (white.reshape(gh, h // gh, gw, w // gw).mean(axis=(1, 3)) >= 0.5).reshape(-1)

    # ---------------------------------------------------------------- tasks

    def t2i(self, prompts: list[str], seeds: list[int], steps: int, candidates: int,
            on_step: OnStep | None = None) -> list[Image.Image]:
        """One image per prompt."""
        def run(rows, seed):
            out = self.pipe.generate_images([prompts[i] for i in rows], steps=steps, candidates=candidates,
                                            seed=seed, trace=on_step is not None)
            return self._traced(out, rows, on_step)
        return grouped(seeds, run)

    def i2t(self, images: list[Image.Image], seeds: list[int], steps: int, candidates: int,
            on_step: OnStep | None = None) -> list[str]:
        """One caption per image."""
        def run(rows, seed):
            out = self.pipe.caption([images[i] for i in rows], steps=steps, candidates=candidates, seed=seed,
                                    trace=on_step is not None)
            return self._traced(out, rows, on_step)
        return grouped(seeds, run)

    def inpaint(self, images: list[Image.Image], masks: list[np.ndarray], prompts: list[str], seeds: list[int],
                steps: int, candidates: int) -> list[Image.Image]:
        """Each image with its masked tokens (from `token_mask`) regenerated for its prompt, at the model's size."""
        def run(rows, key):
            return self.pipe.inpaint([images[i] for i in rows], masks[rows[0]], [prompts[i] for i in rows],
                                     steps=steps, candidates=candidates, seed=key[0])
        return grouped([(s, m.tobytes()) for s, m in zip(seeds, masks)], run)

    def infill(self, images: list[Image.Image], texts: list[str], seeds: list[int], steps: int,
               candidates: int) -> list[str]:
        """Each text with its [MASK] markers filled in, given its image."""
        def run(rows, seed):
            return self.pipe.infill([texts[i] for i in rows], [images[i] for i in rows], steps=steps,
                                    candidates=candidates, seed=seed)
        return grouped(seeds, run)

    def pairs(self, counts: list[int], seeds: list[int], steps: int) -> list[list[tuple[Image.Image, str]]]:
        """counts[i] unconditional (image, caption) pairs per request."""
        def run(rows, seed):
            made = self.pipe.generate_pairs(sum(counts[i] for i in rows), steps=steps, seed=seed)
            bounds = np.cumsum([0] + [counts[i] for i in rows])
            return [made[a:b] for a, b in pairwise(bounds)]
        return grouped(seeds, run)

    @staticmethod
    def _traced(out, rows: list[int], on_step: OnStep | None) -> list:
        """The outputs of a pipeline call, handing its frames (if traced) to on_step first."""
        if on_step is None:
            return out
        outputs, frames = out
        emit(on_step, rows, frames)
        return outputs
