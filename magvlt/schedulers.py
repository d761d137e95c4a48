"""Decoding rules as scheduler objects (Sec. 3.2): MaskGIT for images, Mask-Predict for text, and named presets.

A scheduler holds every choice of one decoding rule and advances a `TokenState` by one step from the logits at
its still-masked positions (`step(logits, timestep, sample, generator)`, the shape of diffusers'
AmusedScheduler); `magvlt.sampling` runs the model and calls it. A `Preset` bundles one scheduler per modality
with the number of candidates to rerank; `PRESETS` names the paper's, the official code's and the demo's.
Schedulers and presets are plain dataclasses: print them, copy them with `dataclasses.replace`, override fields.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from magvlt.errors import UserError
from magvlt.masking import SCHEDULES, Generators, gumbel, lowest_scores, masked_count, sample_tokens, uniform

CONFIDENCES = ("model", "tempered")
RULES = ("magvlt", "official")
REMASKS = ("lowest", "sample")
ROUNDINGS = ("ceil", "floor")


@dataclass
class TokenState:
    """One modality in the middle of decoding, in raw ids (image codes or text ids)."""

    tokens: torch.Tensor  # [B, N] raw ids; meaningless where masked
    masked: torch.Tensor  # [B, N] bool: still <MASK>
    span: torch.Tensor  # [B, N] bool: the generated positions (the rest is given)
    logp: torch.Tensor  # [B, N] log-probability each generated token was chosen with, 0 elsewhere

    @classmethod
    def start(cls, tokens: torch.Tensor, span: torch.Tensor) -> TokenState:
        """Every position of `span` masked, the rest given by `tokens`."""
        return cls(tokens.masked_fill(span, 0), span.clone(), span.clone(), torch.zeros(span.shape, device=span.device))


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


def _anneal(start: float, end: float | None, steps: int) -> list[float]:
    """`start` at the first step to `end` at the last, linearly (constant when end is None)."""
    return np.linspace(start, start if end is None else end, steps).tolist()


@dataclass
class _Scheduler:
    """What both decoding rules share: steps, schedule, how tokens are drawn and how confident each is."""

    num_inference_steps: int
    schedule: str
    temperature: float
    temperature_end: float | None = None  # None: constant temperature
    top_k: int | None = None
    top_p: float | None = None
    confidence: str = "model"  # log-prob under the model's logits, or under the tempered, filtered ones
    min_probability: float = 0.0  # probabilities below it count as it in the confidence
    min_tokens_per_step: int = 0  # images: at least this many tokens fixed a step; text: re-predicted
    greedy: bool = False  # argmax tokens and deterministic re-masking; the rest of the rule unchanged
    rule: str = "magvlt"  # "official": the released code's float32 counts, per-row ranking and ties (docs/official.md)

    def __post_init__(self):
        if self.rule not in RULES:
            raise UserError(f"rule must be one of {RULES}, got {self.rule!r}")
        if self.num_inference_steps < 1:
            raise UserError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if self.confidence not in CONFIDENCES:
            raise UserError(f"confidence must be one of {CONFIDENCES}, got {self.confidence!r}")
        if self.temperature < 0 or (self.temperature_end or 0) < 0:
            raise UserError("temperatures must be >= 0")

    def ratio(self, timestep: int) -> torch.Tensor:
        """The mask ratio after step `timestep` (0-based) of T: g((t + 1) / T) (Sec. 3.2)."""
        return SCHEDULES[self.schedule](torch.tensor((timestep + 1) / self.num_inference_steps, dtype=torch.float64))

    def temperature_at(self, timestep: int) -> float:
        return _anneal(self.temperature, self.temperature_end, self.num_inference_steps)[timestep]

    def draw(self, logits: torch.Tensor, timestep: int, masked: torch.Tensor, generator: Generators):
        """Tokens [M] for the masked positions (logits [M, V] in row-major order) and their confidence log-probs."""
        temperature = self.temperature_at(timestep)
        logits = logits.float()
        tempered = filter_logits(logits / temperature, self.top_k, self.top_p) if temperature > 0 else logits
        if self.greedy or temperature == 0:
            tokens = tempered.argmax(dim=-1)
        else:
            tokens, _ = sample_tokens(tempered, uniform(masked.shape, generator, masked.device)[masked])
        basis = tempered if self.confidence == "tempered" else logits
        logp = torch.log_softmax(basis, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        if self.min_probability > 0:
            logp = logp.clamp(min=math.log(self.min_probability))
        return tokens, logp


def _rows(positions: torch.Tensor):
    """For each row, its True positions in increasing order (the vectors the official code ranks)."""
    return [row.nonzero().squeeze(1) for row in positions]


def _scatter(masked: torch.Tensor, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(masked.shape, dtype=like.dtype, device=masked.device).masked_scatter(masked, values)


@dataclass
class MaskGITScheduler(_Scheduler):
    """Image decoding (Sec. 3.2, MaskGIT): every masked token is sampled, the most confident are fixed for good.

    Confidence = log-prob of the sampled token + Gumbel noise scaled from `noise` at the first step to
    `noise_end` at the last; after step t, ceil(g((t + 1) / T) N) of the N generated tokens stay masked.
    """

    num_inference_steps: int = 10
    schedule: str = "cosine"
    temperature: float = 1.0
    noise: float = 4.5  # MaskGIT's "choice temperature"
    noise_end: float = 0.0

    def step(self, logits: torch.Tensor, timestep: int, sample: TokenState, generator: Generators) -> TokenState:
        """One MaskGIT step from the logits [M, V] at sample.masked (row-major)."""
        if self.rule == "official":
            return self._official_step(logits, timestep, sample, generator)
        masked = sample.masked
        tokens, logp = self.draw(logits, timestep, masked, generator)
        tokens, logp = _scatter(masked, tokens, sample.tokens), _scatter(masked, logp, sample.logp)
        scale = 0.0 if self.greedy else _anneal(self.noise, self.noise_end, self.num_inference_steps)[timestep]
        confidence = logp + scale * gumbel(masked.shape, generator, masked.device) if scale else logp
        keep = masked_count(self.ratio(timestep), sample.span.sum(dim=1))
        if self.min_tokens_per_step:
            keep = torch.minimum(keep, (masked.sum(dim=1) - self.min_tokens_per_step).clamp(min=0))
        remask = lowest_scores(confidence.masked_fill(~masked, float("inf")), keep)  # fixed tokens stay fixed
        return TokenState(
            torch.where(masked, tokens, sample.tokens),
            remask,
            sample.span,
            torch.where(masked & ~remask, logp, sample.logp),
        )

    def official_count(self, timestep: int, sample: TokenState) -> int:
        """sample_t2i's count of tokens fixed this step, from sample 0 in float32 (docs/official.md sections 7, 9)."""
        steps = self.num_inference_steps
        r = torch.tensor(np.linspace(0, 1, steps + 1)[1:][timestep], dtype=torch.float32)
        total, n_prev = int(sample.span[0].sum()), int(sample.masked[0].sum())
        keep = int(torch.clamp(torch.ceil(SCHEDULES[self.schedule](r) * total), 0, n_prev))
        return n_prev - keep if timestep == steps - 1 else max(n_prev - keep, 1)

    def _official_step(self, logits, timestep, sample, generator) -> TokenState:
        """sample_t2i: probabilities of the tempered logits; greedy ranks them by sort (strategy maskgit), else topk
        of log(clamp(p, min_probability)) + noise * Gumbel (multinomial-maskgit); every row fixes the same count."""
        masked = sample.masked
        tempered = logits.float() / self.temperature_at(timestep)
        probs = tempered.softmax(dim=-1)
        if self.greedy:
            tokens = probs.argmax(dim=-1)
        else:
            tokens, _ = sample_tokens(tempered, uniform(masked.shape, generator, masked.device)[masked])
        conf = _scatter(masked, probs.gather(-1, tokens[:, None])[:, 0], probs)
        tokens = torch.where(masked, _scatter(masked, tokens, sample.tokens), sample.tokens)
        count = self.official_count(timestep, sample)
        if not self.greedy:
            noise = _anneal(self.noise, self.noise_end, self.num_inference_steps)[timestep]
            scores = conf.clamp(self.min_probability, 1).log() + noise * gumbel(masked.shape, generator, masked.device)
        fixed = torch.zeros_like(masked)
        for b, ids in enumerate(_rows(masked)):
            if self.greedy:
                order = torch.sort(conf[b, ids], descending=True).indices[:count]
            else:
                order = scores[b, ids].topk(min(count, len(ids))).indices
            fixed[b, ids[order]] = True
        logp = torch.where(fixed, conf.log(), sample.logp)
        return TokenState(torch.where(fixed, tokens, sample.tokens), masked & ~fixed, sample.span, logp)


