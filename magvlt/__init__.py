"""magvlt: the Masked Generative Vision-and-Language Transformer (Kim et al., CVPR 2023)."""

__version__ = "0.1.0"
