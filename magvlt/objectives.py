"""MAGVLT's training objectives (Sec. 3.1, 3.3-3.5, App. A, App. E) and ARGVLT's (Sec. 4.1).

`training_loss` is the single entry point: for the task the trainer drew for the batch (`sample_task`) it returns
L = L_mask + lambda_TL L_TL + lambda_UM L_UM + lambda_MS L_MS, each extra term only where it applies:
length for I2T and IT2IT (the text is generated), UnrollMask and MixSel for T2I and I2T.

Token spaces: image codes are unified ids as they are; raw text ids become unified ids through `Vocab.text`;
positions >= length are fed as <PAD> and are never targets. Each built input is an `Example`: what is fed,
which positions are predicted, and their ground truth. Masks, schedules and fed inputs come from
`magvlt.masking`, which decoding shares. Every random draw goes through the caller's torch.Generator (drawn on
its own device, so a CPU generator drives a CUDA batch deterministically). Dropout uses torch's global RNG.
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from magvlt.config import ModelConfig, ObjectiveConfig
from magvlt.errors import UserError
from magvlt.masking import (
    cosine_schedule,
    linear_schedule,
    lowest_scores,
    random_mask,
    sample_tokens,
    text_input,
    text_valid,
    unconditional_image,
    unconditional_text,
    uniform,
)
from magvlt.model import SPC, Task, Transformer, Vocab, official_segments

TASKS = tuple(Task)  # the order of ObjectiveConfig.task_weights
MIX_MODES = ("mixsel", "mixrandom", "off")
REMASK_MODES = ("confidence", "random")


def sample_task(weights, generator: torch.Generator) -> Task:
    """One task for the whole batch from the categorical T2I : I2T : IT2IT weights (Sec. 3.5)."""
    if len(weights) != len(TASKS) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(
            f"task_weights must be 3 non-negative numbers (T2I, I2T, IT2IT) with a positive sum, got {weights}"
        )
    u = uniform((), generator, "cpu", torch.float64).item() * sum(weights)
    last = max(i for i, w in enumerate(weights) if w > 0)
    return TASKS[min(bisect.bisect_right(list(itertools.accumulate(weights)), u), last)]


def trained_task_weights(weights, causal: bool) -> tuple[float, float, float]:
    """The T2I : I2T : IT2IT weights a model trains: ARGVLT (causal) has no IT2IT, so its weight is dropped."""
    if causal and sum(weights[:2]) <= 0:
        raise UserError("ARGVLT trains T2I and I2T only: task_weights needs a positive T2I or I2T weight")
    return (*weights[:2], 0.0) if causal else tuple(weights)


@dataclass
class Example:
    """One built input: unified ids fed to the model, positions predicted and their ground truth."""

    image: torch.Tensor  # [B, N_I] unified ids as fed (<MASK> where masked)
    text: torch.Tensor  # [B, L] unified ids as fed (<MASK> where masked, <PAD> beyond the length)
    image_mask: torch.Tensor  # [B, N_I] bool: predicted image positions
    text_mask: torch.Tensor  # [B, L] bool: predicted text positions
    image_target: torch.Tensor  # [B, N_I] image codes
    text_target: torch.Tensor  # [B, L] raw text ids
    length: torch.Tensor  # [B] text lengths (counting sot and eot)
    r: torch.Tensor  # [B] float64: the step ratio the masks were drawn at
    task: Task  # the layout: T2I text first, I2T and IT2IT image first
    selector: torch.Tensor | None = None  # [B] MixSel selector token ids


def mask_task(
    task: Task,
    vocab: Vocab,
    image: torch.Tensor,
    text: torch.Tensor,
    length: torch.Tensor,
    generator: torch.Generator,
    selector: torch.Tensor | None = None,
) -> Example:
    """The masked input of a task (Sec. 3.1): T2I masks the image, I2T the text, IT2IT both.

    One r ~ U[0, 1) per sample; in IT2IT it sets both ratios (g_I(r) for the image, g_T(r) for the text), as
    one decoding step ratio does at joint generation. Every real text position is maskable, sot and eot too.
    """
    r = uniform((image.shape[0],), generator, image.device, torch.float64)
    image_mask = torch.zeros_like(image, dtype=torch.bool)
    text_mask = torch.zeros_like(text, dtype=torch.bool)
    if task in (Task.T2I, Task.IT2IT):
        image_mask = random_mask(cosine_schedule(r), ~image_mask, generator)
    if task in (Task.I2T, Task.IT2IT):
        text_mask = random_mask(linear_schedule(r), text_valid(length, text.shape[1]), generator)
    return Example(
        image=vocab.image(image).masked_fill(image_mask, vocab.MASK),
        text=text_input(vocab, text, length).masked_fill(text_mask, vocab.MASK),
        image_mask=image_mask,
        text_mask=text_mask,
        image_target=image,
        text_target=text,
        length=length,
        r=r,
        task=task,
        selector=selector,
    )


def _drop_rows(batch: int, p: float, generator: torch.Generator, device) -> torch.Tensor | None:
    """Boolean [B]: the samples whose condition is dropped, or None when p is 0."""
    return uniform((batch,), generator, device) < p if p > 0 else None


def condition_dropout(ex: Example, task: Task, p: float, cfg: ModelConfig, generator: torch.Generator) -> Example:
    """Replace the condition of a fraction p of samples by the null one, for classifier-free guidance.

    T2I: the text becomes `unconditional_text` (all <PAD>); I2T: the image becomes `unconditional_image`
    (all <MASK>); IT2IT has no condition. Sampling builds its unconditional rows with the same functions.
    """
    drop = _drop_rows(ex.image.shape[0], p, generator, ex.image.device) if task != Task.IT2IT else None
    if drop is None:
        return ex
    if task == Task.T2I:
        return replace(ex, text=torch.where(drop[:, None], unconditional_text(cfg, len(drop), drop.device), ex.text))
    return replace(ex, image=torch.where(drop[:, None], unconditional_image(cfg, len(drop), drop.device), ex.image))


def mask_prediction_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy over the masked positions only, in float32, with label smoothing (Sec. 3.1, App. A)."""
    if targets.numel() == 0:
        return logits.sum().float() * 0.0
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.numel() == 0:
        return torch.zeros((), device=targets.device)
    return (logits.argmax(dim=-1) == targets).float().mean()


