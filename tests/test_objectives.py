import math

import torch

from magvlt.config import ModelConfig, ObjectiveConfig
from magvlt.model import Transformer
from magvlt.objectives import TASKS, gamma_image, gamma_text, mask_task, training_loss

CFG = ModelConfig(n_layer=2, n_head=2, n_embd=64, image_vocab=32, image_grid=(4, 4), text_vocab=50, text_len=12,
                  dropout=0.0, attn_dropout=0.0)


def make_batch(b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    length = torch.randint(2, CFG.text_len + 1, (b,), generator=g)
    return {"image": torch.randint(0, CFG.image_vocab, (b, CFG.image_tokens), generator=g),
            "text": torch.randint(0, CFG.text_vocab, (b, CFG.text_len), generator=g), "length": length}


def test_mask_counts_follow_schedules():
    batch, model = make_batch(), Transformer(CFG)
    for task in TASKS:
        ex = mask_task(task, model.vocab, batch["image"], batch["text"], batch["length"], torch.Generator().manual_seed(1))
        n_i = [math.ceil(float(gamma_image(r)) * CFG.image_tokens) if task != "i2t" else 0 for r in ex.r]
        n_t = [math.ceil(float(gamma_text(r)) * int(n)) if task != "t2i" else 0 for r, n in zip(ex.r, batch["length"])]
        assert ex.image_mask.sum(1).tolist() == n_i
        assert ex.text_mask.sum(1).tolist() == n_t


def test_training_loss_runs_for_both_models():
    batch = make_batch()
    for causal in (False, True):
        model = Transformer(ModelConfig(**{**CFG.__dict__, "causal": causal}))
        loss, metrics = training_loss(model, batch, ObjectiveConfig(), torch.Generator().manual_seed(0))
        loss.backward()
        assert torch.isfinite(loss) and metrics["loss"] == float(loss)
