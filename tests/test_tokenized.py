import json

import numpy as np
import pytest
import torch
from synthetic import COLORS, SHAPES, write_synthetic

from magvlt.cli import main as cli_main
from magvlt.config import VQConfig
from magvlt.data.pairs import write_pairs
from magvlt.data.tokenize import squeeze, tokenize_pairs
from magvlt.data.tokenized import BatchStream, EpochOrder, ShardWriter, TokenizedDataset, derive_seed, read_meta
from magvlt.errors import UserError
from magvlt.text import CaptionBPE
from magvlt.vq import VQGAN, save_vq


def test_derived_seeds_differ_by_purpose_and_arity():
    seeds = [
        derive_seed("masks", 0, 5),
        derive_seed("masks", 0, 5, 0),
        derive_seed("task", 0, 5),
        derive_seed("masks", 0, 6),
    ]
    assert len(set(seeds)) == 4 and derive_seed("masks", 0, 5) == seeds[0] and 0 <= min(seeds) and max(seeds) < 2**63


def test_shards_round_trip_in_any_order(tmp_path):
    write_synthetic(tmp_path, n=250, shard_size=100)
    ds = TokenizedDataset(tmp_path)
    assert len(ds) == 250 and [s["count"] for s in ds.meta["shards"]] == [100, 100, 50]
    assert ds.shard(0)["image"].dtype == np.int16 and not ds.shard(0)["image"].flags.owndata  # mapped, not read
    all_rows, all_captions = ds.rows(np.arange(250))
    idx = np.array([249, 0, 150, 99, 100, 0])
    rows, captions = ds.rows(idx)
    assert captions == [all_captions[i] for i in idx]
    for key, value in rows.items():
        assert value.dtype == torch.long and torch.equal(value, all_rows[key][idx])
    a, b = COLORS.index(captions[0].split()[1]), SHAPES.index(captions[0].split()[2])
    assert rows["image"][0, :8].tolist() == [a] * 8 and rows["text"][0, 1:3].tolist() == [a, 5 + b]
    assert rows["image_half_w"].shape == (6, 8) and rows["image_half_h"].shape == (6, 8)


def test_text_ids_of_a_large_vocabulary_are_int32(tmp_path):
    writer = ShardWriter(tmp_path, {"image_vocab": 16384, "text_vocab": 49408, "image_grid": [1, 2], "text_len": 3})
    rows = {
        "image": [[16383, 0]],
        "image_half_w": [[1]],
        "image_half_h": [[2, 3]],
        "text": [[49406, 40000, 49407]],
        "length": [3],
    }
    writer.add({k: np.array(v) for k, v in rows.items()}, ["x"])
    writer.close()
    ds = TokenizedDataset(tmp_path)
    assert ds.shard(0)["text"].dtype == np.int32 and ds.shard(0)["image"].dtype == np.int16
    assert ds.rows(np.array([0]))[0]["text"].tolist() == [[49406, 40000, 49407]]


def test_missing_or_foreign_data_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="meta.json not found"):
        TokenizedDataset(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"count": 3}))
    with pytest.raises(UserError, match="not a magvlt-tokenized-v1 meta"):
        read_meta(tmp_path)


def _stream(ds, **kw):
    return BatchStream(ds, **{"batch_size": 8, "n_micro": 1, "micro_ids": [0], "seed": 0, **kw})


def test_global_batches_split_the_same_way_over_ranks_and_accumulation(tmp_path):
    ds = TokenizedDataset(write_synthetic(tmp_path, n=20))
    whole = _stream(ds, n_micro=2, micro_ids=[0, 1])
    ranks = [_stream(ds, n_micro=2, micro_ids=[r]) for r in (0, 1)]
    seen = []
    for _ in range(5):  # 2 batches per epoch: crosses two epoch boundaries
        both = next(whole)
        parts = [next(r)[0] for r in ranks]
        for a, b in zip(both, parts):
            assert all(torch.equal(a[k], b[k]) for k in a)
        seen.append(torch.cat([m["image"] for m in both]))
    assert whole.state_dict() == {"epoch": 2, "position": 8}
    first_epoch = torch.cat(seen[:2])
    assert len({tuple(r) for r in first_epoch.tolist()}) <= 20 and not torch.equal(seen[0], seen[2])


