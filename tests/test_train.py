import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import SUBPROCESS_ENV, write_synthetic

from magvlt import paths
from magvlt.checkpoint import load_torch, load_weights
from magvlt.cli import main as cli_main
from magvlt.config import ModelConfig, ObjectiveConfig, TrainConfig, load_json, save_json
from magvlt.data.tokenized import TokenizedDataset
from magvlt.errors import UserError
from magvlt.model import Transformer
from magvlt.train import loop, rundir
from magvlt.train.loop import (
    WeightEMA,
    budget_spent,
    evaluate_masked_accuracy,
    lr_at,
    objective_at,
    param_groups,
    progress_at,
    train,
)


def tiny_config(**kw) -> TrainConfig:
    base = dict(steps=12, batch_size=16, lr=2e-3, warmup_steps=4, log_every=2, ckpt_every=4, bpe_dropout=0.0)
    return TrainConfig(model=ModelConfig(n_layer=2, n_head=2, n_embd=64), **{**base, **kw})


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: bitwise comparisons with subprocesses need the same reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)  # half way down the cosine
    assert lr_at(100, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 100))


def test_time_schedule_decays_over_the_time_budget_whatever_the_step():
    cfg = TrainConfig(steps=10**9, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="time", max_minutes=2.0)
    assert lr_at(5, cfg, elapsed=100.0) == pytest.approx(0.6)  # warmup counts updates
    assert lr_at(20, cfg, elapsed=60.0) == lr_at(5000, cfg, elapsed=60.0) == pytest.approx(0.55)
    assert lr_at(20, cfg, elapsed=120.0) == pytest.approx(0.1) and lr_at(20, cfg, elapsed=500.0) == pytest.approx(0.1)


def test_time_schedule_run_ends_at_its_budget_with_the_learning_rate_decayed(tmp_path):
    data = write_synthetic(tmp_path / "data", n=64)
    cfg = tiny_config(steps=10**6, warmup_steps=1, log_every=1, schedule="time", max_minutes=0.04)
    out = train(cfg, data, tmp_path / "run", progress=False)
    records = rundir.read_metrics(out)
    assert 1 < records[-1]["step"] < 10**6 and records[-1]["elapsed"] >= 0.04 * 60
    lrs = [r["lr"] for r in records[1:]]  # after the one warmup update: down the cosine, by elapsed time
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.6 * cfg.lr
    assert 0 < records[-1]["cpu_share"] <= 1.5
    with pytest.raises(UserError, match="schedule must be"):
        train(tiny_config(schedule="time"), data, tmp_path / "bad", progress=False)


def test_time_budget_with_min_steps_trains_longer_on_a_slow_machine_but_stops_at_stretch_minutes():
    cfg = TrainConfig(steps=10**9, schedule="time", max_minutes=2.0, min_steps=1000, stretch_minutes=4.0)
    # a fast machine: the time budget ends it, as without min_steps
    assert progress_at(1500, cfg, elapsed=60.0) == pytest.approx(0.5) and budget_spent(1500, cfg, elapsed=120.0)
    # a slow one: past max_minutes until min_steps updates, and progress (the decay, the curriculum) follows them
    assert progress_at(300, cfg, elapsed=60.0) == pytest.approx(0.3) and not budget_spent(800, cfg, elapsed=150.0)
    assert progress_at(800, cfg, elapsed=150.0) == pytest.approx(0.8) and budget_spent(1000, cfg, elapsed=150.0)
    # ...but never past stretch_minutes
    assert progress_at(100, cfg, elapsed=180.0) == pytest.approx(0.75) and budget_spent(500, cfg, elapsed=240.0)
    assert not budget_spent(10, TrainConfig(steps=20, max_minutes=0.0), elapsed=1e6)  # no limit on a step budget


def test_a_run_under_min_steps_goes_on_past_its_time_budget(tmp_path):
    data = write_synthetic(tmp_path / "data", n=64)
    cfg = tiny_config(steps=10**6, warmup_steps=1, schedule="time", max_minutes=1e-4, min_steps=12, ckpt_every=10**6)
    cfg.stretch_minutes = 5.0
    assert rundir.read_metrics(train(cfg, data, tmp_path / "run", progress=False))[-1]["step"] == 12
    cfg.min_steps, cfg.stretch_minutes = 10**6, 0.03  # a machine too slow to make them: stopped at the stretch
    records = rundir.read_metrics(train(cfg, data, tmp_path / "slow", progress=False))
    assert records[-1]["step"] < 10**6 and records[-1]["elapsed"] >= 0.03 * 60
    cfg.stretch_minutes = 0.0
    with pytest.raises(UserError, match="stretch_minutes"):
        train(cfg, data, tmp_path / "bad", progress=False)


