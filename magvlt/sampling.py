"""Decoding for every generation mode (Sec. 3.2, 4.1-4.3, App. D), on token tensors only.

MAGVLT refines its masked tokens in T parallel steps: `decode` runs the model once a step and hands the logits
at the still-masked positions to one scheduler per generated modality (`magvlt.schedulers`: MaskGIT for images,
Mask-Predict for text; both at once for unconditional pairs, App. D). ARGVLT decodes one token at a time with a
KV cache. Inputs and outputs are image codes [B, N_I] and raw text ids [B, L] with lengths [B]. `generator` is
one torch.Generator or one per row (then a row's result does not depend on the rest of the batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from magvlt.errors import UserError
from magvlt.masking import Generators, sample_tokens, text_valid, uniform
from magvlt.model import KVCache, Task, Transformer, official_attention, official_segments
from magvlt.schedulers import MaskGITScheduler, MaskPredictScheduler, TokenState, filter_logits


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

    def select(self, rows: torch.Tensor) -> Sample:
        """The given rows of this sample and of its trace (e.g. the best candidates)."""
        return Sample(
            self.image[rows],
            self.text[rows],
            self.length[rows],
            self.image_masked[rows],
            self.text_masked[rows],
            None if self.score is None else self.score[rows],
            [s.select(rows) for s in self.trace],
        )


StepCallback = Callable[[int, Sample], None]  # (0-based step, the tokens after it)


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + scale (cond - uncond); scale 1 is the conditional model."""
    return uncond + scale * (cond - uncond)


