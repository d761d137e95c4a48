"""The image tokenizer: a taming-transformers VQ-GAN, its checkpoints, and pixel-format conversion."""

from magvlt.vq.io import load_vq, save_vq
from magvlt.vq.model import VQGAN, to_rgb_uint8, to_uint8
from magvlt.vq.palette import PaletteTokenizer
from magvlt.vq.taming import load_taming

__all__ = ["VQGAN", "PaletteTokenizer", "load_taming", "load_vq", "save_vq", "to_rgb_uint8", "to_uint8"]
