"""Platform-independent entropy model and coder for one latent tile.

Why this module exists: a learned codec breaks when encoder and decoder compute slightly different
probability tables (last-bit float differences between CPUs, BLAS libraries or GPU vs CPU).
sarcodec makes every quantity the entropy *decoder* depends on exact:

* **Integer hyper-synthesis.** ``IntHyperSynthesis`` runs the trained h_s in fixed point
  (weights in units of 2^-12, activations 2^-8, biases 2^-20).  Convolutions are evaluated as
  im2col + matrix products in float64 on *integer-valued* operands whose every partial sum is
  below 2^53 (checked at export against the activation clamp), so each product and sum is exact
  whatever the summation order, BLAS kernel or thread count.  Rounding/shift, clamp and pixel
  shuffle are then done in int64.  Output: an integer mean (units 2^-8) and an integer scale
  index 0..63 per latent element.
* **Fixed tables.** The probability tables are integers computed once at export and stored in the
  weights file: one table per scale index for the latent y (a discretised Gaussian with two escape
  symbols for the tails) and one per channel for the hyper-latent z (the learned factorised prior).
  constriction's ``Categorical(perfect=False)`` quantises these integer-valued float64 tables with
  deterministic integer-exact arithmetic.
* **Coding on whole arrays.** Symbols are grouped by table (z: per channel; y: per scale index) and
  each group is coded with one ``RangeEncoder.encode`` call -- no Python loop over symbols.

Stream layout of one tile (one range-coder stream, decoded in the same order):
z symbols channel by channel; y symbols by scale index 0..63 (raster order within a group);
escape magnitudes for y symbols outside their table (uniform over 2^16).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
import torch
import torch.nn.functional as F

from .model import A_FRAC_BITS, A_MAX, MEAN_GAIN, NUM_SCALES, SIDX_GAIN, W_FRAC_BITS, Z_RADIUS, HyperSynthesis, scale_table

PMF_TOTAL_BITS = 16
Y_TAIL_SIGMAS = 8.0
Y_MAX_RADIUS = 1024
ESCAPE_BITS = 16  # escape magnitude coded uniformly in [0, 2^16)
EXACT_LIMIT = 2**52


class EntropyError(ValueError):
    """Raised when a coded tile is inconsistent with the model."""


def quantize_pmf(p: np.ndarray, total_bits: int = PMF_TOTAL_BITS) -> np.ndarray:
    """Float pmf rows -> integer rows summing to 2^total_bits with every entry >= 1."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum(axis=-1, keepdims=True)
    total = 2**total_bits
    n = p.shape[-1]
    q = np.maximum(1, np.floor(p * (total - n)).astype(np.int64))
    deficit = total - q.sum(axis=-1)
    # give the remainder to the most probable symbol of each row (deterministic)
    idx = np.argmax(p, axis=-1)
    np.put_along_axis(q, idx[..., None], np.take_along_axis(q, idx[..., None], -1) + deficit[..., None], -1)
    assert np.all(q >= 1) and np.all(q.sum(-1) == total)
    return q.astype(np.int32)


def y_radius_table() -> np.ndarray:
    scales = scale_table().numpy()
    return np.minimum(np.ceil(scales * Y_TAIL_SIGMAS).astype(np.int64) + 1, Y_MAX_RADIUS).astype(np.int32)


def build_y_tables() -> tuple[np.ndarray, np.ndarray]:
    """(pmf[K, 2*Rmax+3] int32, radius[K] int32). Row k: [low escape, -R..R, high escape, zero pad]."""
    scales = scale_table().numpy()
    radius = y_radius_table()
    width = 2 * int(radius.max()) + 3
    pmf = np.zeros((NUM_SCALES, width), dtype=np.int32)
    for k, (s, r) in enumerate(zip(scales, radius)):
        v = np.arange(-r, r + 1, dtype=np.float64)
        upper = 0.5 * np.array([math.erfc(-(x + 0.5) / (s * math.sqrt(2))) for x in v])
        lower = 0.5 * np.array([math.erfc(-(x - 0.5) / (s * math.sqrt(2))) for x in v])
        core = upper - lower
        tail = 0.5 * math.erfc((r + 0.5) / (s * math.sqrt(2)))
        row = np.concatenate([[tail], core, [tail]])
        pmf[k, : 2 * r + 3] = quantize_pmf(row)
    return pmf, radius


