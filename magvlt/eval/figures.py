"""Pictures people look at: rows of captioned image tiles (PNG) and step-by-step animations (GIF)."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TILE = 128  # pixels per image side; shapes-world images are upscaled without smoothing
CHARS_PER_LINE = 21
LINE_HEIGHT = 12
TEXT_LINES = 8  # the infilling tiles show the masked caption and the filled one
LABEL_WIDTH = 120
PAD = 6


MARK = {True: (20, 170, 60), False: (215, 40, 40)}  # frame colors of tiles the judge found right / wrong
MARK_WIDTH = 4


@dataclass
class Tile:
    """One image (PIL or uint8 [H, W, 3]) with the text shown under it; `right` (if known) frames it green or red."""

    image: Image.Image | np.ndarray
    text: str
    right: bool | None = None


def _as_pil(image) -> Image.Image:
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    return pil.convert("RGB").resize((TILE, TILE), Image.NEAREST)


def _lines(text: str) -> list[str]:
    lines = [w for part in text.split("\n") for w in textwrap.wrap(part, CHARS_PER_LINE) or [""]]
    return lines[:TEXT_LINES]


def grid(rows: dict[str, list[Tile]]) -> Image.Image:
    """A white canvas with one labelled row per entry, each tile an image over its wrapped text."""
    font = ImageFont.load_default()
    cols = max(len(tiles) for tiles in rows.values())
    cell_w, cell_h = TILE + PAD, TILE + TEXT_LINES * LINE_HEIGHT + 2 * PAD
    canvas = Image.new("RGB", (LABEL_WIDTH + cols * cell_w + PAD, len(rows) * cell_h + PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, tiles) in enumerate(rows.items()):
        y = PAD + r * cell_h
        for i, line in enumerate(textwrap.wrap(label, 18)):
            draw.text((PAD, y + TILE // 2 - 10 + i * LINE_HEIGHT), line, fill="black", font=font)
        for c, tile in enumerate(tiles):
            x = LABEL_WIDTH + c * cell_w
            canvas.paste(_as_pil(tile.image), (x, y))
            if tile.right is not None:
                draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), outline=MARK[tile.right], width=MARK_WIDTH)
            for i, line in enumerate(_lines(tile.text)):
                draw.text((x, y + TILE + 2 + i * LINE_HEIGHT), line, fill="black", font=font)
    return canvas


def animate(frames: list[dict[str, list[Tile]]], path: str | Path, ms_per_frame: int = 400, hold: int = 4) -> None:
    """An animated GIF of grids, one per step; the last frame is held a little longer."""
    from magvlt.checkpoint import atomic_write

    images = [grid(f) for f in frames]
    images += [images[-1]] * hold
    atomic_write(
        Path(path),
        lambda tmp: images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0
        ),
    )