@dataclass
class Prediction:
    """Outputs of one masked-prediction forward: loss, logits at the predicted positions (row-major order)."""

    loss: torch.Tensor
    image_logits: torch.Tensor  # [M_I, V_I]
    text_logits: torch.Tensor  # [M_T, V_T]
    metrics: dict[str, torch.Tensor]


def official_inputs(model: Transformer, image: torch.Tensor, text: torch.Tensor, selector: torch.Tensor | None = None):
    """Unified ids as the official architecture reads them (docs/official.md section 4): (codes, image masked, text
    ids, text masked, caption lengths, BOG_* rows). <PAD> ends a caption (the null caption has length 0), <SEP>
    between MixSel's joined captions is <|endoftext|>, a selector takes the <BOG> slot."""
    vocab = model.vocab
    image_masked, text_masked = image == vocab.MASK, text == vocab.MASK
    raw = torch.where(text == vocab.SEP, model.eos, text - vocab.text_offset)
    raw = torch.where(text_masked | (text == vocab.PAD), model.eos, raw)
    bog = None
    if selector is not None:
        sides = torch.tensor([vocab.LEFT, vocab.RIGHT, vocab.TOP, vocab.BOTTOM], device=selector.device)
        bog = SPC["BOG_LEFT"] + (selector[:, None] == sides).int().argmax(dim=1)
    return image.masked_fill(image_masked, 0), image_masked, raw, text_masked, (text != vocab.PAD).sum(dim=1), bog


def _hidden(model: Transformer, ex: Example):
    """Block outputs and segments of an example in its official layout: T2I text first, I2T and IT2IT image first."""
    layout = Task.T2I if ex.task == Task.T2I else Task.I2T
    inputs = official_inputs(model, ex.image, ex.text, ex.selector)
    return model.official(layout, *inputs), official_segments(layout, model.cfg, ex.text.shape[1])


