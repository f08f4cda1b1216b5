"""The learned transforms and entropy-model parameters: one definition for encode, decode and train.

Layout follows the CompressAI separation of *transforms* and *entropy models*:

* ``Analysis`` (g_a): image (1 channel, normalised domain) -> latent y at 1/16 resolution.
* ``Synthesis`` (g_s): quantised latent -> image.
* ``HyperAnalysis`` (h_a): y -> hyper-latent z at 1/64 resolution.
* ``HyperSynthesis`` (h_s): quantised z -> (mean, scale index) of every latent element.
  It is trained with fake fixed-point quantisation and exported to exact integer arithmetic
  (see ``sarcodec.entropy``), so the entropy decoder never depends on float rounding.
* ``FactorizedPrior``: the learned per-channel density of z.
* ``QualityFilm`` (optional, ``ModelConfig.q_film``): per-quality scale and shift of the
  synthesis features, so the decoder can estimate differently at each rate.
* ``GainUnits``: one pair of per-channel gain vectors per quality level, so a single model
  serves quality 1..8 (variable rate).
* ``ReconOffsets``: per quality, where in its quantisation bin the decoder reconstructs a coded
  latent, by scale index and |symbol| (see ``sarcodec.entropy``).

Cheap by design (2 CPU cores): pixel-unshuffle stem, 3x3 convolutions, bottleneck residual
blocks and pixel-shuffle upsampling.  ``count_macs`` measures the cost per pixel.

Two architectures share these classes (``ModelConfig.transform``):

* ``lapped16`` (default model): 16x16 lapped transform + nonlinear residual branches, latent at
  1/16 resolution, full mean-scale hyper-synthesis.
* ``lot8`` (fast preset, ``ModelConfig.fast()``): the separable lapped transform of
  ``sarcodec.lot`` alone (latent: 64 coefficients at 1/8 resolution), a small hyper-analysis and a
  ``macro`` hyper-synthesis head (a scale per channel per 4x4 blocks, a mean for the DC).  Its
  inference runs in numpy (``sarcodec.runtime``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import lot
from .config import BLOCK, LOG_GAIN_RATE, ModelConfig  # noqa: F401 - ModelConfig re-exported
from .entropy import (  # noqa: F401 - fixed-point formats and scale table, re-exported
    A_FRAC_BITS, A_MAX, MACRO, MEAN_GAIN, NUM_SCALES, RECON_MAX, SCALE_MAX, SCALE_MIN, SIDX_GAIN, W_FRAC_BITS, Z_RADIUS,
)


def scale_table() -> torch.Tensor:
    """Log-spaced Gaussian scales indexed by the integer output of h_s."""
    return torch.exp(torch.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), NUM_SCALES, dtype=torch.float64))


SCALE_LOG_STEP = (math.log(SCALE_MAX) - math.log(SCALE_MIN)) / (NUM_SCALES - 1)


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)


class ResBlock(nn.Module):
    """Residual block; ``bottleneck`` halves the width of the 3x3 conv (1x1-3x3-1x1)."""

    def __init__(self, ch: int, bottleneck: bool = False) -> None:
        super().__init__()
        if bottleneck:
            mid = ch // 2
            self.body = nn.Sequential(conv(ch, mid, 1), nn.LeakyReLU(0.1), conv(mid, mid, 3), nn.LeakyReLU(0.1), conv(mid, ch, 1))
        else:
            self.body = nn.Sequential(conv(ch, ch, 3), nn.LeakyReLU(0.1), conv(ch, ch, 3))
        last = self.body[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


DCT_GAIN = 32.0  # analysis scale: a unit quantisation step is 1/32 of the normalised range at gain 1


def dct_basis(n: int = BLOCK) -> torch.Tensor:
    """Orthonormal 2-D DCT-II basis (n*n, n, n), ordered from low to high frequency (zig-zag)."""
    k = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    order = sorted(((u, v) for u in range(n) for v in range(n)), key=lambda t: (t[0] + t[1], t[0]))
    return torch.stack([torch.outer(c[u], c[v]) for u, v in order]).float()


def lapped_init(weight: torch.Tensor, scale: float, dc_scale: float) -> None:
    """Centre the DCT basis in a 2x-wide kernel: the transform starts as a block DCT and can learn overlap."""
    with torch.no_grad():
        weight.zero_()
        basis = dct_basis()[: weight.shape[0]] * scale
        basis[0] *= dc_scale
        o = BLOCK // 2
        weight[:, 0, o : o + BLOCK, o : o + BLOCK] = basis


class Analysis(nn.Module):
    """Lapped transform (starts as a 16x16 DCT) plus a learned nonlinear residual (starts at zero)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.lapped = nn.Conv2d(1, cfg.latent, 2 * BLOCK, stride=BLOCK, padding=BLOCK // 2, bias=False)
        lapped_init(self.lapped.weight, DCT_GAIN, 1.0 / BLOCK)  # DC = 32 x block mean
        self.net = nn.Sequential(
            nn.PixelUnshuffle(4),
            conv(16, cfg.c4, 3),
            nn.LeakyReLU(0.1),
            ResBlock(cfg.c4, bottleneck=True),
            conv(cfg.c4, cfg.c8, 3, stride=2),
            nn.LeakyReLU(0.1),
            ResBlock(cfg.c8, bottleneck=True),
            conv(cfg.c8, cfg.c16, 3, stride=2),
            nn.LeakyReLU(0.1),
            ResBlock(cfg.c16, bottleneck=True),
            conv(cfg.c16, cfg.latent, 3),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lapped(x) + self.net(x)


class QualityFilm(nn.Module):
    """Per-quality, per-channel scale and shift of the synthesis features at 1/16, 1/8 and 1/4.

    The decoder otherwise infers the rate only from the statistics of its input; with these it can
    smooth more at low qualities (where it estimates the reflectivity) than at high ones.  Starts as
    the identity, so a model trained without it continues from exactly where it was.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.chans = (cfg.c16, cfg.c8, cfg.c4)
        n = sum(self.chans)
        self.log_scale = nn.Parameter(torch.zeros(cfg.qualities, n))
        self.shift = nn.Parameter(torch.zeros(cfg.qualities, n))

    def forward(self, x: torch.Tensor, q: torch.Tensor, level: int) -> torch.Tensor:
        """Features ``x`` (B, C, h, w) at ``level`` (0: 1/16, 1: 1/8, 2: 1/4) for qualities ``q`` (B,)."""
        a = sum(self.chans[:level])
        sl = slice(a, a + self.chans[level])
        return x * torch.exp(self.log_scale[q, sl])[:, :, None, None] + self.shift[q, sl][:, :, None, None]


class Synthesis(nn.Module):
    """Inverse lapped transform (starts as the inverse DCT) plus a learned residual (starts at zero)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.lapped = nn.ConvTranspose2d(cfg.latent, 1, 2 * BLOCK, stride=BLOCK, padding=BLOCK // 2, bias=True)
        lapped_init(self.lapped.weight, 1.0 / DCT_GAIN, float(BLOCK))
        nn.init.zeros_(self.lapped.bias)
        self.net = nn.Sequential(
            conv(cfg.latent, cfg.c16, 3),
            nn.LeakyReLU(0.1),
            ResBlock(cfg.c16),
            conv(cfg.c16, 4 * cfg.c8, 1),
            nn.PixelShuffle(2),
            nn.LeakyReLU(0.1),
            ResBlock(cfg.c8),
            ResBlock(cfg.c8),
            conv(cfg.c8, 4 * cfg.c4, 1),
            nn.PixelShuffle(2),
            nn.LeakyReLU(0.1),
            ResBlock(cfg.c4),
            conv(cfg.c4, 16, 3),
            nn.PixelShuffle(4),
        )
        nn.init.zeros_(self.net[-2].weight)
        nn.init.zeros_(self.net[-2].bias)
        # ``s16_extra`` bottleneck blocks at 1/16 follow net's first block (~330 MACs/pixel and one
        # latent of receptive field each); separate, so that a smaller model's parameters keep their
        # names and load into a grown one, which then starts as exactly that model (a new block
        # starts as the identity)
        self.more = nn.Sequential(*[ResBlock(cfg.c16, bottleneck=True) for _ in range(cfg.s16_extra)])
        self.film = QualityFilm(cfg) if cfg.q_film else None

    def forward(self, y: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        """``q`` (B,): quality indices 0..7; needed only by a model with ``q_film``."""
        h = self.more(self.net[:3](y))
        if self.film is None:
            return self.lapped(y) + self.net[3:](h)
        if q is None:
            raise ValueError("this synthesis is quality-conditioned: pass q")
        h = self.film(h, q, 0)
        h = self.film(self.net[3:8](h), q, 1)
        h = self.film(self.net[8:12](h), q, 2)
        return self.lapped(y) + self.net[12:](h)


class LotAnalysis(nn.Module):
    """Fast preset g_a: the separable lapped transform of ``sarcodec.lot`` (starts as the 8x8 DCT)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.from_numpy(lot.init_bases()[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lot.analysis(x[:, 0], self.a)


class LotSynthesis(nn.Module):
    """Fast preset g_s: overlap-add synthesis with its own learned basis (starts as the inverse DCT)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.from_numpy(lot.init_bases()[1]))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, y: torch.Tensor, q: torch.Tensor | None = None) -> torch.Tensor:
        """``q`` is accepted for the interface of ``Synthesis``; this synthesis does not depend on it."""
        return lot.synthesis(y, self.s)[:, None] + self.bias


class FastHyperAnalysis(nn.Module):
    """Fast preset h_a: (DC, |AC|) of 4x4 blocks -> z at 1/32 resolution (encoder only, float)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hyper_hidden
        self.patch = nn.Conv2d(cfg.latent, h, MACRO, stride=MACRO)
        self.mix = conv(h, h, 3)
        self.out = conv(h, cfg.hyper, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        f = torch.cat([y[:, :1], y[:, 1:].abs()], dim=1)
        x = F.leaky_relu(self.patch(f), 0.1)
        x = F.leaky_relu(self.mix(x), 0.1)
        return self.out(x)


class HyperAnalysis(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hyper_hidden
        self.net = nn.Sequential(
            conv(cfg.latent, h, 3),
            nn.LeakyReLU(0.1),
            conv(h, h, 3, stride=2),
            nn.LeakyReLU(0.1),
            conv(h, cfg.hyper, 3, stride=2),
        )

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class QConv(nn.Conv2d):
    """Conv whose weights and bias are fake-quantised to the integer export format."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _ste_round(self.weight * 2**W_FRAC_BITS) / 2**W_FRAC_BITS
        b = _ste_round(self.bias * 2 ** (W_FRAC_BITS + A_FRAC_BITS)) / 2 ** (W_FRAC_BITS + A_FRAC_BITS)
        return F.conv2d(x, w, b, padding=self.padding)


def qrelu(x: torch.Tensor) -> torch.Tensor:
    """ReLU clamped to [0, A_MAX] and rounded to the activation grid (straight-through)."""
    x = torch.clamp(x, 0.0, A_MAX)
    return _ste_round(x * 2**A_FRAC_BITS) / 2**A_FRAC_BITS


class HyperSynthesis(nn.Module):
    """z_hat -> (mean, scale index). Integer-exportable: QConv + qrelu + pixel shuffle only."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h = cfg.hyper_hidden
        self.latent = cfg.latent
        self.head = cfg.hs_head
        if self.head == "macro":
            self.convs = nn.ModuleList(
                [
                    QConv(cfg.hyper, h, 3, padding=1),
                    QConv(h, h, 1, padding=0),
                    QConv(h, cfg.latent + MACRO**2, 1, padding=0),  # scale indices, then 4x4 DC means
                ]
            )
            self.shuffle_after = (False, False, False)
            sidx_bias = slice(0, cfg.latent)
        else:
            self.convs = nn.ModuleList(
                [
                    QConv(cfg.hyper, h, 3, padding=1),
                    QConv(h, 4 * h, 3, padding=1),  # -> shuffle x2
                    QConv(h, 4 * h, 3, padding=1),  # -> shuffle x2
                    QConv(h, h, 3, padding=1),
                    QConv(h, 2 * cfg.latent, 1, padding=0),
                ]
            )
            self.shuffle_after = (False, True, True, False, False)
            sidx_bias = slice(cfg.latent, None)
        # start with scale index 16 (sigma ~0.8)
        nn.init.constant_(self.convs[-1].bias, 0.0)
        with torch.no_grad():
            self.convs[-1].bias[sidx_bias] = 16.0 / SIDX_GAIN

    def forward(self, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = z_hat
        n = len(self.convs)
        for i, (c, sh) in enumerate(zip(self.convs, self.shuffle_after)):
            x = c(x)
            if sh:
                x = F.pixel_shuffle(x, 2)
            if i < n - 1:
                x = qrelu(x)
        if self.head == "macro":
            sidx = x[:, : self.latent].repeat_interleave(MACRO, 2).repeat_interleave(MACRO, 3)
            dc = F.pixel_shuffle(x[:, self.latent :], MACRO)
            mean = torch.cat([dc, torch.zeros_like(sidx[:, 1:])], dim=1)
        else:
            mean, sidx = x.chunk(2, dim=1)
        # the integer path applies the output gains to the integer accumulator, then rounds the mean
        # to the activation grid
        mean = _ste_round(mean * MEAN_GAIN * 2**A_FRAC_BITS) / 2**A_FRAC_BITS
        return mean, sidx * SIDX_GAIN


def index_to_scale(sidx: torch.Tensor) -> torch.Tensor:
    """Continuous version of the scale table lookup used during training."""
    s = torch.clamp(sidx, 0.0, NUM_SCALES - 1)
    return torch.exp(math.log(SCALE_MIN) + s * SCALE_LOG_STEP)


class FactorizedPrior(nn.Module):
    """Per-channel learned CDF (Balle et al. 2018, appendix 6.1), for the hyper-latent z."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        dims = (1,) + filters + (1,)
        scale = init_scale ** (1 / (len(filters) + 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(filters) + 1):
            init = math.log(math.expm1(1 / scale / dims[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, dims[i + 1], dims[i]), init)))
            self.biases.append(nn.Parameter(torch.rand(channels, dims[i + 1], 1) - 0.5))
            if i < len(filters):
                self.factors.append(nn.Parameter(torch.zeros(channels, dims[i + 1], 1)))

    def logits_cdf(self, x: torch.Tensor) -> torch.Tensor:
        """x: (C, 1, N) -> logits of the CDF, same shape."""
        for i in range(len(self.matrices)):
            x = torch.matmul(F.softplus(self.matrices[i]), x) + self.biases[i]
            if i < len(self.factors):
                x = x + torch.tanh(self.factors[i]) * torch.tanh(x)
        return x

    def likelihood(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        v = z.permute(1, 0, 2, 3).reshape(c, 1, -1)
        lower = self.logits_cdf(v - 0.5)
        upper = self.logits_cdf(v + 0.5)
        sign = -torch.sign(lower + upper).detach()
        p = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return p.reshape(c, b, h, w).permute(1, 0, 2, 3)


def gaussian_likelihood(y: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Probability of the unit-width bin around ``y`` under N(mean, scale), from the upper tail."""
    v = torch.abs(y - mean)
    c = 1.0 / (scale * math.sqrt(2.0))
    p = 0.5 * torch.erfc((v - 0.5) * c) - 0.5 * torch.erfc((v + 0.5) * c)
    return p


class GainUnits(nn.Module):
    """Per-quality channel gains (Cui et al., 2021): one model, eight rate points."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        lam = torch.tensor(cfg.lambdas, dtype=torch.float32)
        # high-rate theory: step^2 ~ 1/lambda; gain 1 (step 1/32 of the range) matches lambda ~0.137
        g = (lam / 0.137) ** 0.5
        self.log_gain = nn.Parameter(torch.log(g)[:, None].repeat(1, cfg.latent) / LOG_GAIN_RATE)
        self.log_igain = nn.Parameter(-torch.log(g)[:, None].repeat(1, cfg.latent) / LOG_GAIN_RATE)

    # log-gains are stored divided by LOG_GAIN_RATE so that Adam adapts them quickly
    def gain(self, q: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_gain[q] * LOG_GAIN_RATE)[:, :, None, None]

    def igain(self, q: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_igain[q] * LOG_GAIN_RATE)[:, :, None, None]


class ReconOffsets(nn.Module):
    """Reconstruction offsets d[quality, scale index, min(|s|, RECON_MAX) - 1]: y_hat = mean + s + sign(s) d."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(cfg.qualities, NUM_SCALES, RECON_MAX))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        # models trained before the offsets existed reconstruct at the bin centre: a zero table
        state_dict.setdefault(prefix + "table", torch.zeros_like(self.table))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, sym: torch.Tensor, sidx: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Offsets for integer-valued symbols ``sym`` (B, M, h, w) with scale indices ``sidx`` (as h_s gives them)."""
        # the coder's rounding of sidx; NaNs (a non-finite batch, which training skips) must still index the table
        k = torch.clamp(torch.floor(torch.nan_to_num(sidx.detach()) + 0.5), 0, NUM_SCALES - 1).long()
        a = torch.clamp(torch.nan_to_num(sym.detach()).abs(), 1, RECON_MAX).long() - 1
        table = self.table[q].reshape(q.shape[0], -1)  # (B, NUM_SCALES * RECON_MAX)
        d = torch.gather(table, 1, (k * RECON_MAX + a).reshape(q.shape[0], -1)).reshape(sym.shape)
        return torch.sign(sym.detach()) * d


class SarCodecModel(nn.Module):
    """All learned parts. ``forward`` is the training pass (noise/STE); coding lives in sarcodec.entropy."""

    def __init__(self, cfg: ModelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ModelConfig()
        fast = self.cfg.transform == "lot8"
        if self.cfg.transform not in ("lapped16", "lot8"):
            raise ValueError(f"unknown transform {self.cfg.transform!r}")
        self.g_a = LotAnalysis(self.cfg) if fast else Analysis(self.cfg)
        self.g_s = LotSynthesis(self.cfg) if fast else Synthesis(self.cfg)
        self.h_a = FastHyperAnalysis(self.cfg) if fast else HyperAnalysis(self.cfg)
        self.h_s = HyperSynthesis(self.cfg)
        self.prior = FactorizedPrior(self.cfg.hyper)
        self.gains = GainUnits(self.cfg)
        self.recon = ReconOffsets(self.cfg)

    def forward(self, x: torch.Tensor, q: torch.Tensor, noise: bool = True) -> dict[str, torch.Tensor]:
        """x: (B,1,H,W) normalised image, H and W multiples of 64; q: (B,) quality indices 0..7.

        ``noise=True``: training pass (uniform noise for the rate, straight-through rounding for
        the reconstruction).  ``noise=False``: rate of the actually rounded symbols (validation).
        """
        y = self.g_a(x) * self.gains.gain(q)
        z = self.h_a(y)
        z = z - (z - z.clamp(-Z_RADIUS, Z_RADIUS)).detach()  # coding clamps z; keep gradients
        z_hat = _ste_round(z)
        mean, sidx = self.h_s(z_hat)
        scale = index_to_scale(sidx)
        sym = _ste_round(y - mean)
        y_q = sym + mean  # bin centre (the rate is that of its bin); reconstructed with the offset
        # not coded where the scale index rounds below the quality's first coded group: y_hat = mean, 0 bits
        # (the coder clamps the index to 0..63, so K = 0 skips nothing and K >= 1 includes negative indices)
        first = torch.tensor([self.cfg.first_coded_group(k + 1) for k in range(self.cfg.qualities)], device=q.device)[q]
        first = first.to(sidx.dtype)[:, None, None, None]
        skip = (first > 0) & (sidx < first - 0.5)
        y_hat = torch.where(skip, mean, y_q + self.recon(sym, sidx, q))
        if noise:
            z_r = z + torch.empty_like(z).uniform_(-0.5, 0.5)
            y_r = y + torch.empty_like(y).uniform_(-0.5, 0.5)
        else:
            z_r, y_r = z_hat, y_q
        p_y = torch.where(skip, 1.0, gaussian_likelihood(y_r, mean, scale).clamp_min(1e-9))
        p_z = self.prior.likelihood(z_r).clamp_min(1e-9)
        x_hat = self.g_s(y_hat * self.gains.igain(q), q)
        return {"x_hat": x_hat, "p_y": p_y, "p_z": p_z}


def count_macs(module: nn.Module, shape: tuple[int, ...], *args: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``module`` on an input of ``shape`` (``args`` follow it).

    Convolutions are counted by hook; the separable lapped transform as 2 x 16 MACs per pixel.
    """
    total = 0
    for m in module.modules():
        if isinstance(m, LotAnalysis):
            total += 2 * 16 * shape[-1] * shape[-2]
        elif isinstance(m, LotSynthesis):
            total += 2 * 16 * shape[-1] * shape[-2] * lot.B * lot.B

    def hook(m: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = m.weight.shape[2] * m.weight.shape[3]
        total += out.numel() * (m.weight.shape[1]) * k

    hs = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        module(torch.zeros(shape), *args)
    for h in hs:
        h.remove()
    return total
