"""`magvlt text train|encode`: train a caption BPE, or show how a tokenizer splits text."""

from __future__ import annotations

import argparse
from pathlib import Path

from magvlt.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("text", help="text tokenizers: train a caption BPE, encode text")
    sub = parser.add_subparsers(dest="text_command", required=True, metavar="ACTION")

    train = sub.add_parser("train", help="train a small byte-level BPE on a caption file")
    train.add_argument("--captions", type=Path, required=True, help="UTF-8 text file, one caption per line")
    train.add_argument("--vocab-size", type=int, default=256, help="at most this many ids, specials included")
    train.add_argument("--length", type=int, default=64, help="fixed text length in tokens (start and end included)")
    train.add_argument("--out", type=Path, required=True, help="directory to save the tokenizer in")
    train.set_defaults(func=run_train)

    encode = sub.add_parser("encode", help="print the token ids of texts")
    encode.add_argument("--tokenizer", default="clip", help="'clip' or a directory holding a saved tokenizer")
    encode.add_argument("--dropout", type=float, default=0.0, help="BPE dropout probability (training only)")
    encode.add_argument("--seed", type=int, default=0, help="seed for BPE dropout")
    encode.add_argument("texts", nargs="+", help="texts to encode")
    encode.set_defaults(func=run_encode)


def read_captions(path: Path) -> list[str]:
    """Non-blank lines of a UTF-8 caption file."""
    if not path.is_file():
        raise UserError(f"caption file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text: {e}") from None
    captions = [line for line in lines if line.strip()]
    if not captions:
        raise UserError(f"{path} holds no captions")
    return captions


def run_train(args: argparse.Namespace) -> int:
    from magvlt.text import CaptionBPE

    captions = read_captions(args.captions)
    tok = CaptionBPE.train(captions, vocab_size=args.vocab_size, length=args.length)
    tok.save(args.out)
    _, lengths = tok.encode(captions[:1000])
    print(f"{tok}: {len(tok.chars)} characters, {len(tok.merges)} merges, trained on {len(captions)} captions")
    print(f"mean caption length {lengths.float().mean():.1f} tokens, start and end included")
    print(f"saved to {args.out}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    import random

    from magvlt.text import ClipTokenizer, load_text_tokenizer

    tok = ClipTokenizer() if args.tokenizer == "clip" else load_text_tokenizer(args.tokenizer)
    ids, lengths = tok.encode(args.texts, dropout=args.dropout, rng=random.Random(args.seed))
    for row, n, text in zip(ids.tolist(), lengths.tolist(), tok.decode(ids, lengths)):
        print(" ".join(map(str, row[:n])))
        print("  " + " ".join(tok.vocab[i] for i in row[:n]))
        print(f"  -> {text!r}")
    return 0