def test_curriculum_adds_unroll_mask_and_mix_select_from_extras_from_on():
    cfg = ObjectiveConfig(extras_from=0.5)
    early, late = objective_at(cfg, 0.49), objective_at(cfg, 0.5)
    assert (early.unroll_mask, early.mix) == (False, "off") and early.task_weights == cfg.task_weights
    assert late == cfg and objective_at(ObjectiveConfig(), 0.0) == ObjectiveConfig()  # default: the paper's
    steps = TrainConfig(steps=110, warmup_steps=10)
    assert progress_at(5, steps) == 0.0 and progress_at(60, steps) == pytest.approx(0.5)
    timed = TrainConfig(steps=10**9, schedule="time", max_minutes=2.0)
    assert progress_at(3, timed, elapsed=30.0) == pytest.approx(0.25) and progress_at(3, timed, elapsed=999) == 1.0


def test_curriculum_weights_set_the_tasks_until_curriculum_until():
    cfg = ObjectiveConfig(curriculum_weights=(0.0, 1.0, 0.0), curriculum_until=0.25, extras_from=0.5)
    first, then = objective_at(cfg, 0.2), objective_at(cfg, 0.25)
    assert first.task_weights == (0.0, 1.0, 0.0) and (first.unroll_mask, first.mix) == (False, "off")
    assert then.task_weights == cfg.task_weights and objective_at(cfg, 0.5) == cfg


def test_training_run_takes_the_extra_terms_only_after_extras_from(tmp_path):
    data = write_synthetic(tmp_path / "data", n=64)
    cfg = tiny_config(steps=20, warmup_steps=2, log_every=1)
    cfg.objective.task_weights, cfg.objective.extras_from = (1.0, 0.0, 0.0), 0.5
    records = rundir.read_metrics(train(cfg, data, tmp_path / "run", progress=False))
    with_extras = [r["step"] for r in records if "t2i/unroll" in r and "t2i/mix" in r]
    assert with_extras == list(range(12, 21)) and all("t2i/mask" in r for r in records)
    cfg.objective.extras_from = 1.5
    with pytest.raises(UserError, match="extras_from"):
        train(cfg, data, tmp_path / "bad", progress=False)
    cfg.objective.extras_from, cfg.objective.curriculum_until = 0.5, -0.1
    with pytest.raises(UserError, match="curriculum_until"):
        train(cfg, data, tmp_path / "bad", progress=False)
    cfg.objective.curriculum_until, cfg.objective.length_rows = 0.0, 0.0
    with pytest.raises(UserError, match="length_rows"):
        train(cfg, data, tmp_path / "bad", progress=False)


def test_no_weight_decay_on_norms_biases_embeddings():
    model = Transformer(
        ModelConfig(n_layer=1, n_head=2, n_embd=16, image_vocab=8, image_grid=(2, 2), text_vocab=8, text_len=4)
    )
    decay, rest = param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.01 and rest["weight_decay"] == 0.0
    assert "blocks.0.attn.qkv.weight" in decayed and "length_head.weight" in decayed
    assert not any(n.endswith("bias") or "ln" in n or "emb" in n for n in decayed)
    assert len(decay["params"]) + len(rest["params"]) == len(list(model.parameters()))


@pytest.mark.slow
def test_training_learns_and_writes_the_run_directory(tmp_path):
    data, held = write_synthetic(tmp_path / "data"), write_synthetic(tmp_path / "held", n=128, seed=1)
    # the released architecture needs ~80 updates here for T2I (40 gave 27% on the held-out image tokens)
    cfg = tiny_config(steps=80, batch_size=32, log_every=5, ckpt_every=20)
    out = train(cfg, data, tmp_path / "run", progress=False)

    for name in ("config.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "loss.png"):
        assert (out / name).is_file(), name
    cfg = load_json(TrainConfig, out / "config.json")
    assert (cfg.model.image_vocab, cfg.model.image_grid, cfg.model.text_vocab, cfg.model.text_len) == (
        16,
        (4, 4),
        12,
        6,
    )
    model = Transformer(cfg.model)
    model.load_state_dict(load_weights(out / "model.safetensors"), strict=True)
    state = load_torch(out / "train_state.pt")  # weights_only=True
    assert state["step"] == 80 and state["data"] == {"epoch": 9, "position": 256}  # 8 batches per epoch
    records = rundir.read_metrics(out)
    assert [r["step"] for r in records] == list(range(5, 81, 5))
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "elapsed", "t2i/mask"} <= set().union(*records)
    assert records[-1]["loss"] < 0.75 * records[0]["loss"]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows, _ = TokenizedDataset(held).rows(np.arange(128))
    acc = evaluate_masked_accuracy(model, [{k: v[i : i + 64] for k, v in rows.items()} for i in (0, 64)])
    keys = {"t2i/image", "i2t/text", "it2it/image", "it2it/text"}
    assert set(acc) == keys | {f"{k}/majority" for k in keys}
    # Guessing the most common code scores about 0.2 on the image; the caption names every code.
    assert acc["t2i/image/majority"] < 0.3 and acc["i2t/text/majority"] < 0.4, acc
    assert acc["t2i/image"] > 0.5 and acc["i2t/text"] > 0.5, acc


