"""Decoding for every generation mode (Sec. 3.2, 4.1-4.3, App. D), on token tensors only.

MAGVLT refines a sequence in T parallel steps: images with MaskGIT (cosine schedule, a token once unmasked stays
fixed), text with Mask-Predict (linear schedule, the lowest-probability tokens anywhere in the generated span are
re-masked). Both can run in the same steps (unconditional pairs, App. D). ARGVLT decodes one token at a time with
a KV cache. Inputs and outputs are image codes [B, N_I] and raw text ids [B, L] with lengths [B]; the sequence is
built once per call and only its image and text slices are rewritten between steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from magvlt.errors import UserError
from magvlt.model import KVCache, Transformer, Vocab, argvlt_sequence, magvlt_sequence
from magvlt.objectives import (
    gamma_image,
    gamma_text,
    length_query_text,
    lowest_scores,
    sample_tokens,
    text_input,
    text_valid,
    unconditional_image,
    unconditional_text,
)

_EPS = 1e-9  # ceil(x - eps): g(1) = cos(pi / 2) is 6e-17 in floating point, not 0


@dataclass
class Sample:
    """A batch of (partially) decoded tokens: image codes and raw text ids, 0 where masked or padding."""

    image: torch.Tensor  # [B, N_I]
    text: torch.Tensor  # [B, L]
    length: torch.Tensor  # [B]
    image_masked: torch.Tensor  # [B, N_I] bool, still <MASK>
    text_masked: torch.Tensor  # [B, L] bool, still <MASK>
    score: torch.Tensor | None = None  # [B] mean log-probability of the generated tokens
    trace: list[Sample] = field(default_factory=list)  # the tokens after every step, when asked for


def uniform(shape, generator: torch.Generator, device) -> torch.Tensor:
    """U(0, 1) drawn on the generator's device and moved to `device` (a CPU generator can drive a GPU run)."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device).clamp_(min=1e-20)


def gumbel(shape, generator: torch.Generator, device) -> torch.Tensor:
    return -torch.log(-torch.log(uniform(shape, generator, device)))