def build_z_tables(prior: torch.nn.Module, channels: int) -> np.ndarray:
    """Integer pmf[C, 2*Z_RADIUS+1] of the factorised prior (tails folded into the end bins)."""
    with torch.no_grad():
        v = torch.arange(-Z_RADIUS, Z_RADIUS + 2, dtype=torch.float32) - 0.5  # bin edges
        logits = prior.logits_cdf(v.repeat(channels, 1, 1))[:, 0, :].double()
        cdf = torch.sigmoid(logits)
        cdf[:, 0] = 0.0
        cdf[:, -1] = 1.0
        p = (cdf[:, 1:] - cdf[:, :-1]).clamp_min(0).numpy()
    return quantize_pmf(p + 1e-12)


@dataclass
class IntLayer:
    weight: np.ndarray  # int64 (Cout, Cin, k, k), units 2^-W_FRAC_BITS
    bias: np.ndarray  # int64 (Cout,), units 2^-(W_FRAC_BITS + A_FRAC_BITS)
    shuffle: bool
    relu: bool


class IntHyperSynthesis:
    """Exact fixed-point evaluation of a trained ``HyperSynthesis``."""

    def __init__(self, layers: list[IntLayer], latent: int) -> None:
        self.layers = layers
        self.latent = latent
        self._check_bounds()

    @classmethod
    def from_float(cls, hs: HyperSynthesis, latent: int) -> "IntHyperSynthesis":
        layers = []
        n = len(hs.convs)
        for i, (c, sh) in enumerate(zip(hs.convs, hs.shuffle_after)):
            w = torch.round(c.weight.detach().double() * 2**W_FRAC_BITS).long().numpy()
            b = torch.round(c.bias.detach().double() * 2 ** (W_FRAC_BITS + A_FRAC_BITS)).long().numpy()
            if i == n - 1:  # output gains, applied exactly as in HyperSynthesis.forward
                g = np.array([MEAN_GAIN] * latent + [SIDX_GAIN] * latent, dtype=np.int64)
                w, b = w * g[:, None, None, None], b * g
            layers.append(IntLayer(w, b, sh, i < n - 1))
        return cls(layers, latent)

    def _check_bounds(self) -> None:
        # input of the first layer: z symbols (|z| <= Z_RADIUS); later layers: clamped activations
        x_max = Z_RADIUS * 2**A_FRAC_BITS
        for layer in self.layers:
            per_out = np.abs(layer.weight).reshape(layer.weight.shape[0], -1).sum(1) * x_max + np.abs(layer.bias)
            if per_out.max() >= EXACT_LIMIT:
                raise EntropyError("integer hyper-synthesis exceeds the exact float64 range")
            x_max = int(A_MAX * 2**A_FRAC_BITS)

    def state(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            out[f"hs{i}.weight"] = torch.from_numpy(layer.weight.astype(np.int32))
            out[f"hs{i}.bias"] = torch.from_numpy(layer.bias.astype(np.int64))
            out[f"hs{i}.flags"] = torch.tensor([int(layer.shuffle), int(layer.relu)], dtype=torch.int32)
        return out

    @classmethod
    def from_state(cls, st: dict[str, torch.Tensor], latent: int) -> "IntHyperSynthesis":
        layers = []
        i = 0
        while f"hs{i}.weight" in st:
            flags = st[f"hs{i}.flags"].tolist()
            layers.append(IntLayer(st[f"hs{i}.weight"].numpy().astype(np.int64), st[f"hs{i}.bias"].numpy().astype(np.int64), bool(flags[0]), bool(flags[1])))
            i += 1
        return cls(layers, latent)

    def __call__(self, z_sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z_sym: int (Cz, h, w) -> (mean_int int64 (M, 4h, 4w) in units 2^-8, scale index int64)."""
        x = torch.from_numpy(z_sym.astype(np.int64) * 2**A_FRAC_BITS)[None]
        a_max = int(A_MAX * 2**A_FRAC_BITS)
        half = 2 ** (W_FRAC_BITS - 1)
        for layer in self.layers:
            w = torch.from_numpy(layer.weight)
            cout, cin, k, _ = w.shape
            h, wd = x.shape[-2:]
            cols = F.unfold(x.double(), k, padding=k // 2)  # (1, cin*k*k, h*w): exact copy
            acc = torch.matmul(w.reshape(cout, -1).double(), cols[0])  # exact: integers < 2^53
            acc = acc.round().long() + torch.from_numpy(layer.bias)[:, None]
            x = torch.div(acc + half, 2**W_FRAC_BITS, rounding_mode="floor").reshape(1, cout, h, wd)
            if layer.shuffle:
                x = F.pixel_shuffle(x, 2)
            if layer.relu:
                x = x.clamp(0, a_max)
        x = x[0]
        mean_int = x[: self.latent]
        sidx = torch.div(x[self.latent :] + 2 ** (A_FRAC_BITS - 1), 2**A_FRAC_BITS, rounding_mode="floor")
        sidx = sidx.clamp(0, NUM_SCALES - 1)
        return mean_int.numpy(), sidx.numpy()


def coding_order(flat_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order in which y symbols are coded: grouped by scale index 0..63, raster order inside a group.

    Returns (permutation of the flat positions, group boundaries: group k is order[b[k]:b[k+1]]).
    """
    order = np.argsort(flat_s, kind="stable")
    return order, np.searchsorted(flat_s[order], np.arange(NUM_SCALES + 1))


class EntropyCoder:
    """Codes one tile's (z, y) with the fixed tables and the integer hyper-synthesis."""

    def __init__(self, hs: IntHyperSynthesis, z_pmf: np.ndarray, y_pmf: np.ndarray, y_radius: np.ndarray) -> None:
        self.hs = hs
        self.z_pmf = z_pmf.astype(np.int64)
        self.y_pmf = y_pmf.astype(np.int64)
        cat = constriction.stream.model.Categorical
        self.z_models = [cat(row.astype(np.float64), perfect=False) for row in z_pmf]
        self.y_radius = y_radius.astype(np.int64)
        self.y_models = [cat(row[: 2 * r + 3].astype(np.float64), perfect=False) for row, r in zip(y_pmf, self.y_radius)]
        self.escape_model = constriction.stream.model.Uniform(2**ESCAPE_BITS)

    def hyper(self, z_sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.hs(z_sym)

    def encode(self, z_sym: np.ndarray, y: np.ndarray) -> tuple[bytes, np.ndarray, float]:
        """z_sym: int (Cz, hz, wz); y: float (M, h, w), h <= 4hz, w <= 4wz.

        Returns (payload, y_hat, ideal bits: the information content of the symbols under the tables).
        """
        enc = constriction.stream.queue.RangeEncoder()
        z_sym = np.clip(z_sym, -Z_RADIUS, Z_RADIUS).astype(np.int64)
        for c, model in enumerate(self.z_models):
            enc.encode((z_sym[c].ravel() + Z_RADIUS).astype(np.int32), model)
        mean_int, sidx = self.hs(z_sym)
        h, w = y.shape[1:]
        mean_int, sidx = mean_int[:, :h, :w], sidx[:, :h, :w]
        mean = mean_int.astype(np.float64) / 2**A_FRAC_BITS
        sym = np.rint(y.astype(np.float64) - mean).astype(np.int64)
        radius = self.y_radius[sidx]
        sym = np.clip(sym, -radius - 2**ESCAPE_BITS, radius + 2**ESCAPE_BITS)
        low = sym < -radius
        high = sym > radius
        idx = np.where(low, 0, np.where(high, 2 * radius + 2, sym + radius + 1))
        order, bounds = coding_order(sidx.ravel())
        coded = idx.ravel()[order]
        for k in range(NUM_SCALES):
            if bounds[k + 1] > bounds[k]:
                enc.encode(coded[bounds[k] : bounds[k + 1]].astype(np.int32), self.y_models[k])
        # escape magnitudes, in the order the decoder finds them (the coding order)
        is_esc = (low | high).ravel()[order]
        escapes = np.where(low, -radius - 1 - sym, sym - radius - 1).ravel()[order][is_esc]
        if escapes.size:
            enc.encode(escapes.astype(np.int32), self.escape_model)
        y_hat = (sym + mean).astype(np.float32)
        return enc.get_compressed().tobytes(), y_hat, self._ideal_bits(z_sym, sidx, idx, escapes.size)

    def _ideal_bits(self, z_sym: np.ndarray, sidx: np.ndarray, idx: np.ndarray, n_escapes: int) -> float:
        """Information content of the coded symbols under the integer tables (what an ideal coder spends)."""
        bits = 0.0
        for c in range(z_sym.shape[0]):
            p = self.z_pmf[c][z_sym[c].ravel() + Z_RADIUS]
            bits += float(-np.log2(p / 2**PMF_TOTAL_BITS).sum())
        p = self.y_pmf[sidx.ravel(), idx.ravel()]
        bits += float(-np.log2(p / 2**PMF_TOTAL_BITS).sum())
        return bits + ESCAPE_BITS * n_escapes

    def decode(self, payload: bytes, z_shape: tuple[int, int, int], y_hw: tuple[int, int]) -> np.ndarray:
        """Inverse of ``encode``: returns y_hat float32 (M, *y_hw); EntropyError on invalid data."""
        try:
            return self._decode(payload, z_shape, y_hw)
        except EntropyError:
            raise
        except (AssertionError, ValueError, RuntimeError, OverflowError, IndexError) as e:
            # constriction signals data that no symbol sequence could have produced with AssertionError
            raise EntropyError(f"invalid coded data ({e})") from None

    def _decode(self, payload: bytes, z_shape: tuple[int, int, int], y_hw: tuple[int, int]) -> np.ndarray:
        if len(payload) % 4:
            raise EntropyError("coded tile length is not a multiple of 4 bytes")
        words = np.frombuffer(payload, dtype=np.uint32)
        dec = constriction.stream.queue.RangeDecoder(words.copy())
        cz, hz, wz = z_shape
        if cz != len(self.z_models):
            raise EntropyError("hyper-latent channel count does not match the model")
        z_sym = np.stack([dec.decode(m, hz * wz).reshape(hz, wz) for m in self.z_models]).astype(np.int64) - Z_RADIUS
        mean_int, sidx = self.hs(z_sym)
        mean_int, sidx = mean_int[:, : y_hw[0], : y_hw[1]], sidx[:, : y_hw[0], : y_hw[1]]
        flat_s = sidx.ravel()
        order, bounds = coding_order(flat_s)
        coded = np.zeros(flat_s.size, dtype=np.int64)
        for k in range(NUM_SCALES):
            if bounds[k + 1] > bounds[k]:
                coded[bounds[k] : bounds[k + 1]] = dec.decode(self.y_models[k], int(bounds[k + 1] - bounds[k]))
        flat_i = np.empty_like(coded)
        flat_i[order] = coded
        radius = self.y_radius[flat_s]
        sym = flat_i - radius - 1
        low = flat_i == 0
        high = flat_i == 2 * radius + 2
        n_esc = int(low.sum() + high.sum())
        if n_esc:
            mags = np.zeros(flat_s.size, dtype=np.int64)
            vals = dec.decode(self.escape_model, n_esc).astype(np.int64)
            pos = order[(low | high)[order]]
            mags[pos] = vals
            sym = np.where(low, -radius - 1 - mags, np.where(high, radius + 1 + mags, sym))
        mean = mean_int.astype(np.float64) / 2**A_FRAC_BITS
        return (sym.reshape(mean.shape) + mean).astype(np.float32)