def central_mask(grid: tuple[int, int], fraction: float = 0.5, device=None) -> torch.Tensor:
    """Bool [h * w]: the central fraction of each side of the token grid (Sec. 4.2: 8x8 of 16x16)."""
    h, w = grid
    mh, mw = max(1, round(h * fraction)), max(1, round(w * fraction))
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    mask[(h - mh) // 2 : (h - mh) // 2 + mh, (w - mw) // 2 : (w - mw) // 2 + mw] = True
    return mask.flatten()


def central_span(length: torch.Tensor, text_len: int, fraction: float = 0.5, start: int = 0) -> torch.Tensor:
    """Bool [B, L]: the central fraction (at least one) of the `length` tokens from `start` (Sec. 4.3 infilling)."""
    n = torch.clamp(torch.round(length * fraction), min=1).long()
    start = start + (length - n) // 2
    pos = torch.arange(text_len, device=length.device)
    return (pos >= start.unsqueeze(1)) & (pos < (start + n).unsqueeze(1))


def _caption(model: Transformer, text: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Raw text ids [B, L] as a layout reads them: cut after the longest caption (the model hides the positions
    past every caption), <|endoftext|> past each length."""
    width = max(1, int(length.max()))
    return torch.where(text_valid(length, width), text[:, :width], model.eos)


def _official_forward(
    model: Transformer, image: TokenState, text: TokenState, length: torch.Tensor, task: Task, null: str | None
):
    """The released model's layout of `task` (T2I when only the image is generated, else I2T, as IT2IT), text
    EOS-padded past each length and cut after the longest (the model hides those positions); the null condition
    of guidance is the empty caption (length 0) or the fully masked image."""
    tokens = _caption(model, text.tokens, length)
    width = tokens.shape[1]
    masked = text.masked[:, :width]
    groups = {"main": (image.tokens, image.masked, tokens, masked, length)}
    if null == "text":
        groups["uncond"] = (image.tokens, image.masked, tokens, masked, torch.zeros_like(length))
    elif null == "image":
        groups["uncond"] = (image.tokens, torch.ones_like(image.masked), tokens, masked, length)
    h = model.official(task, *(torch.cat(parts) for parts in zip(*groups.values())))
    return dict(zip(groups, h.view(len(groups), -1, *h.shape[1:]))), official_segments(task, model.cfg, width)


def _logits(head, states: dict[str, torch.Tensor], seg: slice, masked: torch.Tensor, scale: float) -> torch.Tensor:
    """Logits [M, V] at the masked positions only, guided when an unconditional row was fed."""
    cond = head(states["main"][:, seg][masked])
    return guided(cond, head(states["uncond"][:, seg][masked]), scale) if "uncond" in states else cond


def _resize_text(text: TokenState, length: torch.Tensor) -> TokenState:
    """A re-predicted length (App. D): positions past it leave the span; new ones join it masked, never scored."""
    span = text_valid(length, text.tokens.shape[1])
    grown = span & ~text.span
    return TokenState(text.tokens, (text.masked & span) | grown, span, text.logp.masked_fill(grown, float("-inf")))


def _to_sample(image: TokenState, text: TokenState, length: torch.Tensor) -> Sample:
    valid = text_valid(length, text.tokens.shape[1])
    return Sample(
        image=image.tokens.masked_fill(image.masked, 0),
        text=text.tokens.masked_fill(text.masked | ~valid, 0),
        length=length.clone(),
        image_masked=image.masked.clone(),
        text_masked=text.masked & valid,
    )


def _mean_logp(*states: TokenState) -> torch.Tensor:
    total = sum(s.logp.masked_fill(~s.span, 0).sum(dim=1) for s in states)
    return total / sum(s.span.sum(dim=1) for s in states).clamp(min=1)


@torch.no_grad()
def decode(
    model: Transformer,
    image: TokenState,
    text: TokenState,
    length: torch.Tensor,
    *,
    image_scheduler: MaskGITScheduler | None = None,
    text_scheduler: MaskPredictScheduler | None = None,
    guidance_scale: float = 1.0,
    repredict_length: bool = False,
    generator: Generators | None = None,
    trace: bool = False,
    callback: StepCallback | None = None,
) -> Sample:
    """Iterative parallel decoding (Sec. 3.2) of the masked positions of `image` and `text` (with lengths [B]).

    A modality with a scheduler is generated, the other is the condition. guidance_scale > 1 guides the logits
    against the null condition of condition dropout. With repredict_length (joint generation) the text length
    is re-predicted after every step but the last (App. D).
    """
    _check_magvlt(model)
    schedulers = [s for s in (image_scheduler, text_scheduler) if s is not None]
    if not schedulers or len({s.num_inference_steps for s in schedulers}) > 1:
        raise UserError("decode needs a scheduler per generated modality, with the same number of steps")
    null = None if len(schedulers) == 2 or guidance_scale <= 1 else ("text" if image_scheduler else "image")
    generator, steps = _rng(generator), schedulers[0].num_inference_steps
    task = Task.T2I if text_scheduler is None else Task.I2T
    history = []
    for t in range(steps):
        states, segs = _official_forward(model, image, text, length, task, null)
        if image_scheduler is not None:
            logits = _logits(model.image_logits, states, segs.image, image.masked, guidance_scale)
            image = image_scheduler.step(logits, t, image, generator)
        if text_scheduler is not None:
            masked = text.masked[:, : segs.text.stop - segs.text.start]  # none past the longest caption
            logits = _logits(model.text_logits, states, segs.text, masked, guidance_scale)
            text = text_scheduler.step(logits, t, text, generator)
            if repredict_length and t < steps - 1:
                length = model.official_length_logits(image.tokens, image.masked).argmax(dim=-1) + 1
                text = _resize_text(text, length)
        if trace or callback is not None:
            current = _to_sample(image, text, length)
            history += [current] if trace else []
            if callback is not None:
                callback(t, current)
    result = _to_sample(image, text, length)
    result.score, result.trace = _mean_logp(image, text), history
    return result


def _rng(generator: Generators | None) -> Generators:
    """The caller's generator(s), else torch's default one (unseeded runs)."""
    return generator if generator is not None else torch.default_generator


def _check_magvlt(model: Transformer) -> None:
    if model.training:
        raise ValueError("decoding needs model.eval(): dropout would make every step random")
    if model.cfg.causal:
        raise UserError("this is an ARGVLT (causal) model: it decodes token by token, use the ar_* functions")


def _given(tokens: torch.Tensor) -> TokenState:
    """A condition: every token given, nothing generated."""
    return TokenState.start(tokens, torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device))


def generate_images(
    model: Transformer, text: torch.Tensor, length: torch.Tensor, scheduler: MaskGITScheduler, **options
) -> Sample:
    """T2I (Sec. 3.2, 4.2): MaskGIT decoding of every image token from raw text ids [B, L] and lengths [B]."""
    shape = (text.shape[0], model.cfg.image_tokens)
    image = TokenState.start(
        torch.zeros(shape, dtype=torch.long, device=text.device),
        torch.ones(shape, dtype=torch.bool, device=text.device),
    )
    return decode(model, image, _given(text), length, image_scheduler=scheduler, **options)


def inpaint(
    model: Transformer,
    image: torch.Tensor,
    mask: torch.Tensor,
    text: torch.Tensor,
    length: torch.Tensor,
    scheduler: MaskGITScheduler,
    **options,
) -> Sample:
    """Image inpainting / IT2I editing (Sec. 4.2): regenerate the image tokens where mask ([B, N_I] or [N_I])."""
    state = TokenState.start(image, mask.expand_as(image).clone())
    return decode(model, state, _given(text), length, image_scheduler=scheduler, **options)


@torch.no_grad()
def image_log_likelihood(
    model: Transformer, image: torch.Tensor, text: torch.Tensor, length: torch.Tensor
) -> torch.Tensor:
    """log p(image | text) [B] by T2I read in one step: the summed log-probabilities of the codes [B, N_I] with
    every image position masked, given raw text ids [B, L] and lengths (the channel model of noisy-channel
    reranking: a caption that puts the objects in the wrong places makes the image unlikely)."""
    masked = torch.ones_like(image, dtype=torch.bool)
    given = torch.zeros_like(text, dtype=torch.bool)
    states, segs = _official_forward(
        model,
        TokenState(image, masked, masked, torch.zeros(image.shape, device=image.device)),
        TokenState(text, given, given, torch.zeros(text.shape, device=text.device)),
        length,
        Task.T2I,
        None,
    )
    logp = model.image_logits(states["main"][:, segs.image]).float().log_softmax(dim=-1)
    return logp.gather(-1, image.unsqueeze(-1)).squeeze(-1).sum(dim=1)


@torch.no_grad()
def length_logits(model: Transformer, image: torch.Tensor) -> torch.Tensor:
    """Logits [B, L] over text lengths 1..L at <BOT>, the text fed all <MASK> as in training (Sec. 3.2)."""
    _check_magvlt(model)
    return model.official_length_logits(image, torch.zeros_like(image, dtype=torch.bool))


def predict_lengths(
    model: Transformer, image: torch.Tensor, scheduler: MaskPredictScheduler, generator: Generators | None = None
) -> torch.Tensor:
    """Text lengths [B, k] by the scheduler's length rule: the k = length_beam most likely, or one drawn."""
    logits = length_logits(model, image)
    if scheduler.length_temperature > 0:
        u = uniform((image.shape[0],), _rng(generator), image.device)
        return sample_tokens(logits / scheduler.length_temperature, u)[0].unsqueeze(1) + 1
    if scheduler.length_beam == 1:  # argmax of the softmax, ties to the shortest (as the official code)
        return logits.softmax(dim=-1).argmax(dim=-1, keepdim=True) + 1
    return logits.topk(min(scheduler.length_beam, model.cfg.text_len), dim=-1).indices + 1


def generate_text(
    model: Transformer,
    image: torch.Tensor,
    scheduler: MaskPredictScheduler,
    generator: Generators | None = None,
    **options,
) -> Sample:
    """I2T (Sec. 3.2, 4.3): the length first, then Mask-Predict. With length_beam k the top k lengths are decoded
    as one batch and the candidate with the best mean log-probability is kept (Mask-Predict's length beam)."""
    b, text_len = image.shape[0], model.cfg.text_len
    lengths = predict_lengths(model, image, scheduler, generator)
    k = lengths.shape[1]
    if k > 1 and isinstance(generator, (list, tuple)):
        generator = [g for g in generator for _ in range(k)]
    length = lengths.flatten()
    text = TokenState.start(
        torch.zeros((b * k, text_len), dtype=torch.long, device=image.device), text_valid(length, text_len)
    )
    out = decode(
        model,
        _given(image.repeat_interleave(k, dim=0)),
        text,
        length,
        text_scheduler=scheduler,
        generator=generator,
        **options,
    )
    if k == 1:
        return out
    return out.select(out.score.view(b, k).argmax(dim=1) + torch.arange(b, device=image.device) * k)


def infill(
    model: Transformer,
    image: torch.Tensor,
    text: torch.Tensor,
    length: torch.Tensor,
    mask: torch.Tensor,
    scheduler: MaskPredictScheduler,
    **options,
) -> Sample:
    """Text infilling / IT2T editing (Sec. 4.3): regenerate the text tokens where mask [B, L], given the rest."""
    state = TokenState.start(text, mask & text_valid(length, text.shape[1]))
    return decode(model, _given(image), state, length, text_scheduler=scheduler, **options)


def generate_pairs(
    model: Transformer,
    n: int,
    image_scheduler: MaskGITScheduler,
    text_scheduler: MaskPredictScheduler,
    *,
    length_range: tuple[int, int] = (8, 16),
    generator: Generators | None = None,
    device=None,
    **options,
) -> Sample:
    """Unconditional image + text (App. D): both fully masked and refined in the same steps; the length starts
    uniform in length_range and is re-predicted as decoding goes."""
    cfg = model.cfg
    device = device if device is not None else next(model.parameters()).device
    lo, hi = max(1, length_range[0]), min(cfg.text_len, length_range[1])
    generator = _rng(generator)
    length = lo + (uniform((n,), generator, device) * (hi - lo + 1)).long().clamp(max=hi - lo)
    image = TokenState.start(
        torch.zeros((n, cfg.image_tokens), dtype=torch.long, device=device),
        torch.ones((n, cfg.image_tokens), dtype=torch.bool, device=device),
    )
    text = TokenState.start(
        torch.zeros((n, cfg.text_len), dtype=torch.long, device=device), text_valid(length, cfg.text_len)
    )
    return decode(
        model,
        image,
        text,
        length,
        image_scheduler=image_scheduler,
        text_scheduler=text_scheduler,
        repredict_length=True,
        generator=generator,
        **options,
    )


def _check_argvlt(model: Transformer) -> None:
    if model.training:
        raise ValueError("decoding needs model.eval(): dropout would make every step random")
    if not model.cfg.causal:
        raise UserError(
            "this is a MAGVLT (bidirectional) model: it decodes by iterative refinement, not token by token"
        )


def sample_logits(logits: torch.Tensor, temperature: float, generator: Generators) -> torch.Tensor:
    """One draw per row of softmax(logits / temperature) [B, V] (inverse CDF); argmax at temperature 0."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return sample_tokens(logits / temperature, uniform((logits.shape[0],), generator, logits.device))[0]


def _draw(temperature: float, top_k: int | None, top_p: float | None, generator: Generators | None):
    """The token draw of ARGVLT decoding: logits [B, V] -> one id per row, filtered and tempered."""
    generator = _rng(generator)
    return lambda logits: sample_logits(filter_logits(logits, top_k, top_p), temperature, generator)


def _autoregress(
    model: Transformer,
    task: Task,
    image: torch.Tensor,
    text: torch.Tensor,
    length: torch.Tensor,
    draw: Callable[[torch.Tensor], torch.Tensor],
    use_cache: bool,
) -> torch.Tensor:
    """Fill the generated modality of `task` (T2I: image codes [B, N_I]; I2T: raw text ids [B, L]) in place, one
    token at a time in its official layout under the causal mask (Sec. 4.1): the prefix up to <BOI> / <BOT> in
    one forward, then one position per step against a KV cache (without one, the whole prefix again). Returns
    the model's log-probability of each drawn token [B, n]."""
    cfg, width, t2i = model.cfg, text.shape[1], task == Task.T2I
    tokens, head, embed = (
        (image, model.image_logits, model.embed_image) if t2i else (text, model.text_logits, model.embed_text)
    )
    given = (image, torch.zeros_like(image, dtype=torch.bool), text, torch.zeros_like(text, dtype=torch.bool))
    segs, attn = official_segments(task, cfg, width), official_attention(task, length, cfg, width)
    start, n = (segs.image if t2i else segs.text).start, tokens.shape[1]
    dtype = next(model.parameters()).dtype
    cache = KVCache(cfg, tokens.shape[0], start + n - 1, tokens.device, dtype) if use_cache else None
    h = model(model.embed(task, *given)[:, :start], attn[:, :start, :start], cache)[:, -1]
    logps = []
    for i in range(n):
        logits = head(h).float()
        tokens[:, i] = draw(logits)
        logps.append(torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, i : i + 1]))
        if i + 1 < n:
            p = start + i  # the position just filled
            if cache is not None:
                x, rows = embed(tokens[:, i : i + 1], torch.zeros_like(tokens[:, :1], dtype=torch.bool), i), p
            else:
                x, rows = model.embed(task, *given)[:, : p + 1], 0
            h = model(x, attn[:, rows : p + 1, : p + 1], cache)[:, -1]
    return torch.cat(logps, dim=1)