@dataclass
class MaskPredictScheduler(_Scheduler):
    """Text decoding (Sec. 3.2, Mask-Predict): every masked token is predicted, then the least probable tokens of
    the whole generated span are masked again: round(g((t + 1) / T) N) of N after step t (none after the last).

    The length comes first, from the <BOT> head: its argmax, the best of the `length_beam` most likely lengths,
    or drawn at `length_temperature`.
    """

    num_inference_steps: int = 12
    schedule: str = "linear"
    temperature: float = 0.0
    remask: str = "lowest"  # the lowest log-probs, or drawn without replacement with weight 1 / p
    rounding: str = "ceil"
    length_beam: int = 1
    length_temperature: float = 0.0  # > 0: each row's length drawn from the length distribution

    def __post_init__(self):
        super().__post_init__()
        if self.remask not in REMASKS or self.rounding not in ROUNDINGS:
            raise UserError(f"remask must be one of {REMASKS} and rounding one of {ROUNDINGS}")
        if (
            self.length_beam < 1
            or self.length_temperature < 0
            or (self.length_temperature > 0 and self.length_beam > 1)
        ):
            raise UserError("length_beam must be >= 1 and length_temperature >= 0; a drawn length takes length_beam 1")

    def remask_counts(self, timestep: int, n: torch.Tensor) -> torch.Tensor:
        """How many of the n generated tokens of each row are masked again after step `timestep`."""
        if timestep == self.num_inference_steps - 1:
            return torch.zeros_like(n)
        x = self.ratio(timestep) * n.double()
        counts = torch.ceil(x - 1e-9) if self.rounding == "ceil" else torch.floor(x + 1e-9)
        return torch.minimum(counts.long().clamp(min=self.min_tokens_per_step), n)

    def official_remask_count(self, timestep: int, n: int) -> int:
        """sample_txt_tok's m for the next step: max(1, trunc(float32(N (S - t) / S))); none after the last."""
        steps, nxt = self.num_inference_steps, timestep + 1
        if nxt == steps:
            return 0
        return max(1, int((torch.tensor(n) * (steps - nxt) / steps).int()))

    def step(self, logits: torch.Tensor, timestep: int, sample: TokenState, generator: Generators) -> TokenState:
        """One Mask-Predict step from the logits [M, V] at sample.masked (row-major)."""
        if self.rule == "official":
            return self._official_step(logits, timestep, sample, generator)
        masked, span = sample.masked, sample.span
        tokens, logp = self.draw(logits, timestep, masked, generator)
        tokens = torch.where(masked, _scatter(masked, tokens, sample.tokens), sample.tokens)
        logp = torch.where(masked, _scatter(masked, logp, sample.logp), sample.logp)
        scores = logp
        if self.remask == "sample" and not self.greedy:
            scores = logp - gumbel(span.shape, generator, span.device)  # Gumbel-top-k: weight exp(-logp) = 1 / p
        remask = lowest_scores(scores.masked_fill(~span, float("inf")), self.remask_counts(timestep, span.sum(dim=1)))
        return TokenState(tokens, remask, span, logp)

    def _official_step(self, logits, timestep, sample, generator) -> TokenState:
        """sample_txt_tok: tokens of Categorical(tempered, top-k-filtered logits) (greedy: argmax of its probs), then
        per row m of the span re-masked: topk(-logp) (lowest) or a weighted draw (sample) (docs/official.md 8, 11)."""
        masked, span = sample.masked, sample.span
        tempered = filter_logits(logits.float() / self.temperature_at(timestep), self.top_k, self.top_p)
        norm = tempered - tempered.logsumexp(dim=-1, keepdim=True)  # what Categorical(logits=...) holds
        if self.greedy:
            tokens = norm.softmax(dim=-1).argmax(dim=-1)
        else:
            tokens, _ = sample_tokens(norm, uniform(masked.shape, generator, masked.device)[masked])
        logp = torch.where(masked, _scatter(masked, norm.gather(-1, tokens[:, None])[:, 0], sample.logp), sample.logp)
        tokens = torch.where(masked, _scatter(masked, tokens, sample.tokens), sample.tokens)
        scores = -logp
        if self.remask == "sample" and not self.greedy:
            scores = scores + gumbel(span.shape, generator, span.device)  # Gumbel-top-k: weight exp(-logp) = 1 / p
        remask = torch.zeros_like(masked)
        for b, ids in enumerate(_rows(span)):
            remask[b, ids[scores[b, ids].topk(self.official_remask_count(timestep, len(ids))).indices]] = True
        return TokenState(tokens, remask, span, logp)


