"""The taming-transformers VQ-GAN (Esser et al. 2021) that turns an image into a grid of codes (paper Sec. 3.1).

Module and parameter names follow taming's `Encoder`, `Decoder` and `VectorQuantizer2` so that its public
checkpoints load strictly. `VQConfig.arch = "patch"` swaps in an encoder and decoder that see one f x f patch
at a time (same quantizer, training and helpers). Images enter as uint8 RGB [B, H, W, 3] or float [B, 3, H, W]
in [-1, 1].
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from magvlt.config import VQConfig
from magvlt.errors import UserError

CHUNK_PIXELS = 2**20  # pixels per forward pass in encode/decode, bounding memory for large batches


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm -> swish -> conv, twice, plus a (1x1-projected when widths differ) shortcut."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with 1x1-conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = _norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).flatten(2).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with taming's asymmetric (right/bottom) zero padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: residual blocks, each followed by attention where configured."""

    def __init__(self, widths: list[tuple[int, int]], attention: bool, dropout: float):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, dropout) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o) for _, o in widths) if attention else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class Mid(nn.Module):
    """The lowest-resolution middle: residual block, attention, residual block."""

    def __init__(self, channels: int, dropout: float):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image [B, 3, H, W] -> latents [B, z_channels, H/f, W/f], f = 2^(len(ch_mult) - 1)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        widths = [cfg.ch * m for m in (1, *cfg.ch_mult)]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        res = cfg.resolution
        for i in range(len(cfg.ch_mult)):
            chans = [widths[i]] + [widths[i + 1]] * cfg.num_res_blocks
            level = Level(list(zip(chans[:-1], chans[1:])), res in cfg.attn_resolutions, cfg.dropout)
            if i < len(cfg.ch_mult) - 1:
                level.downsample = Downsample(widths[i + 1])
                res //= 2
            self.down.append(level)
        self.mid = Mid(widths[-1], cfg.dropout)
        self.norm_out = _norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """Latents [B, z_channels, h, w] -> image [B, 3, h*f, w*f] (unbounded; trained towards [-1, 1])."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        n = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        res = cfg.resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = Mid(block_in, cfg.dropout)
        levels = []
        for i in reversed(range(n)):
            out = cfg.ch * cfg.ch_mult[i]
            chans = [block_in] + [out] * (cfg.num_res_blocks + 1)
            level = Level(list(zip(chans[:-1], chans[1:])), res in cfg.attn_resolutions, cfg.dropout)
            block_in = out
            if i > 0:
                level.upsample = Upsample(out)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[0] is the full resolution, as in taming
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class PatchMLP(nn.Module):
    """Residual 1x1-conv blocks: every position of a feature map transformed on its own."""

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Conv2d(channels, channels, 1), nn.SiLU(), nn.Conv2d(channels, channels, 1))
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        return x


class PatchEncoder(nn.Module):
    """Image -> latents where each f x f patch is encoded on its own: equal patches get equal codes, so the
    background of every scene is one token and a token's meaning never depends on its neighbours."""

    def __init__(self, cfg: VQConfig, factor: int):
        super().__init__()
        width = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.in_channels, width, factor, stride=factor)
        self.mlp = PatchMLP(width, cfg.num_res_blocks)
        self.conv_out = nn.Conv2d(width, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.mlp(self.conv_in(x))))


