"""The image tokenizer: taming checkpoint format, encode/decode contracts, bad input, save/load, training."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from magvlt.config import VQ_PRESETS, VQConfig, preset
from magvlt.errors import UserError
from magvlt.precision import autocast, use_bf16
from magvlt.vq import VQGAN, load_taming, load_vq, save_vq, to_rgb_uint8

# Names and shapes read from taming-transformers' Encoder/Decoder/VectorQuantizer2 under the
# vqgan_imagenet_f16_16384 ddconfig (ch 128, ch_mult 1,1,2,2,4, 2 res blocks, attention at 16).
TAMING_F16_SAMPLE = {
    "encoder.conv_in.weight": (128, 3, 3, 3),
    "encoder.down.0.downsample.conv.weight": (128, 128, 3, 3),
    "encoder.down.2.block.0.nin_shortcut.weight": (256, 128, 1, 1),
    "encoder.down.4.attn.1.proj_out.weight": (512, 512, 1, 1),
    "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
    "encoder.conv_out.weight": (256, 512, 3, 3),
    "quant_conv.weight": (256, 256, 1, 1),
    "quantize.embedding.weight": (16384, 256),
    "post_quant_conv.weight": (256, 256, 1, 1),
    "decoder.conv_in.weight": (512, 256, 3, 3),
    "decoder.mid.block_2.norm2.weight": (512,),
    "decoder.up.4.attn.2.k.weight": (512, 512, 1, 1),
    "decoder.up.4.upsample.conv.weight": (512, 512, 3, 3),
    "decoder.up.1.block.0.nin_shortcut.weight": (128, 256, 1, 1),
    "decoder.up.0.block.2.conv2.weight": (128, 128, 3, 3),
    "decoder.conv_out.weight": (3, 128, 3, 3),
}


def tiny(name: str = "tiny") -> VQGAN:
    torch.manual_seed(0)
    return VQGAN(preset(VQ_PRESETS, name)).eval()


def rgb(n: int, h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.slow
def test_taming_f16_16384_checkpoint_loads_every_key_and_runs(tmp_path):
    torch.manual_seed(0)
    sd = VQGAN(preset(VQ_PRESETS, "f16_16384")).state_dict()  # random values under taming's names and shapes
    assert len(sd) == 343 and sum(v.numel() for v in sd.values()) == 76_073_859
    assert {k: tuple(sd[k].shape) for k in TAMING_F16_SAMPLE} == TAMING_F16_SAMPLE
    losses = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(64, 3, 4, 4)}
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {**sd, **losses}, "global_step": 1}, path)

    model = load_taming(path)
    loaded = model.state_dict()
    assert loaded.keys() == sd.keys()
    assert all(torch.equal(loaded[k], sd[k]) for k in sd)
    with autocast(use_bf16("auto", "cpu"), "cpu"):  # speed only where bf16 is fast: shapes are what this test checks
        codes = model.encode(rgb(1, 256, 256))
        images = model.decode(codes)
    assert codes.shape == (1, 16, 16) and codes.dtype == torch.long and int(codes.max()) < 16384
    assert images.shape == (1, 256, 256, 3) and images.dtype == torch.uint8


def test_foreign_checkpoints_are_refused_with_the_mismatch(tmp_path):
    model = tiny()
    sd = model.state_dict()
    renamed = {k.replace("encoder.mid", "encoder.middle"): v for k, v in sd.items()}
    torch.save({"state_dict": renamed}, tmp_path / "renamed.ckpt")
    with pytest.raises(UserError, match=r"missing .*encoder\.mid\.attn_1.*unexpected .*encoder\.middle"):
        load_taming(tmp_path / "renamed.ckpt", cfg=model.cfg)

    torch.save({"state_dict": sd}, tmp_path / "tiny.ckpt")
    with pytest.raises(
        UserError,
        match=r"missing 194 key.*unexpected 34 key.*146 shape mismatch.*decoder\.conv_in\.bias \(64,\) \(expected \(512,\)\)",
    ):
        load_taming(tmp_path / "tiny.ckpt")  # the f16 architecture by default
    with pytest.raises(UserError, match=r"quantize\.embedding\.weight \(512, 32\) \(expected \(1024, 32\)\)"):
        load_taming(tmp_path / "tiny.ckpt", cfg=VQConfig(n_embed=1024))

    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.ckpt")
    with pytest.raises(UserError, match="no 'quantize.embedding.weight'"):
        load_taming(tmp_path / "other.ckpt")


class Payload:  # any pickled object that is not plain tensors and containers
    pass


def test_unsafe_or_unreadable_checkpoints_are_refused(tmp_path):
    torch.save({"state_dict": {}, "extra": Payload()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(UserError, match="weights_only=True"):
        load_taming(tmp_path / "unsafe.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError):
        load_taming(tmp_path / "junk.ckpt")
    with pytest.raises(UserError, match="not found"):
        load_taming(tmp_path / "missing.ckpt")


def test_encode_decode_shapes_for_uint8_float_and_non_square_inputs():
    model = tiny()
    images = rgb(3)
    codes = model.encode(images)
    assert codes.shape == (3, 8, 8) and codes.dtype == torch.long
    assert torch.equal(model.encode(torch.from_numpy(images)), codes)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(model.encode(as_float), codes)
    out = model.decode(codes)
    assert out.shape == (3, 32, 32, 3) and out.dtype == torch.uint8
    assert torch.equal(model.decode(codes.flatten(1)), out)
    floats = model.decode_float(codes)
    assert floats.shape == (3, 3, 32, 32) and floats.min() >= -1 and floats.max() <= 1

    half = model.encode(rgb(2, 32, 16))  # squeezed to half width, as MixSel encodes
    assert half.shape == (2, 8, 4)
    assert model.decode(half).shape == (2, 32, 16, 3)
    assert torch.equal(model.decode(half.flatten(1), grid=(8, 4)), model.decode(half))
    assert model.encode(rgb(2, 16, 32)).shape == (2, 4, 8)


@pytest.mark.parametrize("name", ["tiny", "tiny-patch"])
def test_both_architectures_tokenize_any_grid(name):
    model = tiny(name)
    codes = model.encode(rgb(2, 32, 16))
    assert codes.shape == (2, 8, 4) and model.decode(codes).shape == (2, 32, 16, 3)


def test_patch_tokenizer_codes_and_draws_each_patch_on_its_own():
    model = tiny("tiny-patch")  # untrained: locality is a property of the architecture, not of training
    images = rgb(2)
    images[1, :16] = images[0, :16]  # the top halves are equal, the bottom halves differ
    images[0, 20:24, 8:12] = images[0, 4:8, 28:32]  # one patch copied to another place
    codes = model.encode(images)
    assert torch.equal(codes[0, :4], codes[1, :4]) and codes[0, 5, 2] == codes[0, 1, 7]
    changed = images.copy()
    changed[0, 12:16, 12:16] = 0  # one patch blacked out
    after = model.encode(changed)
    keep = torch.ones(8, 8, dtype=torch.bool)
    keep[3, 3] = False
    assert torch.equal(after[0][keep], codes[0][keep]) and after[0, 3, 3] != codes[0, 3, 3]
    recoded = codes.clone()
    recoded[0, 3, 3] = (codes[0, 3, 3] + 1) % model.cfg.n_embed
    pixels, drawn = model.decode_float(codes)[0], model.decode_float(recoded)[0]
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[12:16, 12:16] = False
    assert torch.equal(pixels[:, outside], drawn[:, outside]) and not torch.equal(pixels, drawn)


def test_pixel_formats_convert_as_documented():
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32).astype(np.uint8)
    assert np.array_equal(to_rgb_uint8(gray), np.repeat(gray[..., None], 3, -1))
    assert np.array_equal(to_rgb_uint8(gray[None, ..., None]), np.repeat(gray[None, ..., None], 3, -1))
    rgba = np.array([[[200, 100, 50, 128], [9, 9, 9, 0], [1, 2, 3, 255]]], dtype=np.uint8)
    assert to_rgb_uint8(rgba).tolist() == [[[100, 50, 25], [0, 0, 0], [1, 2, 3]]]  # over black
    deep = np.array([[[65535, 257, 32768]]], dtype=np.uint16)
    assert to_rgb_uint8(deep).tolist() == [[[255, 1, 128]]]
    model = tiny()
    rgba_batch = np.concatenate([rgb(2), np.full((2, 32, 32, 1), 255, np.uint8)], -1)
    assert torch.equal(model.encode(rgba_batch), model.encode(rgba_batch[..., :3]))
    assert model.encode(rgb(2)[..., 0]).shape == (2, 8, 8)  # a grayscale batch [B, H, W]
    assert model.encode(rgb(2).astype(np.uint16) * 257).shape == (2, 8, 8)


def test_bad_input_raises_user_errors():
    model = tiny()
    for bad in (rgb(1, 30, 32), rgb(1, 32, 18), np.zeros((0, 32, 32, 3), np.uint8)):
        with pytest.raises(UserError, match="divisible by 4"):
            model.encode(bad)
    for bad in (rgb(1).astype(np.float32), np.zeros((1, 32, 32, 5), np.uint8), rgb(1).astype(np.int64)):
        with pytest.raises(UserError):
            model.encode(bad)
    with pytest.raises(UserError, match=r"\[-1, 1\]"):
        model.encode(torch.full((1, 3, 32, 32), 2.0))
    with pytest.raises(UserError, match=r"\[0, 512\)"):
        model.decode(torch.full((1, 8, 8), 512))
    with pytest.raises(UserError, match=r"\[0, 512\)"):
        model.decode(torch.full((1, 64), -1))
    with pytest.raises(UserError, match="integer"):
        model.decode(torch.zeros(1, 8, 8))
    with pytest.raises(UserError, match="grid"):
        model.decode(torch.zeros(1, 32, dtype=torch.long))
    with pytest.raises(UserError, match="multiple of 32"):
        VQGAN(VQConfig(ch=48))
    with pytest.raises(UserError, match="'taming' or 'patch'"):
        VQGAN(VQConfig(arch="vit"))


def test_save_load_round_trip_gives_identical_tokens(tmp_path):
    model = tiny()
    images = rgb(4)
    save_vq(model, tmp_path / "vq")
    loaded = load_vq(tmp_path / "vq")
    assert loaded.cfg == model.cfg
    assert torch.equal(loaded.encode(images), model.encode(images))
    assert torch.equal(loaded.decode(model.encode(images)), model.decode(model.encode(images)))


def test_load_vq_refuses_other_models(tmp_path):
    from magvlt.checkpoint import save_weights
    from magvlt.config import ModelConfig, save_json

    with pytest.raises(UserError, match="not a saved VQ-GAN"):
        load_vq(tmp_path)
    save_json(ModelConfig(), tmp_path / "config.json")
    save_weights(tmp_path / "model.safetensors", {"tok_emb.weight": torch.zeros(2, 2)})
    with pytest.raises(UserError, match="does not hold a VQ-GAN config"):
        load_vq(tmp_path)
    save_json(dataclasses.replace(tiny().cfg, n_embed=1024), tmp_path / "config.json")
    save_weights(tmp_path / "model.safetensors", tiny().state_dict())
    with pytest.raises(UserError, match=r"quantize\.embedding\.weight"):
        load_vq(tmp_path)


@pytest.mark.slow
def test_short_training_lowers_loss_and_restarts_dead_codes(tmp_path):
    from magvlt.data.shapes import render_split
    from magvlt.train.vq import evaluate, train_vq

    images, _ = render_split("train", 256, 0, 32, 0.0)
    # A small model so the test is quick; ema_decay 0.9 lets an unused code die within ln 2 / 0.1 = 7 steps.
    cfg = VQConfig(ch=32, z_channels=32, embed_dim=32, n_embed=128, ema_decay=0.9, dead_code_fraction=0.25)
    torch.manual_seed(0)
    before = evaluate(VQGAN(cfg), images[:128])
    model, stats = train_vq(
        images,
        cfg,
        minutes=0,
        steps=20,
        batch_size=8,
        seed=0,
        out=tmp_path / "vq",
        val_images=images[:128],
        progress=False,
    )
    assert stats["steps"] == 20 and stats["restarts"] > 0
    assert stats["psnr"] > before["psnr"] + 5
    # Measured: 119 codes in use on these images; 40 with restarts off (dead_code_fraction=0).
    assert stats["codes_used"] >= 64
    assert json.loads((tmp_path / "vq" / "train_stats.json").read_text())["steps"] == 20
    assert torch.equal(load_vq(tmp_path / "vq").encode(images[:4]), model.encode(images[:4]))


def test_adversarial_option_runs():
    from magvlt.train.vq import train_vq

    cfg = VQConfig(ch=32, z_channels=32, embed_dim=32, n_embed=64, disc_weight=0.1, disc_start=1, squeeze_fraction=0.0)
    _, stats = train_vq(rgb(8), cfg, minutes=0, steps=2, batch_size=4, progress=False, val_images=rgb(2))
    assert stats["steps"] == 2 and np.isfinite(stats["loss"])


def test_a_time_budget_stretches_to_the_minimum_steps():
    from magvlt.train.vq import _progress, train_vq

    cfg = VQConfig(ch=32, z_channels=32, embed_dim=32, n_embed=64, kmeans_iters=0, squeeze_fraction=0.0)
    _, stats = train_vq(rgb(8), cfg, minutes=1e-6, min_steps=3, batch_size=4, progress=False, val_images=rgb(2))
    assert stats["steps"] == 3  # the budget ran out at once; the floor held
    assert _progress(30.0, 60.0, step=400, steps=0, min_steps=600) == 0.5  # a quiet machine: time leads
    assert _progress(60.0, 60.0, step=300, steps=0, min_steps=600) == 0.5  # a loaded one: steps hold it back