def _ar_sample(image: torch.Tensor, text: torch.Tensor, length: torch.Tensor, score: torch.Tensor) -> Sample:
    none = torch.zeros(image.shape, dtype=torch.bool, device=image.device)
    return Sample(image, text, length, none, torch.zeros(text.shape, dtype=torch.bool, device=text.device), score)


@torch.no_grad()
def ar_generate_images(
    model: Transformer,
    text: torch.Tensor,
    length: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: Generators | None = None,
    use_cache: bool = True,
) -> Sample:
    """ARGVLT T2I (Sec. 4.1): [BOC BOT text BOG BOI], then the image tokens one at a time, with a KV cache."""
    _check_argvlt(model)
    image = torch.zeros((text.shape[0], model.cfg.image_tokens), dtype=torch.long, device=text.device)
    draw = _draw(temperature, top_k, top_p, generator)
    logp = _autoregress(model, Task.T2I, image, _caption(model, text, length), length, draw, use_cache)
    return _ar_sample(image, text.masked_fill(~text_valid(length, text.shape[1]), 0), length, logp.mean(dim=1))


@torch.no_grad()
def ar_generate_text(
    model: Transformer,
    image: torch.Tensor,
    *,
    end_id: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: Generators | None = None,
    use_cache: bool = True,
) -> Sample:
    """ARGVLT I2T (Sec. 4.1): [BOC BOI image BOG BOT], then text tokens one at a time; the text ends at end_id."""
    _check_argvlt(model)
    b, text_len = image.shape[0], model.cfg.text_len
    text = torch.zeros((b, text_len), dtype=torch.long, device=image.device)
    length = torch.full((b,), text_len, device=image.device)
    draw = _draw(temperature, top_k, top_p, generator)
    logp = _autoregress(model, Task.I2T, image, text, length, draw, use_cache)
    if end_id is not None:
        is_end = text == end_id
        length = torch.where(is_end.any(dim=1), is_end.long().argmax(dim=1) + 1, length)
    valid = text_valid(length, text_len)
    return _ar_sample(image, text.masked_fill(~valid, 0), length, (logp * valid).sum(dim=1) / length)