class PatchDecoder(nn.Module):
    """Latents -> image, each token drawn as its own f x f patch (the mirror of `PatchEncoder`)."""

    def __init__(self, cfg: VQConfig, factor: int):
        super().__init__()
        width, self.factor = cfg.ch * cfg.ch_mult[-1], factor
        self.conv_in = nn.Conv2d(cfg.z_channels, width, 1)
        self.mlp = PatchMLP(width, cfg.num_res_blocks)
        self.conv_out = nn.Conv2d(width, cfg.in_channels * factor**2, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(self.conv_out(F.silu(self.mlp(self.conv_in(z)))), self.factor)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantization onto the codebook `embedding` (van den Oord et al. 2017)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] of the closest codebook entries to latents z [B, C, h, w]."""
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float()
        codebook = self.embedding.weight.detach().float()
        sq = codebook.square().sum(1)  # |z|^2 is the same for every code, so it is left out
        with torch.autocast(z.device.type, enabled=False):  # bf16 distances would pick wrong neighbours
            codes = torch.cat([(sq - 2 * rows @ codebook.t()).argmin(1) for rows in flat.split(4096)])
        return codes.view(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] of codes [B, h, w]."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()  # channels-last slows CPU GroupNorm ~10x

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Quantized latents with the straight-through gradient, and their codes."""
        codes = self.nearest(z)
        z_q = self.lookup(codes).to(z.dtype)
        return z + (z_q - z).detach(), codes