def crop_text(ex: Example) -> Example:
    """The example with its text cut after the batch's longest caption: the released architecture hides every
    position past a caption, so these cost compute and change nothing (single captions use ~14 of 32 positions)."""
    width = int(ex.length.max())
    if width == ex.text.shape[1]:
        return ex
    return replace(
        ex, text=ex.text[:, :width], text_mask=ex.text_mask[:, :width], text_target=ex.text_target[:, :width]
    )


def predict_masked(model: Transformer, ex: Example, label_smoothing: float) -> Prediction:
    """One forward, logits only at the predicted positions; the sum of the per-modality mean cross-entropies."""
    ex = crop_text(ex)
    h, segs = _hidden(model, ex)
    image_logits = model.image_logits(h[:, segs.image][ex.image_mask])
    text_logits = model.text_logits(h[:, segs.text][ex.text_mask])
    image_target, text_target = ex.image_target[ex.image_mask], ex.text_target[ex.text_mask]
    loss = torch.zeros((), device=h.device)
    metrics = {}
    if image_target.numel():
        loss = loss + mask_prediction_loss(image_logits, image_target, label_smoothing)
        metrics["acc_image"] = _accuracy(image_logits, image_target)
    if text_target.numel():
        loss = loss + mask_prediction_loss(text_logits, text_target, label_smoothing)
        metrics["acc_text"] = _accuracy(text_logits, text_target)
    return Prediction(loss, image_logits, text_logits, metrics)


