"""Rate-distortion optimised quantisation (RDOQ) of a tile's latent: the encoder's choice of its symbols
and of which latents it codes.

Why this module exists: rounding ``y - mean`` to the nearest integer is the symbol closest to the
analysis output, not the one that costs least.  A symbol one step towards the mean often saves more
bits than the distortion it adds is worth, and the synthesis can move the error of one latent into
another's.  With the hyper-latent z fixed (so every mean, scale and table is fixed and each symbol's
bit cost is exact and local) the encoder improves J = bits + lambda_q * 255^2 * SSE, the objective
the models were trained on, by greedy rounds (each one synthesis and its gradient):

1. one synthesis with its gradient g = dSSE/dy_hat at the current symbols;
2. for every coded symbol, the change of J predicted for moving it by -1 or +1: the exact change of
   its bits (the coder's tables) plus lambda * (g * dy + c * dy^2), dy the change of its reconstruction
   (offsets included) and c the squared norm of the channel's linear synthesis basis (the second-order
   term of the synthesis' lapped part);
3. the moves predicted to help are applied, all of them if the *measured* J (a real synthesis) falls,
   else only the best half, quarter or tenth; a round that finds no improvement ends the search.

Before that, ``choose_group`` picks which latents the tile codes at all.  The model skips latents
whose scale index lies below a threshold fixed per quality (``ModelConfig.skip_groups``, tuned on the
training data); the best threshold differs from image to image (a smooth despeckled chip gains by
coding fewer of its small latents, a textured one by coding more).  The encoder measures J of the
rounded symbols at the default threshold and its neighbours, walks towards the lower J while it
falls, and writes the threshold it found in the tile (one byte, tile flag 16 of format 7.1) unless it
is the default.

The decoder and the entropy coder are as before; the symbols are one choice among those any encoder
may make.  J as measured on the tile's window (its neighbours' latents as analysed) never rises above
that of the rounded symbols at the chosen threshold.  It needs the synthesis' gradient, so only the
torch models (``TorchModel.synthesis_sse``) are refined; the fast preset rounds as before.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .entropy import A_FRAC_BITS, ESCAPE_BITS, NUM_SCALES, Z_RADIUS, reconstruct

if TYPE_CHECKING:
    from .runtime import TorchModel

REVISION = 2  # what ``encode(rdoq=True)`` does: 1 symbols (sarcodec 0.1 with format 7.0), 2 symbols and the threshold
MAX_SHIFT = 8  # the threshold moves at most this many scale groups from the model's default
ROUNDS = 4  # greedy rounds at most (J of 6 CNNSpeckleFilter chips at q2/q5/q7: 1 round -0.7..-0.85 %, 4 -0.8..-1.2 %, 8 -0.9..-1.3 %)
CHUNK = 64  # latents a side refined at once (1024 pixels): bounds the memory of the synthesis' gradient
FALLBACK = (1.0, 0.5, 0.25, 0.1)  # shares of the predicted moves tried, best first, until the measured J falls


class _Costs:
    """Bits of candidate symbols at fixed scale indices (one tile's coded latents)."""

    def __init__(self, table: np.ndarray, radius: np.ndarray, sidx: np.ndarray) -> None:
        self.k = sidx.astype(np.int64)
        self.r = radius.astype(np.int64)[self.k]
        self.table = table

    def __call__(self, sym: np.ndarray) -> np.ndarray:
        i = np.clip(sym, -self.r - 1, self.r + 1) + self.r + 1
        return self.table[self.k, i] + np.where(np.abs(sym) > self.r, ESCAPE_BITS, 0)


def group_cost(model: "TorchModel", y_win: np.ndarray, tile: tuple[slice, slice], z_sym: np.ndarray, u: np.ndarray,
               valid: np.ndarray, quality: int, group: int) -> float:
    """J of the tile's rounded symbols when it codes from scale group ``group`` (a group other than the
    model's default pays the byte that names it).  Arguments as for ``refine``."""
    _, y_hat, bits = model.coder.encode(z_sym, y_win[:, tile[0], tile[1]], group, model.offsets(quality))
    win = y_win.copy()
    win[:, tile[0], tile[1]] = y_hat
    sse, _ = model.synthesis_sse(win, quality, u, valid, gradient=False)
    side = 8 if group != model.cfg.first_coded_group(quality) else 0
    return bits + side + model.cfg.lambdas[quality - 1] * 255.0**2 * sse


def choose_group(model: "TorchModel", y_win: np.ndarray, tile: tuple[slice, slice], z_sym: np.ndarray, u: np.ndarray,
                 valid: np.ndarray, quality: int) -> int:
    """The first scale group the tile should code: from the model's default, the neighbour with the
    lower ``group_cost``, and on in that direction while it falls (at most ``MAX_SHIFT`` groups)."""
    base = model.cfg.first_coded_group(quality)
    best, best_j = base, group_cost(model, y_win, tile, z_sym, u, valid, quality, base)
    for step in (1, -1):
        group = base + step
        while abs(group - base) <= MAX_SHIFT and 0 <= group <= NUM_SCALES:
            j = group_cost(model, y_win, tile, z_sym, u, valid, quality, group)
            if j >= best_j:
                break
            best, best_j = group, j
            group += step
        if best != base:  # J fell upwards: no need to look below
            break
    return best


def refine(model: "TorchModel", y_win: np.ndarray, tile: tuple[slice, slice], z_sym: np.ndarray, u: np.ndarray,
           valid: np.ndarray, quality: int, rounds: int = ROUNDS, first_group: int | None = None) -> np.ndarray:
    """The tile's latent with RDOQ symbols, to be passed to ``EntropyCoder.encode`` as ``y``.

    ``y_win`` (M, H, W): the analysis of the normalised window ``u`` (H * stride, W * stride) around the
    tile, whose latents are ``y_win[:, tile[0], tile[1]]``; the others stand for the neighbours' (as
    analysed: the encoder does not know their symbols).  ``valid``: u's pixels that count (shape of u).
    ``z_sym``: the tile's integer hyper-latent.  Returns mean + symbols for the tile's latents (so the
    coder's rounding gives exactly those symbols; uncoded ones at their mean).  ``first_group``: the
    first scale group the tile codes (``choose_group``; None: the model's default at ``quality``).

    A tile larger than ``CHUNK`` latents a side is refined in chunks of at most that size, one after
    another, each with its own window (the halo the synthesis needs; chunks refined before it enter
    with their reconstruction), so the gradient's memory stays that of a 1024 x 1024 tile.
    """
    mean_int, sidx = model.coder.hs(np.clip(z_sym, -Z_RADIUS, Z_RADIUS).astype(np.int64))
    if first_group is None:
        first_group = model.cfg.first_coded_group(quality)
    r0, c0 = tile[0].start or 0, tile[1].start or 0
    h, w = y_win[:, tile[0], tile[1]].shape[1:]
    work = y_win.astype(np.float32)  # the window's latents; refined chunks' reconstructions replace them
    out = np.empty((y_win.shape[0], h, w))
    halo, s = model.halo_lat, model.stride
    for i0 in range(0, h, CHUNK):
        for j0 in range(0, w, CHUNK):
            i1, j1 = min(h, i0 + CHUNK), min(w, j0 + CHUNK)
            a0, a1 = max(0, r0 + i0 - halo), min(work.shape[1], r0 + i1 + halo)  # the chunk's window
            b0, b1 = max(0, c0 + j0 - halo), min(work.shape[2], c0 + j1 + halo)
            part = (slice(r0 + i0 - a0, r0 + i1 - a0), slice(c0 + j0 - b0, c0 + j1 - b0))
            y_ref, y_hat = _search(model, work[:, a0:a1, b0:b1], part, mean_int[:, i0:i1, j0:j1], sidx[:, i0:i1, j0:j1],
                                   u[a0 * s : a1 * s, b0 * s : b1 * s], valid[a0 * s : a1 * s, b0 * s : b1 * s],
                                   quality, rounds, first_group)
            out[:, i0:i1, j0:j1] = y_ref
            work[:, r0 + i0 : r0 + i1, c0 + j0 : c0 + j1] = y_hat
    return out


def _search(model: "TorchModel", y_win: np.ndarray, tile: tuple[slice, slice], mean_int: np.ndarray, sidx: np.ndarray,
            u: np.ndarray, valid: np.ndarray, quality: int, rounds: int, first_group: int) -> tuple[np.ndarray, np.ndarray]:
    """The greedy rounds on the latents ``y_win[:, tile]`` (means and scale indices of those alone):
    (mean + symbols, their reconstruction)."""
    coder = model.coder
    y = y_win[:, tile[0], tile[1]].astype(np.float64)
    m = mean_int.shape[0]
    mean = np.zeros_like(y)
    mean[:m] = mean_int / 2**A_FRAC_BITS
    coded = sidx >= first_group
    sym = np.where(coded, np.rint(y - mean), 0).astype(np.int64)
    offsets = model.offsets(quality)
    costs = _Costs(coder.y_bits, coder.y_radius, sidx)
    lam = model.cfg.lambdas[quality - 1] * 255.0**2
    curv = model.curvature(quality)[:, None, None]

    def recon(s: np.ndarray) -> np.ndarray:
        return reconstruct(s.astype(np.int32).ravel(), mean_int, sidx, offsets).astype(np.float64)

    def measure(s: np.ndarray, gradient: bool = True) -> tuple[float, np.ndarray | None, np.ndarray]:
        y_hat = recon(s)
        win = y_win.astype(np.float32)  # copy; the neighbours' latents as analysed
        win[:, tile[0], tile[1]] = y_hat
        sse, grad = model.synthesis_sse(win, quality, u, valid, gradient)
        bits = float(costs(s)[coded].sum())
        return bits + lam * sse, None if grad is None else grad[:, tile[0], tile[1]].astype(np.float64), y_hat

    best_j, grad, y_hat = measure(sym)
    for r in range(rounds):
        now = costs(sym)
        gain, move = np.zeros(sym.shape), sym.copy()
        for step in (-1, 1):
            cand = sym + step
            dy = recon(cand) - y_hat
            dj = costs(cand) - now + lam * (grad * dy + curv * dy * dy)
            better = coded & (dj < gain)
            gain = np.where(better, dj, gain)
            move = np.where(better, cand, move)
        helps = gain < 0
        if not helps.any():
            break
        for share in FALLBACK:
            pick = helps if share == 1.0 else helps & (gain <= np.quantile(gain[helps], share))
            trial = np.where(pick, move, sym)
            j, g, yh = measure(trial, gradient=r < rounds - 1)  # the last round's is never used
            if j < best_j:
                sym, best_j, grad, y_hat = trial, j, g, yh
                break
        else:
            break
    return mean + sym, y_hat
