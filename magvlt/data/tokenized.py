"""Pre-tokenized training data: safetensors shards of image codes and text ids, read back as resumable batches.

A data directory holds `meta.json` and, per shard, `shard-NNNNN.safetensors` (image [n, N_I], image_half_w,
image_half_h, text [n, L], length [n]) with `shard-NNNNN.json` beside it (the captions, so BPE dropout can
re-tokenize them on the fly). Shards are memory-mapped on demand: a rank touches only the rows of its own
micro-batches, in the few shards the current shuffle window holds.

Batching is defined on the global batch so that a run's result does not depend on how it is split: per
epoch one seeded order of the whole set (`EpochOrder`: a shuffle buffer of whole shards, or one permutation
of everything); each step takes the next `batch_size` indices and cuts them
into `n_micro` = ranks x accumulation micro-batches; micro-batch k always gets the same rows and the same
BPE-dropout seed, whichever rank runs it. The state is (epoch, position), saved with every checkpoint.
"""

from __future__ import annotations

import collections
import json
import mmap
import random
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from magvlt.checkpoint import atomic_write, atomic_write_text
from magvlt.errors import UserError

META = "meta.json"
FORMAT = "magvlt-tokenized-v1"
FIELDS = ("image", "image_half_w", "image_half_h", "text", "length")
_SAFETENSORS_DTYPES = {"I16": np.int16, "I32": np.int32, "I64": np.int64}