def sample_logits(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of softmax(logits / temperature) [..., V] (inverse CDF); argmax at temperature 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    tokens, _ = sample_tokens(logits.flatten(0, -2) / temperature, generator)
    return tokens.view(logits.shape[:-1])


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Keep the top_k logits and the smallest set with probability >= top_p (nucleus); -inf elsewhere."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = torch.softmax(sorted_logits.float(), dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # the mass before it already reaches p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), float("-inf"))
    return logits


def guided(cond: torch.Tensor, uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: cond + scale * (cond - uncond); scale 0 is the conditional model."""
    return cond if uncond is None else cond + scale * (cond - uncond)


def masked_counts(ratios: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """ceil(ratio * n) positions still masked for each ratio [T] and total n [B] -> [T, B]."""
    return torch.ceil(ratios.unsqueeze(1) * n.unsqueeze(0).double() - _EPS).long()


def step_ratios(steps: int, schedule, device) -> torch.Tensor:
    """The mask ratio g(t / T) after each step t = 1..T (Sec. 3.2)."""
    return schedule(torch.arange(1, steps + 1, device=device, dtype=torch.float64) / steps)


def central_mask(grid: tuple[int, int], fraction: float = 0.5, device=None) -> torch.Tensor:
    """Bool [h * w]: the central fraction of each side of the token grid (Sec. 4.2: 8x8 of 16x16)."""
    h, w = grid
    mh, mw = max(1, round(h * fraction)), max(1, round(w * fraction))
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    mask[(h - mh) // 2 : (h - mh) // 2 + mh, (w - mw) // 2 : (w - mw) // 2 + mw] = True
    return mask.flatten()


def box_mask(box: tuple[float, float, float, float], size: tuple[int, int], grid: tuple[int, int], device=None) -> torch.Tensor:
    """Bool [h * w]: the tokens whose cells overlap a pixel box (x0, y0, x1, y1) of an image of size (W, H)."""
    (x0, y0, x1, y1), (width, height), (h, w) = box, size, grid
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise UserError(f"box {box} must satisfy 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    cols = torch.arange(w, device=device)
    rows = torch.arange(h, device=device)
    in_x = ((cols + 1) * width / w > x0) & (cols * width / w < x1)
    in_y = ((rows + 1) * height / h > y0) & (rows * height / h < y1)
    return (in_y[:, None] & in_x[None, :]).flatten()


def central_span(length: torch.Tensor, text_len: int, fraction: float = 0.5, start: int = 0) -> torch.Tensor:
    """Bool [B, L]: the central fraction (at least one) of the `length` tokens from `start` (Sec. 4.3 infilling)."""
    n = torch.clamp(torch.round(length * fraction), min=1).long()
    start = start + (length - n) // 2
    pos = torch.arange(text_len, device=length.device)
    return (pos >= start.unsqueeze(1)) & (pos < (start + n).unsqueeze(1))


class _Sequence:
    """The token batch fed at every step: rows [main; unconditional (guidance); length query (App. D)]."""

    def __init__(self, model: Transformer, image: torch.Tensor, text: torch.Tensor, condition: str | None,
                 guidance: float, length_query: bool):
        cfg, b, device = model.cfg, image.shape[0], image.device
        self.guided = condition is not None and guidance != 0
        images, texts = [image], [text]
        if self.guided:  # the null condition of condition dropout (objectives.unconditional_*)
            images.append(unconditional_image(cfg, b, device) if condition == "image" else image)
            texts.append(unconditional_text(cfg, b, device) if condition == "text" else text)
        if length_query:
            images.append(image)
            texts.append(length_query_text(cfg, b, device))
        tokens, self.position_ids, self.segs = magvlt_sequence(cfg, torch.cat(images), torch.cat(texts))
        self.groups = len(images)
        self.tokens = tokens.view(self.groups, b, -1)
        self.text_rows = slice(0, 2 if self.guided else 1)  # the length query keeps its all-<MASK> text

    def forward(self, model: Transformer, image: torch.Tensor | None, text: torch.Tensor | None) -> torch.Tensor:
        """Hidden states [groups, B, S] after writing the current image and text tokens."""
        if image is not None:
            self.tokens[:, :, self.segs.image] = image
        if text is not None:
            self.tokens[self.text_rows, :, self.segs.text] = text
        h = model(self.tokens.flatten(0, 1), self.position_ids)
        return h.view(self.groups, -1, *h.shape[1:])


def _predict(head, h, uncond, rows, guidance, temperature, generator):
    """Sample a token at the `rows` positions [B, N] only (logits nowhere else): (tokens, log-probs), 0 elsewhere."""
    logits = head(h[rows])
    if uncond is not None:
        logits = guided(logits, head(uncond[rows]), guidance)
    sampled = sample_logits(logits, temperature, generator)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    return (torch.zeros(rows.shape, dtype=torch.long, device=rows.device).masked_scatter(rows, sampled),
            torch.zeros(rows.shape, device=rows.device).masked_scatter(rows, logp))


def _image_step(sampled, token_logp, image, masked, logp, keep_masked, noise_scale, vocab, generator):
    """MaskGIT update: of the masked tokens just sampled, keep masked the keep_masked least confident."""
    confidence = token_logp + noise_scale * gumbel(token_logp.shape, generator, token_logp.device)
    remask = lowest_scores(confidence.masked_fill(~masked, float("inf")), keep_masked)  # unmasked stay fixed
    image = torch.where(masked, sampled, image).masked_fill(remask, vocab.MASK)
    return image, remask, torch.where(masked & ~remask, token_logp, logp)


def _resize_text(text, span, logp, length, vocab):
    """A re-predicted length (App. D): positions past it become <PAD>; new positions are <MASK> with no score."""
    new_span = text_valid(length, text.shape[1])
    grown = new_span & ~span
    text = torch.where(new_span, text.masked_fill(grown, vocab.MASK), vocab.PAD)
    return text, new_span, logp.masked_fill(grown, float("-inf")), grown


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return torch.div(a + b - 1, b, rounding_mode="floor")


def _to_sample(vocab: Vocab, image: torch.Tensor, text: torch.Tensor) -> Sample:
    image_masked, text_masked = image == vocab.MASK, text == vocab.MASK
    is_text = (text >= vocab.text_offset) & (text < vocab.special_offset)
    return Sample(
        image=image.masked_fill(image_masked, 0),
        text=torch.where(is_text, text - vocab.text_offset, 0),
        length=(text != vocab.PAD).sum(dim=1),
        image_masked=image_masked,
        text_masked=text_masked,
    )


def _sum_count(values: torch.Tensor, where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (values * where).sum(dim=1), where.sum(dim=1)


@torch.no_grad()
def refine(model: Transformer, image: torch.Tensor, text: torch.Tensor, *, steps: int, generate_image: bool,
           generate_text: bool, guidance: float = 0.0, temperature: float = 1.0, choice_temperature: float = 4.5,
           text_temperature: float = 0.0, repredict_length: bool = False, generator: torch.Generator | None = None,
           trace: bool = False) -> Sample:
    """Iterative parallel decoding (Sec. 3.2) of the <MASK> positions of unified ids image [B, N_I], text [B, L].

    Images follow MaskGIT: cosine schedule, a token once unmasked stays fixed, confidence = log-prob of the
    sampled token + Gumbel noise of scale choice_temperature * (1 - t / T). Text follows Mask-Predict over the
    generated span: linear schedule, the lowest-probability tokens are re-masked. With one modality generated the
    other is the condition; guidance s uses logits cond + s (cond - uncond) against the null condition of
    condition dropout. With repredict_length the length is re-predicted after every step but the last (App. D).
    """
    _check_magvlt(model)
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if guidance != 0 and generate_image == generate_text:
        raise UserError("guidance needs one modality as the condition; it does not apply to joint generation")
    vocab, device, generator = model.vocab, image.device, _rng(generator)
    condition = None if generate_image == generate_text else ("text" if generate_image else "image")
    seq = _Sequence(model, image, text, condition, guidance, repredict_length)
    segs = seq.segs

    image_gen = image_masked = image == vocab.MASK
    keep_masked = masked_counts(step_ratios(steps, gamma_image, device), image_gen.sum(dim=1))
    noise_scales = [choice_temperature * (1 - t / steps) for t in range(1, steps + 1)]
    image_logp = torch.zeros(image.shape, device=device)
    span = text_masked = text == vocab.MASK  # the generated text positions
    text_logp = torch.zeros(text.shape, device=device)

    history = []
    for t in range(1, steps + 1):
        h = seq.forward(model, image if generate_image else None, text if generate_text else None)
        uncond = h[1] if seq.guided else None
        if generate_image:
            sampled, token_logp = _predict(model.image_logits, h[0, :, segs.image], None if uncond is None else
                                           uncond[:, segs.image], image_masked, guidance, temperature, generator)
            image, image_masked, image_logp = _image_step(sampled, token_logp, image, image_masked, image_logp,
                                                          keep_masked[t - 1], noise_scales[t - 1], vocab, generator)
        if generate_text:  # Mask-Predict: fill every masked token; a kept token keeps the log-prob it was chosen with
            sampled, token_logp = _predict(model.text_logits, h[0, :, segs.text], None if uncond is None else
                                           uncond[:, segs.text], text_masked, guidance, text_temperature, generator)
            text = torch.where(text_masked, vocab.text(sampled), text)
            text_logp = torch.where(text_masked, token_logp, text_logp)
            grown = torch.zeros_like(span)
            if repredict_length and t < steps:
                length = model.length_logits(h[-1, :, segs.bot]).argmax(dim=-1) + 1
                text, span, text_logp, grown = _resize_text(text, span, text_logp, length, vocab)
            n_remask = torch.maximum(_ceil_div((steps - t) * span.sum(dim=1), steps), grown.sum(dim=1))
            text_masked = lowest_scores(text_logp.masked_fill(~span, float("inf")), n_remask)
            text = text.masked_fill(text_masked, vocab.MASK)
        if trace:
            history.append(_to_sample(vocab, image, text))

    result = _to_sample(vocab, image, text)
    image_sum, image_n = _sum_count(image_logp, image_gen)
    text_sum, text_n = _sum_count(text_logp, span)
    result.score = (image_sum + text_sum) / (image_n + text_n).clamp(min=1)
    result.trace = history
    return result


def _rng(generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, else torch's default one (unseeded runs)."""
    return generator if generator is not None else torch.default_generator


def _check_magvlt(model: Transformer) -> None:
    if model.training:
        raise ValueError("decoding needs model.eval(): dropout would make every step random")
    if model.cfg.causal:
        raise UserError("this is an ARGVLT (causal) model: it decodes token by token, use the ar_* functions")


def select_rows(sample: Sample, rows: torch.Tensor) -> Sample:
    """The given rows of a sample and of its trace (e.g. the best candidates)."""
    return Sample(
        image=sample.image[rows], text=sample.text[rows], length=sample.length[rows],
        image_masked=sample.image_masked[rows], text_masked=sample.text_masked[rows],
        score=None if sample.score is None else sample.score[rows],
        trace=[select_rows(s, rows) for s in sample.trace],
    )


def _full(shape, value: int, device) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.long, device=device)


def generate_images(model: Transformer, text: torch.Tensor, length: torch.Tensor, *, steps: int = 10,
                    **options) -> Sample:
    """T2I (Sec. 3.2, 4.2): MaskGIT decoding of every image token from raw text ids [B, L] and lengths [B]."""
    vocab = model.vocab
    image = _full((text.shape[0], model.cfg.image_tokens), vocab.MASK, text.device)
    return refine(model, image, text_input(vocab, text, length), steps=steps, generate_image=True,
                  generate_text=False, **options)


def inpaint(model: Transformer, image: torch.Tensor, mask: torch.Tensor, text: torch.Tensor, length: torch.Tensor,
            *, steps: int = 10, **options) -> Sample:
    """Image inpainting / IT2I editing (Sec. 4.2): regenerate the image tokens where mask ([B, N_I] or [N_I])."""
    vocab = model.vocab
    masked = vocab.image(image).masked_fill(mask.expand_as(image), vocab.MASK)
    return refine(model, masked, text_input(vocab, text, length), steps=steps, generate_image=True,
                  generate_text=False, **options)


@torch.no_grad()
def length_logits(model: Transformer, image: torch.Tensor) -> torch.Tensor:
    """Logits [B, L] over text lengths 1..L at <BOT>, the text fed all <MASK> as in training (Sec. 3.2)."""
    _check_magvlt(model)
    cfg = model.cfg
    tokens, position_ids, segs = magvlt_sequence(cfg, model.vocab.image(image), length_query_text(cfg, image.shape[0], image.device))
    return model.length_logits(model(tokens, position_ids)[:, segs.bot]).float()


def predict_lengths(model: Transformer, image: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The k most likely text lengths [B, k] (Sec. 3.2)."""
    return length_logits(model, image).topk(min(k, model.cfg.text_len), dim=-1).indices + 1


def generate_text(model: Transformer, image: torch.Tensor, *, steps: int = 12, length_beam: int = 1,
                  length_temperature: float = 0.0, temperature: float = 0.0, generator: torch.Generator | None = None,
                  **options) -> Sample:
    """I2T (Sec. 3.2, 4.3): length first, then Mask-Predict; the top length_beam lengths are decoded as one
    batch and the candidate with the best mean log-probability is kept (Mask-Predict's length beam).

    length_temperature > 0 samples each row's length from the <BOT> distribution at that temperature instead,
    so that candidates drawn for reranking also differ in length (in object count, on shapes-world data).
    """
    if length_temperature < 0 or (length_temperature > 0 and length_beam != 1):
        raise UserError("length_temperature must be >= 0, and a sampled length takes length_beam = 1")
    b, vocab, text_len = image.shape[0], model.vocab, model.cfg.text_len
    if length_temperature > 0:
        generator = _rng(generator)
        lengths = sample_logits(length_logits(model, image), length_temperature, generator).unsqueeze(1) + 1
    else:
        lengths = predict_lengths(model, image, length_beam)
    k = lengths.shape[1]
    text = torch.where(text_valid(lengths.flatten(), text_len), vocab.MASK, vocab.PAD)
    out = refine(model, vocab.image(image).repeat_interleave(k, dim=0), text, steps=steps, generate_image=False,
                 generate_text=True, text_temperature=temperature, generator=generator, **options)
    if k == 1:
        return out
    best = out.score.view(b, k).argmax(dim=1) + torch.arange(b, device=image.device) * k
    return select_rows(out, best)


def infill(model: Transformer, image: torch.Tensor, text: torch.Tensor, length: torch.Tensor, mask: torch.Tensor,
           *, steps: int = 12, temperature: float = 0.0, **options) -> Sample:
    """Text infilling / IT2T editing (Sec. 4.3): regenerate the text tokens where mask [B, L], given the rest."""
    vocab = model.vocab
    masked = text_input(vocab, text, length).masked_fill(mask & text_valid(length, text.shape[1]), vocab.MASK)
    return refine(model, vocab.image(image), masked, steps=steps, generate_image=False, generate_text=True,
                  text_temperature=temperature, **options)


def generate_pairs(model: Transformer, n: int, *, steps: int = 10, length_range: tuple[int, int] = (8, 16),
                   generator: torch.Generator | None = None, device=None, **options) -> Sample:
    """Unconditional image + text (App. D): both fully masked; the length starts uniform in length_range and is
    re-predicted as decoding goes."""
    cfg, vocab = model.cfg, model.vocab
    device = device if device is not None else next(model.parameters()).device
    lo, hi = max(1, length_range[0]), min(cfg.text_len, length_range[1])
    generator = _rng(generator)
    u = uniform((n,), generator, device)
    length = lo + (u * (hi - lo + 1)).long().clamp(max=hi - lo)
    image = _full((n, cfg.image_tokens), vocab.MASK, device)
    text = torch.where(text_valid(length, cfg.text_len), vocab.MASK, vocab.PAD)
    return refine(model, image, text, steps=steps, generate_image=True, generate_text=True, repredict_length=True,
                  generator=generator, **options)


def _check_argvlt(model: Transformer) -> None:
    if model.training:
        raise ValueError("decoding needs model.eval(): dropout would make every step random")
    if not model.cfg.causal:
        raise UserError("this is a MAGVLT (bidirectional) model: it decodes by iterative refinement, not token by token")


def _autoregress(model: Transformer, tokens: torch.Tensor, position_ids: torch.Tensor, start: int, n: int, head,
                 offset: int, temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator | None, use_cache: bool) -> torch.Tensor:
    """Fill tokens[:, start : start + n] one at a time (in place); returns the model's log-prob of each [B, n]."""
    b, generator = tokens.shape[0], _rng(generator)
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.cfg, b, start + n - 1, tokens.device, dtype) if use_cache else None
    h = model(tokens[:, :start], position_ids[:start], cache)[:, -1]
    logps = []
    for i in range(n):
        p = start + i
        logits = head(h).float()
        sampled = sample_logits(filter_logits(logits, top_k, top_p), temperature, generator)
        logps.append(torch.log_softmax(logits, dim=-1).gather(-1, sampled.unsqueeze(-1)))
        tokens[:, p] = sampled + offset
        if i + 1 < n:
            if cache is not None:
                h = model(tokens[:, p : p + 1], position_ids[p : p + 1], cache)[:, -1]
            else:
                h = model(tokens[:, : p + 1], position_ids[: p + 1])[:, -1]
    return torch.cat(logps, dim=1)


@torch.no_grad()
def ar_generate_images(model: Transformer, text: torch.Tensor, length: torch.Tensor, *, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                       use_cache: bool = True) -> Sample:
    """ARGVLT T2I (Sec. 4.1): [<BOT> text <BOI>] then the image tokens one at a time, with a KV cache."""
    _check_argvlt(model)
    cfg, vocab = model.cfg, model.vocab
    image = _full((text.shape[0], cfg.image_tokens), vocab.MASK, text.device)
    tokens, position_ids, segs = argvlt_sequence(cfg, image, text_input(vocab, text, length), "t2i")
    logp = _autoregress(model, tokens, position_ids, segs.image.start, cfg.image_tokens, model.image_logits, 0,
                        temperature, top_k, top_p, generator, use_cache)
    result = _to_sample(vocab, tokens[:, segs.image], tokens[:, segs.text])
    result.score = logp.mean(dim=1)
    return result


@torch.no_grad()
def ar_generate_text(model: Transformer, image: torch.Tensor, *, end_id: int | None = None, temperature: float = 1.0,
                     top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
                     use_cache: bool = True) -> Sample:
    """ARGVLT I2T (Sec. 4.1): [<BOI> image <BOT>] then text tokens one at a time; the text ends at end_id."""
    _check_argvlt(model)
    cfg, vocab = model.cfg, model.vocab
    text = _full((image.shape[0], cfg.text_len), vocab.MASK, image.device)
    tokens, position_ids, segs = argvlt_sequence(cfg, vocab.image(image), text, "i2t")
    logp = _autoregress(model, tokens, position_ids, segs.text.start, cfg.text_len, model.text_logits,
                        vocab.text_offset, temperature, top_k, top_p, generator, use_cache)
    raw = tokens[:, segs.text] - vocab.text_offset
    length = torch.full((image.shape[0],), cfg.text_len, device=image.device)
    if end_id is not None:
        is_end = raw == end_id
        length = torch.where(is_end.any(dim=1), is_end.long().argmax(dim=1) + 1, length)
    valid = text_valid(length, cfg.text_len)
    result = _to_sample(vocab, tokens[:, segs.image], torch.where(valid, tokens[:, segs.text], vocab.PAD))
    result.score = (logp * valid).sum(dim=1) / length
    return result
