"""Inference-side models: the four operations encode/decode need, for both architectures.

``sarcodec.codec`` only calls ``analysis`` (normalised image -> scaled latent), ``hyper_analysis``
(latent -> continuous hyper-latent), ``synthesis`` (quantised latent -> image) and the entropy
``coder``; this module provides them for

* the default model (``lapped16``): the torch modules of ``sarcodec.model``, run under
  ``inference_mode`` (torch is imported only when such a model is loaded), and
* the fast preset (``lot8``): numpy only -- the separable lapped transform of ``sarcodec.lot``
  and a numpy copy of ``FastHyperAnalysis`` -- so encode/decode with it never import torch.

Both take and return numpy float32 arrays; weights come from ``sarcodec.weights``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import lot
from .config import LOG_GAIN_RATE, ModelConfig
from .entropy import MACRO, EntropyCoder, im2col


@dataclass
class CodecModel:
    """Everything encode/decode need, loaded from one weights file."""

    name: str
    model_id: str
    cfg: ModelConfig
    meta: dict
    coder: EntropyCoder
    n_params: int = 0
    recon: np.ndarray | None = None  # reconstruction offsets (qualities, NUM_SCALES, RECON_MAX); None: all 0
    fork_safe = True  # transforms may run in forked worker processes (sarcodec.parallel)
    refinable = False  # has ``synthesis_sse`` and ``curvature``: the encoder may choose symbols by RDOQ (sarcodec.rdoq)

    def offsets(self, quality: int) -> np.ndarray | None:
        """The entropy coder's reconstruction offsets at ``quality`` (1-based), if the model has them."""
        return None if self.recon is None else self.recon[quality - 1]

    @property
    def stride(self) -> int:
        return self.cfg.stride

    @property
    def halo_px(self) -> int:
        return self.cfg.halo_px

    @property
    def halo_lat(self) -> int:
        return self.cfg.halo_lat

    def analysis(self, u: np.ndarray, quality: int) -> np.ndarray:
        """u: (H, W) float32, multiples of the stride -> y (M, H/stride, W/stride) times the quality gain."""
        raise NotImplementedError

    def hyper_analysis(self, y: np.ndarray) -> np.ndarray:
        """y: (M, h, w), multiples of 4 -> continuous z (Cz, h/4, w/4)."""
        raise NotImplementedError

    def synthesis(self, y_hat: np.ndarray, quality: int) -> np.ndarray:
        """Quantised y (M, h, w) -> normalised image (h*stride, w*stride) float32."""
        raise NotImplementedError


@dataclass
class TorchModel(CodecModel):
    """The default model: torch modules g_a, g_s, h_a and the gain units."""

    modules: dict = field(default_factory=dict)
    fork_safe = False  # torch's OpenMP thread pool does not survive fork(); its transforms stay in one process
    refinable = True

    def analysis(self, u: np.ndarray, quality: int) -> np.ndarray:
        import torch

        with torch.inference_mode():
            q = torch.tensor([quality - 1])
            y = self.modules["g_a"](torch.from_numpy(np.ascontiguousarray(u))[None, None]) * self.modules["gains"].gain(q)
            return y[0].numpy()

    def hyper_analysis(self, y: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.modules["h_a"](torch.from_numpy(np.ascontiguousarray(y))[None])[0].numpy()

    def synthesis(self, y_hat: np.ndarray, quality: int) -> np.ndarray:
        import torch

        with torch.inference_mode():
            q = torch.tensor([quality - 1])
            yt = torch.from_numpy(np.ascontiguousarray(y_hat))[None] * self.modules["gains"].igain(q)
            return self.modules["g_s"](yt, q)[0, 0].numpy()

    def synthesis_sse(self, y_hat: np.ndarray, quality: int, u: np.ndarray, valid: np.ndarray,
                      gradient: bool = True) -> tuple[float, np.ndarray | None]:
        """Squared error of ``synthesis(y_hat)`` against ``u`` on the ``valid`` pixels, and (unless not
        asked for: None) its gradient with respect to ``y_hat`` (same shape): what ``sarcodec.rdoq``
        steers the symbols by."""
        import torch

        q = torch.tensor([quality - 1])
        yt = torch.from_numpy(np.ascontiguousarray(y_hat, dtype=np.float32))[None].requires_grad_(gradient)
        with torch.set_grad_enabled(gradient):
            x = self.modules["g_s"](yt * self.modules["gains"].igain(q).detach(), q)[0, 0]
            err = (x - torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32))) * torch.from_numpy(valid)
            sse = (err * err).sum()
            if gradient:
                sse.backward()
        return float(sse.detach()), yt.grad[0].numpy() if gradient else None

    def curvature(self, quality: int) -> np.ndarray:
        """Per latent channel, the squared norm of its basis in the synthesis' lapped (linear) part at
        ``quality``: half the second derivative of the squared error in that latent, to first order."""
        import torch

        with torch.no_grad():
            ig = self.modules["gains"].igain(torch.tensor([quality - 1]))[0, :, 0, 0].double()
            w = self.modules["g_s"].lapped.weight.double()
            return (w.pow(2).sum((1, 2, 3)) * ig * ig).numpy()


