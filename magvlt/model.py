"""The MAGVLT transformer (Sec. 3.1, App. A) in the released architecture (docs/official.md sections 4-6, 13).

One architecture for every model: a special-token table and per-modality position tables, the layouts
[BOC BOT text BOG BOI image] (T2I, inpainting) and [BOC BOI image BOG BOT text] (I2T, IT2IT, the length query)
with per-sample boolean attention masks, no final norm, the LMLayer head and a bias-free length head.
MAGVLT attends both ways; ARGVLT (Sec. 4.1, `ModelConfig.causal`) adds the causal mask, so T2I reads the text then
generates the image and I2T the image then the text, each token predicted from the position before it.
`Transformer.official` runs a layout; `embed` and `forward` are its two halves, which ARGVLT's KV-cache decoding
calls a few positions at a time. Callers keep unified ids (image codes, then text ids, then the special tokens
of `Vocab`; `magvlt.objectives.official_inputs` translates them) and work on hidden states: heads are applied
only where a caller needs logits.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from magvlt.config import ModelConfig
from magvlt.errors import UserError

SPECIAL_TOKENS = ("<MASK>", "<LEFT>", "<RIGHT>", "<TOP>", "<BOTTOM>", "<SEP>", "<PAD>")
# the released model's special-token table (docs/official.md section 4), in its row order
OFFICIAL_SPECIALS = (
    "BOI",
    "BOT",
    "BOC",
    "BOG",
    "MASK_IMG",
    "MASK_TXT",
    "BOG_LEFT",
    "BOG_RIGHT",
    "BOG_TOP",
    "BOG_BOTTOM",
)
SPC = {name: i for i, name in enumerate(OFFICIAL_SPECIALS)}
LENGTH_QUERY = 16  # the official length query masks (and shows) the first 16 text positions (sampling_i2t.py)
RETIRED = "2026-11-30"  # when magvlt's former architecture (ModelConfig.official = false) stopped being built


class Task(enum.StrEnum):
    """The training and generation tasks of Sec. 3.1: T2I, I2T and their joint version IT2IT."""

    T2I = "t2i"
    I2T = "i2t"
    IT2IT = "it2it"


@dataclass(frozen=True)
class Vocab:
    """The unified token ids of a ModelConfig: image codes, then text ids, then the special tokens."""

    image_vocab: int
    text_vocab: int
    MASK: int
    LEFT: int
    RIGHT: int
    TOP: int
    BOTTOM: int
    SEP: int
    PAD: int

    @classmethod
    def of(cls, cfg: ModelConfig) -> Vocab:
        offset = cfg.image_vocab + cfg.text_vocab
        ids = {name.strip("<>"): offset + i for i, name in enumerate(SPECIAL_TOKENS)}
        return cls(image_vocab=cfg.image_vocab, text_vocab=cfg.text_vocab, **ids)

    @property
    def text_offset(self) -> int:
        return self.image_vocab

    @property
    def special_offset(self) -> int:
        return self.image_vocab + self.text_vocab

    def image(self, codes: torch.Tensor) -> torch.Tensor:
        return codes

    def text(self, ids: torch.Tensor) -> torch.Tensor:
        return ids + self.text_offset


@dataclass(frozen=True)
class Segments:
    """Where each part sits in a layout."""

    image: slice
    text: slice
    bot: int  # the <BOT> position, whose output predicts the text length


def check_architecture(cfg: ModelConfig, source: str = "this model config") -> None:
    """Refuse magvlt's former architecture (`official = false`): its runs no longer load (docs/official.md s. 13)."""
    if not cfg.official:
        raise UserError(
            f"{source} is magvlt's former architecture (model.official = false, retired on {RETIRED}), which magvlt "
            "no longer builds: its weights do not fit the released architecture every model uses now; retrain it"
        )


