"""Train the VQ-GAN tokenizer (Esser et al. 2021) on a budget of minutes, on the CPU or a GPU.

Loss: L1 (or L2) reconstruction + beta * commitment, optionally a PatchGAN hinge term. The codebook is
not trained by gradients but by EMA updates (van den Oord et al. 2017, App. A.1), seeded by k-means on
the encoder outputs of up to 512 training images. Codes whose EMA usage falls below a fraction of uniform usage are
restarted at encoder outputs drawn in proportion to their squared quantization error, so restarts land
where the codebook serves the data worst (black background patches, the bulk of shapes-world tokens,
are then rarely picked). Without restarts an EMA codebook collapses to a dozen codes on shapes world.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from magvlt.checkpoint import atomic_write_text
from magvlt.config import PaletteConfig, VQConfig
from magvlt.errors import UserError
from magvlt.precision import autocast, use_bf16
from magvlt.vq import VQGAN, PaletteTokenizer, save_vq, to_rgb_uint8


class EMACodebook:
    """EMA codebook updates with k-means init and dead-code restart, writing into `quantize.embedding.weight`."""

    def __init__(self, weight: torch.Tensor, decay: float, dead_fraction: float, generator: torch.Generator):
        self.weight, self.decay, self.dead_fraction, self.gen = weight, decay, dead_fraction, generator
        self.cluster_size = torch.zeros(weight.shape[0], device=weight.device)
        self.embed_sum = weight.detach().float().clone()

    @torch.no_grad()
    def kmeans_init(self, z: torch.Tensor, iters: int, batch_tokens: int) -> None:
        """Codebook = k-means (k-means++ seeding, `iters` Lloyd steps) of encoder outputs z [N, D]; usage is
        counted per training batch of `batch_tokens` vectors."""
        centers = self._kmeans_pp(z, self.weight.shape[0])
        for _ in range(iters):
            codes = torch.cdist(z, centers).argmin(1)
            counts = torch.bincount(codes, minlength=len(centers)).float()
            sums = torch.zeros_like(centers).index_add_(0, codes, z)
            filled = counts > 0
            centers[filled] = sums[filled] / counts[filled, None]
        counts = torch.bincount(torch.cdist(z, centers).argmin(1), minlength=len(centers)).float()
        self.cluster_size = (counts * batch_tokens / len(z)).clamp(min=self.grace(batch_tokens))
        self.embed_sum = centers * self.cluster_size[:, None]
        self.weight.copy_(centers)

    def _kmeans_pp(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """k-means++ seeding: each next center drawn in proportion to the squared distance to the nearest one."""
        picks = [int(torch.randint(len(z), (1,), generator=self.gen, device=z.device))]
        dist = (z - z[picks[0]]).square().sum(1)
        for _ in range(k - 1):
            picks.append(int(torch.multinomial(dist + 1e-12, 1, generator=self.gen)))
            dist = torch.minimum(dist, (z - z[picks[-1]]).square().sum(1))
        return z[picks].clone()

    @torch.no_grad()
    def update(self, z: torch.Tensor, codes: torch.Tensor) -> int:
        """One EMA step from encoder outputs z [N, D] and their codes [N]; returns how many codes were restarted."""
        k, d = self.weight.shape[0], self.decay
        counts = torch.bincount(codes, minlength=k).float()
        sums = torch.zeros_like(self.embed_sum).index_add_(0, codes, z)
        self.cluster_size.mul_(d).add_(counts, alpha=1 - d)
        self.embed_sum.mul_(d).add_(sums, alpha=1 - d)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + k * 1e-5) * n  # Laplace smoothing keeps unused codes finite
        self.weight.copy_(self.embed_sum / smoothed[:, None])
        return self._restart_dead(z, codes, uniform=len(z) / k)

    def grace(self, n: int) -> float:
        """EMA usage given to a fresh code: twice the threshold, so it is restarted again if unused for ln 2 / (1 - decay) steps."""
        return 2 * self.dead_fraction * n / self.weight.shape[0]

    def _restart_dead(self, z: torch.Tensor, codes: torch.Tensor, uniform: float) -> int:
        dead = (self.cluster_size < self.dead_fraction * uniform).nonzero().squeeze(1)
        if len(dead) == 0:
            return 0
        error = (z - self.weight[codes]).square().sum(1)
        picks = torch.multinomial(error + 1e-12, len(dead), replacement=len(dead) > len(z), generator=self.gen)
        self.weight[dead] = z[picks]
        self.cluster_size[dead] = self.grace(len(z))
        self.embed_sum[dead] = z[picks] * self.grace(len(z))
        return len(dead)

    def active(self) -> int:
        """Codes whose EMA usage is above the restart threshold."""
        uniform = self.cluster_size.sum() / len(self.cluster_size)
        return int((self.cluster_size >= self.dead_fraction * uniform).sum())


def patch_discriminator(channels: int = 64, n_layers: int = 2) -> nn.Sequential:
    """taming's PatchGAN discriminator (Isola et al. 2017), shallower for small images: one logit per patch."""
    layers: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
    for i in range(1, n_layers + 1):
        c_in, c_out = channels * 2 ** (i - 1), channels * 2 ** min(i, 3)
        layers += [
            nn.Conv2d(c_in, c_out, 4, 2 if i < n_layers else 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.2),
        ]
    layers.append(nn.Conv2d(channels * 2 ** min(n_layers, 3), 1, 4, 1, 1))
    return nn.Sequential(*layers)