def length_loss(model: Transformer, image: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target-length cross-entropy at <BOT> (Sec. 3.2): class k means length k + 1. Returns (loss, accuracy).

    Fed `image` (unified ids, as in the task's main input) and the official length query (docs/official.md
    section 6: the text all masked, no padding), exactly what the sampler feeds before it knows the length: with
    the real padding visible the length would be given away, so this is its own forward rather than the main
    one's <BOT> output.
    """
    masked = image == model.vocab.MASK
    logits = model.official_length_logits(image.masked_fill(masked, 0), masked)
    return F.cross_entropy(logits, length - 1), _accuracy(logits, length - 1)


def next_ratio(r: torch.Tensor, steps: int) -> torch.Tensor:
    """The step ratio one decoding step later, r + 1/T, clamped at 1 (Sec. 3.2)."""
    return (r + 1 / steps).clamp(max=1.0)


def unroll_counts(first: torch.Tensor, r: torch.Tensor, n: torch.Tensor, steps: int, schedule) -> torch.Tensor:
    """How many UnrollMask re-masks: ceil(g(r + 1/T) N), strictly fewer than the first mask and at least 1.

    A row whose first mask had a single token has nothing to unroll (0).
    """
    nxt = torch.ceil(schedule(next_ratio(r, steps)) * n).long()
    return torch.where(first > 1, torch.minimum(nxt.clamp(min=1), first - 1), 0)


def unroll_mask(
    ex: Example,
    modality: str,
    sampled: torch.Tensor,
    confidence: torch.Tensor,
    vocab: Vocab,
    cfg: ObjectiveConfig,
    generator: torch.Generator,
) -> Example:
    """UnrollMask's input (Sec. 3.3): the one-step prediction filled in, then re-masked at the next step.

    `sampled` and `confidence` [M] are the tokens sampled at the masked positions of `modality` (row-major)
    and their probabilities. If the first mask drew ratio g(r), the re-mask keeps `unroll_counts` positions
    (r' = r + 1/T, T the decoding steps of the modality) chosen among the first mask by lowest confidence, as
    the decoder does, or at random (cfg.unroll_remask). Targets stay the ground truth; the other modality
    (the clean condition) is fed unchanged.
    """
    if modality == "image":
        fed, first, n = ex.image, ex.image_mask, torch.full_like(ex.length, ex.image.shape[1])
        steps, schedule, offset = cfg.unroll_image_steps, cosine_schedule, 0
    else:
        fed, first, n = ex.text, ex.text_mask, ex.length
        steps, schedule, offset = cfg.unroll_text_steps, linear_schedule, vocab.text_offset
    filled = fed.masked_scatter(first, sampled + offset)
    scores = (
        confidence if cfg.unroll_remask == "confidence" else uniform(confidence.shape, generator, confidence.device)
    )
    scores = torch.full(first.shape, 2.0, device=first.device).masked_scatter(first, scores.float())
    second = lowest_scores(scores, unroll_counts(first.sum(dim=1), ex.r, n, steps, schedule))
    fields = {modality: filled.masked_fill(second, vocab.MASK), f"{modality}_mask": second}
    return replace(ex, r=next_ratio(ex.r, steps), **fields)


def join_halves(first: torch.Tensor, second: torch.Tensor, grid: tuple[int, int], vertical: bool) -> torch.Tensor:
    """Two squeezed images' codes joined into one grid (App. E): side by side, or one over the other.

    Horizontal: [B, h * (w/2)] codes of half-width images (raster order); each row of the result is the
    first's row then the second's. Vertical: [B, (h/2) * w] codes of half-height images, first on top.
    """
    h, w = grid
    shape = (h // 2, w) if vertical else (h, w // 2)
    if h % 2 or w % 2 or first.shape[1:] != (shape[0] * shape[1],) or second.shape != first.shape:
        name = "image_half_h" if vertical else "image_half_w"
        raise UserError(
            f"{name} must be [B, {shape[0] * shape[1]}] codes of a {shape[0]}x{shape[1]} grid, got {tuple(first.shape)}"
        )
    joined = torch.cat([first.view(-1, *shape), second.view(-1, *shape)], dim=1 if vertical else 2)
    return joined.flatten(1)


def join_captions(
    vocab: Vocab, first: torch.Tensor, first_len: torch.Tensor, second: torch.Tensor, second_len: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two raw captions joined as [sot c1 <SEP> c2 eot] in unified ids [B, L], and the joined lengths (Sec. 3.4).

    c1 drops its eot and c2 its sot. Beyond L, the longer content is cut at its end so that each keeps at
    least half of the room (L - 3 content tokens in all).
    """
    text_len = first.shape[1]
    room = text_len - 3
    k1, k2 = (first_len - 2).clamp(min=0), (second_len - 2).clamp(min=0)  # content tokens, no sot or eot
    k1 = torch.minimum(k1, (room - k2).clamp(min=room // 2))
    k2 = torch.minimum(k2, room - k1)
    j = torch.arange(text_len, device=first.device).unsqueeze(0)
    k1, k2 = k1.unsqueeze(1), k2.unsqueeze(1)
    from_second = second.gather(1, (j - k1 - 1).clamp(0, text_len - 1))
    eot = second.gather(1, (second_len.unsqueeze(1) - 1).clamp(min=0))
    ids = torch.where(j <= k1, vocab.text(first), vocab.PAD)
    ids = torch.where(j == k1 + 1, vocab.SEP, ids)
    ids = torch.where((j > k1 + 1) & (j <= k1 + k2 + 1), vocab.text(from_second), ids)
    ids = torch.where(j == k1 + k2 + 2, vocab.text(eot), ids)
    return ids, (k1 + k2 + 3).squeeze(1)


def _halves(batch: dict[str, torch.Tensor]) -> list[tuple[str, bool]]:
    return [(key, vertical) for key, vertical in (("image_half_w", False), ("image_half_h", True)) if key in batch]


def mix_select(
    task: Task,
    vocab: Vocab,
    grid: tuple[int, int],
    batch: dict[str, torch.Tensor],
    mode: str,
    generator: torch.Generator,
) -> Example | None:
    """MixSel (Sec. 3.4) or MixRandom (App. E, no selector): two pairs mixed half and half, one selected.

    Sample b is paired with sample b-1 (the batch rolled by one); b's context comes first (left, top or
    before <SEP>), b-1's second, and a per-sample coin picks the target pair; <LEFT>/<RIGHT> (<TOP>/<BOTTOM>
    for stacked images) says which. I2T joins the codes of the half-size encodings (`join_halves`; the
    orientation is drawn per sample when both are given) and masks the selected caption as in I2T; it is
    skipped (None) without "image_half_w"/"image_half_h" in the batch. T2I joins the captions
    (`join_captions`) and masks the selected image as in T2I. None for a batch of one.
    """
    image, text, length = batch["image"], batch["text"], batch["length"]
    b, device = image.shape[0], image.device
    halves = _halves(batch)
    if b < 2 or (task == Task.I2T and not halves):
        return None
    second = uniform((b,), generator, device) < 0.5  # the target is the second pair

    def pick(t: torch.Tensor) -> torch.Tensor:
        return torch.where(second.view(-1, *[1] * (t.ndim - 1)), t.roll(1, dims=0), t)

    if task == Task.I2T:
        joined = [join_halves(batch[key], batch[key].roll(1, dims=0), grid, vertical) for key, vertical in halves]
        vertical = torch.full((b,), halves[0][1], device=device)
        if len(joined) == 2:
            vertical = uniform((b,), generator, device) < 0.5
            joined = [torch.where(vertical[:, None], joined[1], joined[0])]
        selector = torch.where(
            vertical, torch.where(second, vocab.BOTTOM, vocab.TOP), torch.where(second, vocab.RIGHT, vocab.LEFT)
        )
        ex = mask_task(Task.I2T, vocab, joined[0], pick(text), pick(length), generator)
    else:
        joined, joined_length = join_captions(vocab, text, length, text.roll(1, dims=0), length.roll(1, dims=0))
        selector = torch.where(second, vocab.RIGHT, vocab.LEFT)
        ex = replace(
            mask_task(Task.T2I, vocab, pick(image), text, length, generator), text=joined, length=joined_length
        )
    return replace(ex, selector=selector if mode == "mixsel" else None)


def _check(model: Transformer, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig) -> None:
    mc = model.cfg
    missing = {"image", "text", "length"} - set(batch)
    if missing:
        raise UserError(f"training batch lacks {sorted(missing)}")
    image, text, length = batch["image"], batch["text"], batch["length"]
    if image.ndim != 2 or image.shape[1] != mc.image_tokens:
        raise UserError(f"batch image must be [B, {mc.image_tokens}] codes, got {tuple(image.shape)}")
    if text.shape != (image.shape[0], mc.text_len):
        raise UserError(f"batch text must be [B, {mc.text_len}] token ids, got {tuple(text.shape)}")
    if length.shape != (image.shape[0],) or bool(((length < 1) | (length > mc.text_len)).any()):
        raise UserError(f"batch length must be [B] values in 1..{mc.text_len}")
    if cfg.mix not in MIX_MODES:
        raise UserError(f"objective.mix must be one of {MIX_MODES}, got {cfg.mix!r}")
    if cfg.unroll_remask not in REMASK_MODES:
        raise UserError(f"objective.unroll_remask must be one of {REMASK_MODES}, got {cfg.unroll_remask!r}")


def magvlt_loss(
    model: Transformer, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig, task: Task, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MAGVLT's objective for one task (Sec. 3.5, Eq. 6): L_mask + l_TL L_TL + l_UM L_UM + l_MS L_MS.

    Forwards: the masked input; the length query (I2T, IT2IT); the unrolled input (T2I, I2T), which reuses
    the first forward's logits and inherits its dropped conditions; the mixed pairs (T2I, I2T).
    """
    vocab, ls = model.vocab, cfg.label_smoothing
    ex = mask_task(task, vocab, batch["image"], batch["text"], batch["length"], generator)
    ex = condition_dropout(ex, task, cfg.cond_dropout, model.cfg, generator)
    pred = predict_masked(model, ex, ls)
    total, terms = pred.loss, {"mask": pred.loss, **pred.metrics}
    if task in (Task.I2T, Task.IT2IT) and cfg.length_weight > 0:
        rows = max(1, math.ceil(cfg.length_rows * ex.length.shape[0]))  # the rows are shuffled: a random subset
        terms["length"], terms["acc_length"] = length_loss(model, ex.image[:rows], ex.length[:rows])
        total = total + cfg.length_weight * terms["length"]
    if task != Task.IT2IT and cfg.unroll_mask and cfg.unroll_weight > 0:
        modality = "image" if task == Task.T2I else "text"
        logits = pred.image_logits if task == Task.T2I else pred.text_logits
        sampled, confidence = sample_tokens(logits, uniform((logits.shape[0],), generator, logits.device))
        unrolled = predict_masked(model, unroll_mask(ex, modality, sampled, confidence, vocab, cfg, generator), ls)
        terms["unroll"] = unrolled.loss
        if f"acc_{modality}" in unrolled.metrics:  # absent when every first mask held a single token
            terms["acc_unroll"] = unrolled.metrics[f"acc_{modality}"]
        total = total + cfg.unroll_weight * unrolled.loss
    mixed = None
    if task != Task.IT2IT and cfg.mix != "off" and cfg.mix_weight > 0:
        mixed = mix_select(task, vocab, model.cfg.image_grid, batch, cfg.mix, generator)
    if mixed is not None:
        mix = predict_masked(model, mixed, ls)
        terms["mix"], terms["acc_mix"] = mix.loss, mix.metrics["acc_image" if task == Task.T2I else "acc_text"]
        total = total + cfg.mix_weight * mix.loss
    return total, terms


def _next_token_example(vocab: Vocab, batch: dict[str, torch.Tensor], task: Task) -> Example:
    """ARGVLT's input (Sec. 4.1): both modalities fed whole, every image token and real text token a target."""
    image, text, length = batch["image"], batch["text"], batch["length"]
    return Example(
        image=vocab.image(image),
        text=text_input(vocab, text, length),
        image_mask=torch.ones_like(image, dtype=torch.bool),
        text_mask=text_valid(length, text.shape[1]),
        image_target=image,
        text_target=text,
        length=length,
        r=torch.ones(image.shape[0], dtype=torch.float64, device=image.device),  # nothing masked
        task=task,
    )


def argvlt_loss(
    model: Transformer, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig, task: Task, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ARGVLT's next-token prediction (Sec. 4.1, App. A): weight 1 - w on the generated modality, w on the condition.

    The official layout of the task under the causal mask: T2I [BOC BOT text BOG BOI image], I2T [BOC BOI image
    BOG BOT text]. Targets: every image token and every real text token (sot and eot included, padding never),
    each predicted from the block output one position earlier (the first from <BOI> or <BOT>); the per-modality
    mean cross-entropies are mixed. Condition dropout feeds the same null condition as MAGVLT, which has no targets.
    """
    vocab = model.vocab
    ex = condition_dropout(_next_token_example(vocab, batch, task), task, cfg.cond_dropout, model.cfg, generator)
    ex = crop_text(replace(ex, image_mask=ex.image != vocab.MASK, text_mask=ex.text != vocab.PAD))
    h, segs = _hidden(model, ex)
    image_logits = model.image_logits(h[:, segs.image.start - 1 : segs.image.stop - 1][ex.image_mask])
    text_logits = model.text_logits(h[:, segs.text.start - 1 : segs.text.stop - 1][ex.text_mask])
    image_target, text_target = ex.image_target[ex.image_mask], ex.text_target[ex.text_mask]
    terms = {
        "image": mask_prediction_loss(image_logits, image_target, cfg.label_smoothing),
        "text": mask_prediction_loss(text_logits, text_target, cfg.label_smoothing),
        "acc_image": _accuracy(image_logits, image_target),
        "acc_text": _accuracy(text_logits, text_target),
    }
    w = cfg.ar_condition_weight
    generated, condition = ("image", "text") if task == Task.T2I else ("text", "image")
    return (1 - w) * terms[generated] + w * terms[condition], terms


def training_loss(
    model: Transformer, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig, task: Task, generator: torch.Generator
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch for the task the caller drew for it (Sec. 3.5, `sample_task`); ARGVLT when causal.

    Metrics: "loss", "task" (index into TASKS) and "<task>/<term>" for each loss term and accuracy of that task.
    """
    _check(model, batch, cfg)
    task = Task(task)
    if model.cfg.causal and task == Task.IT2IT:
        raise UserError("ARGVLT trains T2I and I2T only, not IT2IT")
    loss = argvlt_loss if model.cfg.causal else magvlt_loss
    total, terms = loss(model, batch, cfg, task, generator)
    values = torch.stack([total.detach().float(), *(v.detach().float() for v in terms.values())]).tolist()
    metrics = {"loss": values[0], "task": float(TASKS.index(task))}
    metrics.update({f"{task}/{k}": v for k, v in zip(terms, values[1:])})
    return total, metrics
