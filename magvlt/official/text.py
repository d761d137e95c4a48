"""The official MAGVLT text tokenizer and caption cleaning (kakaobrain/magvlt, datamodules/tokenizers.py).

The released models read CLIP's 49,408 ids through HF's CharBPETokenizer, not through CLIP's byte-level tokenizer: a
BERT normalizer without lowercasing (control characters cleaned, CJK characters split, accents kept), a lowercase
pass, the BERT pre-tokenizer (whitespace and every punctuation character split off, digit runs kept), CLIP's merges with `</w>` word ends, no start token, no end
token, rows truncated to 64 and padded with <|endoftext|>. A text with a character outside the vocabulary fails to
encode and is encoded again with its non-ASCII characters dropped, as the official get_input does.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from tokenizers import CharBPETokenizer

from magvlt.checkpoint import atomic_write_text
from magvlt.errors import UserError
from magvlt.text import BYTE_ENCODER, CLIP_MERGES, EOT, SAVE_FILE, SOT, WORD_END, clip_vocab_path

CONTEXT = 64
LSTRIP = ",.!?*#:;~"


def clip_bpe_tables() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (byte symbols, their word-end forms, merges, SOT, EOT) and merges, from clip-anytorch's file."""
    path = clip_vocab_path()
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")[1 : CLIP_MERGES + 1]
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read CLIP's BPE vocabulary {path}: {e}") from None
    merges = [tuple(line.split()) for line in lines]
    symbols = list(BYTE_ENCODER.values())
    tokens = [*symbols, *(s + WORD_END for s in symbols), *("".join(m) for m in merges), SOT, EOT]
    return {t: i for i, t in enumerate(tokens)}, merges


class OfficialTokenizer:
    """Texts to the official model's text rows and its generated rows back to cleaned captions."""

    kind = "official"

    def __init__(self, length: int = CONTEXT):
        vocab, merges = clip_bpe_tables()
        self.eos = self.eot_id = vocab[EOT]
        self.vocab_size, self.length = len(vocab), length
        self.start_ids = []  # no start token
        self.max_tokens = length  # longer texts are truncated to `length` ids (no EOS), as the official code does
        self.bpe = CharBPETokenizer(vocab, merges, unk_token="[UNK]", lowercase=True)
        self.bpe.enable_padding(length=length, pad_id=self.eos)
        self.bpe.enable_truncation(max_length=length)

    def _ids(self, text: str) -> list[int]:
        try:
            return self.bpe.encode(text).ids
        except Exception:  # tokenizers raises a bare Exception for a character its vocabulary lacks
            return self.bpe.encode(text.encode("ascii", "ignore").decode()).ids

    def bpe_ids(self, text: str) -> list[int]:
        """The ids of one text before its EOS padding (truncated to the row length)."""
        row = self._ids(text)
        return row[: row.index(self.eos)] if self.eos in row else row

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [B, 64] of ids and caption lengths [B]: tokens before the first EOS plus that EOS, at most 64."""
        rows = [self._ids(t) for t in texts]
        lengths = [min(row.index(self.eos) + 1 if self.eos in row else len(row) + 1, self.length) for row in rows]
        return torch.tensor(rows, dtype=torch.long), torch.tensor(lengths, dtype=torch.long)

    def decode(self, rows, lengths=None) -> list[str]:
        """Generated rows (cut at lengths if given) to cleaned captions: cut at the first EOS, BPE-decoded, then
        post_caption."""
        rows = torch.as_tensor(rows).tolist()
        if lengths is not None:
            rows = [row[:n] for row, n in zip(rows, torch.as_tensor(lengths).tolist(), strict=True)]
        texts = []
        for row in rows:
            row = row[: row.index(self.eos)] if self.eos in row else row
            texts.append(post_caption(self.bpe.decode(row, skip_special_tokens=True)))
        return texts

    def save(self, directory: str | Path) -> None:
        """Write text_tokenizer.json: the kind that makes load_text_tokenizer rebuild this tokenizer."""
        atomic_write_text(Path(directory) / SAVE_FILE, json.dumps({"kind": self.kind, "length": self.length}) + "\n")

    @classmethod
    def from_config(cls, data: dict) -> OfficialTokenizer:
        return cls(data.get("length", CONTEXT))


def pre_caption(caption: str) -> str:
    """The official cleaning of dataset captions (prompts and references of its COCO / NoCaps evaluation):
    lowercase, leading marks stripped, `-` and `/` as spaces, `<person>` as person, whitespace runs collapsed."""
    caption = caption.lower().lstrip(LSTRIP).replace("-", " ").replace("/", " ")
    caption = caption.replace("<person>", "person").replace("< person >", "person")
    return re.sub(r"\s{2,}", " ", caption).rstrip("\n")


def post_caption(caption: str) -> str:
    """The official cleaning: lowercase, marks stripped, cut at the first period, repeated words dropped, " ." added."""
    caption = pre_caption(caption).replace("<", "").replace(">", "")
    words = caption.split(".", 1)[0].split()
    kept = [w for i, w in enumerate(words) if i == 0 or w != words[i - 1]]
    return " ".join(kept) + " ."
