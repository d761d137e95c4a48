"""torchrun with two CPU ranks on gloo: DDP and FSDP2 against a single process with the same global batch."""

import os
import signal
import subprocess
import sys

import pytest
import torch
from synthetic import SUBPROCESS_ENV, write_synthetic

from magvlt.checkpoint import load_torch, load_weights
from magvlt.config import ModelConfig, TrainConfig, save_json
from magvlt.train.loop import train

# One torchrun launch trains twice in the same process group: DDP, then FSDP2 (keeping a moving average of its
# sharded weights). Each rank also saves its own DDP weights at every checkpoint, to show the ranks agree.
SCRIPT = """
import dataclasses, sys, torch, torch.distributed
from magvlt.config import TrainConfig, load_json
from magvlt.train import dist, loop

data, out, EMA = sys.argv[1], sys.argv[2], float(sys.argv[3])
cfg = load_json(TrainConfig, f"{out}/config.json")
full_state = dist.full_state

def spy(model, optimizer, info):
    if hasattr(model, "no_sync"):
        torch.save(model.module.state_dict(), f"{out}/ddp.rank{info.rank}.pt")
    return full_state(model, optimizer, info)

dist.full_state = spy
torch.distributed.init_process_group("gloo")
for mode in ("ddp", "fsdp"):
    fsdp = mode == "fsdp"
    loop.train(dataclasses.replace(cfg, fsdp=fsdp, ema=EMA if fsdp else 0.0), data, f"{out}/{mode}", progress=False)
torch.distributed.destroy_process_group()
"""


EMA = 0.5  # the decay of the FSDP run's weight average


def config(**kw) -> TrainConfig:
    """Dropout stays on: its masks are seeded per micro-batch too, so they do not depend on the split."""
    return TrainConfig(
        model=ModelConfig(n_layer=2, n_head=2, n_embd=64),
        steps=6,
        batch_size=16,
        lr=2e-3,
        warmup_steps=2,
        log_every=2,
        ckpt_every=3,
        bpe_dropout=0.0,
        precision="fp32",
        **kw,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two-rank DDP and FSDP2 runs (one torchrun), and the reference: one process, the halves as accumulation steps."""
    tmp = tmp_path_factory.mktemp("dist")
    data = write_synthetic(tmp / "data", n=64)
    script = tmp / "run.py"
    script.write_text(SCRIPT)
    save_json(config(), tmp / "config.json")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(data),
        str(tmp),
        str(EMA),
    ]
    proc = subprocess.Popen(
        cmd, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train(config(grad_accum=2), data, tmp / "single", progress=False)
        averaged = train(config(grad_accum=2, ema=EMA), data, tmp / "single-ema", progress=False)
        output = proc.communicate(timeout=300)[0]
    finally:
        torch.set_num_threads(threads)
        if proc.poll() is None:  # a hung collective: end torchrun and its ranks together
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output[-5000:]
    return tmp, load_weights(reference / "model.safetensors"), load_weights(averaged / "model.safetensors")


def _assert_close(a: dict, b: dict) -> None:
    """Equal up to float rounding (1e-7, or two float32 ulps of weights near 1), except the attention key biases.

    A key bias has no gradient in exact arithmetic (softmax ignores a shift shared by all keys), so its
    gradient is rounding noise, which Adam normalises into lr-sized steps: it differs in the 6th digit.
    """
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("attn.qkv.bias"):
            n = x.numel() // 3
            x, y = torch.cat([x[:n], x[2 * n :]]), torch.cat([y[:n], y[2 * n :]])
        torch.testing.assert_close(x, y, rtol=2.4e-7, atol=1e-7, msg=k)


@pytest.mark.slow
def test_ddp_two_ranks_agree_and_match_a_single_process(runs):
    tmp, reference, _ = runs
    rank0, rank1 = (torch.load(tmp / f"ddp.rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    weights = load_weights(tmp / "ddp" / "model.safetensors")
    assert all(torch.equal(weights[k.removeprefix("model.")], v) for k, v in rank0.items())
    _assert_close(weights, reference)


@pytest.mark.slow
def test_fsdp2_two_ranks_match_a_single_process(runs):
    tmp, reference, averaged = runs
    _assert_close(load_torch(tmp / "fsdp" / "train_state.pt")["weights"], reference)
    _assert_close(load_weights(tmp / "fsdp" / "model.safetensors"), averaged)
