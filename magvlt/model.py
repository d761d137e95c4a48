"""The MAGVLT transformer (Sec. 3.1, App. A): one stack over [<BOI> image <BOT> text], bidirectional or causal.

Every token lives in one id space so that any layout (MixSel selectors, ARGVLT's text-first order) is just
a sequence of ids: image codes [0, V_I), text tokens [V_I, V_I + V_T), then the special tokens.
Positions likewise: image positions [0, N_I), text positions [N_I, N_I + L), then special slots.
The model returns hidden states; heads are applied only where a caller needs logits.

With ModelConfig.official the same class is the released architecture (docs/official.md sections 4-6, 13): its
own special-token and special-position tables, the layouts [BOC BOT text BOG BOI image] (T2I, inpainting) and
[BOC BOI image BOG BOT text] (I2T, IT2IT, the length query) with per-sample boolean attention masks, no final norm,
the LMLayer head and a bias-free length head; `Transformer.official` runs it. Callers keep unified ids
(`magvlt.objectives.official_inputs` translates them) and hidden states work as above.
"""

from __future__ import annotations

import contextlib
import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from magvlt.config import ModelConfig
from magvlt.errors import UserError

SPECIAL_TOKENS = ("<BOI>", "<BOT>", "<MASK>", "<LEFT>", "<RIGHT>", "<TOP>", "<BOTTOM>", "<SEP>", "<PAD>")
SLOTS = ("<BOI>", "<BOT>", "<SEL>")  # position slots of special tokens
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


class Task(enum.StrEnum):
    """The training and generation tasks of Sec. 3.1: T2I, I2T and their joint version IT2IT."""

    T2I = "t2i"
    I2T = "i2t"
    IT2IT = "it2it"


@dataclass(frozen=True)
class Vocab:
    """The unified token id space of a ModelConfig: image codes, then text ids, then the special tokens."""

    image_vocab: int
    text_vocab: int
    BOI: int
    BOT: int
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

    @property
    def size(self) -> int:
        return self.special_offset + len(SPECIAL_TOKENS)

    def image(self, codes: torch.Tensor) -> torch.Tensor:
        return codes

    def text(self, ids: torch.Tensor) -> torch.Tensor:
        return ids + self.text_offset


@dataclass(frozen=True)
class Segments:
    """Where each part sits in a built sequence."""

    image: slice
    text: slice
    bot: int  # the <BOT> position, whose output predicts the text length


def positions(cfg: ModelConfig) -> dict[str, torch.Tensor | int]:
    n_i, n_t = cfg.image_tokens, cfg.text_len
    slot = {name: n_i + n_t + k for k, name in enumerate(SLOTS)}
    return {"image": torch.arange(n_i), "text": torch.arange(n_i, n_i + n_t), **slot}


def magvlt_sequence(cfg: ModelConfig, image: torch.Tensor, text: torch.Tensor, selector: torch.Tensor | None = None):
    """[(<SEL>) <BOI> image <BOT> text] from unified ids image [B, N_I], text [B, L], selector [B] (MixSel)."""
    vocab, pos, b = Vocab.of(cfg), positions(cfg), image.shape[0]
    boi = torch.full((b, 1), vocab.BOI, dtype=torch.long, device=image.device)
    bot = torch.full((b, 1), vocab.BOT, dtype=torch.long, device=image.device)
    parts, pos_parts = (
        [boi, image, bot, text],
        [[pos["<BOI>"]], pos["image"].tolist(), [pos["<BOT>"]], pos["text"].tolist()],
    )
    if selector is not None:
        parts.insert(0, selector.view(b, 1).to(image.device))
        pos_parts.insert(0, [pos["<SEL>"]])
    tokens = torch.cat(parts, dim=1)
    position_ids = torch.tensor(sum(pos_parts, []), device=image.device)
    off = 1 if selector is not None else 0
    n_i = image.shape[1]
    segs = Segments(
        image=slice(off + 1, off + 1 + n_i), text=slice(off + 2 + n_i, off + 2 + n_i + text.shape[1]), bot=off + 1 + n_i
    )
    return tokens, position_ids, segs