class KVCache:
    """Preallocated keys and values for incremental causal decoding (ARGVLT, Sec. 4.1)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = 0

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values [B, H, t, d] of a layer; returns all keys and values so far."""
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length : end], self.v[layer][:, :, self.length : end] = k, v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def _attention(q, k, v, attn_mask: torch.Tensor, dropout: float) -> torch.Tensor:
    """softmax(q (k^T / sqrt(d)) masked) v with the official order: k scaled by the float64 reciprocal first."""
    scores = q @ (k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1])))
    probs = scores.masked_fill(~attn_mask[:, None], float("-inf")).softmax(dim=-1)
    return (F.dropout(probs, dropout) if dropout > 0 else probs) @ v


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.attn_dropout = cfg.n_head, cfg.attn_dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn: torch.Tensor, cache: KVCache | None = None, layer: int = 0):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.extend(layer, k, v)
        y = _attention(q, k, v, attn, self.attn_dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(cfg.n_embd), SelfAttention(cfg)
        self.ln2, self.mlp = nn.LayerNorm(cfg.n_embd), MLP(cfg)

    def forward(self, x: torch.Tensor, attn: torch.Tensor, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.ln1(x), attn, cache, layer)
        return x + self.mlp(self.ln2(x))


def official_attention(task: Task, n: torch.Tensor, cfg: ModelConfig, n_t: int | None = None) -> torch.Tensor:
    """Boolean [B, S, S] masks of the official layouts (docs/official.md section 5) for caption lengths n [B] and
    n_t text positions (default cfg.text_len); causal as well for ARGVLT (Sec. 4.1).

    T2I hides text rows and columns at or past n; I2T hides those columns from every row and all text from <BOT>;
    a row that may see nothing attends to itself (MultiHeadSelfAttention.forward).
    """
    n_i, n_t = cfg.image_tokens, n_t or cfg.text_len
    size, pos = n_i + n_t + 4, torch.arange(n_i + n_t + 4, device=n.device)
    first = 2 if task == Task.T2I else n_i + 4  # the first text position
    hidden = (pos >= first + n[:, None]) & (pos < first + n_t)  # [B, S]
    if task == Task.T2I:
        attn = ~(hidden[:, :, None] | hidden[:, None, :])
    else:
        attn = ~hidden[:, None, :].expand(-1, size, -1).clone()
        attn[:, n_i + 3, first:] = False
    if cfg.causal:
        attn &= pos[:, None] >= pos
    return attn | torch.diag_embed(~attn.any(dim=-1))


def official_segments(task: Task, cfg: ModelConfig, n_t: int | None = None) -> Segments:
    """[BOC BOT text BOG BOI image] for T2I and inpainting, [BOC BOI image BOG BOT text] otherwise (section 4), with
    n_t text positions (default cfg.text_len)."""
    n_i, n_t = cfg.image_tokens, n_t or cfg.text_len
    if task == Task.T2I:
        return Segments(image=slice(n_t + 4, n_t + 4 + n_i), text=slice(2, 2 + n_t), bot=1)
    return Segments(image=slice(2, 2 + n_i), text=slice(n_i + 4, n_i + 4 + n_t), bot=n_i + 3)


class Transformer(nn.Module):
    """MAGVLT when cfg.causal is False, ARGVLT when True (Sec. 3.1, 4.1), in the released architecture."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        check_architecture(cfg)
        self.cfg, self.vocab = cfg, Vocab.of(cfg)
        n_i, n_t, d = cfg.image_tokens, cfg.text_len, cfg.n_embd
        # Transformer1d + LMLayer (docs/official.md sections 2, 4, 6)
        self.tok_emb = nn.Embedding(cfg.image_vocab + cfg.text_vocab, d)
        self.spc_emb = nn.Embedding(len(OFFICIAL_SPECIALS), d)
        self.pos_img, self.pos_txt = nn.Embedding(n_i, d), nn.Embedding(n_t, d)
        self.pos_spc = nn.Embedding(n_i + n_t + 4, d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.head_fc, self.head_ln = nn.Linear(d, d), nn.LayerNorm(d)
        self.output_bias = nn.Parameter(torch.zeros(cfg.image_vocab + cfg.text_vocab))
        self.length_head = nn.Linear(d, n_t, bias=False)  # class k means length k + 1
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, attn: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Block outputs [B, t, D] of input rows x [B, t, D] (from `embed`) under boolean attention [B, t, c + t];
        with a cache (ARGVLT decoding) the rows follow its c positions and their keys and values join it."""
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, attn, cache, i)
        if cache is not None:
            cache.length += x.shape[1]
        return x

    @property
    def eos(self) -> int:
        """The text id that pads official captions: <|endoftext|>, the last id of every magvlt text vocabulary."""
        return self.cfg.text_vocab - 1

    def official(
        self,
        task: Task,
        image: torch.Tensor,
        image_masked: torch.Tensor,
        text: torch.Tensor,
        text_masked: torch.Tensor,
        length: torch.Tensor,
        bog: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Block outputs [B, S, D] of the official layout of `task` (T2I or I2T) from image codes [B, N_I], raw text
        ids [B, L] (EOS-padded), masked positions, caption lengths [B] and MixSel's BOG_* rows [B] in the <BOG>
        slot (docs/official.md sections 4-5; None: <BOG>, as at sampling). L may be less than cfg.text_len when
        no caption is longer: the positions past every caption are hidden anyway, so the outputs are the same."""
        x = self.embed(task, image, image_masked, text, text_masked, bog)
        return self(x, official_attention(task, length, self.cfg, text.shape[1]))

    def embed(self, task, image, image_masked, text, text_masked, bog=None) -> torch.Tensor:
        """The input rows [B, S, D] of a layout: token rows + modality position rows (+ the special position row of
        a masked token's index), summed in the official order, around the four layout tokens (each + special
        position row 0..3)."""
        img, txt = self.embed_image(image, image_masked), self.embed_text(text, text_masked)
        order = ("BOC", "BOT", "BOG", "BOI") if task == Task.T2I else ("BOC", "BOI", "BOG", "BOT")
        ids = torch.tensor([SPC[name] for name in order], device=image.device).expand(image.shape[0], 4)
        if bog is not None:
            ids = torch.cat([ids[:, :2], bog[:, None], ids[:, 3:]], dim=1)
        slots = self.spc_emb.weight[ids] + self.pos_spc.weight[:4]
        first, second = (txt, img) if task == Task.T2I else (img, txt)
        return torch.cat([slots[:, :2], first, slots[:, 2:], second], dim=1)

    def embed_image(self, codes: torch.Tensor, masked: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Input rows [B, t, D] of image codes [B, t] at image positions start.. (docs/official.md section 4)."""
        return self._modality(self.tok_emb(codes), self.pos_img.weight, masked, SPC["MASK_IMG"], start)

    def embed_text(self, ids: torch.Tensor, masked: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Input rows [B, t, D] of raw text ids [B, t] at text positions start.. (docs/official.md section 4)."""
        rows = self.tok_emb(ids + self.cfg.image_vocab)
        return self._modality(rows, self.pos_txt.weight, masked, SPC["MASK_TXT"], start)

    def _modality(self, rows, pos, masked, mask_id: int, start: int) -> torch.Tensor:
        at = slice(start, start + rows.shape[1])
        x = torch.where(masked[..., None], self.spc_emb.weight[mask_id], rows) + pos[at]
        return torch.where(masked[..., None], x + self.pos_spc.weight[at], x)

    def official_length_logits(self, image: torch.Tensor, image_masked: torch.Tensor) -> torch.Tensor:
        """sample_i2t's length query: EOS text, its first 16 positions masked and visible, I2T layout, <BOT> state
        (the positions past the 16 are hidden, so they are left out)."""
        b, n_t = image.shape[0], min(LENGTH_QUERY, self.cfg.text_len)
        text = torch.full((b, n_t), self.eos, device=image.device)
        masked = torch.ones(b, n_t, dtype=torch.bool, device=image.device)
        h = self.official(Task.I2T, image, image_masked, text, masked, torch.full((b,), n_t, device=image.device))
        return self.length_logits(h[:, official_segments(Task.I2T, self.cfg, n_t).bot]).float()

    def _logits(self, h: torch.Tensor, ids: slice) -> torch.Tensor:
        """LMLayer: LayerNorm(GELU(Linear(h))) @ tok_emb.T + output_bias, over the ids of one modality."""
        h = self.head_ln(F.gelu(self.head_fc(h)))
        return h @ self.tok_emb.weight[ids].t() + self.output_bias[ids]

    def image_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self._logits(h, slice(0, self.cfg.image_vocab))

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        return self._logits(h, slice(self.cfg.image_vocab, self.cfg.image_vocab + self.cfg.text_vocab))

    def length_logits(self, h_bot: torch.Tensor) -> torch.Tensor:
        """Logits over text lengths 1..L from the <BOT> output (Sec. 3.1, target length)."""
        return self.length_head(h_bot)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