def test_stream_resumes_from_its_state(tmp_path):
    ds = TokenizedDataset(write_synthetic(tmp_path, n=20))
    a = _stream(ds)
    for _ in range(3):
        next(a)
    b = _stream(ds)
    b.load_state_dict(a.state_dict())
    for _ in range(4):
        x, y = next(a)[0], next(b)[0]
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_epoch_order_is_a_shuffle_buffer_of_whole_shards():
    counts = [100] * 9 + [37]
    n = sum(counts)
    whole = EpochOrder(counts, seed=3, epoch=1, window=0).slice(0, n)
    assert np.array_equal(whole, np.random.default_rng(derive_seed("permutation", 3, 1)).permutation(n))  # as before
    order = EpochOrder(counts, seed=3, epoch=1, window=4)
    full = order.slice(0, n)
    assert np.array_equal(np.sort(full), np.arange(n)) and not np.array_equal(full, whole)
    shards = np.searchsorted(np.cumsum(counts), full, side="right")
    for w, window in enumerate(order.windows):  # the rows of each stretch come from its (4 or 2) shards
        assert set(shards[order.bounds[w] : order.bounds[w + 1]].tolist()) == set(window.tolist())
    assert [len(w) for w in order.windows] == [4, 4, 2]
    again = EpochOrder(counts, seed=3, epoch=1, window=4)  # a resumed run: any stretch, computed afresh
    assert np.array_equal(again.slice(390, 810), full[390:810]) and np.array_equal(again.slice(0, 5), full[:5])
    assert not np.array_equal(EpochOrder(counts, seed=3, epoch=2, window=4).slice(0, n), full)


def test_windowed_stream_resumes_and_splits_like_the_whole(tmp_path):
    ds = TokenizedDataset(write_synthetic(tmp_path, n=60, shard_size=7))
    a = _stream(ds, shuffle_shards=2, n_micro=2, micro_ids=[0, 1])
    for _ in range(9):  # 7 batches per epoch: into the second
        next(a)
    b = _stream(ds, shuffle_shards=2, n_micro=2, micro_ids=[1])
    b.load_state_dict(a.state_dict())
    for _ in range(8):
        x, y = next(a)[1], next(b)[0]
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_batch_larger_than_the_data_or_not_divisible_is_refused(tmp_path):
    ds = TokenizedDataset(write_synthetic(tmp_path, n=20))
    with pytest.raises(UserError, match="larger than the data set"):
        _stream(ds, batch_size=32)
    with pytest.raises(UserError, match="divisible"):
        _stream(ds, batch_size=9, n_micro=2, micro_ids=[0])


def test_bpe_dropout_retokenizes_reproducibly_per_micro_batch(tmp_path):
    captions = ["a large red circle on the left", "a small blue square above a large green triangle"] * 10
    tok = CaptionBPE.train(captions, vocab_size=120, length=64)
    writer = ShardWriter(
        tmp_path, {"image_vocab": 4, "text_vocab": tok.vocab_size, "image_grid": [1, 2], "text_len": 64}
    )
    ids, lengths = tok.encode(captions)
    z = np.zeros((20, 2), dtype=np.int64)
    writer.add(
        {"image": z, "image_half_w": z[:, :1], "image_half_h": z, "text": ids.numpy(), "length": lengths.numpy()},
        captions,
    )
    ds = TokenizedDataset(writer.close())

    def batches(**kw):
        stream = _stream(ds, batch_size=20, tokenizer=tok, bpe_dropout=0.3, **kw)
        return [next(stream) for _ in range(2)]

    first, again = batches(), batches()
    assert torch.equal(first[0][0]["text"], again[0][0]["text"])  # same (seed, epoch, position, micro-batch)
    assert not torch.equal(first[0][0]["text"], first[1][0]["text"])  # a new batch draws new splits
    clean = _stream(ds, batch_size=20)
    batch, plain = first[0][0], next(clean)[0]
    assert (batch["length"] >= plain["length"]).all() and (batch["length"] > plain["length"]).any()
    assert tok.decode(batch["text"], batch["length"]) == tok.decode(plain["text"], plain["length"])
    short = _stream(ds, batch_size=20, tokenizer=CaptionBPE.train(captions, vocab_size=120, length=10), bpe_dropout=0.3)
    with pytest.warns(UserWarning, match="truncated \\(said once\\)") as said:
        next(short), next(short)
    assert len(said) == 1