def argvlt_sequence(cfg: ModelConfig, image: torch.Tensor, text: torch.Tensor, task: Task):
    """ARGVLT's order (Sec. 4.1): T2I [<BOT> text <BOI> image], I2T [<BOI> image <BOT> text]."""
    if task == Task.I2T:
        return magvlt_sequence(cfg, image, text)
    if task != Task.T2I:
        raise ValueError(f"ARGVLT has no task {task!r} (only t2i and i2t)")
    vocab, pos, b = Vocab.of(cfg), positions(cfg), image.shape[0]
    bot = torch.full((b, 1), vocab.BOT, dtype=torch.long, device=image.device)
    boi = torch.full((b, 1), vocab.BOI, dtype=torch.long, device=image.device)
    tokens = torch.cat([bot, text, boi, image], dim=1)
    n_t, n_i = text.shape[1], image.shape[1]
    position_ids = torch.tensor(
        [pos["<BOT>"]] + pos["text"][:n_t].tolist() + [pos["<BOI>"]] + pos["image"][:n_i].tolist(), device=image.device
    )
    segs = Segments(image=slice(n_t + 2, n_t + 2 + n_i), text=slice(1, 1 + n_t), bot=0)
    return tokens, position_ids, segs


class KVCache:
    """Preallocated keys and values for incremental causal decoding (ARGVLT)."""

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32):
        shape = (batch, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.length = 0


def _attention_backend(q: torch.Tensor):
    """On CPU in bf16 the math kernel beats the fused one ~2.5x at these lengths (benchmarks/attention_cpu.py)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def _official_attention(q, k, v, attn_mask: torch.Tensor) -> torch.Tensor:
    """softmax(q (k^T / sqrt(d)) masked) v with the official order: k scaled by the float64 reciprocal first."""
    scores = q @ (k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1])))
    return scores.masked_fill(~attn_mask[:, None], float("-inf")).softmax(dim=-1) @ v


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.causal, self.attn_dropout = cfg.n_head, cfg.causal, cfg.attn_dropout
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            return self.resid_drop(self.proj(_official_attention(q, k, v, attn_mask).transpose(1, 2).reshape(b, t, d)))
        mask, is_causal = None, self.causal
        if cache is not None:
            start = cache.length
            cache.k[layer][:, :, start : start + t] = k
            cache.v[layer][:, :, start : start + t] = v
            k, v = cache.k[layer][:, :, : start + t], cache.v[layer][:, :, : start + t]
            if self.causal and start > 0:
                is_causal = False
                if t > 1:  # several new tokens after a prefix: each sees the prefix and its own past
                    mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(diagonal=start)
        with _attention_backend(q):
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.attn_dropout if self.training else 0.0
            )
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

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache, layer, attn_mask)
        return x + self.mlp(self.ln2(x))


def official_attention(task: Task, n: torch.Tensor, cfg: ModelConfig, n_t: int | None = None) -> torch.Tensor:
    """Boolean [B, S, S] masks of the official layouts (docs/official.md section 5) for caption lengths n [B] and
    n_t text positions (default cfg.text_len).

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
    return attn | torch.diag_embed(~attn.any(dim=-1))


def official_segments(task: Task, cfg: ModelConfig, n_t: int | None = None) -> Segments:
    """[BOC BOT text BOG BOI image] for T2I and inpainting, [BOC BOI image BOG BOT text] otherwise (section 4), with
    n_t text positions (default cfg.text_len)."""
    n_i, n_t = cfg.image_tokens, n_t or cfg.text_len
    if task == Task.T2I:
        return Segments(image=slice(n_t + 4, n_t + 4 + n_i), text=slice(2, 2 + n_t), bot=1)
    return Segments(image=slice(2, 2 + n_i), text=slice(n_i + 4, n_i + 4 + n_t), bot=n_i + 3)


class Transformer(nn.Module):
    """MAGVLT when cfg.causal is False, ARGVLT when True (Sec. 3.1, 4.1); the released architecture when cfg.official."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg, self.vocab = cfg, Vocab.of(cfg)
        n_i, n_t, d = cfg.image_tokens, cfg.text_len, cfg.n_embd
        if cfg.official and cfg.causal:
            raise UserError(
                "the official architecture is bidirectional (MAGVLT); ARGVLT uses magvlt's (official = false)"
            )
        if cfg.official:  # Transformer1d + LMLayer (docs/official.md sections 2, 4, 6)
            self.tok_emb = nn.Embedding(cfg.image_vocab + cfg.text_vocab, d)
            self.spc_emb = nn.Embedding(len(OFFICIAL_SPECIALS), d)
            self.pos_img, self.pos_txt = nn.Embedding(n_i, d), nn.Embedding(n_t, d)
            self.pos_spc = nn.Embedding(n_i + n_t + 4, d)
        else:
            self.tok_emb = nn.Embedding(self.vocab.size, d)
            self.pos_emb = nn.Embedding(n_i + n_t + len(SLOTS), d)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        if cfg.official:
            self.ln_f = nn.Identity()
            self.head_fc, self.head_ln = nn.Linear(d, d), nn.LayerNorm(d)
            self.output_bias = nn.Parameter(torch.zeros(cfg.image_vocab + cfg.text_vocab))
        else:
            self.ln_f = nn.LayerNorm(d)
            if not cfg.tie_embeddings:
                self.image_head = nn.Linear(d, cfg.image_vocab, bias=False)
                self.text_head = nn.Linear(d, cfg.text_vocab, bias=False)
        self.length_head = nn.Linear(d, n_t, bias=not cfg.official)  # class k means length k + 1
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

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Hidden states [B, S, D] (after the final norm) for unified ids [B, S] at positions [S] or [B, S]."""
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(position_ids))
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length += tokens.shape[1]
        return self.ln_f(x)

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
        x = self.drop(self._official_embed(task, image, image_masked, text, text_masked, bog))
        attn = official_attention(task, length, self.cfg, text.shape[1])
        for block in self.blocks:
            x = block(x, attn_mask=attn)
        return x

    def _official_embed(self, task, image, image_masked, text, text_masked, bog) -> torch.Tensor:
        """Token rows + modality position rows (+ the special position row of a masked token's index), summed in
        the official order, around the four layout tokens (each + special position row 0..3)."""
        spc, pos_spc = self.spc_emb.weight, self.pos_spc.weight
        img = self._modality(self.tok_emb(image), self.pos_img.weight, image_masked, spc[SPC["MASK_IMG"]], pos_spc)
        txt = self._modality(
            self.tok_emb(text + self.cfg.image_vocab), self.pos_txt.weight, text_masked, spc[SPC["MASK_TXT"]], pos_spc
        )
        order = ("BOC", "BOT", "BOG", "BOI") if task == Task.T2I else ("BOC", "BOI", "BOG", "BOT")
        ids = torch.tensor([SPC[name] for name in order], device=image.device).expand(image.shape[0], 4)
        if bog is not None:
            ids = torch.cat([ids[:, :2], bog[:, None], ids[:, 3:]], dim=1)
        slots = spc[ids] + pos_spc[:4]
        first, second = (txt, img) if task == Task.T2I else (img, txt)
        return torch.cat([slots[:, :2], first, slots[:, 2:], second], dim=1)

    def official_length_logits(self, image: torch.Tensor, image_masked: torch.Tensor) -> torch.Tensor:
        """sample_i2t's length query: EOS text, its first 16 positions masked and visible, I2T layout, <BOT> state
        (the positions past the 16 are hidden, so they are left out)."""
        b, n_t = image.shape[0], min(LENGTH_QUERY, self.cfg.text_len)
        text = torch.full((b, n_t), self.eos, device=image.device)
        masked = torch.ones(b, n_t, dtype=torch.bool, device=image.device)
        h = self.official(Task.I2T, image, image_masked, text, masked, torch.full((b,), n_t, device=image.device))
        return self.length_logits(h[:, official_segments(Task.I2T, self.cfg, n_t).bot]).float()

    @staticmethod
    def _modality(rows, pos, masked, mask_row, pos_spc) -> torch.Tensor:
        n = rows.shape[1]
        x = torch.where(masked[..., None], mask_row, rows) + pos[:n]
        return torch.where(masked[..., None], x + pos_spc[:n], x)

    def _official_logits(self, h: torch.Tensor, ids: slice) -> torch.Tensor:
        """LMLayer: LayerNorm(GELU(Linear(h))) @ tok_emb.T + output_bias, over the ids of one modality."""
        h = self.head_ln(F.gelu(self.head_fc(h)))
        return h @ self.tok_emb.weight[ids].t() + self.output_bias[ids]

    def image_logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.cfg.official:
            return self._official_logits(h, slice(0, self.cfg.image_vocab))
        if self.cfg.tie_embeddings:
            return h @ self.tok_emb.weight[: self.cfg.image_vocab].t()
        return self.image_head(h)

    def text_logits(self, h: torch.Tensor) -> torch.Tensor:
        if self.cfg.official:
            return self._official_logits(h, slice(self.cfg.image_vocab, self.cfg.image_vocab + self.cfg.text_vocab))
        if self.cfg.tie_embeddings:
            return h @ self.tok_emb.weight[self.vocab.text_offset : self.vocab.special_offset].t()
        return self.text_head(h)

    def length_logits(self, h_bot: torch.Tensor) -> torch.Tensor:
        """Logits over text lengths 1..L from the <BOT> output (Sec. 3.1, target length)."""
        return self.length_head(h_bot)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