def squeeze(x: torch.Tensor, axis: str) -> torch.Tensor:
    """Float images at half width ("w") or half height ("h"), each pixel the mean of a pair (PIL's BOX filter)."""
    return F.avg_pool2d(x, (1, 2) if axis == "w" else (2, 1))


def psnr(mse: float, peak_to_peak: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB of a mean squared error over a signal spanning `peak_to_peak`."""
    return 10 * math.log10(peak_to_peak**2 / max(mse, 1e-12))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return (
        images.permute(0, 3, 1, 2).float().contiguous() / 127.5 - 1.0
    )  # channels-last input makes CPU GroupNorm ~10x slower


def lr_at(progress: float, lr: float, warmup: float = 0.03, floor: float = 0.1) -> float:
    """Linear warmup over the first 3% of the budget, then cosine decay to floor * lr."""
    if progress < warmup:
        return lr * max(progress / warmup, 0.01)
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def fit_palette(images: np.ndarray, cfg: PaletteConfig | None = None) -> PaletteTokenizer:
    """The palette tokenizer fitted to uint8 images [B, H, W, 3] and to their half-width and half-height copies,
    which MixSel's pre-tokenized encodings are made of (`magvlt.data.tokenize.squeeze`)."""
    from magvlt.data.tokenize import squeeze as squeeze_uint8

    extra = (squeeze_uint8(images, "w"), squeeze_uint8(images, "h"))
    return PaletteTokenizer.fit(images, cfg or PaletteConfig(), extra=extra)


@torch.no_grad()
def evaluate(model: VQGAN | PaletteTokenizer, images: np.ndarray, batch_size: int = 256) -> dict:
    """PSNR (dB, uint8 pixels) of decode(encode(x)), and codebook usage: share of codes used, perplexity."""
    model.eval()
    sq_err, counts = 0.0, torch.zeros(model.cfg.n_embed)
    for i in range(0, len(images), batch_size):
        batch = images[i : i + batch_size]
        codes = model.encode(batch)
        recon = model.decode(codes).numpy()
        sq_err += float(((recon.astype(np.float64) - batch) ** 2).sum())
        counts += torch.bincount(codes.flatten().cpu(), minlength=model.cfg.n_embed).float()
    p = counts / counts.sum()
    mse = sq_err / images.size
    return {
        "psnr": psnr(mse, 255.0),
        "codes_used": int((counts > 0).sum()),
        "usage": float((counts > 0).float().mean()),
        "perplexity": float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum())),
    }