def derive_seed(purpose: str, *keys: int) -> int:
    """A well-mixed 63-bit seed for one use of randomness (`purpose`) from integer keys (run seed, step, ...).

    The purpose and the number of keys are mixed in, so no two uses or arities share a seed.
    """
    words = [zlib.crc32(purpose.encode()), len(keys), *(int(k) for k in keys)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _token_dtype(vocab: int) -> type:
    return np.int16 if vocab <= np.iinfo(np.int16).max + 1 else np.int32


class ShardWriter:
    """Collects tokenized rows and writes them as shards, then meta.json (the data directory format above)."""

    def __init__(self, out_dir: str | Path, meta: dict, shard_size: int = 4096):
        if shard_size < 1:
            raise UserError(f"shard size must be >= 1, got {shard_size}")
        self.out_dir, self.meta, self.shard_size = Path(out_dir), dict(meta), shard_size
        self.dtypes = shard_dtypes(meta)
        self.pending: dict[str, list[np.ndarray]] = {k: [] for k in FIELDS}
        self.captions: list[str] = []
        self.shards: list[dict] = []

    def add(self, rows: dict[str, np.ndarray | torch.Tensor], captions: Sequence[str]) -> None:
        """Append n rows: every field of FIELDS with n rows, and their n captions."""
        for key, value in as_rows(rows, len(captions), self.dtypes).items():
            self.pending[key].append(value)
        self.captions.extend(captions)
        while len(self.captions) >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        arrays = {k: np.concatenate(v) for k, v in self.pending.items()}
        self.pending = {k: [a[n:]] for k, a in arrays.items()}
        name = f"shard-{len(self.shards):05d}"
        write_shard(self.out_dir, name, {k: a[:n] for k, a in arrays.items()}, self.captions[:n])
        self.captions = self.captions[n:]
        self.shards.append({"name": name, "count": n})

    def close(self) -> Path:
        """Write the last (partial) shard and meta.json; returns the data directory."""
        if self.captions:
            self._flush(len(self.captions))
        return write_meta(self.out_dir, self.meta, self.shards)


def shard_dtypes(meta: dict) -> dict[str, type]:
    """The smallest integer type of each field that holds the vocabularies named in meta."""
    vocab = {"image": "image_vocab", "image_half_w": "image_vocab", "image_half_h": "image_vocab", "text": "text_vocab"}
    return {key: _token_dtype(meta[v]) for key, v in vocab.items()} | {"length": np.int16}


def as_rows(rows: dict[str, np.ndarray | torch.Tensor], n: int, dtypes: dict[str, type]) -> dict[str, np.ndarray]:
    """Every field of FIELDS as n rows of its shard dtype (numpy)."""
    out = {}
    for key in FIELDS:
        value = np.asarray(rows[key].cpu() if isinstance(rows[key], torch.Tensor) else rows[key])
        if value.shape[0] != n:
            raise UserError(f"{key} has {value.shape[0]} rows for {n} captions")
        out[key] = value.reshape((n, -1) if key != "length" else (n,)).astype(dtypes[key])
    return out


def write_shard(out_dir: Path, name: str, rows: dict[str, np.ndarray], captions: Sequence[str]) -> None:
    """`name`.safetensors (every field of FIELDS, rows as given) and `name`.json (the captions), each atomically."""
    shard = {k: np.ascontiguousarray(rows[k]) for k in FIELDS}
    atomic_write(out_dir / f"{name}.safetensors", lambda tmp: save_file(shard, str(tmp)))
    atomic_write_text(out_dir / f"{name}.json", json.dumps(list(captions)) + "\n")


def write_meta(out_dir: Path, meta: dict, shards: list[dict]) -> Path:
    """meta.json of shards [{"name", "count"}, ...] (written last: it marks the directory complete); returns out_dir."""
    count = sum(s["count"] for s in shards)
    if not count:
        raise UserError("no image-caption pairs to write")
    full = {"format": FORMAT, **meta, "count": count, "shards": shards}
    atomic_write_text(Path(out_dir) / META, json.dumps(full, indent=1) + "\n")
    return Path(out_dir)


def read_meta(data_dir: str | Path) -> dict:
    """The meta.json of a tokenized data directory, checked."""
    path = Path(data_dir) / META
    if not path.is_file():
        raise UserError(
            f"{data_dir} is not a tokenized data directory ({META} not found; build it with `magvlt tokenize`)"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path} is not a {FORMAT} meta file")
    return meta


def _map_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Read-only numpy views of the tensors of a safetensors file, over one memory map (one file descriptor)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    header.pop("__metadata__", None)
    arrays = {}
    for name, t in header.items():
        dtype, shape = np.dtype(_SAFETENSORS_DTYPES[t["dtype"]]), tuple(t["shape"])
        arrays[name] = np.frombuffer(mapped, dtype, int(np.prod(shape)), 8 + header_len + t["data_offsets"][0]).reshape(
            shape
        )
    return arrays


class TokenizedDataset:
    """Random access to the rows of a tokenized data directory; at most `max_open` shards are mapped at a time
    (least recently used ones are closed), so millions of pairs in thousands of shards need neither memory nor
    thousands of open files."""

    def __init__(self, data_dir: str | Path, max_open: int = 128):
        self.dir = Path(data_dir)
        self.meta = read_meta(self.dir)
        missing = [s["name"] for s in self.meta["shards"] if not (self.dir / f"{s['name']}.safetensors").is_file()]
        if missing:
            raise UserError(f"missing shard {self.dir / missing[0]}.safetensors ({len(missing)} missing)")
        self.max_open = max(1, max_open)
        self._open: collections.OrderedDict[int, tuple[dict[str, np.ndarray], list[str]]] = collections.OrderedDict()
        self.starts = np.cumsum([0] + [s["count"] for s in self.meta["shards"]])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _load(self, shard: int) -> tuple[dict[str, np.ndarray], list[str]]:
        if shard in self._open:
            self._open.move_to_end(shard)
        else:
            name = self.dir / self.meta["shards"][shard]["name"]
            self._open[shard] = (
                _map_safetensors(name.with_suffix(".safetensors")),
                json.loads(name.with_suffix(".json").read_text()),
            )
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
        return self._open[shard]

    def shard(self, shard: int) -> dict[str, np.ndarray]:
        """The arrays of one shard (memory-mapped, read-only)."""
        return self._load(shard)[0]

    def captions(self, shard: int) -> list[str]:
        """The captions of one shard."""
        return self._load(shard)[1]

    def rows(self, indices: np.ndarray) -> tuple[dict[str, torch.Tensor], list[str]]:
        """The rows at `indices` (in that order) as LongTensors, and their captions."""
        shard_of = np.searchsorted(self.starts, indices, side="right") - 1
        first = self.shard(int(shard_of[0])) if len(indices) else self.shard(0)
        out = {k: np.empty((len(indices), *first[k].shape[1:]), dtype=np.int64) for k in FIELDS}
        captions = [""] * len(indices)
        for s in np.unique(shard_of).tolist():
            sel = np.flatnonzero(shard_of == s)
            local = indices[sel] - self.starts[s]
            arrays, shard_captions = self._load(s)
            for k in FIELDS:
                out[k][sel] = arrays[k][local]
            for i, j in zip(sel.tolist(), local.tolist()):
                captions[i] = shard_captions[j]
        return {k: torch.from_numpy(v) for k, v in out.items()}, captions


class EpochOrder:
    """The order of the rows in one epoch, the same on every rank: a shuffle buffer of `window` shards.

    The shards are visited in a seeded order, `window` at a time, and the rows of each window are shuffled
    together, so a step reads from about `window` shards however large the set. With one window (window 0 or
    at least the number of shards) it is one seeded permutation of the whole set. Any stretch of the order is
    computed from (seed, epoch) alone, which is what lets a run resume at any position.
    """

    def __init__(self, counts: Sequence[int], seed: int, epoch: int, window: int):
        n, self.epoch = len(counts), epoch
        self.starts = np.cumsum([0, *counts])
        if window <= 0 or window >= n:
            self.windows, self.seeds = [np.arange(n)], [derive_seed("permutation", seed, epoch)]
        else:
            order = np.random.default_rng(derive_seed("shard-order", seed, epoch)).permutation(n)
            self.windows = [order[i : i + window] for i in range(0, n, window)]
            self.seeds = [derive_seed("permutation", seed, epoch, w) for w in range(len(self.windows))]
        self.bounds = np.cumsum([0, *(sum(counts[s] for s in w) for w in self.windows)])
        self._cached: dict[int, np.ndarray] = {}

    def _window(self, w: int) -> np.ndarray:
        if w not in self._cached:
            rows = np.concatenate([np.arange(self.starts[s], self.starts[s + 1]) for s in self.windows[w]])
            self._cached = {k: v for k, v in self._cached.items() if k == w - 1}  # the window a batch may straddle
            self._cached[w] = np.random.default_rng(self.seeds[w]).permutation(rows)
        return self._cached[w]

    def slice(self, start: int, stop: int) -> np.ndarray:
        """Dataset indices of positions start..stop-1 of the epoch."""
        parts, w = [], int(np.searchsorted(self.bounds, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self.bounds[w + 1]))
            parts.append(self._window(w)[start - self.bounds[w] : end - self.bounds[w]])
            start, w = end, w + 1
        return np.concatenate(parts)


class BatchStream(Iterator[list[dict[str, torch.Tensor]]]):
    """Each step, this rank's micro-batches of the global batch; resumable from (epoch, position).

    `micro_ids` are the indices (in 0..n_micro-1) of the micro-batches this rank runs each step. Each epoch
    follows an `EpochOrder` with a shuffle buffer of `shuffle_shards` shards (0: the whole set). With a
    tokenizer and bpe_dropout > 0, captions are re-tokenized with BPE dropout from an RNG seeded by
    (seed, epoch, position, micro-batch), so a resumed run draws the same token splits.
    """

    def __init__(
        self,
        dataset: TokenizedDataset,
        *,
        batch_size: int,
        n_micro: int,
        micro_ids: Sequence[int],
        seed: int,
        tokenizer=None,
        bpe_dropout: float = 0.0,
        shuffle_shards: int = 0,
    ):
        if batch_size % n_micro:
            raise UserError(f"batch_size {batch_size} must be divisible by ranks x grad_accum = {n_micro}")
        if batch_size > len(dataset):
            raise UserError(f"batch_size {batch_size} is larger than the data set ({len(dataset)} pairs)")
        self.dataset, self.batch_size, self.micro = dataset, batch_size, batch_size // n_micro
        self.micro_ids, self.seed, self.shuffle_shards = list(micro_ids), seed, shuffle_shards
        self.tokenizer, self.bpe_dropout = (tokenizer, bpe_dropout) if bpe_dropout > 0 else (None, 0.0)
        self.epoch, self.position, self.warned = 0, 0, False
        self._order: EpochOrder | None = None

    def order(self, epoch: int) -> EpochOrder:
        """The order of the rows in `epoch` (the same on every rank)."""
        if self._order is None or self._order.epoch != epoch:
            counts = [s["count"] for s in self.dataset.meta["shards"]]
            self._order = EpochOrder(counts, self.seed, epoch, self.shuffle_shards)
        return self._order

    def __next__(self) -> list[dict[str, torch.Tensor]]:
        if self.position + self.batch_size > len(self.dataset):  # the last partial batch of an epoch is dropped
            self.epoch, self.position = self.epoch + 1, 0
        batch = self.order(self.epoch).slice(self.position, self.position + self.batch_size)
        out = [self._micro_batch(batch[k * self.micro : (k + 1) * self.micro], k) for k in self.micro_ids]
        self.position += self.batch_size
        return out

    def _micro_batch(self, indices: np.ndarray, k: int) -> dict[str, torch.Tensor]:
        rows, captions = self.dataset.rows(indices)
        if self.tokenizer is not None:
            rng = random.Random(derive_seed("bpe-dropout", self.seed, self.epoch, self.position, k))
            with warnings.catch_warnings(record=True) as truncated:  # said once per stream, not once per batch
                warnings.simplefilter("always")
                rows["text"], rows["length"] = self.tokenizer.encode(captions, dropout=self.bpe_dropout, rng=rng)
            if truncated and not self.warned:
                self.warned = True
                warnings.warn(
                    f"BPE dropout splits some captions into more than {self.tokenizer.length} tokens; "
                    "they are truncated (said once)",
                    stacklevel=2,
                )
        return rows

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
