"""Training options for large runs: activation checkpointing changes memory, not results."""

import torch
from synthetic import write_synthetic

from magvlt.checkpoint import load_weights
from magvlt.config import ModelConfig, TrainConfig
from magvlt.model import Task, Transformer
from magvlt.train import dist
from magvlt.train.loop import train


def saved_bytes(model: Transformer, image: torch.Tensor, text: torch.Tensor) -> int:
    """Bytes autograd keeps for backward over one T2I forward (what activation memory is made of)."""
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unmasked = [torch.zeros_like(t, dtype=torch.bool) for t in (image, text)]
        length = torch.full((image.shape[0],), text.shape[1])
        model.official(Task.T2I, image, unmasked[0], text, unmasked[1], length).square().mean()
    return total


def test_checkpointed_blocks_keep_a_fraction_of_the_activations():
    cfg = ModelConfig(n_layer=4, n_head=2, n_embd=64, image_grid=(4, 4), text_len=8, dropout=0.0, attn_dropout=0.0)
    model = Transformer(cfg)
    image, text = torch.randint(0, 16, (2, cfg.image_tokens)), torch.randint(0, 16, (2, cfg.text_len))
    plain = saved_bytes(model, image, text)
    dist.checkpoint_activations(model.blocks)
    assert saved_bytes(model, image, text) < plain / 4
    assert set(dict(model.named_parameters())) == set(dict(Transformer(cfg).named_parameters()))


def test_activation_checkpointing_trains_the_same_weights(tmp_path):
    data = write_synthetic(tmp_path / "data", n=64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [
            train(
                TrainConfig(
                    model=ModelConfig(n_layer=2, n_head=2, n_embd=64),
                    steps=3,
                    batch_size=16,
                    warmup_steps=1,
                    precision="fp32",
                    bpe_dropout=0.0,
                    activation_checkpointing=on,
                ),
                data,
                tmp_path / f"run{on}",
                progress=False,
            )
            for on in (False, True)
        ]
    finally:
        torch.set_num_threads(threads)
    a, b = (load_weights(r / "model.safetensors") for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)  # dropout on: the recomputation replays its masks