def _train_cli(data: Path, out: Path, *args: str) -> subprocess.Popen:
    overrides = [
        "model.n_layer=2",
        "model.n_head=2",
        "model.n_embd=64",
        "batch_size=16",
        "lr=2e-3",
        "warmup_steps=4",
        "log_every=2",
        "ckpt_every=4",
        "bpe_dropout=0.2",
    ]
    cmd = [
        sys.executable,
        "-c",
        "import sys; from magvlt.cli import main; sys.exit(main())",
        "train",
        "--config",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
        *args,
        *overrides,
    ]
    return subprocess.Popen(cmd, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkilled_run_resumes_bitwise_equal(tmp_path):
    data = write_synthetic(tmp_path / "data", n=64, tokenizer_dir=tmp_path / "text")  # with BPE dropout
    full = _train_cli(data, tmp_path / "full", "--steps", "12")
    killed = _train_cli(data, tmp_path / "killed", "--steps", "12")
    while not (tmp_path / "killed" / "train_state.pt").exists() and killed.poll() is None:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    step_at_kill = load_torch(tmp_path / "killed" / "train_state.pt")["step"]
    assert 0 < step_at_kill < 12

    resumed = _train_cli(data, tmp_path / "killed", "--steps", "12", "--resume")
    assert resumed.wait() == 0, resumed.stdout.read()
    assert full.wait() == 0, full.stdout.read()
    a, b = (
        load_weights(tmp_path / "full" / "model.safetensors"),
        load_weights(tmp_path / "killed" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = load_torch(tmp_path / "full" / "train_state.pt"), load_torch(tmp_path / "killed" / "train_state.pt")
    assert sa["data"] == sb["data"] and sa["step"] == sb["step"] == 12
    assert [r["step"] for r in rundir.read_metrics(tmp_path / "killed")] == list(range(2, 13, 2))
    assert (tmp_path / "killed" / "text" / "text_tokenizer.json").is_file()  # the run carries its tokenizer


def _crash_at_update(monkeypatch, n: int) -> None:
    calls = []

    def poisoned(self, batch, generator, task):
        loss, metrics = loop.training_loss(self.model, batch, self.cfg, task, generator)
        calls.append(1)
        return (loss * math.nan, {**metrics, "loss": math.nan}) if len(calls) == n else (loss, metrics)

    monkeypatch.setattr(loop.TrainingObjective, "forward", poisoned)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = write_synthetic(tmp_path / "data", n=64)
    _crash_at_update(monkeypatch, 7)
    with pytest.raises(UserError, match=r"diverged at step 7: loss nan.*last good checkpoint \(step 4\)"):
        train(tiny_config(), data, tmp_path / "run", progress=False)
    assert load_torch(tmp_path / "run" / "train_state.pt")["step"] == 4
    weights = load_weights(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_weight_ema_averages_with_warmup():
    layer = torch.nn.Linear(2, 1)
    ema = WeightEMA(layer, decay=0.5)
    start = {n: p.detach().clone() for n, p in layer.named_parameters()}
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(-1.0)
    ema.update(layer, step=1)  # warmup: the decay is min(0.5, 2 / 11)
    assert torch.allclose(ema.shadow["weight"], start["weight"] * 2 / 11 + 9 / 11)
    ema.update(layer, step=100)  # then the decay itself
    assert torch.allclose(ema.shadow["bias"], (start["bias"] * 2 / 11 - 9 / 11) * 0.5 - 0.5)


def test_ema_run_saves_the_average_and_resumes_bitwise_equal(tmp_path, monkeypatch):
    data = write_synthetic(tmp_path / "data", n=64)
    cfg = tiny_config(steps=8, ema=0.9)
    full = train(cfg, data, tmp_path / "full", progress=False)
    for name in ("cut", "cut-plain"):
        with monkeypatch.context() as patch:
            _crash_at_update(patch, 6)
            with pytest.raises(UserError, match="diverged at step 6"):
                train(cfg, data, tmp_path / name, progress=False)
    cut = train(cfg, data, tmp_path / "cut", resume=True, progress=False)
    # resumed without the average, training goes on from the last weights, not from the average
    plain = train(dataclasses.replace(cfg, ema=0.0), data, tmp_path / "cut-plain", resume=True, progress=False)
    a, b = load_torch(full / paths.STATE)["weights"], load_weights(plain / paths.WEIGHTS)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for run in (full, cut):
        averaged, last = load_weights(run / paths.WEIGHTS), load_torch(run / paths.STATE)["weights"]
        assert averaged.keys() == last.keys()
        assert not all(torch.equal(averaged[k], last[k]) for k in last)  # the average is saved, not the last
    for a, b in [
        (load_weights(full / paths.WEIGHTS), load_weights(cut / paths.WEIGHTS)),
        (load_torch(full / paths.STATE)["weights"], load_torch(cut / paths.STATE)["weights"]),
    ]:
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_budget_stops_with_a_checkpoint(tmp_path):
    data = write_synthetic(tmp_path / "data", n=64)
    out = train(tiny_config(max_minutes=1e-6), data, tmp_path / "run", progress=False)
    assert load_torch(out / "train_state.pt")["step"] == 1
    assert [r["step"] for r in rundir.read_metrics(out)] == [1]


def test_interrupted_commit_is_completed_or_dropped(tmp_path):
    rundir.save_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"step": 1})
    staged = {"w": torch.ones(2)}
    # A crash after staging both files and writing the commit record: the next start completes it.
    rundir.atomic_write(tmp_path / ".model.safetensors.next", lambda p: rundir.save_file(staged, str(p)))
    rundir.atomic_write(tmp_path / ".train_state.pt.next", lambda p: torch.save({"step": 2}, p))
    (tmp_path / rundir.COMMIT).write_text(json.dumps({n: f".{n}.next" for n in (paths.WEIGHTS, paths.STATE)}))
    rundir.finish_commit(tmp_path)
    weights, state = rundir.load_checkpoint(tmp_path)
    assert state["step"] == 2 and torch.equal(weights["w"], torch.ones(2))
    # A crash before the commit record: the staged file is dropped, the committed pair stays.
    rundir.atomic_write(tmp_path / ".train_state.pt.next", lambda p: torch.save({"step": 3}, p))
    rundir.finish_commit(tmp_path)
    assert rundir.load_checkpoint(tmp_path)[1]["step"] == 2 and not list(tmp_path.glob(".*.next"))


def _cli(*argv: str) -> int:
    return cli_main(["train", "--no-progress", *argv])


def test_cli_refuses_bad_input(tmp_path, capsys):
    data = write_synthetic(tmp_path / "data", n=64)
    small = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "batch_size=16", "bpe_dropout=0.0"]
    cases = [
        (["--config", "tiny", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")], "meta.json not found"),
        (["--config", "huge", "--data", str(data), "--out", str(tmp_path / "r")], "unknown preset 'huge'"),
        (
            ["--config", "tiny", "--data", str(data), "--out", str(tmp_path / "r"), "model.depth=3"],
            "unknown config field",
        ),
        (["--data", str(data), "--out", str(tmp_path / "r")], "--config PRESET is required"),
        (["--data", str(data), "--out", str(tmp_path / "r"), "--resume"], "nothing to resume"),
        (
            ["--config", "tiny", "--data", str(data), "--out", str(tmp_path / "r"), "grad_accum=4", "batch_size=10"],
            "divisible",
        ),
    ]
    for argv, message in cases:
        assert _cli(*argv) == 2
        assert message in capsys.readouterr().err
    assert _cli("--config", "tiny", "--data", str(data), "--out", str(tmp_path / "r"), "--steps", "1", *small) == 0
    assert _cli("--config", "tiny", "--data", str(data), "--out", str(tmp_path / "r"), "--steps", "1", *small) == 2
    assert "already holds a run" in capsys.readouterr().err
    other = write_synthetic(tmp_path / "other", n=64, text_vocab=20)
    assert _cli("--data", str(other), "--out", str(tmp_path / "r"), "--resume", "--steps", "2") == 2
    assert "text_vocab: run has 12, now 20" in capsys.readouterr().err
    saved = load_json(TrainConfig, tmp_path / "r" / "config.json")
    saved.model.official = False  # a run of magvlt's former architecture
    save_json(saved, tmp_path / "r" / "config.json")
    assert _cli("--data", str(data), "--out", str(tmp_path / "r"), "--resume", "--steps", "2") == 2
    assert "former architecture" in capsys.readouterr().err
