"""A minimal functional model of the official MAGVLT written from docs/official.md, checked against the fixtures.

Test-only: it proves the written spec (layouts, positions, masks, head, samplers) reproduces the official code, so
magvlt's own Transformer can be made to match it. Weights are the plain tensors of magvlt.official.checkpoint.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BOI, BOT, BOC, BOG, MASK_IMG, MASK_TXT = range(6)
EOS = 49407


class Reference:
    """The official Transformer1d + LMLayer + length head as functions of the checkpoint's tensors."""

    def __init__(self, w: dict[str, torch.Tensor], arch):
        self.w, self.a = w, arch

    def embed(self, task, codes, text, img_masked, txt_masked):
        """Token + position rows of [BOC BOT text BOG BOI image] (t2i) or [BOC BOI image BOG BOT text] (i2t)."""
        w, a = self.w, self.a
        B, I, T = codes.shape[0], codes.shape[1], text.shape[1]
        spc, pos_spc = w["tok_emb_spc.weight"], w["pos_emb_spc.pos_embed"]
        img = torch.where(img_masked[..., None], spc[MASK_IMG], w["tok_emb.weight"][codes]) + w["pos_emb_img.pos_embed"][:I]
        img = torch.where(img_masked[..., None], img + pos_spc[:I], img)
        txt = torch.where(txt_masked[..., None], spc[MASK_TXT], w["tok_emb.weight"][a.vocab_img + text]) + w["pos_emb_txt.pos_embed"][:T]
        txt = torch.where(txt_masked[..., None], txt + pos_spc[:T], txt)
        order = (BOC, BOT, BOG, BOI) if task == "t2i" else (BOC, BOI, BOG, BOT)
        s = (spc[list(order)] + pos_spc[:4]).expand(B, 4, -1)
        first, second = (txt, img) if task == "t2i" else (img, txt)
        return torch.cat([s[:, :2], first, s[:, 2:], second], dim=1)

    def hidden(self, x, attn):
        """The blocks: x + attn(ln1 x), x + mlp(ln2 x); a row that may see nothing attends to itself."""
        w, D, H = self.w, self.a.width, self.a.heads
        attn = attn | torch.diag_embed(~attn.any(-1))
        for i in range(self.a.layers):
            p = f"blocks.{i}."
            h = F.layer_norm(x, (D,), w[p + "ln1.weight"], w[p + "ln1.bias"])
            q, k, v = (F.linear(h, w[p + f"attn.{n}.weight"], w[p + f"attn.{n}.bias"]) for n in ("query", "key", "value"))
            q, k, v = (t.view(*t.shape[:2], H, D // H).transpose(1, 2) for t in (q, k, v))
            att = (q @ (k.transpose(-2, -1) * (1.0 / math.sqrt(D // H)))).masked_fill(~attn[:, None], float("-inf"))
            y = (att.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
            x = x + F.linear(y, w[p + "attn.proj.weight"], w[p + "attn.proj.bias"])
            h = F.layer_norm(x, (D,), w[p + "ln2.weight"], w[p + "ln2.bias"])
            x = x + F.linear(F.gelu(F.linear(h, w[p + "mlp.0.weight"], w[p + "mlp.0.bias"])), w[p + "mlp.2.weight"], w[p + "mlp.2.bias"])
        return x

    def logits(self, x):
        """LMLayer: LayerNorm(GELU(Linear(x))) @ tok_emb.T + output_bias, over all image and text ids."""
        w = self.w
        h = F.gelu(F.linear(x, w["lm_layer.linear.weight"], w["lm_layer.linear.bias"]))
        h = F.layer_norm(h, (self.a.width,), w["lm_layer.ln.weight"], w["lm_layer.ln.bias"])
        return h @ w["tok_emb.weight"].T + w["lm_layer.output_bias"]

    def t2i_attn(self, B, I, T, n):
        """Text rows and columns at or past each caption length n are hidden."""
        L = I + T + 4
        hidden = torch.arange(L)[None] >= (2 + n)[:, None]
        hidden &= torch.arange(L)[None] < 2 + T
        return ~(hidden[:, :, None] | hidden[:, None, :])

    def i2t_attn(self, B, I, T, n):
        """Text columns at or past n are hidden from every row; the BOT row sees no text."""
        L = I + T + 4
        cols = torch.arange(L)
        attn = ~((cols[None] >= (I + 4 + n)[:, None]) & (cols[None] < I + 4 + T))[:, None, :].expand(B, L, L).clone()
        attn[:, I + 3, I + 4 :] = False
        return attn

    def t2i_image_logits(self, text, n, codes, img_masked):
        B, I, T = codes.shape[0], codes.shape[1], text.shape[1]
        x = self.hidden(self.embed("t2i", codes, text, img_masked, torch.zeros_like(text, dtype=torch.bool)), self.t2i_attn(B, I, T, n))
        return self.logits(x[:, -I:])[..., : self.a.vocab_img]

    def i2t_text_hidden(self, codes, text, n, txt_masked):
        B, I, T = codes.shape[0], codes.shape[1], text.shape[1]
        x = self.hidden(self.embed("i2t", codes, text, torch.zeros_like(codes, dtype=torch.bool), txt_masked), self.i2t_attn(B, I, T, n))
        return x[:, -T:]

    def i2t_text_logits(self, codes, text, n, txt_masked):
        return self.logits(self.i2t_text_hidden(codes, text, n, txt_masked))[..., self.a.vocab_img :]

    def length_logits(self, codes):
        """The length query: EOS-filled text, first 16 positions masked and visible, BOT state -> length head."""
        B, I, T = codes.shape[0], codes.shape[1], self.a.ctx_len_txt
        text = torch.full((B, T), EOS)
        masked = torch.arange(T)[None].expand(B, T) < 16
        x = self.hidden(self.embed("i2t", codes, text, torch.zeros_like(codes, dtype=torch.bool), masked), self.i2t_attn(B, I, T, torch.full((B,), 16)))
        return x[:, I + 3] @ self.w["length_predictor.weight"].T

    def greedy_t2i(self, text, n, steps=10, temps=(1.4, 0.6), codes=None, keep=None):
        """MaskGIT with argmax tokens and confidence ranking (strategy 'maskgit'): final codes [B, I].

        Inpainting (IT2I): codes are the source image's, keep [B, I] the positions never masked.
        """
        B, I = text.shape[0], self.a.ctx_len_img
        codes = torch.zeros(B, I, dtype=torch.long) if codes is None else codes.clone()
        masked = torch.ones(B, I, dtype=torch.bool) if keep is None else ~keep
        total = int(masked[0].sum())
        for step, temp in enumerate(np.linspace(*temps, steps)):
            probs = (self.t2i_image_logits(text, n, codes, masked) / temp).softmax(-1)
            conf, sampled = probs.max(-1)
            r = torch.tensor([(step + 1) / steps], dtype=torch.float32)
            keep_masked = torch.clamp(torch.ceil(torch.cos(0.5 * math.pi * r) * total), 0, int(masked[0].sum()))
            count = int(masked[0].sum() - keep_masked)
            count = count if step == steps - 1 else max(count, 1)
            for b in range(B):
                ids = torch.arange(I)[masked[b]]
                chosen = ids[torch.sort(conf[b][ids], descending=True).indices[:count]]
                codes[b, chosen], masked[b, chosen] = sampled[b, chosen], False
        return codes

    def greedy_i2t(self, codes, steps=12, temp=0.1, top_k=32):
        """Mask-Predict with argmax tokens and lowest-log-probability re-masking: lengths [B], text rows [B, T]."""
        B, T = codes.shape[0], self.a.ctx_len_txt
        N = self.length_logits(codes).softmax(-1).argmax(-1) + 1
        text = torch.full((B, T), EOS)
        log_probs = torch.zeros(B, T)
        for t in range(steps):
            n = (N * (steps - t) / steps).int().clip(min=1)
            masked = torch.zeros(B, T, dtype=torch.bool)
            for b in range(B):
                masked[b, (-log_probs[b, : N[b]]).topk(int(n[b])).indices] = True
            h = self.i2t_text_hidden(codes, text, N, masked)[masked]  # only re-masked rows are used
            logits = self.logits(h)[..., self.a.vocab_img :] / temp
            logits = logits.masked_fill(logits < logits.topk(top_k, dim=-1).values[..., -1:], float("-inf"))
            norm = logits - logits.logsumexp(-1, keepdim=True)  # what Categorical(logits=...) holds
            sampled = norm.softmax(-1).argmax(-1)
            text[masked] = sampled
            log_probs = log_probs * ~masked
            log_probs[masked] = norm.gather(-1, sampled[:, None])[:, 0]
        return N, text
