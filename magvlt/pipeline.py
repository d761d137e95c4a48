"""A trained run, ready to use, as a diffusers-style pipeline: PIL images and strings in and out (Sec. 4).

    pipe = MAGVLTPipeline.from_pretrained("runs/demo/model")
    pipe("a large red circle").images                       # T2I
    pipe.caption(image).texts                               # I2T
    pipe.inpaint(image, mask_image, "a small blue square")  # white in mask_image = regenerate
    pipe.infill(image, "a large [MASK] circle").texts        # each [MASK] marker is one token
    pipe.generate_pairs(4)                                  # unconditional image + text (App. D)

How tokens are sampled is a `Preset` (`magvlt.schedulers`): the run's own (its scheduler.json) unless a call
names another. With more than one candidate per input, the best is kept: by the scorer (a contrastive model,
Sec. 4.2-4.3) if one is loaded, else by the model's mean log-probability. An ARGVLT run (config model.causal)
does T2I and I2T only; an option that does not apply to the run is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from magvlt import paths, sampling
from magvlt.checkpoint import load_weights
from magvlt.config import TrainConfig, from_dict, load_json, to_dict
from magvlt.errors import UserError
from magvlt.images import as_list, as_pil, blend, fit_image, mask_tokens
from magvlt.masking import Generators
from magvlt.model import Transformer, check_architecture
from magvlt.official.text import OfficialTokenizer
from magvlt.official.vq import official_input, official_uint8
from magvlt.rerank import Scorer, best_of, load_scorer, standardized
from magvlt.schedulers import Preset, get_preset

MASK_MARKER = "[MASK]"
# diffusers' callback_on_step_end(pipe, step, timestep, callback_kwargs): here callback_kwargs holds "sample"
# (a sampling.Sample of every candidate row after the step) and "inputs" (the slice of inputs being decoded)
StepEndCallback = Callable[["MAGVLTPipeline", int, int, dict[str, Any]], Any]


@dataclass
class ImagePipelineOutput:
    """Generated images; with output_intermediates, each image's refinement, one frame per step."""

    images: list[Image.Image]
    intermediates: list[list[Image.Image]] | None = None


@dataclass
class TextPipelineOutput:
    """Generated texts; with output_intermediates, each text's refinement (masked tokens shown as "_")."""

    texts: list[str]
    intermediates: list[list[str]] | None = None


@dataclass
class PairsPipelineOutput:
    """Unconditional image + caption pairs; with output_intermediates, (image, text) per step of each pair."""

    images: list[Image.Image]
    texts: list[str]
    intermediates: list[list[tuple[Image.Image, str]]] | None = None


def save_preset(preset: Preset, run_dir: str | Path) -> None:
    """Write the preset a run samples with by default (scheduler.json, as diffusers keeps a scheduler config)."""
    from magvlt.checkpoint import atomic_write_text

    atomic_write_text(Path(run_dir) / paths.SCHEDULER, json.dumps(to_dict(preset), indent=2) + "\n")


def load_preset(run_dir: Path) -> Preset:
    """The run's scheduler.json, else the "default" preset."""
    path = run_dir / paths.SCHEDULER
    if not path.is_file():
        return get_preset("default")
    try:
        return from_dict(Preset, json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"{path} is not a decoding preset: {e}") from None


def _check_run(run: Path) -> None:
    if not run.is_dir():
        raise UserError(f"model directory {run} does not exist")
    missing = [n for n in (paths.CONFIG, paths.WEIGHTS, paths.TEXT_DIR, paths.VQ_DIR) if not (run / n).exists()]
    if missing:
        raise UserError(
            f"{run} is not a complete run directory: missing {', '.join(missing)} (train one with `magvlt train`)"
        )