class VQGAN(nn.Module):
    """Encoder -> quant_conv -> VectorQuantizer -> post_quant_conv -> Decoder, with image <-> token helpers."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        if cfg.arch not in ("taming", "patch"):
            raise UserError(f"VQConfig.arch must be 'taming' or 'patch', got {cfg.arch!r}")
        if any(cfg.ch * m % 32 or m < 1 for m in (1, *cfg.ch_mult)):
            raise UserError(
                f"VQConfig: every width ch * ch_mult must be a positive multiple of 32 (GroupNorm(32)), got ch={cfg.ch}, ch_mult={cfg.ch_mult}"
            )
        self.cfg = cfg
        if cfg.arch == "taming":
            self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        else:
            self.encoder, self.decoder = PatchEncoder(cfg, self.factor), PatchDecoder(cfg, self.factor)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    @property
    def factor(self) -> int:
        """Pixels per token along each side."""
        return 2 ** (len(self.cfg.ch_mult) - 1)

    @property
    def cell(self) -> tuple[int, int]:
        """Pixels per token (rows, columns)."""
        return self.factor, self.factor

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-quantization latents z_e [B, embed_dim, h, w] of float images in [-1, 1]."""
        return self.quant_conv(self.encoder(x))

    def reconstruct(self, z_q: torch.Tensor) -> torch.Tensor:
        """Float images [B, 3, H, W] from (quantized) latents."""
        return self.decoder(self.post_quant_conv(z_q))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: reconstruction through the straight-through quantizer, latents z_e and codes."""
        z = self.latents(x)
        z_q, codes = self.quantize(z)
        return self.reconstruct(z_q), z, codes

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Codes LongTensor [B, h, w] of uint8 RGB [B, H, W, 3] (numpy or tensor) or float [B, 3, H, W] images."""
        x = self.to_input(images)
        chunk = max(1, CHUNK_PIXELS // (x.shape[2] * x.shape[3]))
        return torch.cat([self.quantize.nearest(self.latents(part)) for part in x.split(chunk)])

    @torch.no_grad()
    def decode_float(self, tokens, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Float images [B, 3, H, W] in [-1, 1] from codes [B, h, w] or [B, h*w] (grid=(h, w) if not square)."""
        codes, dtype = self.check_tokens(tokens, grid), self.quant_conv.weight.dtype
        chunk = max(1, CHUNK_PIXELS // (codes.shape[1] * codes.shape[2] * self.factor**2))
        return torch.cat(
            [self.reconstruct(self.quantize.lookup(part).to(dtype)).float().clamp(-1, 1) for part in codes.split(chunk)]
        )

    def decode(self, tokens, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 RGB images [B, H, W, 3] on the CPU from codes [B, h, w] or [B, h*w]."""
        return to_uint8(self.decode_float(tokens, grid))

    def to_input(self, images) -> torch.Tensor:
        """Float [B, 3, H, W] in [-1, 1] on the model's device; integer pixels go through `to_rgb_uint8`."""
        param = self.quant_conv.weight
        if isinstance(images, np.ndarray) and images.dtype.kind == "f":
            images = torch.from_numpy(images)
        if isinstance(images, torch.Tensor) and images.is_floating_point():
            if images.ndim != 4 or images.shape[1] != 3:
                raise UserError(f"float images must be [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
            if images.numel() and (images.min() < -1.001 or images.max() > 1.001):
                raise UserError("float images must lie in [-1, 1]; uint8 images [B, H, W, 3] are also accepted")
            x = images.to(param.device, param.dtype)
        else:
            x = uint8_batch(images).to(param.device).permute(0, 3, 1, 2).to(param.dtype) / 127.5 - 1.0
        f, (h, w) = self.factor, x.shape[-2:]
        if h % f or w % f or h == 0 or w == 0 or x.shape[0] == 0:
            raise UserError(
                f"image size {h}x{w} must be non-empty and divisible by {f} (the tokenizer's downsampling factor)"
            )
        return x.contiguous()

    def check_tokens(self, tokens, grid: tuple[int, int] | None) -> torch.Tensor:
        """Codes as a LongTensor [B, h, w] on the model's device; out-of-range or malformed codes are refused."""
        codes = checked_codes(tokens, self.cfg.n_embed)
        if codes.ndim == 2:
            n = codes.shape[1]
            if grid is None:
                side = round(n**0.5)
                if side * side != n:
                    raise UserError(f"{n} tokens per image is not a square grid; pass grid=(h, w)")
                grid = (side, side)
            if grid[0] * grid[1] != n:
                raise UserError(f"grid {tuple(grid)} does not hold {n} tokens")
            codes = codes.reshape(-1, *grid)
        return codes.to(self.quant_conv.weight.device, torch.long)


def checked_codes(tokens, n_embed: int) -> torch.Tensor:
    """Tokens as an integer tensor [B, h, w] or [B, h*w] with every code in [0, n_embed); anything else is refused."""
    codes = torch.as_tensor(tokens)
    if codes.is_floating_point() or codes.dtype == torch.bool or codes.ndim not in (2, 3) or codes.numel() == 0:
        raise UserError(
            f"tokens must be a non-empty integer array [B, h, w] or [B, h*w], got {codes.dtype} {tuple(codes.shape)}"
        )
    if codes.min() < 0 or codes.max() >= n_embed:
        raise UserError(f"tokens must lie in [0, {n_embed}), got [{int(codes.min())}, {int(codes.max())}]")
    return codes


def uint8_batch(images) -> torch.Tensor:
    """uint8 RGB images as a tensor [B, H, W, 3]: such a tensor as it is, anything else through `to_rgb_uint8`."""
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.ndim == 4 and images.shape[-1] == 3:
        return images
    images = torch.from_numpy(to_rgb_uint8(images.cpu() if isinstance(images, torch.Tensor) else images))
    return images[None] if images.ndim == 3 else images


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images [B, 3, H, W] in [-1, 1] -> uint8 RGB [B, H, W, 3] on the CPU."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().contiguous()


def to_rgb_uint8(array) -> np.ndarray:
    """Any common pixel array -> uint8 RGB [..., H, W, 3].

    Layouts: [H, W] grayscale, [H, W, C] one image, [B, H, W] grayscale batch, [B, H, W, C] batch, with
    C = 1 (gray, repeated to RGB), 2 (gray + alpha), 3 (RGB) or 4 (RGBA). Alpha is composited over black
    (the shapes-world background). 16-bit images are scaled to 8 bits (round(v * 255 / 65535)).
    """
    a = np.asarray(array)
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise UserError(
            f"images must be uint8 or uint16 pixel arrays, got {a.dtype}; float images go in as [B, 3, H, W] in [-1, 1]"
        )
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] > 4):
        a = a[..., None]
    if a.ndim not in (3, 4) or a.shape[-1] not in (1, 2, 3, 4):
        raise UserError(
            f"cannot read an image of shape {a.shape}; expected [H, W], [H, W, C] or [B, H, W, C] with C in 1-4"
        )
    if a.shape[-1] in (2, 4):
        alpha = a[..., -1:].astype(np.uint16)
        a = ((a[..., :-1].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a)
