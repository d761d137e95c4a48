import pytest
import torch

from magvlt.config import MODEL_PRESETS, ModelConfig, from_dict, preset, to_dict
from magvlt.errors import UserError
from magvlt.model import (
    SPECIAL_TOKENS,
    KVCache,
    Task,
    Transformer,
    Vocab,
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
    cfg = tiny()
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
    assert v.MASK == v.special_offset == cfg.image_vocab + cfg.text_vocab
    assert v.PAD == v.special_offset + len(SPECIAL_TOKENS) - 1 and v.SEP == v.special_offset + SPECIAL_TOKENS.index(
        "<SEP>"
    )


def _inputs(cfg: ModelConfig, b: int = 2, seed: int = 0):
    """Random (image codes, image masked, raw text ids, text masked) of a config, nothing masked."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, cfg.image_vocab, (b, cfg.image_tokens), generator=g)
    text = torch.randint(0, cfg.text_vocab, (b, cfg.text_len), generator=g)
    return image, torch.zeros_like(image, dtype=torch.bool), text, torch.zeros_like(text, dtype=torch.bool)


@pytest.mark.parametrize("task", [Task.T2I, Task.I2T])
def test_bidirectional_model_sees_the_future_causal_does_not(task):
    """ARGVLT (Sec. 4.1): changing a token changes no earlier position's output; MAGVLT's change everywhere."""
    for causal in (False, True):
        cfg = tiny(causal=causal)
        torch.manual_seed(0)
        model = Transformer(cfg).eval()
        image, image_masked, text, text_masked = _inputs(cfg)
        length = torch.tensor([3, 5])
        segs = official_segments(task, cfg)
        later = segs.image.start + 2 if task == Task.T2I else segs.text.start + 2  # a generated token
        changed_image, changed_text = image.clone(), text.clone()
        if task == Task.T2I:
            changed_image[:, 2] = (image[:, 2] + 1) % cfg.image_vocab
        else:
            changed_text[:, 2] = (text[:, 2] + 1) % cfg.text_vocab
        h1 = model.official(task, image, image_masked, text, text_masked, length)
        h2 = model.official(task, changed_image, image_masked, changed_text, text_masked, length)
        moved = (h1 - h2).abs().amax(dim=(0, 2)) > 1e-6
        assert moved[later] and moved[:later].any() == (not causal)


@pytest.mark.parametrize("task", [Task.T2I, Task.I2T])
def test_causal_padding_is_never_attended(task):
    """ARGVLT keeps the official padding rules: text past a caption is seen by no position but itself."""
    cfg = tiny(causal=True)
    length = torch.tensor([2, 5])
    attn = official_attention(task, length, cfg)
    text = official_segments(task, cfg).text
    assert not (attn & ~torch.ones_like(attn[0]).tril()).any()  # causal
    for b, n in enumerate(length.tolist()):
        padded = torch.arange(text.start + n, text.stop)
        seen_by_others = attn[b][:, padded] & ~torch.eye(attn.shape[1], dtype=torch.bool)[:, padded]
        assert not seen_by_others.any()
        if n < cfg.text_len:  # a padded row: T2I hides it (it sees itself); I2T's reads the caption, as released
            assert attn[b, text.stop - 1, text.start : text.start + n].all() == (task == Task.I2T)


@pytest.mark.parametrize("task", [Task.T2I, Task.I2T])
def test_kv_cache_matches_the_full_causal_forward(task):
    """Prefix in one forward, a few positions at once, then one at a time: the full forward's outputs and logits."""
    cfg = tiny(causal=True)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    inputs, length = _inputs(cfg), torch.tensor([3, 5])
    full = model.official(task, *inputs, length)
    x, attn = model.embed(task, *inputs), official_attention(task, length, cfg)
    cache = KVCache(cfg, batch=2, max_len=x.shape[1])
    cuts = [0, 4, 7, *range(8, x.shape[1] + 1)]
    parts = [model(x[:, a:b], attn[:, a:b, :b], cache) for a, b in zip(cuts, cuts[1:])]
    incremental = torch.cat(parts, dim=1)
    assert cache.length == x.shape[1]
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.image_logits(incremental), model.image_logits(full), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.text_logits(incremental), model.text_logits(full), atol=1e-5, rtol=0)


def test_embedding_a_slice_gives_the_layout_rows():
    """`embed_image` / `embed_text` at an offset (one decoding step) are the rows `embed` puts there."""
    cfg = tiny()
    model = Transformer(cfg)
    image, image_masked, text, text_masked = _inputs(cfg)
    image_masked[0, 3] = text_masked[1, 2] = True
    for task in (Task.T2I, Task.I2T):
        x, segs = model.embed(task, image, image_masked, text, text_masked), official_segments(task, cfg)
        assert torch.equal(model.embed_image(image[:, 3:5], image_masked[:, 3:5], 3), x[:, segs.image][:, 3:5])
        assert torch.equal(model.embed_text(text[:, 2:3], text_masked[:, 2:3], 2), x[:, segs.text][:, 2:3])


def test_the_former_architecture_is_refused_clearly():
    saved = to_dict(tiny())
    saved.update(official=False, tie_embeddings=True)  # a run trained before the former architecture was retired
    with pytest.raises(UserError, match="former architecture .* retrain it"):
        Transformer(from_dict(ModelConfig, saved))
    saved["official"] = True  # a converted run's config.json still holds the retired field: it loads
    assert Transformer(from_dict(ModelConfig, saved)).cfg.official
    assert all(cfg.official for cfg in (ModelConfig(), *MODEL_PRESETS.values()))
