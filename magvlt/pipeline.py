"""A trained run, ready to use: PIL images and strings in and out for every task of Sec. 4.

    pipe = MAGVLT.load("runs/tiny")
    pipe.generate_images(["a large red circle"])          # T2I
    pipe.caption([image])                                 # I2T
    pipe.inpaint([image], caption="a small blue square")  # central half of the grid regenerated
    pipe.infill(["a large [MASK] circle"], [image])       # each [MASK] marker is one token
    pipe.generate_pairs(4)                                # unconditional image + text (App. D)

A run directory (written by `magvlt train`) holds config.json, model.safetensors, text/ and vq/. An ARGVLT run
(config model.causal) supports generate_images and caption. With `candidates=N`, N samples are drawn per input and
the best is kept: by the scorer (a contrastive model, Sec. 4.2-4.3) if one is loaded, else by the model's own
mean log-probability.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter, UnidentifiedImageError

from magvlt import sampling
from magvlt.checkpoint import load_weights
from magvlt.config import TrainConfig, load_json
from magvlt.errors import UserError
from magvlt.model import Transformer
from magvlt.rerank import Scorer, best_of, load_scorer

MASK_MARKER = "[MASK]"
CONFIG, WEIGHTS, TEXT_DIR, VQ_DIR = "config.json", "model.safetensors", "text", "vq"


def read_image(path: str | Path) -> Image.Image:
    """An image file as RGB, or a UserError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def fit_image(image, size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Resize (shorter side) and center-crop an image to (H, W); returns uint8 [H, W, 3] and (scale, dx, dy)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    im = im.convert("RGB")
    h, w = size
    scale = max(h / im.height, w / im.width)
    rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
    dx, dy = (rw - w) // 2, (rh - h) // 2
    if (rw, rh) != im.size:
        im = im.resize((rw, rh), Image.Resampling.BICUBIC)
    return np.asarray(im.crop((dx, dy, dx + w, dy + h))), (scale, dx, dy)


def blend(original: np.ndarray, generated: np.ndarray, token_mask: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """Paste the generated pixels of masked tokens into the original, feathered across the mask boundary (MaskGIT)."""
    h, w = original.shape[:2]
    cells = Image.fromarray(token_mask.view(grid).cpu().numpy().astype(np.uint8) * 255)
    alpha = cells.resize((w, h), Image.Resampling.NEAREST)
    alpha = np.asarray(alpha.filter(ImageFilter.GaussianBlur(radius=max(1.0, w / grid[1] / 4))), dtype=np.float32) / 255
    out = alpha[..., None] * generated + (1 - alpha[..., None]) * original
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _as_list(images) -> list:
    """One image (PIL or uint8 [H, W, 3]) or a batch of them, as a list."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
        return [images]
    return list(images)


class MAGVLT:
    """A trained MAGVLT (or ARGVLT) with its text tokenizer and VQ-GAN, and optionally a reranking scorer."""

    def __init__(self, model: Transformer, tokenizer, vq, scorer: Scorer | None = None):
        self.model, self.tokenizer, self.vq, self.scorer = model.eval(), tokenizer, vq, scorer
        self.cfg = model.cfg
        self.device = next(model.parameters()).device
        self.image_size = (self.cfg.image_grid[0] * vq.factor, self.cfg.image_grid[1] * vq.factor)

    @classmethod
    def load(cls, run_dir: str | Path, device=None, scorer: str | Path | Scorer | None = None) -> MAGVLT:
        """Load run_dir (config.json, model.safetensors, text/, vq/); scorer: a `magvlt clip train` dir or object."""
        from magvlt.text import load_text_tokenizer
        from magvlt.vq import load_vq

        run = Path(run_dir)
        if not run.is_dir():
            raise UserError(f"model directory {run} does not exist")
        missing = [name for name in (CONFIG, WEIGHTS, TEXT_DIR, VQ_DIR) if not (run / name).exists()]
        if missing:
            raise UserError(f"{run} is not a complete run directory: missing {', '.join(missing)} (train one with `magvlt train`)")
        try:
            cfg = load_json(TrainConfig, run / CONFIG).model
        except (UserError, TypeError) as e:
            raise UserError(f"{run / CONFIG} is not a training run's config: {e}") from None
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = Transformer(cfg)
        try:
            model.load_state_dict(load_weights(run / WEIGHTS))
        except RuntimeError as e:
            raise UserError(f"{run / WEIGHTS} does not match {run / CONFIG}: {str(e).splitlines()[0]}") from None
        tokenizer, vq = load_text_tokenizer(run / TEXT_DIR), load_vq(run / VQ_DIR, device)
        if (tokenizer.vocab_size, tokenizer.length) != (cfg.text_vocab, cfg.text_len):
            raise UserError(f"{run / TEXT_DIR} ({tokenizer.vocab_size} ids, length {tokenizer.length}) does not fit the "
                            f"model ({cfg.text_vocab} ids, length {cfg.text_len})")
        if vq.cfg.n_embed != cfg.image_vocab:
            raise UserError(f"{run / VQ_DIR} has {vq.cfg.n_embed} codes but the model expects {cfg.image_vocab}")
        if isinstance(scorer, (str, Path)):
            scorer = load_scorer(scorer, device)
        return cls(model.to(device), tokenizer, vq, scorer)

    # ---------------------------------------------------------------- inputs and outputs

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)  # on the model's device: no host round trip per draw

    def encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (ids [B, L], lengths [B]) on the model's device; empty or too long -> UserError."""
        if isinstance(captions, str):
            captions = [captions]
        limit = self.tokenizer.length - 2
        for n, text in enumerate(captions):
            count = len(self.tokenizer.bpe_ids(text)) if isinstance(text, str) and text.strip() else 0
            if count == 0:
                raise UserError(f"prompt {n + 1} is empty")
            if count > limit:
                raise UserError(f"prompt {n + 1} is {count} tokens; this model reads at most {limit}: {text[:60]!r}")
        ids, lengths = self.tokenizer.encode(list(captions))
        return ids.to(self.device), lengths.to(self.device)

    def decode_text(self, sample: sampling.Sample) -> list[str]:
        return self.tokenizer.decode(sample.text.cpu(), sample.length.cpu())

    def prepare_images(self, images) -> tuple[np.ndarray, torch.Tensor]:
        """PIL images / uint8 arrays -> (pixels uint8 [B, H, W, 3] at the model's size, VQ codes [B, N_I])."""
        images = _as_list(images)
        if len(images) == 0:
            raise UserError("no images given")
        pixels = np.stack([fit_image(im, self.image_size)[0] for im in images])
        return pixels, self.vq.encode(pixels).flatten(1).to(self.device)

    def decode_images(self, sample: sampling.Sample) -> np.ndarray:
        """uint8 [B, H, W, 3]; still-masked tokens are drawn grey (refinement frames)."""
        pixels = self.vq.decode(sample.image, self.cfg.image_grid).numpy()
        if sample.image_masked.any():
            f = self.vq.factor
            cells = sample.image_masked.view(-1, *self.cfg.image_grid).cpu().numpy()
            masked = cells.repeat(f, axis=1).repeat(f, axis=2)
            pixels = np.where(masked[..., None], np.uint8(96), pixels)
        return pixels

    def _check_options(self, guidance: float) -> None:
        if self.cfg.causal and guidance != 0:
            raise UserError("classifier-free guidance is implemented for MAGVLT's parallel decoding, not for ARGVLT runs")

    def _check_bidirectional(self, task: str) -> None:
        if self.cfg.causal:
            raise UserError(f"{task} needs a MAGVLT model; this run is an ARGVLT (causal), which only does t2i and i2t")

    def _best(self, sample: sampling.Sample, n: int, pixels: np.ndarray | None, captions: list[str] | None):
        """Keep the best of every n consecutive candidates: by the scorer if any, else by mean log-probability."""
        if n == 1:
            return sample, pixels, captions
        if self.scorer is not None:
            pixels = pixels if pixels is not None else self.decode_images(sample)
            captions = captions if captions is not None else self.decode_text(sample)
            scores = self._scores(pixels, captions).to(sample.score.device)
        else:
            scores = sample.score
        rows = best_of(scores, n)
        picked = rows.cpu().numpy()
        sample = sampling.select_rows(sample, rows)
        return (sample, None if pixels is None else pixels[picked],
                None if captions is None else [captions[i] for i in picked.tolist()])

    def _scores(self, pixels: np.ndarray, captions: list[str]) -> torch.Tensor:
        """The scorer's similarities; an empty caption (a barely trained model writes some) is not scored and loses."""
        written = [i for i, c in enumerate(captions) if c.strip()]
        scores = torch.full((len(captions),), float("-inf"))
        if written:
            scores[written] = self.scorer.score(pixels[written], [captions[i] for i in written]).float().cpu()
        return scores

    @staticmethod
    def _chunks(n: int, per_chunk: int):
        for lo in range(0, n, per_chunk):
            yield slice(lo, min(n, lo + per_chunk))

    # ---------------------------------------------------------------- tasks

    def generate_images(self, captions: Sequence[str], *, steps: int = 10, temperature: float = 1.0,
                        choice_temperature: float = 4.5, guidance: float = 0.0, top_k: int | None = None,
                        top_p: float | None = None, candidates: int = 1, seed: int = 0, batch_size: int = 32,
                        trace: bool = False):
        """T2I (Sec. 4.2) -> list of PIL images; with trace, (images, frames) with frames[i] one image per step."""
        self._check_options(guidance)
        captions = [captions] if isinstance(captions, str) else list(captions)
        ids, lengths = self.encode_text(captions)
        gen, images, frames = self._generator(seed), [], []
        for sl in self._chunks(len(ids), max(1, batch_size // candidates)):
            text, length = ids[sl].repeat_interleave(candidates, 0), lengths[sl].repeat_interleave(candidates, 0)
            if self.cfg.causal:
                out = sampling.ar_generate_images(self.model, text, length, temperature=temperature, top_k=top_k,
                                                  top_p=top_p, generator=gen)
            else:
                out = sampling.generate_images(self.model, text, length, steps=steps, temperature=temperature,
                                               choice_temperature=choice_temperature, guidance=guidance,
                                               generator=gen, trace=trace)
            prompts = [c for c in captions[sl] for _ in range(candidates)]
            out, pixels, _ = self._best(out, candidates, self.decode_images(out), prompts)
            images += [Image.fromarray(p) for p in pixels]
            frames += self._image_frames(out) if trace else []
        return (images, frames) if trace else images

    def _image_frames(self, sample: sampling.Sample) -> list[list[Image.Image]]:
        """Per sample, one image per refinement step (ARGVLT: the result alone)."""
        steps = [self.decode_images(s) for s in sample.trace or [sample]]
        return [[Image.fromarray(step[i]) for step in steps] for i in range(len(sample.image))]

    def _text_frames(self, sample: sampling.Sample) -> list[list[str]]:
        steps = [self.render_masked_text(s) for s in sample.trace or [sample]]
        return [[step[i] for step in steps] for i in range(len(sample.text))]

    def render_masked_text(self, sample: sampling.Sample) -> list[str]:
        """Texts with each still-masked token shown as '_' (refinement frames)."""
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

    def caption(self, images, *, steps: int = 12, length_beam: int = 1, length_temperature: float = 0.0,
                temperature: float = 0.0, guidance: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                candidates: int = 1, seed: int = 0, batch_size: int = 32, trace: bool = False):
        """I2T (Sec. 4.3) -> list of captions; with trace, (captions, frames) with frames[i] one string per step."""
        self._check_options(guidance)
        inputs, codes = self.prepare_images(images)
        gen, captions, frames = self._generator(seed), [], []
        for sl in self._chunks(len(codes), max(1, batch_size // candidates)):
            image = codes[sl].repeat_interleave(candidates, 0)
            if self.cfg.causal:
                out = sampling.ar_generate_text(self.model, image, end_id=self.tokenizer.eot_id, temperature=temperature,
                                                top_k=top_k, top_p=top_p, generator=gen)
            else:
                out = sampling.generate_text(self.model, image, steps=steps, length_beam=length_beam,
                                             length_temperature=length_temperature, temperature=temperature,
                                             guidance=guidance, generator=gen, trace=trace)
            pixels = inputs[sl].repeat(candidates, axis=0)
            out, _, texts = self._best(out, candidates, pixels, self.decode_text(out))
            captions += texts
            frames += self._text_frames(out) if trace else []
        return (captions, frames) if trace else captions

    def token_mask(self, mask, image_size: tuple[int, int], transform: tuple[float, float, float]) -> torch.Tensor:
        """None (central half of the grid), a pixel box (x0, y0, x1, y1) of the input image, or a token mask."""
        grid = self.cfg.image_grid
        if mask is None:
            return sampling.central_mask(grid, device=self.device)
        if isinstance(mask, (tuple, list)) and len(mask) == 4 and not isinstance(mask[0], (list, tuple)):
            scale, dx, dy = transform
            x0, y0, x1, y1 = (float(v) for v in mask)
            w, h = image_size
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise UserError(f"box {tuple(mask)} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
            H, W = self.image_size
            box = (max(0.0, x0 * scale - dx), max(0.0, y0 * scale - dy), min(W, x1 * scale - dx), min(H, y1 * scale - dy))
            if box[0] >= box[2] or box[1] >= box[3]:
                raise UserError(f"box {tuple(mask)} falls outside the center crop the model sees")
            return sampling.box_mask(box, (W, H), grid, device=self.device)
        token_mask = torch.as_tensor(np.asarray(mask), dtype=torch.bool, device=self.device).flatten()
        if token_mask.numel() != self.cfg.image_tokens:
            raise UserError(f"a token mask needs {self.cfg.image_tokens} entries ({grid[0]}x{grid[1]}), got {token_mask.numel()}")
        return token_mask

    def inpaint(self, images, mask=None, caption: str | Sequence[str] = "", *, steps: int = 10, temperature: float = 1.0,
                choice_temperature: float = 4.5, guidance: float = 0.0, candidates: int = 1, seed: int = 0,
                trace: bool = False):
        """Image inpainting / IT2I editing (Sec. 4.2): regenerate the masked tokens given the rest and the caption,
        then blend the decoded pixels into the input along the mask boundary. One mask for all images."""
        self._check_bidirectional("inpainting")
        images = _as_list(images)
        captions = [caption] * len(images) if isinstance(caption, str) else list(caption)
        if len(captions) != len(images):
            raise UserError(f"{len(images)} images but {len(captions)} captions")
        pixels, codes = self.prepare_images(images)
        first = images[0] if isinstance(images[0], Image.Image) else Image.fromarray(np.asarray(images[0], np.uint8))
        token_mask = self.token_mask(mask, first.size, fit_image(first, self.image_size)[1])
        ids, lengths = self.encode_text(captions)
        n = candidates
        out = sampling.inpaint(self.model, codes.repeat_interleave(n, 0), token_mask, ids.repeat_interleave(n, 0),
                               lengths.repeat_interleave(n, 0), steps=steps, temperature=temperature,
                               choice_temperature=choice_temperature, guidance=guidance,
                               generator=self._generator(seed), trace=trace)
        out, generated, _ = self._best(out, n, self.decode_images(out), [c for c in captions for _ in range(n)])
        results = [Image.fromarray(blend(p, g, token_mask, self.cfg.image_grid)) for p, g in zip(pixels, generated)]
        return (results, self._image_frames(out)) if trace else results

    def encode_masked_text(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Texts with [MASK] markers (one token each; none: the central half) -> (ids, lengths, span mask)."""
        tok, rows, spans = self.tokenizer, [], []
        for n, text in enumerate(texts):
            if MASK_MARKER not in text:
                rows.append(None)
                continue
            parts = [tok.bpe_ids(part) if part.strip() else [] for part in text.split(MASK_MARKER)]
            ids, span = [tok.sot_id], [False]
            for k, part in enumerate(parts):
                if k:
                    ids.append(0)
                    span.append(True)
                ids += part
                span += [False] * len(part)
            ids.append(tok.eot_id)
            span.append(False)
            if len(ids) > tok.length:
                raise UserError(f"text {n + 1} is {len(ids) - 2} tokens with its masks; this model reads at most {tok.length - 2}")
            rows.append((ids, span))
        plain = [t for t, r in zip(texts, rows) if r is None]
        plain_ids, plain_len = self.encode_text(plain) if plain else (None, None)
        L, out_ids, out_len, out_span, k = tok.length, [], [], [], 0
        for r in rows:
            if r is None:
                ids, length = plain_ids[k], plain_len[k]
                span = sampling.central_span(length[None] - 2, L, start=1)[0]
                k += 1
            else:
                ids = torch.tensor(r[0] + [0] * (L - len(r[0])), device=self.device)
                span = torch.tensor(r[1] + [False] * (L - len(r[1])), device=self.device)
                length = torch.tensor(len(r[0]), device=self.device)
            out_ids.append(ids)
            out_len.append(length)
            out_span.append(span)
        return torch.stack(out_ids), torch.stack(out_len), torch.stack(out_span)

    def infill(self, texts: str | Sequence[str], images, *, steps: int = 12, temperature: float = 0.0,
               guidance: float = 0.0, candidates: int = 1, seed: int = 0, trace: bool = False):
        """Text infilling / IT2T editing (Sec. 4.3): regenerate the [MASK] tokens (default: the central half of the
        caption's tokens) given the rest and the image -> list of full captions."""
        self._check_bidirectional("text infilling")
        texts = [texts] if isinstance(texts, str) else list(texts)
        inputs, codes = self.prepare_images(images)
        if len(texts) != len(codes):
            raise UserError(f"{len(codes)} images but {len(texts)} texts")
        ids, lengths, span = self.encode_masked_text(texts)
        n = candidates
        out = sampling.infill(self.model, codes.repeat_interleave(n, 0), ids.repeat_interleave(n, 0),
                              lengths.repeat_interleave(n, 0), span.repeat_interleave(n, 0), steps=steps,
                              temperature=temperature, guidance=guidance, generator=self._generator(seed), trace=trace)
        out, _, captions = self._best(out, n, inputs.repeat(n, axis=0), self.decode_text(out))
        return (captions, self._text_frames(out)) if trace else captions

    def generate_pairs(self, n: int, *, steps: int = 10, temperature: float = 1.0, choice_temperature: float = 4.5,
                       seed: int = 0, batch_size: int = 32, trace: bool = False):
        """Unconditional image + caption pairs (App. D) -> list of (PIL image, caption)."""
        self._check_bidirectional("joint generation")
        if n < 1:
            raise UserError(f"the number of pairs must be >= 1, got {n}")
        gen, pairs, frames = self._generator(seed), [], []
        for sl in self._chunks(n, batch_size):
            out = sampling.generate_pairs(self.model, sl.stop - sl.start, steps=steps, temperature=temperature,
                                          choice_temperature=choice_temperature, generator=gen, device=self.device,
                                          trace=trace)
            pairs += [(Image.fromarray(p), c) for p, c in zip(self.decode_images(out), self.decode_text(out))]
            if trace:
                frames += [list(zip(i, t)) for i, t in zip(self._image_frames(out), self._text_frames(out))]
        return (pairs, frames) if trace else pairs
