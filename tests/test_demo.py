"""`magvlt demo` end to end at toy sizes (every stage, the files it promises, the cache) and the reproduce tables."""

import dataclasses
import json

import pytest

from magvlt.config import TRAIN_PRESETS, preset
from magvlt.demo import DemoConfig, _updates_line, demo_preset, demo_train_config, run_demo
from magvlt.errors import UserError
from magvlt.pipeline import MAGVLTPipeline
from magvlt.reproduce import TABLES, GridConfig, Run, tables, tokenizer_id
from magvlt.schedulers import get_preset


@pytest.mark.slow
def test_demo_runs_every_stage_writes_its_outputs_and_reuses_the_cache(tmp_path, capsys):
    cfg = DemoConfig(
        out=tmp_path / "demo",
        minutes=0.05,
        vq_minutes=0.05,
        clip_minutes=0.05,
        n_train=256,
        n_eval=3,
        candidates=2,
        caption_candidates=3,
        progress=False,
    )
    metrics = run_demo(cfg)

    out = cfg.out
    for name in ("samples.png", "refinement.gif", "loss.png"):
        assert (out / name).read_bytes()[:3] in (b"\x89PN", b"GIF"), name
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for split in ("val", "novel"):
        for task in ("t2i", "i2t", "inpaint", "infill"):
            assert metrics[split][task]["judge"]["n"] == 3
        assert 0 <= metrics[split]["i2t"]["repeats"] <= 100
        assert metrics[split]["rerank"] == {
            "image_candidates": 2,
            "text_candidates": 3,
            "by": "contrastive scorer (captions: + 0.5 x the model's log p(image | caption))",
        }
    assert metrics["train"]["step"] >= 1
    pipe = MAGVLTPipeline.from_pretrained(out / "model")  # samples as the demo judged: its preset and scorer
    assert pipe.preset.image_candidates == 2 and pipe.preset.text_candidates == 3 and pipe.preset.text_channel == 0.5
    assert pipe.preset.text == get_preset("demo").text and pipe.scorer is not None
    first = capsys.readouterr().out
    assert "MAGVLT: " in first and " updates in " in first and "of the CPU time of its threads" in first
    assert "T2I exact" in first and "best of 2/3 by the contrastive scorer" in first and "green frame" in first

    weights = (out / "model" / "model.safetensors").stat().st_mtime_ns
    run_demo(cfg)
    second = capsys.readouterr().out
    assert second.count(": cached in") == 8 and "train:" not in second  # 3 splits, BPE, VQ, tokens, scorer, model
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == weights


@pytest.mark.parametrize(
    "argv",
    [
        ["--candidates", "0"],
        ["--caption-candidates", "0"],
        ["--temperature", "-1"],
        ["--minutes", "0"],
        ["--n-novel", "1"],
    ],
)
def test_demo_cli_refuses_bad_options_with_exit_code_2(argv, tmp_path):
    from magvlt.cli import main

    assert main(["demo", "--out", str(tmp_path / "demo"), *argv]) == 2
    assert not (tmp_path / "demo").exists()


def test_the_demo_samples_with_the_demo_preset_unless_the_config_overrides_it(capsys):
    from magvlt.cli import main

    rules = get_preset("demo")
    assert demo_preset(DemoConfig()) == rules
    changed = demo_preset(DemoConfig(candidates=2, caption_candidates=3, temperature=0.7))
    assert (changed.image_candidates, changed.text_candidates) == (2, 3)
    assert changed.image == dataclasses.replace(rules.image, temperature=0.7)
    assert changed.text == dataclasses.replace(rules.text, temperature=0.7)
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # the help names the preset's numbers without importing it
    assert f"demo preset's, {rules.image_candidates};" in shown and f"demo preset's, {rules.text_candidates};" in shown
    assert f"{rules.image.temperature:g} for images and {rules.text.temperature:g} for captions" in shown


def test_an_unknown_tokenizer_is_refused_before_any_work(tmp_path, capsys):
    from magvlt.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(tmp_path / "demo"), "--tokenizer", "jpeg"])
    assert exit_.value.code == 2 and "invalid choice: 'jpeg'" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown image tokenizer 'jpeg'"):
        run_demo(DemoConfig(out=tmp_path / "demo", tokenizer="jpeg"))
    assert not (tmp_path / "demo").exists()


