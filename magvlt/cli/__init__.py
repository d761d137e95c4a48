"""`magvlt` command line: every module in this package registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from magvlt.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="magvlt", description="Masked generative vision-and-language transformer.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"magvlt: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("magvlt: interrupted", file=sys.stderr)
        return 130
