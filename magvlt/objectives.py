"""MAGVLT's training objectives (Sec. 3.1, 3.3-3.5, App. A) and ARGVLT's (Sec. 4.1).

`training_loss` is the single entry point: it samples a task for the batch, builds the masked inputs and
returns the weighted sum L = L_mask + lambda_TL L_TL (+ lambda_UM L_UM + lambda_MS L_MS where they apply).

Token spaces: `image` codes are unified ids as they are; raw text ids become unified ids through
`Vocab.text`; positions >= length are fed as <PAD> and are never targets. Every random draw goes through
the caller's torch.Generator: it is drawn on the generator's device and moved to the batch's device, so a
CPU generator drives a CUDA batch deterministically (and a CUDA generator works too).
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
from magvlt.model import Transformer, Vocab, argvlt_sequence, magvlt_sequence

TASKS = ("t2i", "i2t", "it2it")


def _uniform(shape, generator: torch.Generator, device, dtype=torch.float32) -> torch.Tensor:
    """U[0, 1) drawn with `generator` on its own device, then moved to `device`."""
    return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype).to(device)


def sample_task(weights, generator: torch.Generator) -> str:
    """One task for the whole batch from the categorical T2I : I2T : IT2IT weights (Sec. 3.5)."""
    if len(weights) != len(TASKS) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"task_weights must be 3 non-negative numbers (T2I, I2T, IT2IT) with a positive sum, got {weights}")
    u = _uniform((), generator, "cpu", torch.float64).item() * sum(weights)
    last = max(i for i, w in enumerate(weights) if w > 0)
    return TASKS[min(bisect.bisect_right(list(itertools.accumulate(weights)), u), last)]


def gamma_image(r: torch.Tensor) -> torch.Tensor:
    """Image mask ratio cos(pi r / 2) (Sec. 3.1, MaskGIT's cosine schedule)."""
    return torch.cos(math.pi * r / 2)


def gamma_text(r: torch.Tensor) -> torch.Tensor:
    """Text mask ratio 1 - r (Sec. 3.1, Mask-Predict's linear schedule)."""
    return 1 - r


def lowest_scores(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Boolean [B, N]: the counts[b] positions of row b with the lowest scores (ties to the lower index)."""
    ranks = scores.argsort(dim=1, stable=True).argsort(dim=1)
    return ranks < counts.unsqueeze(1)


def random_mask(ratio: torch.Tensor, valid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mask ceil(ratio[b] * N_b) of the valid positions of each row uniformly at random (Sec. 3.1)."""
    counts = torch.ceil(ratio * valid.sum(dim=1)).long()
    scores = _uniform(valid.shape, generator, valid.device).masked_fill(~valid, 2.0)
    return lowest_scores(scores, counts)


@dataclass
class Example:
    """One built MAGVLT input: unified ids fed to the model, positions predicted and their ground truth."""

    image: torch.Tensor  # [B, N_I] unified ids as fed (<MASK> where masked)
    text: torch.Tensor  # [B, L] unified ids as fed (<MASK> where masked, <PAD> beyond the length)
    image_mask: torch.Tensor  # [B, N_I] bool: predicted image positions
    text_mask: torch.Tensor  # [B, L] bool: predicted text positions
    image_target: torch.Tensor  # [B, N_I] image codes
    text_target: torch.Tensor  # [B, L] raw text ids
    length: torch.Tensor  # [B] text lengths (counting sot and eot)
    r: torch.Tensor  # [B] float64, the step ratio the masks were drawn with
    selector: torch.Tensor | None = None  # [B] MixSel selector token ids


def text_valid(length: torch.Tensor, text_len: int) -> torch.Tensor:
    """Boolean [B, L]: the real (non-padding) text positions."""
    return torch.arange(text_len, device=length.device) < length.unsqueeze(1)


def text_input(vocab: Vocab, text: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Raw text ids [B, L] to unified ids, with <PAD> at positions >= length."""
    return torch.where(text_valid(length, text.shape[1]), vocab.text(text), vocab.PAD)


def apply_masks(vocab: Vocab, image: torch.Tensor, text: torch.Tensor, length: torch.Tensor,
                image_mask: torch.Tensor, text_mask: torch.Tensor, r: torch.Tensor, selector=None) -> Example:
    """The Example that feeds <MASK> at the masked positions of image codes and raw text."""
    return Example(
        image=vocab.image(image).masked_fill(image_mask, vocab.MASK),
        text=text_input(vocab, text, length).masked_fill(text_mask, vocab.MASK),
        image_mask=image_mask, text_mask=text_mask, image_target=image, text_target=text,
        length=length, r=r, selector=selector,
    )


def mask_task(task: str, vocab: Vocab, image: torch.Tensor, text: torch.Tensor, length: torch.Tensor,
              generator: torch.Generator, selector=None) -> Example:
    """Masks for a task (Sec. 3.1): T2I masks the image, I2T the text, IT2IT both with the same r per sample."""
    b = image.shape[0]
    r = _uniform((b,), generator, image.device, torch.float64)
    none_i = torch.zeros_like(image, dtype=torch.bool)
    none_t = torch.zeros_like(text, dtype=torch.bool)
    image_mask = random_mask(gamma_image(r), ~none_i, generator) if task in ("t2i", "it2it") else none_i
    text_mask = random_mask(gamma_text(r), text_valid(length, text.shape[1]), generator) if task in ("i2t", "it2it") else none_t
    return apply_masks(vocab, image, text, length, image_mask, text_mask, r, selector)


def unconditional_text(cfg: ModelConfig, batch: int, device=None) -> torch.Tensor:
    """The null caption (condition dropout, classifier-free guidance): all <PAD>, unified ids [B, L]."""
    return torch.full((batch, cfg.text_len), Vocab(cfg).PAD, dtype=torch.long, device=device)


def unconditional_image(cfg: ModelConfig, batch: int, device=None) -> torch.Tensor:
    """The null image (condition dropout, classifier-free guidance): all <MASK>, unified ids [B, N_I]."""
    return torch.full((batch, cfg.image_tokens), Vocab(cfg).MASK, dtype=torch.long, device=device)


def length_query_text(cfg: ModelConfig, batch: int, device=None) -> torch.Tensor:
    """The text fed while predicting the length at <BOT>: all <MASK> over L, so no padding reveals it."""
    return torch.full((batch, cfg.text_len), Vocab(cfg).MASK, dtype=torch.long, device=device)


def mask_prediction_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy over masked positions only, in float32, with label smoothing (Sec. 3.1, App. A)."""
    if targets.numel() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


def _accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if targets.numel() == 0:
        return torch.zeros((), device=targets.device)
    return (logits.argmax(dim=-1) == targets).float().mean()


@dataclass
class Prediction:
    """Masked-prediction outputs: the loss and the logits at the predicted positions (row-major order)."""

    loss: torch.Tensor
    image_logits: torch.Tensor  # [M_I, V_I]
    text_logits: torch.Tensor  # [M_T, V_T]
    metrics: dict[str, torch.Tensor]


def predict_masked(model: Transformer, ex: Example, label_smoothing: float) -> Prediction:
    """One forward; logits only at the predicted positions; sum of the per-modality mean cross-entropies."""
    tokens, position_ids, segs = magvlt_sequence(model.cfg, ex.image, ex.text, ex.selector)
    h = model(tokens, position_ids)
    image_logits = model.image_logits(h[:, segs.image][ex.image_mask])
    text_logits = model.text_logits(h[:, segs.text][ex.text_mask])
    image_target, text_target = ex.image_target[ex.image_mask], ex.text_target[ex.text_mask]
    loss = h.new_zeros((), dtype=torch.float32)
    metrics = {}
    if ex.image_mask.any():
        loss = loss + mask_prediction_loss(image_logits, image_target, label_smoothing)
        metrics["acc_image"] = _accuracy(image_logits, image_target)
    if ex.text_mask.any():
        loss = loss + mask_prediction_loss(text_logits, text_target, label_smoothing)
        metrics["acc_text"] = _accuracy(text_logits, text_target)
    return Prediction(loss, image_logits, text_logits, metrics)


def length_loss(model: Transformer, image: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Target length cross-entropy at <BOT> (Sec. 3.2): class k is length k + 1; returns (loss, accuracy).

    The text is fed as `length_query_text` (all <MASK>, no padding), exactly what the sampler feeds
    before it knows the length; with the real padding visible the length would be given away.
    """
    tokens, position_ids, segs = magvlt_sequence(model.cfg, image, length_query_text(model.cfg, image.shape[0], image.device))
    logits = model.length_logits(model(tokens, position_ids)[:, segs.bot]).float()
    return F.cross_entropy(logits, length - 1), _accuracy(logits, length - 1)


def _check_batch(model: Transformer, batch: dict[str, torch.Tensor]) -> None:
    cfg = model.cfg
    missing = {"image", "text", "length"} - set(batch)
    if missing:
        raise UserError(f"training batch lacks {sorted(missing)}")
    image, text, length = batch["image"], batch["text"], batch["length"]
    if image.ndim != 2 or image.shape[1] != cfg.image_tokens:
        raise UserError(f"batch image must be [B, {cfg.image_tokens}] codes, got {tuple(image.shape)}")
    if text.ndim != 2 or text.shape != (image.shape[0], cfg.text_len):
        raise UserError(f"batch text must be [B, {cfg.text_len}] token ids, got {tuple(text.shape)}")
    if length.shape != (image.shape[0],) or bool(((length < 1) | (length > cfg.text_len)).any()):
        raise UserError(f"batch length must be [B] values in 1..{cfg.text_len}")


def magvlt_loss(model: Transformer, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig, task: str,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MAGVLT's objective for one task (Sec. 3.5, Eq. 6): L_mask + lambda_TL L_TL."""
    vocab = model.vocab
    image, text, length = batch["image"], batch["text"], batch["length"]
    ex = mask_task(task, vocab, image, text, length, generator)
    pred = predict_masked(model, ex, cfg.label_smoothing)
    total, terms = pred.loss, {"mask": pred.loss, **pred.metrics}
    if task in ("i2t", "it2it") and cfg.length_weight > 0:
        terms["length"], terms["acc_length"] = length_loss(model, ex.image, length)
        total = total + cfg.length_weight * terms["length"]
    return total, terms


def argvlt_loss(model: Transformer, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig, task: str,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ARGVLT's next-token prediction (Sec. 4.1, App. A): weight 1 - w on the generated modality, w on the condition.

    Targets are every image token and every real text token (sot and eot included, padding excluded),
    each predicted from the hidden state one position earlier; the per-modality mean cross-entropies are mixed.
    """
    vocab = model.vocab
    image, text, length = batch["image"], batch["text"], batch["length"]
    valid = text_valid(length, text.shape[1])
    tokens, position_ids, segs = argvlt_sequence(model.cfg, vocab.image(image), text_input(vocab, text, length), task)
    h = model(tokens, position_ids)
    image_logits = model.image_logits(h[:, segs.image.start - 1 : segs.image.stop - 1]).flatten(0, 1)
    text_logits = model.text_logits(h[:, segs.text.start - 1 : segs.text.stop - 1][valid])
    image_target, text_target = image.flatten(), text[valid]
    terms = {
        "image": mask_prediction_loss(image_logits, image_target, cfg.label_smoothing),
        "text": mask_prediction_loss(text_logits, text_target, cfg.label_smoothing),
        "acc_image": _accuracy(image_logits, image_target),
        "acc_text": _accuracy(text_logits, text_target),
    }
    w = cfg.ar_condition_weight
    generated, condition = ("image", "text") if task == "t2i" else ("text", "image")
    return (1 - w) * terms[generated] + w * terms[condition], terms


def training_loss(model: Transformer, batch: dict[str, torch.Tensor], cfg: ObjectiveConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one batch (Sec. 3.5): samples the task, returns (loss, metrics).

    Metrics keys: "loss", "task" (index into TASKS) and "<task>/<term>" for each loss term and accuracy.
    """
    _check_batch(model, batch)
    if model.cfg.causal:
        task = sample_task((*cfg.task_weights[:2], 0.0), generator)
        total, terms = argvlt_loss(model, batch, cfg, task, generator)
    else:
        task = sample_task(cfg.task_weights, generator)
        total, terms = magvlt_loss(model, batch, cfg, task, generator)
    names = list(terms)
    values = torch.stack([terms[k].detach().float() for k in names]).tolist()
    metrics = {"loss": float(total.detach()), "task": float(TASKS.index(task))}
    metrics.update({f"{task}/{k}": v for k, v in zip(names, values)})
    return total, metrics