class MAGVLTPipeline:
    """A trained MAGVLT (or ARGVLT) with its text tokenizer and VQ-GAN, optionally a reranking scorer."""

    def __init__(
        self,
        model: Transformer,
        tokenizer,
        vq,
        scorer: Scorer | None = None,
        preset: Preset | None = None,
        guidance_trained: bool = False,
    ):
        self.model, self.tokenizer, self.vq, self.scorer = model.eval(), tokenizer, vq, scorer
        self.cfg = model.cfg
        self.preset = preset or get_preset("default")
        self.guidance_trained = guidance_trained  # trained with condition dropout, so guidance has a null condition
        self.image_size = (self.cfg.image_grid[0] * vq.cell[0], self.cfg.image_grid[1] * vq.cell[1])
        # a run converted from the released weights: the official scripts' pixel conversions, unblended inpainting
        self.released = isinstance(tokenizer, OfficialTokenizer)

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, *, scorer: str | Path | Scorer | None = None) -> MAGVLTPipeline:
        """Load a run directory (config.json, model.safetensors, text/, vq/; optional scheduler.json, scorer/) on the
        CPU; scorer: a `magvlt clip train` directory or a Scorer (default: the run's scorer/). Move with `.to()`."""
        from magvlt.text import load_text_tokenizer
        from magvlt.vq import load_vq

        run = Path(run_dir)
        _check_run(run)
        try:
            train_cfg = load_json(TrainConfig, run / paths.CONFIG)
        except (UserError, TypeError) as e:
            raise UserError(f"{run / paths.CONFIG} is not a training run's config: {e}") from None
        check_architecture(train_cfg.model, str(run))
        model = Transformer(train_cfg.model)
        try:
            model.load_state_dict(load_weights(run / paths.WEIGHTS))
        except RuntimeError as e:
            raise UserError(
                f"{run / paths.WEIGHTS} does not match {run / paths.CONFIG}: {str(e).splitlines()[0]}"
            ) from None
        tokenizer, vq = load_text_tokenizer(run / paths.TEXT_DIR), load_vq(run / paths.VQ_DIR)
        cfg = train_cfg.model
        if (tokenizer.vocab_size, tokenizer.length) != (cfg.text_vocab, cfg.text_len):
            raise UserError(
                f"{run / paths.TEXT_DIR} ({tokenizer.vocab_size} ids, length {tokenizer.length}) does not "
                f"fit the model ({cfg.text_vocab} ids, length {cfg.text_len})"
            )
        if vq.cfg.n_embed != cfg.image_vocab:
            raise UserError(f"{run / paths.VQ_DIR} has {vq.cfg.n_embed} codes but the model expects {cfg.image_vocab}")
        if scorer is None and (run / paths.SCORER_DIR).is_dir():
            scorer = run / paths.SCORER_DIR
        if isinstance(scorer, (str, Path)):
            scorer = load_scorer(scorer)
        return cls(model, tokenizer, vq, scorer, load_preset(run), train_cfg.objective.cond_dropout > 0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> MAGVLTPipeline:
        """Move the model, the VQ-GAN and a module scorer to `device`; returns the pipeline."""
        self.model.to(device)
        self.vq.to(device)
        if isinstance(getattr(self.scorer, "model", None), torch.nn.Module):
            self.scorer.model.to(device)
        return self

    # ---------------------------------------------------------------- tokens in and out

    def encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (ids [B, L], lengths [B]) on the model's device; empty or too long -> UserError."""
        limit = self.tokenizer.max_tokens
        for n, text in enumerate(captions):
            count = len(self.tokenizer.bpe_ids(text)) if isinstance(text, str) and text.strip() else 0
            if count == 0:
                raise UserError(f"prompt {n + 1} is empty")
            if count > limit:
                raise UserError(f"prompt {n + 1} is {count} tokens; this model reads at most {limit}: {text[:60]!r}")
        ids, lengths = self.tokenizer.encode(list(captions))
        return ids.to(self.device), lengths.to(self.device)

    def encode_images(self, images: list) -> tuple[np.ndarray, torch.Tensor]:
        """Images -> (pixels uint8 [B, H, W, 3] at the model's size, VQ codes [B, N_I])."""
        if not images:
            raise UserError("no images given")
        pixels = np.stack([fit_image(im, self.image_size) for im in images])
        x = official_input(pixels) if self.released else pixels
        return pixels, self.vq.encode(x).flatten(1).to(self.device)

    def decode_images(self, sample: sampling.Sample) -> np.ndarray:
        """uint8 [B, H, W, 3]; still-masked tokens are drawn grey (refinement frames)."""
        if self.released:  # sample_t2i's truncating conversion
            pixels = official_uint8(self.vq.decode_float(sample.image, self.cfg.image_grid)).cpu().numpy()
        else:
            pixels = self.vq.decode(sample.image, self.cfg.image_grid).cpu().numpy()
        if sample.image_masked.any():
            (fh, fw), cells = self.vq.cell, sample.image_masked.view(-1, *self.cfg.image_grid).cpu().numpy()
            masked = cells.repeat(fh, axis=1).repeat(fw, axis=2)
            pixels = np.where(masked[..., None], np.uint8(96), pixels)
        return pixels

    def decode_texts(self, sample: sampling.Sample) -> list[str]:
        """Texts; a still-masked token is shown as "_" (refinement frames)."""
        if not sample.text_masked.any():
            return self.tokenizer.decode(sample.text.cpu(), sample.length.cpu())
        texts = []
        for ids, masked, n in zip(sample.text.tolist(), sample.text_masked.tolist(), sample.length.tolist()):
            words, run = [], []
            for i, m in zip(ids[:n], masked[:n]):
                if m:
                    words += (self.tokenizer.decode([run]) if run else []) + ["_"]
                    run = []
                else:
                    run.append(i)
            words += self.tokenizer.decode([run]) if run else []
            texts.append(" ".join(w for w in words if w))
        return texts

    def encode_masked_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Texts with [MASK] markers (one token each; none: the central half) -> (ids, lengths, span mask)."""
        plain = [t for t in texts if MASK_MARKER not in t]
        plain_ids, plain_lengths = self.encode_text(plain) if plain else (None, None)
        rows, k = [], 0
        for n, text in enumerate(texts):
            if MASK_MARKER in text:
                rows.append(self._marked(n, text))
                continue
            length = plain_lengths[k]
            start = len(self.tokenizer.start_ids)  # the central half of the tokens between start and end
            rows.append(
                (
                    plain_ids[k],
                    length,
                    sampling.central_span(length[None] - start - 1, self.tokenizer.length, start=start)[0],
                )
            )
            k += 1
        ids, lengths, spans = zip(*rows)
        return torch.stack(ids), torch.stack(lengths), torch.stack(spans)

    def _marked(self, n: int, text: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, length, span) of one text with [MASK] markers: [sot, part, <masked>, part, ..., eot] (no sot for the
        official tokenizer)."""
        tok = self.tokenizer
        ids, span = list(tok.start_ids), [False] * len(tok.start_ids)
        for k, part in enumerate(text.split(MASK_MARKER)):
            if k:
                ids, span = ids + [0], span + [True]
            part_ids = tok.bpe_ids(part) if part.strip() else []
            ids, span = ids + part_ids, span + [False] * len(part_ids)
        ids, span = ids + [tok.eot_id], span + [False]
        if len(ids) > tok.length:
            raise UserError(
                f"text {n + 1} is {len(ids) - 2} tokens with its masks; this model reads at most {tok.length - 2}"
            )
        pad = tok.length - len(ids)
        return (
            torch.tensor(ids + [0] * pad, device=self.device),
            torch.tensor(len(ids), device=self.device),
            torch.tensor(span + [False] * pad, device=self.device),
        )

    # ---------------------------------------------------------------- options

    def _preset(self, preset: str | Preset | None, steps: int | None, guidance_scale: float) -> Preset:
        """The call's preset with its overrides, after refusing options that do not apply to this run."""
        preset = get_preset(self.preset if preset is None else preset)
        if guidance_scale > 1 and self.cfg.causal:
            raise UserError("classifier-free guidance applies to MAGVLT's parallel decoding, not to ARGVLT runs")
        if guidance_scale > 1 and not self.guidance_trained:
            raise UserError(
                "this run was trained without condition dropout (objective.cond_dropout = 0), so it has "
                "no unconditional model to guide against; use guidance_scale <= 1"
            )
        if steps is not None and self.cfg.causal:
            raise UserError("num_inference_steps applies to MAGVLT; an ARGVLT run decodes one token per step")
        if steps is not None:
            preset.image = dataclasses.replace(preset.image, num_inference_steps=steps)
            preset.text = dataclasses.replace(preset.text, num_inference_steps=steps)
        return preset

    def _require_magvlt(self, task: str, intermediates: bool = False) -> None:
        if self.cfg.causal and (intermediates or task not in ("text-to-image", "captioning")):
            what = "refinement intermediates" if intermediates else task
            raise UserError(f"{what} needs a MAGVLT run; this is an ARGVLT (causal) run, which only does T2I and I2T")

    @staticmethod
    def _generators(generator: Generators | None, n: int, candidates: int) -> Generators | None:
        """One generator for everything, or one per input (shared by its candidate rows)."""
        if generator is None or isinstance(generator, torch.Generator):
            return generator
        if len(generator) != n:
            raise UserError(f"{len(generator)} generators for {n} inputs: give one, or one per input")
        return [g for g in generator for _ in range(candidates)]

    @staticmethod
    def _chunks(n: int, per_chunk: int) -> list[slice]:
        return [slice(lo, min(n, lo + per_chunk)) for lo in range(0, n, max(1, per_chunk))]

    def _best(self, out: sampling.Sample, n: int, pixels: np.ndarray, texts: list[str], channel=None):
        """Keep the best of every n consecutive candidates: by the scorer if any, else by mean log-probability; with
        `channel` (weight, log p(image | text) [B * n]) plus that weight times it, both standardized per input."""
        if n == 1:
            return out, pixels, texts
        scores = self._scores(pixels, texts).to(out.score.device) if self.scorer is not None else out.score
        if channel is not None:
            weight, loglik = channel
            scores = standardized(scores, n) + weight * standardized(loglik.to(scores.device), n)
        rows = best_of(scores, n)
        picked = rows.cpu().tolist()
        return out.select(rows), pixels[picked], [texts[i] for i in picked]

    def text_channel_weight(self, preset: Preset, k: int) -> float:
        """The weight of log p(image | caption) in ranking k text candidates: 0 for one candidate or ARGVLT."""
        return 0.0 if k == 1 or self.cfg.causal else max(preset.text_channel, 0.0)

    def _channel(self, preset: Preset, k: int, codes: torch.Tensor, out: sampling.Sample):
        """(weight, log p(image | caption)) of text candidates for noisy-channel reranking, when the preset asks."""
        weight = self.text_channel_weight(preset, k)
        if weight == 0:
            return None
        return weight, sampling.image_log_likelihood(self.model, codes, out.text, out.length)

    def _scores(self, pixels: np.ndarray, texts: list[str]) -> torch.Tensor:
        """The scorer's similarities; an empty caption (a barely trained model writes some) is not scored and loses."""
        written = [i for i, c in enumerate(texts) if c.strip()]
        scores = torch.full((len(texts),), float("-inf"))
        if written:
            scores[written] = self.scorer.score(pixels[written], [texts[i] for i in written]).float().cpu()
        return scores

    def _callback(self, callback: StepEndCallback | None, sl: slice):
        if callback is None:
            return None
        return lambda step, sample: callback(self, step, step, {"sample": sample, "inputs": sl})

    def _image_frames(self, out: sampling.Sample) -> list[list[Image.Image]]:
        steps = [self.decode_images(s) for s in out.trace]
        return [[Image.fromarray(step[i]) for step in steps] for i in range(len(out.image))]

    def _text_frames(self, out: sampling.Sample) -> list[list[str]]:
        steps = [self.decode_texts(s) for s in out.trace]
        return [[step[i] for step in steps] for i in range(len(out.text))]

    # ---------------------------------------------------------------- tasks

    def __call__(
        self,
        prompt: str | Sequence[str],
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        generator: Generators | None = None,
        num_candidates: int | None = None,
        preset: str | Preset | None = None,
        output_intermediates: bool = False,
        callback_on_step_end: StepEndCallback | None = None,
        batch_size: int = 32,
    ) -> ImagePipelineOutput:
        """Text to image (Sec. 4.2): MaskGIT decoding (ARGVLT: token by token), the best of num_candidates kept."""
        self._require_magvlt("text-to-image", output_intermediates or callback_on_step_end is not None)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        preset = self._preset(preset, num_inference_steps, guidance_scale)
        k = _candidates(num_candidates, preset.image_candidates)
        ids, lengths = self.encode_text(prompts)
        generator = self._generators(generator, len(prompts), k)
        images, frames = [], []
        for sl in self._chunks(len(prompts), batch_size // k):
            gen = generator[sl.start * k : sl.stop * k] if isinstance(generator, list) else generator
            text, length = ids[sl].repeat_interleave(k, 0), lengths[sl].repeat_interleave(k, 0)
            if self.cfg.causal:
                s = preset.image
                out = sampling.ar_generate_images(
                    self.model, text, length, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=gen
                )
            else:
                out = sampling.generate_images(
                    self.model,
                    text,
                    length,
                    preset.image,
                    guidance_scale=guidance_scale,
                    generator=gen,
                    trace=output_intermediates,
                    callback=self._callback(callback_on_step_end, sl),
                )
            out, pixels, _ = self._best(out, k, self.decode_images(out), [p for p in prompts[sl] for _ in range(k)])
            images += [Image.fromarray(p) for p in pixels]
            frames += self._image_frames(out) if output_intermediates else []
        return ImagePipelineOutput(images, frames if output_intermediates else None)

    def caption(
        self,
        image,
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        generator: Generators | None = None,
        num_candidates: int | None = None,
        preset: str | Preset | None = None,
        output_intermediates: bool = False,
        callback_on_step_end: StepEndCallback | None = None,
        batch_size: int = 32,
    ) -> TextPipelineOutput:
        """Image to text (Sec. 4.3): the length from <BOT>, then Mask-Predict; the best of num_candidates kept."""
        self._require_magvlt("captioning", output_intermediates or callback_on_step_end is not None)
        images = as_list(image)
        preset = self._preset(preset, num_inference_steps, guidance_scale)
        k = _candidates(num_candidates, preset.text_candidates)
        pixels, codes = self.encode_images(images)
        generator = self._generators(generator, len(images), k)
        texts, frames = [], []
        for sl in self._chunks(len(images), batch_size // k):
            gen = generator[sl.start * k : sl.stop * k] if isinstance(generator, list) else generator
            codes_k = codes[sl].repeat_interleave(k, 0)
            if self.cfg.causal:
                s = preset.text
                out = sampling.ar_generate_text(
                    self.model,
                    codes_k,
                    end_id=self.tokenizer.eot_id,
                    temperature=s.temperature,
                    top_k=s.top_k,
                    top_p=s.top_p,
                    generator=gen,
                )
            else:
                out = sampling.generate_text(
                    self.model,
                    codes_k,
                    preset.text,
                    guidance_scale=guidance_scale,
                    generator=gen,
                    trace=output_intermediates,
                    callback=self._callback(callback_on_step_end, sl),
                )
            channel = self._channel(preset, k, codes_k, out)
            out, _, written = self._best(out, k, pixels[sl].repeat(k, axis=0), self.decode_texts(out), channel)
            texts += written
            frames += self._text_frames(out) if output_intermediates else []
        return TextPipelineOutput(texts, frames if output_intermediates else None)

    def inpaint(
        self,
        image,
        mask_image=None,
        prompt: str | Sequence[str] = "",
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        generator: Generators | None = None,
        num_candidates: int | None = None,
        preset: str | Preset | None = None,
        output_intermediates: bool = False,
        callback_on_step_end: StepEndCallback | None = None,
    ) -> ImagePipelineOutput:
        """Inpainting / IT2I editing (Sec. 4.2): regenerate the tokens under the white part of mask_image (the
        input's size; `magvlt.images.mask_tokens` gives the rule) from the rest and the prompt, then blend the
        new pixels in along the mask boundary. mask_image None: the central half of the token grid (Sec. 4.2)."""
        self._require_magvlt("inpainting")
        images = as_list(image)
        prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(images):
            raise UserError(f"{len(images)} images but {len(prompts)} prompts")
        preset = self._preset(preset, num_inference_steps, guidance_scale)
        k = _candidates(num_candidates, preset.image_candidates)
        masks = torch.stack([self._token_mask(im, m) for im, m in zip(images, self._masks(mask_image, len(images)))])
        pixels, codes = self.encode_images(images)
        ids, lengths = self.encode_text(prompts)
        out = sampling.inpaint(
            self.model,
            codes.repeat_interleave(k, 0),
            masks.repeat_interleave(k, 0),
            ids.repeat_interleave(k, 0),
            lengths.repeat_interleave(k, 0),
            preset.image,
            guidance_scale=guidance_scale,
            generator=self._generators(generator, len(images), k),
            trace=output_intermediates,
            callback=self._callback(callback_on_step_end, slice(0, len(images))),
        )
        out, generated, _ = self._best(out, k, self.decode_images(out), [p for p in prompts for _ in range(k)])
        grid = self.cfg.image_grid
        if self.released:  # sample_it2i returns the decoded code grid, unblended
            results = [Image.fromarray(g) for g in generated]
        else:
            results = [Image.fromarray(blend(p, g, m, grid)) for p, g, m in zip(pixels, generated, masks)]
        return ImagePipelineOutput(results, self._image_frames(out) if output_intermediates else None)

    @staticmethod
    def _masks(mask_image, n: int) -> list:
        if mask_image is None or isinstance(mask_image, (Image.Image, np.ndarray)):
            return [mask_image] * n
        masks = list(mask_image)
        if len(masks) != n:
            raise UserError(f"{n} images but {len(masks)} masks")
        return masks

    def _token_mask(self, image, mask_image) -> torch.Tensor:
        if mask_image is None:
            return sampling.central_mask(self.cfg.image_grid, device=self.device)
        size, mask_size = as_pil(image).size, as_pil(mask_image, "L").size
        if size != mask_size:
            raise UserError(f"the mask is {mask_size[0]}x{mask_size[1]} but the image is {size[0]}x{size[1]}")
        return mask_tokens(mask_image, self.image_size, self.cfg.image_grid).to(self.device)

    def infill(
        self,
        image,
        text: str | Sequence[str],
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        generator: Generators | None = None,
        num_candidates: int | None = None,
        preset: str | Preset | None = None,
        output_intermediates: bool = False,
        callback_on_step_end: StepEndCallback | None = None,
    ) -> TextPipelineOutput:
        """Text infilling / IT2T editing (Sec. 4.3): regenerate the [MASK] tokens (none: the central half of the
        text's tokens) given the rest and the image."""
        self._require_magvlt("text infilling")
        images = as_list(image)
        texts = [text] * len(images) if isinstance(text, str) else list(text)
        if len(texts) != len(images):
            raise UserError(f"{len(images)} images but {len(texts)} texts")
        preset = self._preset(preset, num_inference_steps, guidance_scale)
        k = _candidates(num_candidates, preset.text_candidates)
        pixels, codes = self.encode_images(images)
        ids, lengths, span = self.encode_masked_text(texts)
        codes_k = codes.repeat_interleave(k, 0)
        out = sampling.infill(
            self.model,
            codes_k,
            ids.repeat_interleave(k, 0),
            lengths.repeat_interleave(k, 0),
            span.repeat_interleave(k, 0),
            preset.text,
            guidance_scale=guidance_scale,
            generator=self._generators(generator, len(images), k),
            trace=output_intermediates,
            callback=self._callback(callback_on_step_end, slice(0, len(images))),
        )
        channel = self._channel(preset, k, codes_k, out)
        out, _, written = self._best(out, k, pixels.repeat(k, axis=0), self.decode_texts(out), channel)
        return TextPipelineOutput(written, self._text_frames(out) if output_intermediates else None)

    def generate_pairs(
        self,
        n: int,
        *,
        num_inference_steps: int | None = None,
        generator: Generators | None = None,
        preset: str | Preset | None = None,
        output_intermediates: bool = False,
        callback_on_step_end: StepEndCallback | None = None,
        batch_size: int = 32,
    ) -> PairsPipelineOutput:
        """Unconditional image + caption pairs (App. D), both refined in the image scheduler's steps."""
        self._require_magvlt("joint generation")
        if n < 1:
            raise UserError(f"the number of pairs must be >= 1, got {n}")
        preset = self._preset(preset, num_inference_steps, 1.0)
        text_scheduler = dataclasses.replace(preset.text, num_inference_steps=preset.image.num_inference_steps)
        generator = self._generators(generator, n, 1)
        images, texts, frames = [], [], []
        for sl in self._chunks(n, batch_size):
            gen = generator[sl] if isinstance(generator, list) else generator
            out = sampling.generate_pairs(
                self.model,
                sl.stop - sl.start,
                preset.image,
                text_scheduler,
                generator=gen,
                device=self.device,
                trace=output_intermediates,
                callback=self._callback(callback_on_step_end, sl),
            )
            images += [Image.fromarray(p) for p in self.decode_images(out)]
            texts += self.decode_texts(out)
            if output_intermediates:
                frames += [list(zip(i, t)) for i, t in zip(self._image_frames(out), self._text_frames(out))]
        return PairsPipelineOutput(images, texts, frames if output_intermediates else None)


def _candidates(given: int | None, default: int) -> int:
    k = default if given is None else given
    if k < 1:
        raise UserError(f"num_candidates must be >= 1, got {k}")
    return k
