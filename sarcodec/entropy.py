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
escape magnitudes for y symbols outside their table (uniform over 2^16).  The groups below a
model's first coded group are not coded at all: those symbols are 0 by definition (the encoder
quantises them to their mean).  That is group 0 for ``skip_min_scale`` models (p(0) > 0.99999
there) and, for models with ``skip_groups``, a per-quality threshold chosen after training: at
scale indices up to ~10 (sigma < 0.4) a coded symbol costs more bits than the distortion it saves
is worth at the model's lambda, and skipping them also cuts the symbols to decode by ~60 %.

**Reconstruction offsets.** A coded symbol s != 0 is reconstructed at mean + s + sign(s) * d, with
d = ``offsets[scale index, min(|s|, RECON_MAX) - 1]`` from a small per-quality table trained with the
model (absent in models before hp6: d = 0).  The offsets only move the decoder's reconstruction
(the bin's optimum under the synthesis is not its centre); the symbols, and so the rate, are unchanged.

**Trimmed final word.** The coded latent is a sequence of u32 words; a small tile (at most
``TRIM_MAX_BYTES``) may drop 1-3 low-order bytes of its final word, stored little-endian as the
word's remaining high-order bytes, when the decoder, restoring the dropped bytes as 0xFF, reads the
same symbols -- the encoder checks this by decoding.  It saves 1.6 bytes a tile on average, which
matters only for tiny chips (~1 % of a 2-band OpenSARShip chip of 200-400 bytes).

The runtime half of this module (tables in, symbols out) needs only numpy and constriction, so
models whose transforms run in numpy (the fast preset) decode without importing torch.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from typing import TYPE_CHECKING

import constriction
import numpy as np

if TYPE_CHECKING:
    import torch

    from .model import HyperSynthesis

# Fixed-point formats of the integer hyper-synthesis (shared with sarcodec.model's training version).
W_FRAC_BITS = 12  # weights and biases in units of 2**-12 (biases: 2**-(12+8))
A_FRAC_BITS = 8  # activations in units of 2**-8
A_MAX = 4096.0  # activation clamp (float units) -> keeps integer sums far below 2**53
Z_RADIUS = 48  # hyper-latent symbols are clamped to [-Z_RADIUS, Z_RADIUS] (training and coding)
MEAN_GAIN = 16  # h_s outputs are multiplied by these (integer) gains, so Adam's small steps move
SIDX_GAIN = 8  # means and scale indices fast enough; the integer path multiplies after rounding
SCALE_MIN = 0.11
SCALE_MAX = 256.0
NUM_SCALES = 64
MACRO = 4  # y elements per z element along each axis (both heads)

PMF_TOTAL_BITS = 16
Y_TAIL_SIGMAS = 8.0
Y_MAX_RADIUS = 1024
ESCAPE_BITS = 16  # escape magnitude coded uniformly in [0, 2^16)
EXACT_LIMIT = 2**52
TRIM_MAX_BYTES = 2048  # coded latents up to this size try to trim their final word (see encode)
RECON_MAX = 4  # reconstruction offsets: one per scale index for |symbol| = 1, 2, 3 and >= 4


class EntropyError(ValueError):
    """Raised when a coded tile is inconsistent with the model."""


# what decoding data that no symbol sequence could have produced raises (constriction: AssertionError)
DECODE_ERRORS = (AssertionError, ValueError, RuntimeError, OverflowError, IndexError)


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


def _scales() -> np.ndarray:
    from .model import scale_table

    return scale_table().numpy()


def y_radius_table() -> np.ndarray:
    scales = _scales()
    return np.minimum(np.ceil(scales * Y_TAIL_SIGMAS).astype(np.int64) + 1, Y_MAX_RADIUS).astype(np.int32)


def build_y_tables() -> tuple[np.ndarray, np.ndarray]:
    """(pmf[K, 2*Rmax+3] int32, radius[K] int32). Row k: [low escape, -R..R, high escape, zero pad]."""
    scales = _scales()
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


def build_z_tables(prior: "torch.nn.Module", channels: int) -> np.ndarray:
    """Integer pmf[C, 2*Z_RADIUS+1] of the factorised prior (tails folded into the end bins)."""
    import torch

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


def output_gains(latent: int, head: str) -> np.ndarray:
    """Integer gains of h_s's last layer, per output channel (see ``HyperSynthesis``)."""
    if head == "macro":
        return np.array([SIDX_GAIN] * latent + [MEAN_GAIN] * MACRO**2, dtype=np.int64)
    return np.array([MEAN_GAIN] * latent + [SIDX_GAIN] * latent, dtype=np.int64)


def pixel_shuffle(x: np.ndarray, r: int) -> np.ndarray:
    """(C*r*r, h, w) -> (C, h*r, w*r), torch.nn.functional.pixel_shuffle's layout."""
    c, h, w = x.shape
    return x.reshape(c // (r * r), r, r, h, w).transpose(0, 3, 1, 4, 2).reshape(c // (r * r), h * r, w * r)


def im2col(x: np.ndarray, k: int) -> np.ndarray:
    """(C, h, w) -> (C*k*k, h*w) with zero padding k//2 (torch.nn.functional.unfold's order)."""
    c, h, w = x.shape
    if k == 1:
        return x.reshape(c, h * w)
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    cols = np.stack([xp[:, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)], axis=1)
    return cols.reshape(c * k * k, h * w)


class IntHyperSynthesis:
    """Exact fixed-point evaluation of a trained ``HyperSynthesis`` (numpy only).

    ``head`` says how the last layer's channels map to latent elements: ``full`` -- a mean and a
    scale index for every element, after two x2 pixel shuffles (the default model); ``macro`` --
    one scale index per channel for each 4x4 group of latent positions plus a mean for channel 0
    (the DC coefficient) at every position (the fast preset).
    """

    def __init__(self, layers: list[IntLayer], latent: int, head: str = "full") -> None:
        if head not in ("full", "macro"):
            raise ValueError(f"unknown hyper-synthesis head {head!r}")
        self.layers = layers
        self.latent = latent
        self.head = head
        self._check_bounds()

    @classmethod
    def from_float(cls, hs: "HyperSynthesis", latent: int, head: str = "full") -> "IntHyperSynthesis":
        import torch

        layers = []
        n = len(hs.convs)
        gains = output_gains(latent, head)
        for i, (c, sh) in enumerate(zip(hs.convs, hs.shuffle_after)):
            w = torch.round(c.weight.detach().double() * 2**W_FRAC_BITS).long().numpy()
            b = torch.round(c.bias.detach().double() * 2 ** (W_FRAC_BITS + A_FRAC_BITS)).long().numpy()
            if i == n - 1:  # output gains, applied exactly as in HyperSynthesis.forward
                w, b = w * gains[:, None, None, None], b * gains
            layers.append(IntLayer(w, b, sh, i < n - 1))
        return cls(layers, latent, head)

    def _check_bounds(self) -> None:
        # input of the first layer: z symbols (|z| <= Z_RADIUS); later layers: clamped activations
        x_max = Z_RADIUS * 2**A_FRAC_BITS
        for layer in self.layers:
            per_out = np.abs(layer.weight).reshape(layer.weight.shape[0], -1).sum(1) * x_max + np.abs(layer.bias)
            if per_out.max() >= EXACT_LIMIT:
                raise EntropyError("integer hyper-synthesis exceeds the exact float64 range")
            x_max = int(A_MAX * 2**A_FRAC_BITS)

    def state(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, layer in enumerate(self.layers):
            out[f"hs{i}.weight"] = layer.weight.astype(np.int32)
            out[f"hs{i}.bias"] = layer.bias.astype(np.int64)
            out[f"hs{i}.flags"] = np.array([int(layer.shuffle), int(layer.relu)], dtype=np.int32)
        if self.head != "full":  # absent for the default head: keeps older files' model ids
            out["head_macro"] = np.array([1], dtype=np.int32)
        return out

    @classmethod
    def from_state(cls, st: dict, latent: int) -> "IntHyperSynthesis":
        layers = []
        i = 0
        while f"hs{i}.weight" in st:
            flags = np.asarray(st[f"hs{i}.flags"]).tolist()
            layers.append(IntLayer(np.asarray(st[f"hs{i}.weight"]).astype(np.int64), np.asarray(st[f"hs{i}.bias"]).astype(np.int64),
                                   bool(flags[0]), bool(flags[1])))
            i += 1
        return cls(layers, latent, "macro" if "head_macro" in st else "full")

    def __call__(self, z_sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """z_sym: int (Cz, h, w) -> (mean_int, sidx).

        ``sidx``: scale index uint8 (M, 4h, 4w).  ``mean_int``: int64 means in units 2^-8 of the
        first ``mean_int.shape[0]`` channels (M for the full head, 1 for the macro head); the means
        of the other channels are 0.
        """
        x = z_sym.astype(np.int64) * 2**A_FRAC_BITS
        a_max = int(A_MAX * 2**A_FRAC_BITS)
        half = 2 ** (W_FRAC_BITS - 1)
        for layer in self.layers:
            cout, cin, k, _ = layer.weight.shape
            _, h, wd = x.shape
            # exact: integer operands, every partial sum below 2^53 (checked in _check_bounds)
            acc = np.matmul(layer.weight.reshape(cout, -1).astype(np.float64), im2col(x.astype(np.float64), k))
            acc = acc.astype(np.int64) + layer.bias[:, None]
            x = np.floor_divide(acc + half, 2**W_FRAC_BITS).reshape(cout, h, wd)
            if layer.shuffle:
                x = pixel_shuffle(x, 2)
            if layer.relu:
                x = np.clip(x, 0, a_max)
        m = self.latent
        if self.head == "macro":  # means of channel 0 only (the others are 0)
            sidx = _to_index(x[:m]).repeat(MACRO, axis=1).repeat(MACRO, axis=2)
            return pixel_shuffle(x[m : m + MACRO**2], MACRO), sidx
        return x[:m], _to_index(x[m:])


def _to_index(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor_divide(x + 2 ** (A_FRAC_BITS - 1), 2**A_FRAC_BITS), 0, NUM_SCALES - 1).astype(np.uint8)


def coding_order(flat_s: np.ndarray, first_group: int) -> tuple[np.ndarray, np.ndarray]:
    """Order in which y symbols are coded: grouped by scale index, raster order inside a group.

    Only groups ``first_group`` .. 63 are coded; the others hold no symbols.  Returns (flat positions
    of the coded symbols in coding order, group boundaries: group k is order[b[k]:b[k+1]], empty
    for k < first_group).  The skipped positions are dropped before sorting (at the fast preset's
    thresholds most latents are skipped); ``flat_s`` is uint8, for which numpy's stable sort is a
    radix sort (linear time).
    """
    pos = np.flatnonzero(flat_s >= first_group) if first_group > 0 else np.arange(flat_s.size)
    keys = flat_s[pos]
    perm = np.argsort(keys, kind="stable")
    return pos[perm], np.searchsorted(keys[perm], np.arange(NUM_SCALES + 1))


class EntropyCoder:
    """Codes one tile's (z, y) with the fixed tables and the integer hyper-synthesis."""

    def __init__(self, hs: IntHyperSynthesis, z_pmf: np.ndarray, y_pmf: np.ndarray, y_radius: np.ndarray) -> None:
        self.hs = hs
        self.z_pmf = np.asarray(z_pmf).astype(np.int64)
        self.y_pmf = np.asarray(y_pmf).astype(np.int64)
        cat = constriction.stream.model.Categorical
        self.z_models = [cat(row.astype(np.float64), perfect=False) for row in self.z_pmf]
        self.y_radius = np.asarray(y_radius).astype(np.int64)
        self.y_models = [cat(row[: 2 * r + 3].astype(np.float64), perfect=False) for row, r in zip(self.y_pmf, self.y_radius)]
        self.escape_model = constriction.stream.model.Uniform(2**ESCAPE_BITS)

    def hyper(self, z_sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.hs(z_sym)

    @functools.cached_property
    def y_bits(self) -> np.ndarray:
        """(NUM_SCALES, width) bits of each y table index under these tables (escape indices without
        their magnitude; entries past a row's table: inf), for the encoder's symbol choice (``sarcodec.rdoq``)."""
        return np.where(self.y_pmf > 0, PMF_TOTAL_BITS - np.log2(np.maximum(self.y_pmf, 1)), np.inf)

    def encode(self, z_sym: np.ndarray, y: np.ndarray, first_group: int, offsets: np.ndarray | None = None,
               trim: bool = False) -> tuple[bytes, np.ndarray, float]:
        """z_sym: int (Cz, hz, wz); y: float (M, h, w), h <= 4hz, w <= 4wz; scale-index groups below
        ``first_group`` (``ModelConfig.first_coded_group(quality)``) are not coded; ``offsets``: the
        quality's reconstruction offsets (NUM_SCALES, RECON_MAX) float32, or None; ``trim``: drop
        what the decoder does not need of a small payload's final word (the result's length is then
        not always a multiple of 4: .sarc 3.0).

        Returns (payload, y_hat as ``decode`` returns it, ideal bits: the information content of the
        symbols under the tables).
        """
        enc = constriction.stream.queue.RangeEncoder()
        z_sym = np.clip(z_sym, -Z_RADIUS, Z_RADIUS).astype(np.int64)
        bits = 0.0
        for c, model in enumerate(self.z_models):
            zi = z_sym[c].ravel() + Z_RADIUS
            enc.encode(zi.astype(np.int32), model)
            bits += _info_bits(zi, self.z_pmf[c])
        mean_int, sidx = self.hs(z_sym)
        m, (h, w) = mean_int.shape[0], y.shape[1:]
        mean = mean_int[:, :h, :w] / 2**A_FRAC_BITS
        sidx = sidx[:, :h, :w]
        d = y.astype(np.float64)
        d[:m] -= mean
        order, bounds = coding_order(sidx.ravel(), first_group)
        coded = np.rint(d.ravel()[order]).astype(np.int64)
        escapes = []
        for k in range(first_group, NUM_SCALES):
            b0, b1 = bounds[k], bounds[k + 1]
            if b0 == b1:
                continue
            r = int(self.y_radius[k])
            v = np.clip(coded[b0:b1], -r - 2**ESCAPE_BITS, r + 2**ESCAPE_BITS)
            coded[b0:b1] = v
            idx = np.clip(v, -r - 1, r + 1) + (r + 1)  # 0 and 2r+2: escapes
            enc.encode(idx.astype(np.int32), self.y_models[k])
            bits += _info_bits(idx, self.y_pmf[k, : 2 * r + 3])
            out = np.abs(v) > r
            if out.any():  # escape magnitudes, in coding order
                escapes.append(np.abs(v[out]) - r - 1)
        if escapes:
            e = np.concatenate(escapes)
            enc.encode(e.astype(np.int32), self.escape_model)
            bits += ESCAPE_BITS * e.size
        sym = np.zeros(d.size, dtype=np.int32)  # not coded: 0, i.e. y_hat = mean
        sym[order] = coded
        payload = enc.get_compressed().tobytes()
        if trim and len(payload) <= TRIM_MAX_BYTES:
            payload = self._trim(payload, z_sym, sym, (h, w), first_group)
        return payload, reconstruct(sym, mean_int[:, :h, :w], sidx, offsets), bits

    def _trim(self, payload: bytes, z_sym: np.ndarray, sym: np.ndarray, y_hw: tuple[int, int], first_group: int) -> bytes:
        """The shortest of payload with its final word cut to 1, 2 or 3 high-order bytes that decodes
        to the same symbols (``payload`` itself if none does)."""
        for keep in (1, 2, 3):
            cand = payload[:-4] + payload[-keep:]
            try:
                z2, sym2, _, _ = self._symbols(cand, z_sym.shape, y_hw, first_group)
            except DECODE_ERRORS:
                continue
            if np.array_equal(z2, z_sym) and np.array_equal(sym2, sym):
                return cand
        return payload

    def decode(self, payload: bytes, z_shape: tuple[int, int, int], y_hw: tuple[int, int], first_group: int,
               offsets: np.ndarray | None = None) -> np.ndarray:
        """Inverse of ``encode``: returns y_hat float32 (M, *y_hw); EntropyError on invalid data."""
        try:
            return self._decode(payload, z_shape, y_hw, first_group, offsets)
        except EntropyError:
            raise
        except DECODE_ERRORS as e:
            raise EntropyError(f"invalid coded data ({e})") from None

    def _decode(self, payload: bytes, z_shape: tuple[int, int, int], y_hw: tuple[int, int], first_group: int,
                offsets: np.ndarray | None) -> np.ndarray:
        _, sym, mean_int, sidx = self._symbols(payload, z_shape, y_hw, first_group)
        return reconstruct(sym, mean_int, sidx, offsets)

    def _symbols(self, payload: bytes, z_shape: tuple[int, int, int], y_hw: tuple[int, int],
                 first_group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """-> (z symbols, flat y symbols int32, integer means and scale indices cropped to ``y_hw``)."""
        dec = constriction.stream.queue.RangeDecoder(restore_words(payload))
        cz, hz, wz = z_shape
        if cz != len(self.z_models):
            raise EntropyError("hyper-latent channel count does not match the model")
        z_sym = np.stack([dec.decode(m, hz * wz).reshape(hz, wz) for m in self.z_models]).astype(np.int64) - Z_RADIUS
        mean_int, sidx = self.hs(z_sym)
        h, w = y_hw
        sidx = sidx[:, :h, :w]
        order, bounds = coding_order(sidx.ravel(), first_group)
        coded = np.empty(order.size, dtype=np.int32)  # symbol values in coding order
        esc_pos, esc_sign, esc_base = [], [], []
        for k in range(first_group, NUM_SCALES):
            b0, b1 = bounds[k], bounds[k + 1]
            if b0 == b1:
                continue
            r = int(self.y_radius[k])
            v = dec.decode(self.y_models[k], int(b1 - b0))
            v -= r + 1
            coded[b0:b1] = v
            e = np.flatnonzero(np.abs(v) > r)
            if e.size:
                esc_pos.append(e + b0)
                esc_sign.append(np.sign(v[e]))
                esc_base.append(np.full(e.size, r + 1))
        if esc_pos:
            pos, sign, base = np.concatenate(esc_pos), np.concatenate(esc_sign), np.concatenate(esc_base)
            mags = dec.decode(self.escape_model, pos.size).astype(np.int64)
            coded[pos] = sign * (base + mags)
        sym = np.zeros(sidx.size, dtype=np.int32)  # not coded: 0, i.e. y_hat = mean
        sym[order] = coded
        return z_sym, sym, mean_int[:, :h, :w], sidx


def restore_words(payload: bytes) -> np.ndarray:
    """The u32 words of a coded latent whose final word may keep only its 1-3 high-order bytes (the
    dropped low-order bytes are 0xFF)."""
    k = len(payload) % 4
    if k:
        payload = payload[:-k] + b"\xff" * (4 - k) + payload[-k:]
    return np.frombuffer(payload, dtype="<u4").astype(np.uint32)


def reconstruct(sym: np.ndarray, mean_int: np.ndarray, sidx: np.ndarray, offsets: np.ndarray | None) -> np.ndarray:
    """y_hat float32 (M, h, w) from the flat int32 symbols, the integer means of the first
    ``mean_int.shape[0]`` channels (the others: 0) and, if given, the reconstruction offsets."""
    m, h, w = mean_int.shape
    y = sym.reshape(-1, h, w).astype(np.float32)
    y[:m] = (sym.reshape(-1, h, w)[:m] + mean_int / 2**A_FRAC_BITS).astype(np.float32)
    if offsets is not None:
        nz = np.flatnonzero(sym)
        s = sym[nz]
        d = offsets[sidx.ravel()[nz], np.minimum(np.abs(s), RECON_MAX) - 1]
        y.reshape(-1)[nz] += np.where(s > 0, d, -d)
    return y


def _info_bits(idx: np.ndarray, pmf: np.ndarray) -> float:
    """Information content of symbols ``idx`` under the integer table ``pmf``."""
    counts = np.bincount(idx, minlength=pmf.size)
    return float(counts @ -np.log2(pmf / 2**PMF_TOTAL_BITS))
