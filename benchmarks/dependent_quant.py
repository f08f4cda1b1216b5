"""What dependent (trellis) quantisation of the latents would save, measured on a shipped model.

    python benchmarks/dependent_quant.py [--weights FILE] [--limit 2] [--crop 512] [--out dq.json]

An experiment, not a codec mode: the 4-state dependent quantisation of VVC applied to the model's
latents as they are (no retraining).  Two scalar quantisers of step 2*delta, Q0 on the even
multiples of delta and Q1 on the odd ones plus zero; the parity of each level picks the next
state (and so the quantiser) along every latent row of every channel; a Viterbi search per row
minimises (y - y_hat)^2 + lam * bits, the bits being the Gaussian mass of the level's cell under
the model's hyperprior (mean and scale as the entropy coder has them).  Latents the model skips
stay skipped.  Both sides use ideal code lengths: the model's own quantisation (rounding plus its
reconstruction offsets) is measured with the information content of its symbols under its integer
tables, the trellis with -log2 of the cell masses; the hyper-latent costs the same for both.

For centre crops of the first ``--limit`` eval Sentinel-1 scenes (PSNR on the 8-bit values) it
prints, per quality, the trellis's rate at the model's PSNR (interpolated in log rate between the
points of the trellis's Pareto front over all deltas, lambdas and qualities) relative to the
model's rate.  Measured for sarcodec-hp7: weights/README.md.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
S1 = ROOT.parent / "shared" / "data" / "eval" / "s1-vh-8bit"
NEXT_STATE = np.array([[0, 2], [2, 0], [1, 3], [3, 1]])  # [state, parity of |level|]; states 0-1: Q0, 2-3: Q1


def gauss_cdf(x: np.ndarray) -> np.ndarray:
    import torch

    return torch.special.ndtr(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


def candidates(x: np.ndarray, quantiser: int, delta: float) -> tuple[np.ndarray, ...]:
    """(levels, reconstructions, cell lower and upper bounds), each (3, n): the two levels of the
    quantiser nearest to x and level 0."""
    if quantiser == 0:  # reconstructions 2k delta, cells of width 2 delta around them
        kf = np.floor(x / (2 * delta))
        ks = np.stack([kf, kf + 1, np.zeros_like(x)])
        r = 2 * ks * delta
        return ks, r, r - delta, r + delta
    # Q1: 0 and the odd multiples (2k - sign k) delta; cells: |v| < delta/2 -> 0, then (delta/2, 2 delta)
    # -> +-1, then (2(a - 1) delta, 2a delta) -> +-a
    t = np.floor(x / delta)
    odd = np.where(t % 2 == 0, t - 1, t)  # the odd multiple at or below x
    ks = np.stack([(odd + np.sign(odd)) / 2, (odd + 2 + np.sign(odd + 2)) / 2, np.zeros_like(x)])
    r = (2 * ks - np.sign(ks)) * delta
    a = np.abs(ks)
    lo_a = np.where(a == 0, -0.5, np.where(a == 1, 0.5, 2 * a - 2)) * delta
    hi_a = np.where(a == 0, 0.5, np.where(a == 1, 2.0, 2 * a)) * delta
    return ks, r, np.where(ks < 0, -hi_a, lo_a), np.where(ks < 0, -lo_a, hi_a)


def trellis(d: np.ndarray, sigma: np.ndarray, coded: np.ndarray, delta: float, lam: float) -> tuple[np.ndarray, float]:
    """Viterbi over rows: d (latent - mean), sigma, coded, all (rows, length).  -> (reconstruction of d, bits)."""
    n, length = d.shape
    cost = np.full((n, 4), np.inf)
    cost[:, 0] = 0.0
    back_state = np.zeros((length, n, 4), np.int8)
    back_rec = np.zeros((length, n, 4))
    back_bits = np.zeros((length, n, 4))
    for j in range(length):
        x, s = d[:, j], sigma[:, j]
        new = np.full((n, 4), np.inf)
        prev, rec, bits_of = np.zeros((n, 4), np.int8), np.zeros((n, 4)), np.zeros((n, 4))
        for st in range(4):
            ks, r, lo, hi = candidates(x, st >> 1, delta)
            bits = -np.log2(np.maximum(gauss_cdf(hi / s) - gauss_cdf(lo / s), 1e-12))
            total = cost[:, st] + (x - r) ** 2 + lam * bits
            nxt = NEXT_STATE[st][np.abs(ks).astype(np.int64) & 1]
            for c in range(3):
                for ns in range(4):
                    better = (nxt[c] == ns) & (total[c] < new[:, ns])
                    new[:, ns] = np.where(better, total[c], new[:, ns])
                    prev[:, ns] = np.where(better, st, prev[:, ns])
                    rec[:, ns] = np.where(better, r[c], rec[:, ns])
                    bits_of[:, ns] = np.where(better, bits[c], bits_of[:, ns])
        skip = ~coded[:, j]  # skipped latents: no symbol, the state stays
        new[skip], prev[skip], rec[skip], bits_of[skip] = cost[skip], np.arange(4), 0.0, 0.0
        cost, back_state[j], back_rec[j], back_bits[j] = new, prev, rec, bits_of
    rows, st = np.arange(n), np.argmin(cost, 1)
    out, total_bits = np.zeros((n, length)), 0.0
    for j in range(length - 1, -1, -1):
        out[:, j] = back_rec[j, rows, st]
        total_bits += float(back_bits[j, rows, st].sum())
        st = back_state[j, rows, st]
    return out, total_bits


def measure(model, path: Path, crop: int, deltas: list[float], lams: list[float]) -> list[dict]:
    from sarcodec.entropy import A_FRAC_BITS, Z_RADIUS, _info_bits
    from sarcodec.io import open_raster
    from sarcodec.model import scale_table

    scales = scale_table().numpy()
    with open_raster(path) as ds:
        a = ds.read(1).astype(np.float32)
    if crop:
        h, w = a.shape
        a = a[(h - crop) // 2 : (h + crop) // 2, (w - crop) // 2 : (w + crop) // 2]
    u, npix, rows = a / 255.0, a.size, []

    def psnr(y_hat: np.ndarray, q: int) -> float:
        return float(10 * np.log10(255.0**2 / np.mean((model.synthesis(y_hat.astype(np.float32), q) * 255 - a) ** 2)))

    for q in range(1, model.cfg.qualities + 1):
        y = model.analysis(u, q)
        m, h, w = y.shape
        z = np.clip(np.round(model.hyper_analysis(y)).astype(np.int64), -Z_RADIUS, Z_RADIUS)
        first = model.cfg.first_coded_group(q)
        _, y_hat, bits = model.coder.encode(z, y, first, model.offsets(q))
        rows.append({"image": path.name, "q": q, "kind": "model", "bpp": bits / npix, "psnr": psnr(y_hat, q)})
        z_bits = sum(_info_bits(z[c].ravel() + Z_RADIUS, model.coder.z_pmf[c]) for c in range(z.shape[0]))
        mean_int, sidx = model.coder.hyper(z)
        mean = np.zeros((m, h, w))
        mean[: mean_int.shape[0]] = mean_int[:, :h, :w] / 2**A_FRAC_BITS
        sidx = sidx[:, :h, :w]
        d, sigma, coded = (y - mean).reshape(m * h, w), scales[sidx].reshape(m * h, w), (sidx >= first).reshape(m * h, w)
        for delta in deltas:
            for lam in lams:
                rec, y_bits = trellis(d, sigma, coded, delta, lam)
                rows.append({"image": path.name, "q": q, "kind": "trellis", "delta": delta, "lam": lam,
                             "bpp": (y_bits + z_bits) / npix, "psnr": psnr(mean + rec.reshape(m, h, w), q)})
        print(f"{path.name} q{q} done", flush=True)
    return rows


def rate_change(rows: list[dict]) -> dict[int, float]:
    """Per quality: trellis rate at the model's PSNR / the model's rate - 1 (NaN outside the trellis's range)."""
    pts = sorted(((r["psnr"], np.log(r["bpp"])) for r in rows if r["kind"] == "trellis"), key=lambda p: -p[0])
    front: list[tuple[float, float]] = []
    for p in pts:  # Pareto front: from the highest PSNR down, keep the points that lower the rate
        if not front or p[1] < front[-1][1]:
            front.append(p)
    fp, fr = np.array([p for p, _ in front[::-1]]), np.array([r for _, r in front[::-1]])
    out = {}
    for r in rows:
        if r["kind"] == "model":
            inside = fp[0] <= r["psnr"] <= fp[-1]
            out[r["q"]] = float(np.exp(np.interp(r["psnr"], fp, fr) - np.log(r["bpp"])) - 1) if inside else float("nan")
    return out


def main() -> None:
    import torch

    from sarcodec.weights import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=2, help="first N eval Sentinel-1 scenes")
    ap.add_argument("--crop", type=int, default=512, help="centre crop (0: whole scene; a 1024^2 scene takes ~4x longer)")
    ap.add_argument("--deltas", default="0.5,0.6,0.7")
    ap.add_argument("--lams", default="0.04,0.07,0.1,0.14")
    ap.add_argument("--out", type=Path, default=Path("dependent_quant.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load(args.weights)
    deltas, lams = [float(x) for x in args.deltas.split(",")], [float(x) for x in args.lams.split(",")]
    rows: list[dict] = []
    for f in sorted(S1.glob("*.tif"))[: args.limit]:
        rows += measure(model, f, args.crop, deltas, lams)
    args.out.write_text(json.dumps(rows))
    changes = [rate_change([r for r in rows if r["image"] == im]) for im in sorted({r["image"] for r in rows})]
    print(f"trellis rate at {model.name}'s PSNR, relative to its rate (negative = the trellis saves):")
    for q in sorted(changes[0]):
        print(f"  q{q}: {100 * np.nanmean([c[q] for c in changes]):+.1f} %")
    print(f"  mean: {100 * np.nanmean([v for c in changes for v in c.values()]):+.2f} %")


if __name__ == "__main__":
    main()
