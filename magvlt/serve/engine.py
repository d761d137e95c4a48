"""The only module of the server that calls the model: batch-oriented tasks over `MAGVLTPipeline`.

Every method takes one list entry per request and returns one result per request, in order, from one pipeline
call. Each request draws from its own generator seeded by its seed, so its output does not depend on the batch
it was grouped into. Refinement frames reach `on_step` live, from the pipeline's step callback; with several
candidates the frames follow a request's first candidate, and its result is the reranker's pick.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magvlt.images import fit_image, mask_tokens
from magvlt.pipeline import MAGVLTPipeline

OnStep = Callable[[int, int, int, object], None]  # (request index, step, steps, frame: PIL image or str)
ALL_TASKS = ("t2i", "i2t", "inpaint", "infill", "pairs")


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One generator per request, seeded by its seed."""
    return [torch.Generator().manual_seed(s) for s in seeds]


class Engine:
    """A loaded run directory behind five batch calls: t2i, i2t, inpaint, infill and pairs."""

    def __init__(self, pipe: MAGVLTPipeline, name: str = "model"):
        self.pipe, self.name = pipe, name

    @classmethod
    def load(cls, model_dir: str | Path, device: str | None = None, scorer: str | Path | None = None) -> Engine:
        """Load a run directory (UserError when it is missing or incomplete)."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = MAGVLTPipeline.from_pretrained(model_dir, scorer=scorer).to(device)
        return cls(pipe, "/".join(Path(model_dir).resolve().parts[-2:]))

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
        return Image.fromarray(fit_image(image, self.image_size))

    def token_mask(self, mask: Image.Image) -> np.ndarray:
        """A mask image (white = regenerate) of the input's size -> bool [N_I], by the pipeline's rule
        (`magvlt.images.mask_tokens`: a token is regenerated when any pixel of its cell is white)."""
        return mask_tokens(mask, self.image_size, self.pipe.cfg.image_grid).numpy()

    def _mask_image(self, tokens: np.ndarray) -> Image.Image:
        """A token mask drawn as a mask image at the model's size (each regenerated cell white)."""
        (h, w), (gh, gw) = self.image_size, self.pipe.cfg.image_grid
        cells = tokens.reshape(gh, gw).astype(np.uint8) * 255
        return Image.fromarray(np.kron(cells, np.ones((h // gh, w // gw), np.uint8)))

    def _steps(self, steps: int) -> int | None:
        """The refinement steps of a MAGVLT run; an ARGVLT run decodes token by token, with no steps to set."""
        return None if self.pipe.cfg.causal else steps

    def _callback(self, on_step: OnStep | None, steps: int, candidates: int, frames):
        """The pipeline's step callback handing each request's frame (its first candidate) to on_step; an ARGVLT
        run has no refinement steps to show, so its streams carry the result alone."""
        if on_step is None or self.pipe.cfg.causal:
            return None

        def callback(pipe, step, timestep, kwargs):
            sample = kwargs["sample"]
            rows = torch.arange(0, len(sample.length), candidates, device=sample.length.device)
            for i, frame in enumerate(frames(sample.select(rows))):
                on_step(kwargs["inputs"].start + i, step + 1, steps, frame)

        return callback

    def _image_frames(self, sample) -> list[Image.Image]:
        return [Image.fromarray(p) for p in self.pipe.decode_images(sample)]

    # ---------------------------------------------------------------- tasks

    def t2i(
        self, prompts: list[str], seeds: list[int], steps: int, candidates: int, on_step: OnStep | None = None
    ) -> list[Image.Image]:
        """One image per prompt."""
        callback = self._callback(on_step, steps, candidates, self._image_frames)
        return self.pipe(
            prompts,
            num_inference_steps=self._steps(steps),
            num_candidates=candidates,
            generator=generators(seeds),
            callback_on_step_end=callback,
        ).images

    def i2t(
        self, images: list[Image.Image], seeds: list[int], steps: int, candidates: int, on_step: OnStep | None = None
    ) -> list[str]:
        """One caption per image."""
        callback = self._callback(on_step, steps, candidates, self.pipe.decode_texts)
        return self.pipe.caption(
            images,
            num_inference_steps=self._steps(steps),
            num_candidates=candidates,
            generator=generators(seeds),
            callback_on_step_end=callback,
        ).texts

    def inpaint(
        self,
        images: list[Image.Image],
        masks: list[np.ndarray],
        prompts: list[str],
        seeds: list[int],
        steps: int,
        candidates: int,
    ) -> list[Image.Image]:
        """Each image (at the model's size) with its masked tokens (from `token_mask`) regenerated for its prompt."""
        return self.pipe.inpaint(
            images,
            [self._mask_image(m) for m in masks],
            prompts,
            num_inference_steps=steps,
            num_candidates=candidates,
            generator=generators(seeds),
        ).images

    def infill(
        self, images: list[Image.Image], texts: list[str], seeds: list[int], steps: int, candidates: int
    ) -> list[str]:
        """Each text with its [MASK] markers filled in, given its image."""
        return self.pipe.infill(
            images, texts, num_inference_steps=steps, num_candidates=candidates, generator=generators(seeds)
        ).texts

    def pairs(self, counts: list[int], seeds: list[int], steps: int) -> list[list[tuple[Image.Image, str]]]:
        """counts[i] unconditional (image, caption) pairs per request, pair j drawn from (seed, j)."""
        seeded = [
            int(np.random.SeedSequence([s, j]).generate_state(1)[0]) for s, c in zip(seeds, counts) for j in range(c)
        ]
        made = self.pipe.generate_pairs(len(seeded), num_inference_steps=steps, generator=generators(seeded))
        bounds = np.cumsum([0, *counts])
        return [list(zip(made.images[a:b], made.texts[a:b])) for a, b in pairwise(bounds)]
