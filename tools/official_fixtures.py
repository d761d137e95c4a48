"""Record golden outputs of the official MAGVLT code (kakaobrain/magvlt, commit 4654615) on a tiny random model.

Run in a Python environment holding the official code's dependencies (torch, pytorch-lightning, omegaconf, einops,
tokenizers, pillow, safetensors), NOT magvlt's: the official package is also called `magvlt`.

    python3 -m venv /work/official-venv
    /work/official-venv/bin/pip install torch==2.13.0 pytorch-lightning omegaconf einops tokenizers pillow safetensors
    /work/official-venv/bin/python tools/official_fixtures.py /work/official --out tests/fixtures/official

It builds the official model (MaskGITModel around Transformer1d and the taming-style VQGAN) from the official base
sampling config with tiny sizes, peaks its output distributions, saves it in the released Lightning format
(`magvlt.ckpt`) next to a taming-format `vqgan.ckpt`, and records through the official code paths (their forward,
`sample_t2i`, `sample_i2t`, tokenizer and `post_caption`):

- tokenizer ids of ~50 strings and `post_caption` of ~20 strings;
- T2I image logits for a fixed partially masked input, I2T text logits (every 389th id, the top-16 and the
  full-vocabulary logsumexp) for a fixed partially masked caption, and the length logits of the official length query;
- greedy T2I codes and decoded pixels; greedy inpainting (IT2I, the central half of the grid regenerated) codes;
  greedy I2T lengths, token ids and cleaned captions.

The official code offers no greedy mode; greedy here means its own options `txt_sample_method=argmax` and
`txt_mask_sample_method=topk` for I2T, and strategy `maskgit` (rank by confidence, no Gumbel noise) with every
categorical sample replaced by its argmax for T2I. The official code itself is never copied into the outputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

SEED = 1234
WIDTH, LAYERS, HEADS = 16, 2, 2
IMG_VOCAB, IMG_SIDE, TXT_CTX = 1024, 4, 64
VQ = dict(ch=32, ch_mult=[1, 1], num_res_blocks=1, resolution=8, z_channels=8, embed_dim=8)
HEAD_GAIN = 1.5  # with unit-scale token rows: logits of std ~6 over the vocabulary, so softmaxes are peaked

PROMPTS = [
    "a dog playing with a ball in the park",
    "two red apples on a wooden table",
    "A man riding a horse on the beach at sunset.",
    "a bowl of soup",
    "the kitchen's 3 ovens are very clean",
    "a café with people sitting outside",
    "cat",
    "a long train with many cars travelling through green hills, past a small village with white houses, "
    "a church tower, fields of wheat, rows of trees, a river with boats, children waving and cows grazing",
]

TOKENIZER_STRINGS = PROMPTS + [
    "",
    " ",
    "hello world",
    "Hello, World!",
    "don't stop",
    "it's a dog's life",
    "I'm here; you're there.",
    "they'll go",
    "we've been",
    "she'd say",
    "1234 people",
    "room 101",
    "3.14159",
    "50% off",
    "$20",
    "café au lait",
    "naïve résumé",
    "Ångström",
    "crème brûlée",
    "über",
    "piñata",
    "São Paulo",
    "a cat -- on a mat",
    "well...",
    "yes!!!",
    "what?",
    "(parenthesis) [brackets] {braces}",
    "e-mail",
    "a/b",
    "#hashtag @user",
    "C++ and C#",
    "multiple    spaces",
    "tab\tseparated",
    "new\nline",
    "UPPERCASE WORDS",
    "MiXeD CaSe",
    "emoji 😀 here",
    "日本語 text",
    "ł and °",
    'quote "double"',
    "‘curly’ quotes",
    "semi;colon:colon",
    "a " * 80,
    "The quick brown fox jumps over the lazy dog 0123456789 times.",
]

POST_CAPTION_STRINGS = [
    "a dog dog playing with a ball",
    "a man riding a horse. on the beach",
    "the the the cat",
    "A Red Car",
    ", a bowl of soup",
    "a black-and-white photo",
    "a plate with food/drink",
    "<person> riding a bike",
    "< person > on a skateboard",
    "two  dogs   running",
    "a train on tracks.",
    "a cat sitting sitting on a mat .",
    "...a bird",
    "a vase of flowers\n",
    "a <b>bold</b> move",
    "a sign that says stop stop",
    "hello",
    "a man and a a woman",
    "a dog. a cat. a bird.",
    "kitchen with 3 ovens",
]


def install_clip_stub() -> None:
    """The official code imports OpenAI's `clip` (GitHub only) for reranking, which no recorded path uses."""
    sys.modules.setdefault("clip", types.ModuleType("clip"))


