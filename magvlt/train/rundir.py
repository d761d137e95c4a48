"""Writing a training run's directory (file names in `magvlt.paths`): config, weights and training state,
tokenizer copies (so a run is self-contained), metrics (one JSON object per log step) and the loss curve.

The weights and the training state are committed together: both are staged as complete files, a commit
record names them, then they are renamed into place. A crash at any point leaves either the previous pair
or, once the commit record exists, the new pair (`finish_commit` completes it on the next start).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from magvlt.checkpoint import atomic_write, atomic_write_text, load_torch, load_weights
from magvlt.errors import UserError
from magvlt.paths import METRICS, PLOT, STATE, TEXT_DIR, VQ_DIR, WEIGHTS

COMMIT = ".commit.json"
TOKENIZER_DIRS = {"text_dir": TEXT_DIR, "vq_dir": VQ_DIR}


def save_checkpoint(out: Path, weights: dict[str, torch.Tensor], state: dict) -> None:
    """Write model.safetensors and train_state.pt as one atomic unit (staged, committed, renamed)."""
    tensors = {k: v.detach().contiguous() for k, v in weights.items()}
    staged = {
        WEIGHTS: lambda tmp: save_file(tensors, str(tmp)),
        STATE: lambda tmp: torch.save(state, tmp),
    }
    for name, write in staged.items():
        atomic_write(out / f".{name}.next", write)
    atomic_write_text(out / COMMIT, json.dumps({name: f".{name}.next" for name in staged}) + "\n")
    finish_commit(out)


def finish_commit(out: Path) -> None:
    """Complete a checkpoint whose commit record was written; drop files staged without one."""
    commit = out / COMMIT
    if commit.is_file():
        for name, staged in json.loads(commit.read_text()).items():
            if (out / staged).exists():
                os.replace(out / staged, out / name)
        commit.unlink()
    for stale in out.glob(".*.next"):
        stale.unlink()


def has_checkpoint(out: Path) -> bool:
    return (out / STATE).is_file() and (out / WEIGHTS).is_file()


def load_checkpoint(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The weights and the training state of the last checkpoint."""
    return load_weights(out / WEIGHTS), load_torch(out / STATE)


def copy_tokenizers(meta: dict, out: Path) -> None:
    """Copy the tokenizer directories named by the data's meta.json into out/text and out/vq."""
    for key, name in TOKENIZER_DIRS.items():
        if not meta.get(key):
            continue
        src, dst, tmp = Path(meta[key]), out / name, out / f".{name}.tmp"
        if not src.is_dir():
            raise UserError(
                f"the data's meta.json names {key} {src}, which does not exist (re-tokenize or fix meta.json)"
            )
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        shutil.rmtree(dst, ignore_errors=True)
        os.replace(tmp, dst)


def read_metrics(out: Path) -> list[dict]:
    path = out / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def append_metrics(out: Path, record: dict) -> None:
    with open(out / METRICS, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(out: Path, step: int) -> None:
    """Keep only the records up to `step` (a resumed run rewrites what came after its checkpoint)."""
    kept = [r for r in read_metrics(out) if r["step"] <= step]
    atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in kept))


def is_loss_term(key: str) -> bool:
    """True for the total "loss" and the per-task terms "<task>/<term>", not for accuracies."""
    return key == "loss" or ("/" in key and "/acc" not in key)


def plot_losses(out: Path) -> None:
    """Rewrite loss.png: every loss term in metrics.jsonl against the step (matplotlib, Agg, no pyplot)."""
    from matplotlib.figure import Figure

    records = read_metrics(out)
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    keys = sorted({k for r in records for k in r if is_loss_term(k)}, key=lambda k: (k != "loss", k))
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points), label=key, linewidth=2.0 if key == "loss" else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if keys:
        ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    atomic_write(out / PLOT, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