@dataclass
class Preset:
    """How outputs are sampled: one scheduler per modality, and how many candidates the reranker chooses from."""

    image: MaskGITScheduler = field(default_factory=MaskGITScheduler)
    text: MaskPredictScheduler = field(default_factory=MaskPredictScheduler)
    image_candidates: int = 1
    text_candidates: int = 1
    # > 0: text candidates are ranked by the scorer's similarity (else their mean log-probability) plus this weight
    # times the model's own log p(image | caption) (`sampling.image_log_likelihood`), each standardized over the
    # candidates of an input: noisy-channel reranking, for the binding of words to places that the scorer misses
    text_channel: float = 0.0

    def greedy(self) -> Preset:
        """The same preset with argmax tokens, no confidence noise and deterministic re-masking."""
        return dataclasses.replace(
            self, image=dataclasses.replace(self.image, greedy=True), text=dataclasses.replace(self.text, greedy=True)
        )


PRESETS: dict[str, Preset] = {
    # magvlt's defaults: the paper's rules (MaskGIT T = 10 with choice temperature 4.5, Mask-Predict T = 12 by
    # argmax) and one sample per input
    "default": Preset(),
    # Sec. 4.2-4.3: the same rules, best of 32 images / 64 captions by a CLIP reranker
    "paper": Preset(image_candidates=32, text_candidates=64),
    # the released sampling code (kakaobrain/magvlt sampling_t2i.py / sampling_i2t.py and their config)
    "official": Preset(
        image=MaskGITScheduler(
            num_inference_steps=10,
            temperature=1.4,
            temperature_end=0.6,
            confidence="tempered",
            min_probability=2**-10,
            noise=2.0,
            noise_end=0.2,
            rule="official",
        ),
        text=MaskPredictScheduler(
            num_inference_steps=12, temperature=0.1, top_k=32, confidence="tempered", remask="sample", rule="official"
        ),
        image_candidates=32,
        text_candidates=64,
    ),
    # `magvlt demo` (README, "What `magvlt demo` does"), for its 32-token images and ~14-token captions. Images:
    # more steps, a low temperature and no confidence noise, so that the last, least certain codes (an object's
    # patches) are fixed a few at a time and see each other: 32 steps at 0.3 judged one sample right 73.4% of the
    # time against 61.5% for 10 steps at 0.5 with noise 4.5 (a 3,826-update model); on a 3,998-update model the
    # scorer's best of 4 judged 98.0% in 32 steps, 95.0% in 16, which take half the time. Captions: 16 drawn at
    # temperature 1, ranked by the scorer plus half the model's own log p(image | caption) (noisy channel: the
    # scorer misses which object is where, T2I's likelihood does not): 93.0% in 8 steps as in 12, best of 8 82.5%;
    # nucleus 0.9 keeps malformed words out (val / novel 92.0 / 84.0% with 0 / 1% outside the grammar, against
    # 90.5 / 77.0% with 0.5 / 11%)
    "demo": Preset(
        image=MaskGITScheduler(num_inference_steps=16, temperature=0.3, noise=0.0),
        text=MaskPredictScheduler(num_inference_steps=8, temperature=1.0, top_p=0.9),
        image_candidates=4,
        text_candidates=16,
        text_channel=0.5,
    ),
}


def get_preset(preset: str | Preset) -> Preset:
    """A fresh copy of a named preset (or of the Preset given), or a clear error listing the names."""
    if not isinstance(preset, Preset) and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    return copy.deepcopy(preset if isinstance(preset, Preset) else PRESETS[preset])
