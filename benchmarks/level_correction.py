"""What a decoder-side backscatter-level correction would do, measured on a shipped model.

    python benchmarks/level_correction.py [--weights FILE] [--qualities 1,2,4,6] [FILE ...]

An experiment, not a codec mode.  A model that codes the log domain decodes (close to) the
conditional mean of log-intensity, exp(E[ln I]), while the backscatter a sigma0 user averages is
E[I] = exp(E[ln I]) * E[exp(e)], e being the log-domain error.  Where the decoder smooths speckle
away, e has the speckle's spread and the mean intensity comes back low (2.5 dB for one look).  The
decoder cannot see e, but its entropy model says how uncertain every latent was: sigma^2 for a
latent that is not coded (decoded at its mean), min(sigma^2, 1/12) for a coded one.  Summed per
16 x 16 block over the channels, weighted by each channel's synthesis energy (the squared response
of the model's synthesis to a unit latent), that is an estimate of var(e) per block; the
log-gamma relation of speckle (var = psi'(L), bias = ln L - psi(L)) turns it into a correction,
which multiplies the block's decoded intensity.  Uses nothing but what the decoder has.

For each file (default: the strongly speckled float eval files; values as encode sees them) it
prints, per quality, the median ratio of estimated to actual var(e) over blocks, and the mean
backscatter level and its RMS over 32 x 32 blocks (dB, as ``sarcodec bench``'s "level dB" and
"local level dB") before and after the correction.  Measured for sarcodec-hp7: weights/README.md.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLOAT = ROOT.parent / "shared" / "data" / "eval" / "float"
DEFAULT_FILES = ["whu-sentinel1_113_20171021_1220_VH_city_1_1.tif", "whu-sentinel1_113_20171021_1220_VH_hill_1_1.tif",
                 "sen1floods11-Spain_7370579_S1Hand.tif"]


def channel_energy(model, quality: int) -> np.ndarray:
    """Energy of the synthesis's response (normalised domain) to a unit error in each latent channel."""
    m = model.cfg.latent
    base = model.synthesis(np.zeros((m, 9, 9), np.float32), quality)
    e = np.zeros(m)
    for c in range(m):
        y = np.zeros((m, 9, 9), np.float32)
        y[c, 4, 4] = 1.0
        e[c] = np.sum((model.synthesis(y, quality) - base) ** 2)
    return e


def log_gamma_bias(v: np.ndarray) -> np.ndarray:
    """ln L - psi(L) for the L with psi'(L) = v (bisection on ln L; v capped at one look's pi^2/6)."""
    import torch

    x = torch.from_numpy(np.clip(v, 1e-6, math.pi**2 / 6)).double()
    lo, hi = torch.zeros_like(x), torch.full_like(x, 16.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        small = torch.polygamma(1, torch.exp(mid)) > x  # trigamma falls with L: L is larger than exp(mid)
        lo, hi = torch.where(small, mid, lo), torch.where(small, hi, mid)
    look = torch.exp((lo + hi) / 2)
    return (torch.log(look) - torch.digamma(look)).numpy()


def main() -> None:
    from sarcodec.io import open_raster
    from sarcodec.metrics import block_means, level_db, local_level_db
    from sarcodec.preprocess import choose_domain, fit_mapping
    from sarcodec.model import scale_table
    from sarcodec.weights import load

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--qualities", default="1,2,4,6")
    args = ap.parse_args()
    model = load(args.weights)
    scales = scale_table().numpy()
    s = model.stride
    energy: dict[int, np.ndarray] = {}  # per quality, shared by the files
    for path in args.files or [FLOAT / f for f in DEFAULT_FILES]:
        with open_raster(path) as ds:
            a = ds.read(1).astype(np.float64)
            dtype = np.dtype(ds.dtypes[0])
        h, w = (a.shape[0] // 64) * 64, (a.shape[1] // 64) * 64
        a = a[:h, :w]
        mp = fit_mapping(dtype, a, choose_domain(dtype, a))
        if mp.domain == "identity":
            print(f"{path.name}: identity domain, nothing to correct")
            continue
        # ln(intensity) of the normalised value u, for every log-domain mapping: (u (hi - lo) + lo) ln10 / 10 = k u + c
        k, c = (mp.hi - mp.lo) * math.log(10) / 10, mp.lo * math.log(10) / 10

        def intensity(u: np.ndarray) -> np.ndarray:
            return np.exp(u.astype(np.float64) * k + c)

        u = mp.forward(a)
        inten = intensity(u)
        print(path.name)
        for q in (int(x) for x in args.qualities.split(",")):
            y = model.analysis(u, q)
            z = np.round(model.hyper_analysis(y)).astype(np.int64)
            first = model.cfg.first_coded_group(q)
            _, y_hat, _ = model.coder.encode(z, y, first, offsets=model.offsets(q))
            _, sidx = model.coder.hs(z)
            sidx = sidx[:, : y.shape[1], : y.shape[2]]
            sig2 = scales[sidx] ** 2
            v_lat = np.where(sidx >= first, np.minimum(sig2, 1 / 12), sig2)
            if q not in energy:
                energy[q] = channel_energy(model, q)
            v_est = np.tensordot(energy[q], v_lat, axes=(0, 0)) / (s * s) * k * k
            rec = intensity(model.synthesis(y_hat, q)[:h, :w])
            v_true = block_means(np.log(inten / rec) ** 2, s)
            corrected = rec * np.kron(np.exp(log_gamma_bias(v_est)), np.ones((s, s)))

            def level(x: np.ndarray) -> str:
                return f"{level_db(inten, x):+.2f} / {local_level_db(inten, x):.2f}"

            print(f"  q{q}: var(e) estimated/actual {np.median(v_est / np.maximum(v_true, 1e-12)):.2f}; "
                  f"level / local level dB {level(rec)} -> {level(corrected)}")


if __name__ == "__main__":
    main()
