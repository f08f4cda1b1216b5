"""Per-file choice among a preset's models.

A preset may ship several models with one architecture and one quality ladder -- the default one
ships a general SAR model, a Sentinel-1 specialist and one for despeckled (multi-temporally averaged)
products -- and no single one codes every sensor and product best.
The encoder codes a few sample windows of the image with each, keeps the model with the lowest
rate-distortion cost J = bpp + lambda_q * 255^2 * MSE (the objective they were trained on, in the
normalised domain) and writes its name and id in the header as always; decoding needs nothing new.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .runtime import CodecModel

WINDOW = 256  # side of a sample window (pixels, a multiple of 64)
SHARE = 16  # the windows cover about 1/SHARE of a large image (4 at most, each band) ...
MAX_WINDOWS = 4
WHOLE = 2 * WINDOW * WINDOW  # ... and an image up to this many pixels is sampled whole


@dataclass(frozen=True)
class ModelSet:
    """Models the encoder chooses from per file (the first wins ties); decode takes the one a file names."""

    models: tuple[CodecModel, ...]

    def __post_init__(self) -> None:
        first = self.models[0].cfg
        for m in self.models[1:]:
            if (m.cfg.stride, m.cfg.qualities, list(m.cfg.lambdas)) != (first.stride, first.qualities, list(first.lambdas)):
                raise ValueError(f"{m.name} has another stride or quality ladder than {self.models[0].name}")

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.models)

    @property
    def model_id(self) -> str:
        return "+".join(m.model_id for m in self.models)

    @property
    def refinable(self) -> bool:
        """Whether the encoder may choose symbols by RDOQ with every member (``sarcodec.rdoq``)."""
        return all(m.refinable for m in self.models)

    def member(self, model_id: str) -> CodecModel | None:
        """The model a file was encoded with (by the id in its header), if it is one of these."""
        return next((m for m in self.models if m.model_id == model_id), None)


def sample_windows(height: int, width: int, stride: int) -> list[tuple[int, int, int, int]]:
    """(r0, r1, c0, c1) of the windows ``choose`` codes: the whole image if small, else one WINDOW-sized
    window in the centre or up to four centred on the quarter points, at multiples of ``stride``."""
    if height * width <= WHOLE:
        return [(0, height, 0, width)]
    n = min(MAX_WINDOWS, max(1, round(height * width / SHARE / WINDOW**2)))
    wh, ww = min(height, WINDOW), min(width, WINDOW)
    out = []
    for fy, fx in ((2, 2),) if n == 1 else ((1, 1), (3, 3), (1, 3), (3, 1))[:n]:
        r0 = min(max(0, height * fy // 4 - wh // 2) // stride * stride, height - wh)
        c0 = min(max(0, width * fx // 4 - ww // 2) // stride * stride, width - ww)
        out.append((r0, r0 + wh, c0, c0 + ww))
    return out


def rd_cost(model: CodecModel, u: np.ndarray, valid: np.ndarray, quality: int) -> tuple[float, float, int]:
    """(bits, squared error on ``valid`` pixels, valid pixels) of coding the normalised window ``u``."""
    h, w = u.shape
    block = 4 * model.stride  # the hyper-latent needs whole 4 x 4 latent blocks
    up = np.pad(u, ((0, -h % block), (0, -w % block)), mode="edge")
    y = model.analysis(up, quality)
    z = np.round(model.hyper_analysis(y)).astype(np.int64)
    _, y_hat, bits = model.coder.encode(z, y, model.cfg.first_coded_group(quality), model.offsets(quality))
    x = model.synthesis(y_hat, quality)[:h, :w]
    err = (x.astype(np.float64) - u)[valid]
    return bits, float(err @ err), int(valid.sum())


def choose(models: ModelSet, windows: list[tuple[np.ndarray, np.ndarray]], quality: int) -> tuple[CodecModel, dict]:
    """The model with the lowest J over ``windows`` (normalised image, valid-pixel mask), and each one's J."""
    lam = models.models[0].cfg.lambdas[quality - 1] * 255.0**2
    costs = {}
    for m in models.models:
        bits = se = 0.0
        npix = nvalid = 0
        for u, valid in windows:
            b, e, n = rd_cost(m, u, valid, quality)
            bits, se, npix, nvalid = bits + b, se + e, npix + u.size, nvalid + n
        costs[m.name] = bits / max(1, npix) + lam * se / max(1, nvalid)
    best = min(models.models, key=lambda m: costs[m.name])  # min keeps the first of equals
    return best, costs