def _lrelu(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x, np.float32(0.1) * x)


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Stride-1 'same' convolution of (C, h, w) with (Cout, C, k, k), in the arrays' dtype."""
    _, h, wd = x.shape
    return (w.reshape(w.shape[0], -1) @ im2col(x, w.shape[-1]) + b[:, None]).reshape(w.shape[0], h, wd)


@dataclass
class LotModel(CodecModel):
    """The fast preset in numpy: lapped transform, gains, FastHyperAnalysis."""

    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = {k: np.asarray(v, dtype=np.float32) for k, v in self.params.items()}
        self.params = p
        self._gain = np.exp(p["gains.log_gain"].astype(np.float64) * LOG_GAIN_RATE).astype(np.float32)
        self._igain = np.exp(p["gains.log_igain"].astype(np.float64) * LOG_GAIN_RATE).astype(np.float32)
        # The hyper-analysis runs in float64: its BLAS products round differently with 1 and 2 BLAS
        # threads (tile workers use 1), and in float32 that moved a z across a rounding boundary, so
        # the file depended on --workers; in float64 such a flip needs a value within ~1e-15 of x.5.
        self._ha = {k: v.astype(np.float64) for k, v in p.items() if k.startswith("h_a.")}

    def analysis(self, u: np.ndarray, quality: int) -> np.ndarray:
        y = lot.analysis(np.ascontiguousarray(u, dtype=np.float32), self.params["g_a.a"])
        return y * self._gain[quality - 1][:, None, None]

    def hyper_analysis(self, y: np.ndarray) -> np.ndarray:
        p = self._ha
        m, h, w = y.shape
        f = np.concatenate([y[:1], np.abs(y[1:])]).astype(np.float64)
        cols = f.reshape(m, h // MACRO, MACRO, w // MACRO, MACRO).transpose(0, 2, 4, 1, 3).reshape(m * MACRO * MACRO, -1)
        wp = p["h_a.patch.weight"]
        x = (wp.reshape(wp.shape[0], -1) @ cols + p["h_a.patch.bias"][:, None]).reshape(wp.shape[0], h // MACRO, w // MACRO)
        x = _lrelu(_conv(_lrelu(x), p["h_a.mix.weight"], p["h_a.mix.bias"]))
        return _conv(x, p["h_a.out.weight"], p["h_a.out.bias"])

    def synthesis(self, y_hat: np.ndarray, quality: int) -> np.ndarray:
        y = np.multiply(y_hat, self._igain[quality - 1][:, None, None], dtype=np.float32)
        u = lot.synthesis(y, self.params["g_s.s"])
        u += self.params["g_s.bias"][0]
        return u