def test_demo_training_config_is_the_paper_recipe_at_the_demo_size():
    demo = DemoConfig()
    cfg = demo_train_config(demo, 300)
    assert cfg.objective == preset(TRAIN_PRESETS, "tiny").objective  # 8:1:1, UnrollMask, MixSel
    assert cfg.objective.task_weights == (8.0, 1.0, 1.0) and cfg.objective.unroll_mask and cfg.objective.mix == "mixsel"
    assert (cfg.steps, cfg.batch_size, cfg.lr, cfg.model.n_embd, cfg.model.text_len) == (
        300,
        demo.batch_size,
        demo.lr,
        demo.width,
        demo.text_len,
    )
    assert cfg.bpe_dropout == 0.0 and cfg.schedule == "steps"
    assert demo_train_config(demo, 300, "tiny-ar").model.causal
    timed = demo_train_config(demo)  # the demo itself: a wall-time budget, the learning rate decayed over it
    assert (timed.schedule, timed.max_minutes) == ("time", demo.minutes)
    # ...and at least min_rate updates a minute of it, for at most stretch x the minutes
    assert (timed.min_steps, timed.stretch_minutes) == (3000, 20.0) and cfg.min_steps == 0
    assert (demo.judged("val"), demo.judged("novel"), DemoConfig(n_eval=50).judged("novel")) == (200, 100, 50)
    # ...with I2T alone first, UnrollMask and MixSel joining after the first part of that budget (a curriculum) and
    # the demo's task mix, the rest the same
    assert timed.objective == dataclasses.replace(
        cfg.objective,
        extras_from=demo.extras_from,
        task_weights=demo.task_weights,
        curriculum_weights=(0.0, 1.0, 0.0),
        curriculum_until=demo.read_first,
        length_rows=demo.length_rows,
    )
    assert 0 < demo.read_first < demo.extras_from < 1 and all(w > 0 for w in demo.task_weights)


def test_summary_says_when_training_went_on_past_its_minutes():
    cfg = DemoConfig()
    quiet = _updates_line({"step": 3400, "elapsed": 720.0, "threads": 2, "cpu_share": 0.99}, cfg)
    loaded = _updates_line({"step": 3000, "elapsed": 1100.0, "threads": 1, "cpu_share": 0.97}, cfg)
    assert "3400 updates in 12.0 min" in quiet and "went on" not in quiet and "on 2 thread(s)" in quiet
    assert "3000 updates in 18.3 min" in loaded and "fewer than 3000 updates in 12 min" in loaded


def test_reproduce_tables_show_mean_and_spread_over_seeds():
    grid = GridConfig(steps=7, seeds=(0, 1))
    results = {
        f"{Run('tiny').key}#{s}#7#{tok}": {"t2i": t, "i2t": 50.0, "cider": 10.0, "invalid": 0.0, "t2i_ms": 1.5}
        for s, t, tok in ((0, 40.0, "aa"), (1, 60.0, "aa"), (1, 99.0, "bb"))
    }
    text = tables(results, grid, "aa")  # the run made with other tokenizers ("bb") is left out
    assert "7 updates x batch 32 per run, seeds [0, 1]" in text
    assert "| MAGVLT | 50.0 ± 14.1 | 50.0 ± 0.0 | 10.0 ± 0.0 | 0.0 ± 0.0 | 1.50 ± 0.00 |" in text
    assert "| ARGVLT |" not in text  # runs without results are left out
    assert all(title in text for title in TABLES)


def test_tokenizer_id_changes_with_the_tokenizer_files(tmp_path):
    (tmp_path / "vq").mkdir()
    (tmp_path / "vq" / "model.safetensors").write_bytes(b"one")
    (tmp_path / "vq" / ".done").write_text("3.0")
    first = tokenizer_id(tmp_path / "vq")
    (tmp_path / "vq" / ".done").write_text("4.0")  # the stage's timing is not part of the tokenizer
    assert tokenizer_id(tmp_path / "vq") == first
    (tmp_path / "vq" / "model.safetensors").write_bytes(b"two")
    assert tokenizer_id(tmp_path / "vq") != first
