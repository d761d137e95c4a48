import pytest

from magvlt.config import TRAIN_PRESETS, TrainConfig, apply_overrides, load_json, preset, save_json
from magvlt.errors import UserError


def test_json_round_trip(tmp_path):
    cfg = apply_overrides(preset(TRAIN_PRESETS, "tiny"), ["model.n_layer=2", "objective.mix=off", "betas=[0.9,0.95]"])
    save_json(cfg, tmp_path / "config.json")
    assert load_json(TrainConfig, tmp_path / "config.json") == cfg


def test_presets_are_independent_copies():
    a = preset(TRAIN_PRESETS, "tiny")
    a.model.n_layer = 99
    assert preset(TRAIN_PRESETS, "tiny").model.n_layer != 99


@pytest.mark.parametrize("override", ["model.nope=1", "nope.n_layer=1", "lr", "model.n_layer=abc"])
def test_bad_overrides_are_user_errors(override):
    with pytest.raises(UserError):
        apply_overrides(preset(TRAIN_PRESETS, "tiny"), [override])


def test_unknown_preset_lists_choices():
    with pytest.raises(UserError, match="tiny"):
        preset(TRAIN_PRESETS, "huge")