@torch.no_grad()
def _sample_latents(model: VQGAN, data: torch.Tensor, gen: torch.Generator, bf16: bool, n: int = 512) -> torch.Tensor:
    """Encoder outputs [n * h * w, D] of up to n random training images, for the k-means codebook init."""
    idx = torch.randperm(len(data), generator=gen, device=data.device)[:n]
    with autocast(bf16, data.device):
        z = model.latents(to_float(data[idx]))
    return z.float().permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def train_vq(
    images: np.ndarray,
    cfg: VQConfig,
    *,
    minutes: float = 6.0,
    batch_size: int = 32,
    lr: float = 2e-3,
    seed: int = 0,
    out: Path | None = None,
    progress: bool = True,
    steps: int = 0,
    min_steps: int = 0,
    val_images: np.ndarray | None = None,
    precision: str = "auto",
    device: str | torch.device | None = None,
    log_every: int = 0,
) -> tuple[VQGAN, dict]:
    """Train a VQ-GAN on uint8 images [N, H, W, 3] for `minutes` (or `steps`, whichever ends first), but at least
    `min_steps`: on a loaded machine the time budget then stretches (and the learning rate follows the steps)
    rather than leaving codes too coarse to use.

    Returns the model (eval mode) and stats: steps, seconds, precision, final batch loss, and PSNR / codebook usage of
    decode(encode(x)) on `val_images` (default: up to 512 training images). Saves to `out` if given.
    """
    images = _check_inputs(images, cfg, batch_size, minutes, steps)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = use_bf16(precision, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VQGAN(cfg).to(device).train()
        disc = patch_discriminator().to(device) if cfg.disc_weight > 0 else None
    model.to_input(images[:1])  # refuses image sizes the tokenizer cannot tile
    data = torch.from_numpy(images).to(device)
    codebook = EMACodebook(model.quantize.embedding.weight, cfg.ema_decay, cfg.dead_code_fraction, gen)
    batch_tokens = batch_size * (images.shape[1] // model.factor) * (images.shape[2] // model.factor)
    if cfg.kmeans_iters > 0:
        codebook.kmeans_init(_sample_latents(model, data, gen, bf16), cfg.kmeans_iters, batch_tokens)
    params = [p for n, p in model.named_parameters() if n != "quantize.embedding.weight"]
    optimizers = [torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))]
    if disc is not None:
        optimizers.append(torch.optim.Adam(disc.parameters(), lr=lr, betas=(0.5, 0.9)))  # taming's GAN setting

    budget, start, step, restarts = minutes * 60, time.perf_counter(), 0, 0
    bar = tqdm(total=steps or None, unit="step", desc="vq", disable=None if progress else True)
    while (done := _progress(time.perf_counter() - start, budget, step, steps, min_steps)) < 1:
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr_at(done, lr)
        x = _batch(data, batch_size, cfg.squeeze_fraction, gen)
        adversarial = disc is not None and step >= cfg.disc_start
        loss, recon, z, codes = _losses(model, disc if adversarial else None, x, cfg, bf16)
        optimizers[0].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[0].step()
        if adversarial:
            _discriminator_step(disc, optimizers[1], x, recon.detach(), bf16)
        restarts += codebook.update(z.detach().float().permute(0, 2, 3, 1).reshape(-1, z.shape[1]), codes.flatten())
        step += 1
        bar.update(1)
        if step % 10 == 0 or (log_every and step % log_every == 0):
            status = {
                "loss": f"{loss.item():.4f}",
                "psnr": f"{psnr(F.mse_loss(recon.detach(), x).item()):.1f}",
                "codes": f"{codebook.active()}/{cfg.n_embed}",
            }
            bar.set_postfix(status)
            if log_every and step % log_every == 0:
                bar.write(
                    f"vq step {step} " + " ".join(f"{k} {v}" for k, v in status.items()) + f" restarts {restarts}"
                )
    bar.close()
    seconds = time.perf_counter() - start
    held_out = to_rgb_uint8(val_images) if val_images is not None else images[:512]
    stats = {
        "steps": step,
        "seconds": round(seconds, 1),
        "precision": "bf16" if bf16 else "fp32",
        "images_per_s": round(step * batch_size / seconds, 1),
        "loss": loss.item(),
        "restarts": restarts,
        **evaluate(model, held_out),
    }
    if out is not None:
        save_vq(model, out)
        atomic_write_text(Path(out) / "train_stats.json", json.dumps(stats, indent=2) + "\n")
    return model, stats


def _check_inputs(images, cfg: VQConfig, batch_size: int, minutes: float, steps: int) -> np.ndarray:
    images = to_rgb_uint8(images)
    if images.ndim != 4 or len(images) < batch_size:
        raise UserError(
            f"need at least batch_size={batch_size} images [N, H, W, 3] to train on, got shape {images.shape}"
        )
    if cfg.rec_loss not in ("l1", "l2"):
        raise UserError(f"VQConfig.rec_loss must be 'l1' or 'l2', got {cfg.rec_loss!r}")
    if minutes <= 0 and steps <= 0:
        raise UserError("give a positive time budget (minutes) or number of steps")
    return images


def _fraction(used: float, total: float) -> float:
    return used / total if total > 0 else 0.0


def _progress(seconds: float, budget: float, step: int, steps: int, min_steps: int) -> float:
    """How far training is (it ends at 1): the further of time and steps, held back to step / min_steps."""
    done = max(_fraction(seconds, budget), _fraction(step, steps))
    return min(done, step / min_steps) if min_steps > 0 else done


def _batch(data: torch.Tensor, batch_size: int, squeeze_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """A random float batch; a `squeeze_fraction` of batches come at half width or half height."""
    x = to_float(data[torch.randint(len(data), (batch_size,), generator=gen, device=data.device)])
    u = float(torch.rand((), generator=gen, device=data.device))
    if u < squeeze_fraction:
        x = squeeze(x, "w" if u < squeeze_fraction / 2 else "h")
    return x


def _losses(model: VQGAN, disc: nn.Module | None, x: torch.Tensor, cfg: VQConfig, bf16: bool):
    """Reconstruction + beta * commitment (+ the generator's hinge term); also the reconstruction, z_e and codes."""
    with autocast(bf16, x.device):
        recon, z, codes = model(x)
        recon = recon.float()
        rec = F.l1_loss(recon, x) if cfg.rec_loss == "l1" else F.mse_loss(recon, x)
        loss = rec + cfg.beta * F.mse_loss(z.float(), model.quantize.lookup(codes).detach())
        if disc is not None:
            loss = loss - cfg.disc_weight * disc(recon).float().mean()
    return loss, recon, z, codes


def _discriminator_step(
    disc: nn.Module, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor, bf16: bool
) -> None:
    """One hinge-loss update of the PatchGAN discriminator."""
    with autocast(bf16, real.device):
        loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