def official_config(repo: Path):
    """The official base sampling config with tiny sizes (structure unchanged)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(repo / "configs" / "magvlt-it2it-base-sampling.yaml")
    cfg.stage1.n_embed, cfg.stage1.embed_dim = IMG_VOCAB, VQ["embed_dim"]
    cfg.stage1.hparams.update(
        ch=VQ["ch"],
        ch_mult=VQ["ch_mult"],
        num_res_blocks=VQ["num_res_blocks"],
        resolution=VQ["resolution"],
        z_channels=VQ["z_channels"],
        attn_resolutions=[IMG_SIDE],
    )
    cfg.stage2.vocab_size_img = IMG_VOCAB
    cfg.stage2.hparams.update(embed_dim=WIDTH, n_layers=LAYERS, n_heads=HEADS, ctx_len_img=IMG_SIDE * IMG_SIDE)
    cfg.stage2.mask_hparams.t2i_n_steps = cfg.sampling.img_num_steps  # as sampling_t2i.py does
    cfg.stage2.mask_hparams.i2t_n_steps = cfg.sampling.txt_num_steps  # as sampling_i2t.py does
    cfg.sampling.update(
        txt_sample_method="argmax", txt_mask_sample_method="topk", txt_num_cand_samples=1, txt_sample_size=1
    )
    return cfg


def build(repo: Path):
    """The official MaskGITModel (eval mode) with its tokenizer, random weights and a peaked head."""
    from magvlt.datamodules.tokenizers import TokenizerUtils
    from magvlt.models import build_model

    cfg = official_config(repo)
    tokutil = TokenizerUtils()
    tokutil.build_tokenizer(
        cfg.dataset.tokenizer.type, cfg.dataset.tokenizer.hparams.context_length, lowercase=True, dropout=None
    )
    torch.manual_seed(SEED)
    model = build_model(cfg, tokenizer=tokutil.tokenizer)
    peak(model.model)
    with torch.no_grad():
        model.model_vqvae.quantize.embedding.weight.normal_(0.0, 1.0)
    return cfg, tokutil, model.eval()


def peak(transformer) -> None:
    """Re-draw the transformer's weights at unit scale so each input matters and the softmaxes are peaked."""
    with torch.no_grad():
        for module in transformer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, module.in_features**-0.5)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1)
        for block in transformer.blocks:  # sharper attention: the length and captions vary with the image
            block.attn.query.weight.mul_(2.5)
            block.attn.key.weight.mul_(2.5)
        transformer.tok_emb.weight.normal_(0.0, 1.0)
        transformer.tok_emb_spc.weight.normal_(0.0, 1.0)
        for table in (transformer.pos_emb_img, transformer.pos_emb_txt, transformer.pos_emb_spc):
            table.pos_embed.normal_(0.0, 0.5)
        transformer.lm_layer.ln.weight.mul_(HEAD_GAIN)
        transformer.lm_layer.output_bias.normal_(0.0, 0.5)
        for table in (transformer.tok_emb.weight, transformer.lm_layer.output_bias):  # 1/8 steps: git compresses them
            table.copy_((table * 8).round() / 8)


def spread_lengths(cfg, tokutil, model, codes) -> None:
    """Project the BOT state's mean over the fixture images out of the length head, so predicted lengths differ."""
    bot = length_query_states(model, codes, *length_query(cfg, tokutil, codes.shape[0]))[:, model.bot_idx]
    mean = bot.mean(dim=0)
    weight = model.model.length_predictor.weight
    weight.sub_(torch.outer(weight @ mean, mean) / mean.dot(mean))
    spread = (bot - mean).norm(dim=-1).mean()  # logits w . (bot - mean) of std ~4
    weight.mul_(4.0 * weight.shape[1] ** 0.5 / (spread * weight.norm(dim=-1).mean()))