def test_squeeze_averages_pixel_pairs():
    image = np.array([[[0, 0, 0], [10, 20, 30], [100, 100, 100], [200, 200, 200]]] * 2, dtype=np.uint8)[None]
    assert squeeze(image, "w")[0, 0].tolist() == [[5, 10, 15], [150, 150, 150]]
    assert squeeze(image, "h").shape == (1, 1, 4, 3) and squeeze(image, "h")[0, 0, 1].tolist() == [10, 20, 30]


CAPTIONS = ["a red circle", "a blue square", "a green triangle"]


@pytest.fixture
def tokenizers(tmp_path):
    """A random 16x16 -> 8x8 VQ-GAN of 32 codes and a caption BPE, saved in tmp_path/vq and tmp_path/text."""
    vq = VQGAN(
        VQConfig(resolution=16, ch=32, ch_mult=(1, 2), attn_resolutions=(), z_channels=8, embed_dim=8, n_embed=32)
    ).eval()
    save_vq(vq, tmp_path / "vq")
    tok = CaptionBPE.train(CAPTIONS, vocab_size=60, length=8)
    tok.save(tmp_path / "text")
    return vq, tok


def test_tokenize_pairs_encodes_three_sizes_and_records_the_tokenizers(tmp_path, tokenizers):
    vq, tok = tokenizers
    captions = CAPTIONS
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    out = tokenize_pairs(
        images,
        captions,
        vq,
        tok,
        tmp_path / "data",
        vq_dir=tmp_path / "vq",
        text_dir=tmp_path / "text",
        shard_size=2,
        batch_size=2,
        progress=False,
    )
    ds = TokenizedDataset(out)
    meta = ds.meta
    assert meta["count"] == 3 and meta["image_grid"] == [8, 8] and meta["image_vocab"] == 32
    assert meta["text_vocab"] == tok.vocab_size and meta["text_len"] == 8
    assert meta["vq_dir"] == str((tmp_path / "vq").resolve()) and meta["text_dir"] == str((tmp_path / "text").resolve())
    rows, kept = ds.rows(np.arange(3))
    assert kept == captions
    assert torch.equal(rows["image"], vq.encode(images).flatten(1))
    assert torch.equal(rows["image_half_w"], vq.encode(squeeze(images, "w")).flatten(1)) and rows[
        "image_half_w"
    ].shape == (3, 32)
    assert torch.equal(rows["image_half_h"], vq.encode(squeeze(images, "h")).flatten(1)) and rows[
        "image_half_h"
    ].shape == (3, 32)
    ids, lengths = tok.encode(captions)
    assert torch.equal(rows["text"], ids) and torch.equal(rows["length"], lengths)
    with pytest.raises(UserError, match="2 images but 3 captions"):
        tokenize_pairs(images[:2], captions, vq, tok, tmp_path / "x", vq_dir=None, text_dir=None, progress=False)


def test_tokenize_cli_reads_pairs_from_disk(tmp_path, tokenizers, capsys):
    vq, tok = tokenizers
    images = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    write_pairs(tmp_path / "pairs", images, CAPTIONS, shard_size=2)
    argv = [
        "tokenize",
        "--data",
        str(tmp_path / "pairs"),
        "--vq",
        str(tmp_path / "vq"),
        "--text",
        str(tmp_path / "text"),
        "--out",
        str(tmp_path / "data"),
        "--shard-size",
        "2",
    ]
    assert cli_main(argv) == 0
    rows, captions = TokenizedDataset(tmp_path / "data").rows(np.arange(3))
    assert captions == CAPTIONS and torch.equal(rows["image"], vq.encode(images).flatten(1))
    assert cli_main([*argv[:2], str(tmp_path / "none"), *argv[3:]]) == 2
    assert "no pairs at" in capsys.readouterr().err
