import dataclasses

import torch

from magvlt.config import MODEL_PRESETS, ModelConfig, preset
from magvlt.model import (
    SPECIAL_TOKENS,
    KVCache,
    Task,
    Transformer,
    Vocab,
    argvlt_sequence,
    magvlt_sequence,
    official_attention,
    official_segments,
)


def tiny(**kw) -> ModelConfig:
    return ModelConfig(
        n_layer=2,
        n_head=2,
        n_embd=32,
        image_vocab=16,
        image_grid=(2, 3),
        text_vocab=11,
        text_len=5,
        dropout=0.0,
        attn_dropout=0.0,
        **kw,
    )


def test_paper_parameter_counts():
    """The presets are the released architecture: base 371.5M (the paper's 371M), large 795.2M (the paper says 840M;
    magvlt's former architecture: 370.1M and 793.1M)."""
    with torch.device("meta"):
        counts = [Transformer(preset(MODEL_PRESETS, name)).num_params() for name in ("base", "large")]
    assert counts == [371_533_056, 795_228_672]


def test_official_layouts_and_masks():
    cfg = tiny(official=True)
    n_i, n_t = cfg.image_tokens, cfg.text_len
    t2i, i2t = official_segments(Task.T2I, cfg), official_segments(Task.I2T, cfg)
    assert (t2i.text, t2i.image) == (slice(2, 2 + n_t), slice(n_t + 4, n_t + 4 + n_i))
    assert (i2t.image, i2t.text, i2t.bot) == (slice(2, 2 + n_i), slice(n_i + 4, n_i + 4 + n_t), n_i + 3)
    attn = official_attention(Task.T2I, torch.tensor([2]), cfg)[0]
    padded = 2 + 2  # text position 2 of a caption of length 2
    assert attn[padded].nonzero().flatten().tolist() == [padded]  # sees nothing else: attends to itself
    assert not attn[:, padded][torch.arange(attn.shape[0]) != padded].any()
    attn = official_attention(Task.I2T, torch.tensor([3]), cfg)[0]
    assert not attn[i2t.bot, i2t.text].any() and attn[0, i2t.text].tolist() == [True] * 3 + [False] * (n_t - 3)
    model = Transformer(cfg).eval()
    codes, text = torch.randint(0, 16, (2, n_i)), torch.randint(0, 11, (2, n_t))
    masked = torch.zeros(2, n_i, dtype=torch.bool)
    h = model.official(Task.T2I, codes, masked, text, torch.zeros(2, n_t, dtype=torch.bool), torch.tensor([2, 5]))
    assert h.shape == (2, n_i + n_t + 4, 32) and torch.isfinite(h).all()
    assert model.image_logits(h[:, t2i.image]).shape == (2, n_i, 16) and model.text_logits(h).shape[-1] == 11


def test_vocab_layout_is_disjoint():
    cfg = tiny()
    v = Vocab.of(cfg)
    assert v.text(torch.tensor(0)) == cfg.image_vocab
    assert v.BOI == cfg.image_vocab + cfg.text_vocab
    assert v.size == v.PAD + 1 and v.SEP == v.special_offset + SPECIAL_TOKENS.index("<SEP>")


def test_sequence_layout_and_heads():
    cfg = tiny()
    model, v = Transformer(cfg), Vocab.of(cfg)
    image = torch.randint(0, 16, (2, 6))
    text = v.text(torch.randint(0, 11, (2, 5)))
    tokens, pos, segs = magvlt_sequence(cfg, image, text, selector=torch.full((2,), v.LEFT))
    assert tokens.shape == (2, 1 + 1 + 6 + 1 + 5) == (2, pos.shape[0])
    assert torch.equal(tokens[:, segs.image], image) and torch.equal(tokens[:, segs.text], text)
    assert (tokens[:, segs.bot] == v.BOT).all() and (tokens[:, 0] == v.LEFT).all()
    assert len(set(pos.tolist())) == pos.numel()  # every slot has its own position
    h = model(tokens, pos)
    assert model.image_logits(h[:, segs.image]).shape == (2, 6, 16)
    assert model.text_logits(h[:, segs.text]).shape == (2, 5, 11)
    assert model.length_logits(h[:, segs.bot]).shape == (2, 5)


def test_bidirectional_model_sees_the_future_causal_does_not():
    torch.manual_seed(0)
    for causal in (False, True):
        cfg = tiny(causal=causal)
        model = Transformer(cfg).eval()
        image = torch.randint(0, 16, (1, 6))
        text = Vocab.of(cfg).text(torch.randint(0, 11, (1, 5)))
        tokens, pos, segs = argvlt_sequence(cfg, image, text, "t2i")
        changed = tokens.clone()
        changed[0, -1] = (changed[0, -1] + 1) % 16
        h1, h2 = model(tokens, pos), model(changed, pos)
        first_moved = not torch.allclose(h1[0, 0], h2[0, 0], atol=1e-6)
        assert first_moved == (not causal)


def test_kv_cache_matches_full_causal_forward():
    torch.manual_seed(0)
    cfg = tiny(causal=True)
    model = Transformer(cfg).eval()
    image = torch.randint(0, 16, (2, 6))
    text = Vocab.of(cfg).text(torch.randint(0, 11, (2, 5)))
    tokens, pos, _ = argvlt_sequence(cfg, image, text, "t2i")
    full = model(tokens, pos)
    cache = KVCache(cfg, batch=2, max_len=tokens.shape[1])
    prefix = model(tokens[:, :4], pos[:4], cache)  # prefill
    chunk = model(tokens[:, 4:7], pos[4:7], cache)  # several tokens after a prefix
    steps = [model(tokens[:, i : i + 1], pos[i : i + 1], cache) for i in range(7, tokens.shape[1])]
    incremental = torch.cat([prefix, chunk, *steps], dim=1)
    assert cache.length == tokens.shape[1]
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)


def test_untied_heads_have_their_own_weights():
    cfg = dataclasses.replace(tiny(), tie_embeddings=False)
    model = Transformer(cfg)
    h = torch.randn(3, cfg.n_embd)
    assert model.image_logits(h).shape == (3, 16) and model.text_logits(h).shape == (3, 11)
    assert model.num_params() > Transformer(tiny()).num_params()