def lightning_checkpoint(model) -> dict:
    """The dict Lightning's Trainer.save_checkpoint writes for this module, with the pickled tokenizer among its hparams.

    MaskGITModel calls save_hyperparameters(ignore=["model_vqvae", "model", "cfg"]), which leaves the tokenizer.
    """
    import pytorch_lightning as pl
    from lightning_fabric.utilities.data import AttributeDict

    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": pl.__version__,
        "state_dict": model.state_dict(),
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": AttributeDict(tokenizer=model.tokenizer),
    }


def taming_checkpoint(model_vq) -> dict:
    """A taming-transformers style last.ckpt: the VQGAN's tensors plus training-loss tensors (`loss.*`)."""
    state = dict(model_vq.state_dict())
    state["loss.logvar"] = torch.zeros(())
    state["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    return {"epoch": 0, "global_step": 0, "state_dict": state}


def images(n: int) -> np.ndarray:
    """n smooth random uint8 RGB images at the VQ-GAN's resolution."""
    rng = np.random.default_rng(SEED)
    r = VQ["resolution"]
    base = rng.uniform(0, 255, size=(n, 1, 1, 3))
    ramp = np.linspace(-60, 60, r)[None, :, None, None] * rng.uniform(-1, 1, size=(n, 1, 1, 1))
    noise = rng.normal(0, 25, size=(n, r, r, 3))
    return np.clip(base + ramp + noise, 0, 255).astype(np.uint8)


def to_model_pixels(img: np.ndarray) -> torch.Tensor:
    """ToTensor + Normalize(0.5, 0.5) as sampling_i2t.py preprocesses: uint8 [B,H,W,3] -> float [B,3,H,W] in [-1, 1]."""
    return (torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def text_batch(tokutil, texts):
    """Official tokenizer rows and caption masks (TokenizerUtils.get_input) for a list of texts."""
    items = [tokutil.get_input(t) for t in texts]
    return torch.stack([i.txt for i in items]), torch.stack([i.txt_mask for i in items])


def fixed_mask(rows: int, cols: int, offset: int) -> torch.Tensor:
    """A deterministic partial mask: row b masks columns j with (j * 7 + b * 3 + offset) % 5 < 2 (about 40%)."""
    j = torch.arange(cols)
    return torch.stack([(j * 7 + b * 3 + offset) % 5 < 2 for b in range(rows)])


def t2i_logits(model, txt, txt_mask, codes, img_mask):
    """Official forward of a T2I sequence whose image tokens are masked where img_mask: image logits [B, I, V_img]."""
    B, I = codes.shape
    tok, pos, loc_img, loc_txt, loc_spc = model._get_input(codes, txt, task="t2i")
    _, attn_mask, _ = model._get_mask(loc_img, loc_txt, loc_spc, r=0.0, task="t2i", txt_mask=txt_mask)
    loc_mask = torch.zeros_like(loc_img)
    loc_mask[:, -I:] = img_mask
    tok_masked, spc = model._apply_mask(tok, loc_spc, loc_mask, loc_img, loc_txt)
    x = model.model(tok_masked, pos, loc_img, loc_txt, spc, attn_mask=attn_mask)
    _, logit_img, _ = model.get_logits_and_target_pair(x, txt.clone(), loc_img, loc_txt)
    return logit_img.reshape(B, I, -1)


def i2t_logits(model, codes, txt, txt_mask, txt_loc_mask):
    """Official forward of an I2T sequence (caption masked where txt_loc_mask): text logits [B, T, V_txt]."""
    B, T = txt.shape
    tok, pos, loc_img, loc_txt, loc_spc = model._get_input(codes, txt, task="i2t")
    offset = int(loc_txt[0].nonzero()[0])
    attn_mask = model._get_i2t_attn_mask(B, loc_img.shape[1], T, offset, txt_mask.sum(-1).long(), txt.device)
    loc_mask = torch.zeros_like(loc_txt)
    loc_mask[:, -T:] = txt_loc_mask
    tok_masked, spc = model._apply_mask(tok, loc_spc, loc_mask, loc_img, loc_txt)
    x = model.model(tok_masked, pos, loc_img, loc_txt, spc, attn_mask=attn_mask)
    logit_txt, _, _ = model.get_logits_and_target_pair(x, txt.clone(), loc_img, loc_txt)
    return logit_txt.reshape(B, T, -1)


def length_query(cfg, tokutil, n: int):
    """sampling_i2t.py's text input: txt_max_len EOS tokens and a caption mask of 16 ones."""
    from magvlt.datamodules.dataclasses import TextInputItem

    item = TextInputItem([tokutil.tokenizer.eos_token_id] * cfg.sampling.txt_max_len, np.ones(16))
    return item.txt.unsqueeze(0).repeat(n, 1), item.txt_mask.unsqueeze(0).repeat(n, 1)


def length_query_states(model, codes, txt, txt_mask):
    """Transformer outputs [B, L, D] of sample_i2t's length query (the first caption_mask text positions masked)."""
    tok, pos, loc_img, loc_txt, loc_spc = model._get_input(codes, txt, task="i2t")
    loc_mask, attn_mask, _ = model._get_mask(loc_img, loc_txt, loc_spc, r=1, task="i2t", txt_mask=txt_mask)
    tok_masked, spc = model._apply_mask(tok, loc_spc, loc_mask, loc_img, loc_txt)
    return model.model(tok_masked, pos, loc_img, loc_txt, spc, attn_mask=attn_mask)


class ArgmaxSampling:
    """Replaces torch's Categorical.sample by the argmax of its probabilities while active."""

    def __enter__(self):
        cat = torch.distributions.categorical.Categorical
        self.saved = cat.sample
        cat.sample = lambda dist, sample_shape=None: dist.probs.argmax(dim=-1)

    def __exit__(self, *exc):
        torch.distributions.categorical.Categorical.sample = self.saved


def greedy_t2i(cfg, model, txt, txt_mask, strategy="maskgit", inpaint=None):
    """Official sample_t2i (or sample_it2i with inpaint=(pixels, keep)) with argmax sampling and no Gumbel noise.

    Returns the final code grid [B, I] and the decoded uint8 pixels [B, H, W, 3].
    """
    captured = []
    decode = model.model_vqvae.decode_code
    model.model_vqvae.decode_code = lambda code: captured.append(code.clone()) or decode(code)
    kwargs = dict(
        txt=txt,
        txt_mask=txt_mask,
        ctx_len_img=cfg.stage2.hparams.ctx_len_img,
        n_steps=cfg.stage2.mask_hparams.t2i_n_steps,
        strategy=strategy,
        temp_st=cfg.sampling.img_temperature_start,
        temp_end=cfg.sampling.img_temperature_end,
        multi_temp_st=0.0,
        multi_temp_end=0.0,
    )
    try:
        with ArgmaxSampling():
            if inpaint is None:
                pixels = model.sample_t2i(**kwargs)
            else:
                pixels = model.sample_it2i(**kwargs, source_img=inpaint[0], img_mask=inpaint[1])
    finally:
        model.model_vqvae.decode_code = decode
    return captured[0].reshape(txt.shape[0], -1), np.stack([np.asarray(p) for p in pixels])


def central_keep_mask(n: int, side: int) -> torch.Tensor:
    """sampling_it2i.py's gen_mask for any grid: ones, the central half (rows and columns side/4..3side/4) zero."""
    keep = torch.ones(n, side, side)
    keep[:, side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 0
    return keep


def greedy_i2t(cfg, tokutil, model, pixels):
    """Official sample_i2t (argmax tokens, top-k re-masking, one candidate): lengths, token ids, cleaned captions."""
    captured = []
    sample = model.sample_txt_tok

    def spy(*args, **kwargs):
        captured.append(args[5].clone())  # N, the predicted lengths
        out = sample(*args, **kwargs)
        captured.append(out[0].clone())
        return out

    model.sample_txt_tok = spy
    try:
        txt, txt_mask = length_query(cfg, tokutil, 1)
        texts = model.sample_i2t(source_img=pixels, txt=txt, txt_mask=txt_mask)
    finally:
        model.sample_txt_tok = sample
    return captured[0], captured[1], texts


def record_text(tokutil):
    """Official ids (TokenizerUtils.get_input, with its ASCII fallback) and post_caption outputs."""
    from magvlt.datamodules.tokenizers import TokenizerUtils

    ids, n_txt = [], []
    for s in TOKENIZER_STRINGS:
        item = tokutil.get_input(s)
        ids.append(item.txt.tolist())
        n_txt.append(int(item.txt_mask.sum()))
    return {
        "tokenizer": [{"text": s, "ids": i, "n_txt": n} for s, i, n in zip(TOKENIZER_STRINGS, ids, n_txt)],
        "post_caption": [{"text": s, "clean": TokenizerUtils.post_caption(s)} for s in POST_CAPTION_STRINGS],
    }


PROBE_STRIDE, PROBE_TOP = 389, 16


def vocab_probe(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """A compact exact record of [..., V] logits: every 389th id, the top-16 ids and values, the logsumexp."""
    values, ids = logits.topk(PROBE_TOP, dim=-1)
    return {
        "strided": logits[..., ::PROBE_STRIDE].contiguous(),
        "top_values": values,
        "top_ids": ids.int(),
        "logsumexp": torch.logsumexp(logits, dim=-1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("official", type=Path, help="a checkout of kakaobrain/magvlt at commit 4654615")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    install_clip_stub()
    sys.path.insert(0, str(args.official.resolve()))
    from safetensors.torch import save_file

    torch.set_grad_enabled(False)
    cfg, tokutil, model = build(args.official)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(taming_checkpoint(model.model_vqvae), args.out / "vqgan.ckpt")

    n = len(PROMPTS)
    img = images(n)
    pixels = to_model_pixels(img)
    codes = model.model_vqvae.get_codes(pixels)
    spread_lengths(cfg, tokutil, model, codes)
    torch.save(lightning_checkpoint(model), args.out / "magvlt.ckpt")
    txt, txt_mask = text_batch(tokutil, PROMPTS)
    img_mask = fixed_mask(n, codes.shape[1], 0)
    caption_mask = fixed_mask(n, TXT_CTX, 1) & txt_mask.bool()
    lq_txt, lq_mask = length_query(cfg, tokutil, n)

    tensors = {
        "images": torch.from_numpy(img),
        "codes": codes.int(),
        "prompt_ids": txt.int(),
        "prompt_mask": txt_mask,
        "t2i_img_mask": img_mask,
        "t2i_logits": t2i_logits(model, txt, txt_mask, codes, img_mask),
        "i2t_caption_mask": caption_mask,
        "length_logits": model.predict_length(length_query_states(model, codes, lq_txt, lq_mask)),
    }
    for key, value in vocab_probe(i2t_logits(model, codes, txt, txt_mask, caption_mask)).items():
        tensors[f"i2t_logits_{key}"] = value
    t2i_codes, t2i_pixels = greedy_t2i(cfg, model, txt, txt_mask)
    noise_free_codes, _ = greedy_t2i(cfg, model, txt, txt_mask, strategy="multinomial-maskgit")
    tensors.update(greedy_t2i_codes=t2i_codes.int(), greedy_t2i_pixels=torch.from_numpy(t2i_pixels))
    keep = central_keep_mask(n, IMG_SIDE)
    it2i_codes, _ = greedy_t2i(cfg, model, txt, txt_mask, inpaint=(pixels, keep))
    tensors.update(it2i_keep=keep.bool().reshape(n, -1), greedy_it2i_codes=it2i_codes.int())
    lengths, caption_ids, captions = [], [], []
    for b in range(n):
        length, ids, text = greedy_i2t(cfg, tokutil, model, pixels[b : b + 1])
        lengths.append(length)
        caption_ids.append(ids)
        captions.extend(text)
    tensors.update(greedy_i2t_lengths=torch.cat(lengths).int(), greedy_i2t_ids=torch.cat(caption_ids).int())
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out / "outputs.safetensors"))

    record = {
        "official_commit": "4654615",
        "seed": SEED,
        "architecture": {
            "width": WIDTH,
            "layers": LAYERS,
            "heads": HEADS,
            "vocab_img": IMG_VOCAB,
            "vocab_txt": 49408,
            "ctx_len_img": IMG_SIDE * IMG_SIDE,
            "ctx_len_txt": TXT_CTX,
            "special_tokens": 10,
            "vq": VQ,
        },
        "sampling": {k: cfg.sampling[k] for k in cfg.sampling},
        "t2i_steps": cfg.stage2.mask_hparams.t2i_n_steps,
        "i2t_steps": cfg.stage2.mask_hparams.i2t_n_steps,
        "prompts": PROMPTS,
        "greedy_i2t_captions": captions,
        "greedy_t2i_maskgit_equals_noise_free_multinomial_maskgit": bool((noise_free_codes == t2i_codes).all()),
        "i2t_logits_probe_stride": PROBE_STRIDE,
        **record_text(tokutil),
    }
    (args.out / "outputs.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
