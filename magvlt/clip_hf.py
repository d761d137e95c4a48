"""CLIP ViT-B/32 reranking as the paper and the official code do it, through HF transformers' CLIPModel.

The official sampling scripts rank candidates by the cosine similarity of OpenAI CLIP's image and text features,
the image preprocessed by CLIP's own transform (bicubic resize of the short side, centre crop, CLIP's mean and std)
and the caption tokenized by CLIP (start and end tokens, 77 positions). OpenAI's `clip` and open_clip import
torchvision, which does not run here, so this reads a local `openai/clip-vit-base-patch32`-style directory
(config.json, weights, vocab.json, merges.txt) with transformers and preprocesses with PIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from magvlt.errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_INSTALL = 'pip install "magvlt[clip]"'


def clip_pixels(images, size: int) -> torch.Tensor:
    """CLIP's transform of uint8 RGB [B, H, W, 3]: bicubic short side to size, centre crop, normalised [B, 3, size, size]."""
    from PIL import Image

    out = []
    for im in np.asarray(images, dtype=np.uint8):
        h, w = im.shape[:2]
        long = int(size * max(h, w) / min(h, w))  # torchvision's Resize(size): the long side truncated
        pil = Image.fromarray(im).resize((long, size) if w >= h else (size, long), Image.BICUBIC)
        left, top = round((pil.width - size) / 2.0), round((pil.height - size) / 2.0)
        out.append(np.asarray(pil.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


class HFClipScorer:
    """Cosine similarity of CLIP image and caption features (higher is a better match), row by row."""

    def __init__(self, directory: str | Path, device=None):
        try:
            from transformers import CLIPModel, CLIPTokenizer
        except ImportError:
            raise UserError(f"CLIP reranking needs HF transformers; install it with: {CLIP_INSTALL}") from None
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise UserError(
                f"{directory} is not a CLIP directory (needs config.json, weights, vocab.json and merges.txt)"
            )
        try:
            self.model = CLIPModel.from_pretrained(directory, local_files_only=True).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise UserError(f"cannot load CLIP from {directory}: {e}") from None
        if device is not None:
            self.model = self.model.to(device)

    @torch.no_grad()
    def score(self, images, captions: Sequence[str]) -> torch.Tensor:
        """Scores [B] of uint8 RGB images [B, H, W, 3] against captions[B]."""
        if len(images) != len(captions):
            raise UserError(f"{len(images)} images but {len(captions)} captions")
        size, device = self.model.config.vision_config.image_size, next(self.model.parameters()).device
        text = self.tokenizer(list(captions), padding=True, truncation=True, max_length=77, return_tensors="pt")
        img = self.model.get_image_features(pixel_values=clip_pixels(images, size).to(device))
        txt = self.model.get_text_features(
            input_ids=text.input_ids.to(device), attention_mask=text.attention_mask.to(device)
        )
        return F.cosine_similarity(_features(img), _features(txt), dim=-1).float().cpu()


def _features(out) -> torch.Tensor:
    """The projected embeddings, whether transformers returns a tensor or a model output holding them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output
