"""Where the rate goes on speckled 8-bit SAR: each quality's saving against JPEG 2000, and what is left at high rates.

    python benchmarks/rd_vs_jpeg2000.py --codecs sarcodec,jpeg2000-log,lossless --sets s1 --limit 3 --out DIR
    python benchmarks/high_rate.py DIR/results.json

At high rates a transform codec with uniform scalar quantisation and ideal entropy coding spends
``R = H - 0.5 * log2(12 * MSE)`` bits per pixel, where ``H`` is the lossless rate its probability
model would reach on the image: the quantiser's step sets the distortion and the rest is entropy.
So every lossy row has an effective ``H_eff = bpp + 0.5 * log2(12 * MSE)``.  The high-rate model holds
where JPEG 2000's own ``H_eff`` is at most 0.03 bit above its reversible (lossless) rate; there this
prints two estimates, with the best lossless coder at hand (JPEG XL, effort 9) as ``H``:

* ``scalar``: ``H_jxl - 0.5 * log2(12 * MSE)``, what a scalar-quantised codec (JPEG 2000, JPEG XL,
  sarcodec, and every learned codec with rounding) needs at sarcodec's distortion if its model of
  the image is as good as JPEG XL's lossless one;
* ``shannon``: ``H_jxl - 0.5 * log2(2 * pi * e * MSE)``, 0.254 bit less: the Shannon lower bound with
  that ``H``, which only vector or trellis quantisation approaches.

Each is also given as a rate change against JPEG 2000 at the same PSNR, beside sarcodec's own.
The header line adds the lossless rate a two-pass context least-squares coder would reach
(``context_ls_bpp``), a check on how far below JPEG XL a better model of the speckle could take ``H``.
Only for images whose PSNR is on 8-bit values (the ``s1-vh-8bit`` set); the images are read from
``../shared/data/eval/<dataset>/<image>.tif``.
"""
from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
ANCHOR = "jpeg2000-log"
HIGH_RATE_FIT = 0.03  # bits: JPEG 2000's H_eff against its lossless rate where the model is trusted


def mse_of(psnr: float, peak: float = 255.0) -> float:
    return peak**2 / 10 ** (psnr / 10)


def h_eff(bpp: float, psnr: float) -> float:
    return bpp + 0.5 * math.log2(12 * mse_of(psnr))


def anchor_log_rate(points: list[tuple[float, float]], psnr: float) -> float:
    """ln(bpp) of the anchor at ``psnr``: piecewise linear in (PSNR, ln bpp), extended by the end segments."""
    pts = sorted(set(points))
    p = np.array([a for a, _ in pts])
    r = np.log([b for _, b in pts])
    if psnr > p[-1] or psnr < p[0]:
        i = -2 if psnr > p[-1] else 0
        return float(r[i] + (psnr - p[i]) * (r[i + 1] - r[i]) / (p[i + 1] - p[i]))
    return float(np.interp(psnr, p, r))


# causal neighbours (row, column) of the least-squares predictor in context_ls_bpp
NEIGHBOURS = [(0, -1), (0, -2), (0, -3), (-1, -3), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2), (-1, 3),
              (-2, -2), (-2, -1), (-2, 0), (-2, 1), (-2, 2), (-3, -1), (-3, 0), (-3, 1)]


def read_band(dataset: str, image: str) -> np.ndarray:
    from sarcodec.io import open_raster

    with open_raster(EVAL / dataset / f"{image}.tif") as ds:
        return ds.read(1)


def jxl_lossless_bpp(a: np.ndarray) -> float:
    import imagecodecs

    return len(imagecodecs.jpegxl_encode(a, lossless=True, effort=9)) * 8 / a.size


def context_ls_bpp(a: np.ndarray, brightness_bins: int = 4, activity_bins: int = 4) -> float:
    """Lossless rate of a two-pass coder, estimated: one least-squares predictor from 18 causal neighbours
    fitted to the image, its rounded residuals coded with one adaptive table per (brightness, activity)
    context.  Empirical conditional entropy plus each table's learning cost, (symbols - 1) / 2 * log2(n);
    the 19 coefficients and the bin edges are left out (a few hundred bits)."""
    v = a.astype(np.float64)
    h, w = v.shape
    p = 3
    target = v[p:, p : w - p].ravel()
    nb = np.stack([v[p + dy : h + dy, p + dx : w - p + dx].ravel() for dy, dx in NEIGHBOURS], axis=1)
    design = np.concatenate([nb, np.ones((len(target), 1))], axis=1)
    coef = np.linalg.lstsq(design, target, rcond=None)[0]
    residual = np.rint(target - design @ coef).astype(np.int64)
    brightness = nb.mean(axis=1)
    activity = np.abs(nb[:, 0] - nb[:, 6]) + np.abs(nb[:, 5] - nb[:, 7])  # |W - N| + |NW - NE|

    def bins(x: np.ndarray, n: int) -> np.ndarray:
        return np.digitize(x, np.quantile(x, np.linspace(0, 1, n + 1)[1:-1]))

    context = bins(brightness, brightness_bins) * activity_bins + bins(activity, activity_bins)
    bits = 0.0
    for c in np.unique(context):
        _, counts = np.unique(residual[context == c], return_counts=True)
        n = counts.sum()
        bits += -(counts * np.log2(counts / n)).sum() + (len(counts) - 1) / 2 * np.log2(n)
    return bits / len(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="results.json written by rd_vs_jpeg2000.py / sarcodec bench")
    args = ap.parse_args()
    rows = [r for r in json.loads(args.results.read_text())["rows"] if r.get("dtype") == "uint8" and r.get("bands") == 1]  # not the error rows
    by = defaultdict(list)
    for r in rows:
        by[(r["image"], r["codec"])].append(r)
    images = sorted({r["image"] for r in rows if r["codec"] == "sarcodec"})
    if not images:
        raise SystemExit("no single-band uint8 sarcodec rows in the results")
    per_q: dict[str, list[dict]] = defaultdict(list)
    lossless: dict[str, dict[str, float]] = {}  # per image: reversible JPEG 2000, JPEG XL, context LS (bpp)
    for img in images:
        anchor = [(r["psnr"], r["bpp"]) for r in by[(img, ANCHOR)]]
        rev = [r["bpp"] for r in by[(img, "lossless")] if r["setting"] == "jpeg2000-reversible"]
        if len(anchor) < 2 or not rev:
            raise SystemExit(f"{img}: needs the {ANCHOR} and lossless codecs in the results")
        band = read_band(by[(img, "sarcodec")][0]["dataset"], img)
        lossless[img] = {"rev": rev[0], "jxl": jxl_lossless_bpp(band), "ls": context_ls_bpp(band)}
        for r in by[(img, "sarcodec")]:
            a = next(x for x in by[(img, ANCHOR)] if x["setting"] == r["setting"])
            ln_anchor = anchor_log_rate(anchor, r["psnr"])
            scalar = lossless[img]["jxl"] - 0.5 * math.log2(12 * mse_of(r["psnr"]))
            per_q[r["setting"]].append({
                "bpp": r["bpp"], "psnr": r["psnr"], "h": h_eff(r["bpp"], r["psnr"]), "h_anchor": h_eff(a["bpp"], a["psnr"]),
                "saving": math.log(r["bpp"]) - ln_anchor,
                "scalar": scalar, "shannon": scalar - 0.5 * math.log2(2 * math.pi * math.e / 12), "ln_anchor": ln_anchor,
            })

    def pct(log_ratio: float) -> str:
        return f"{(math.exp(log_ratio) - 1) * 100:+.1f} %"

    mean_lossless = {k: float(np.mean([v[k] for v in lossless.values()])) for k in ("rev", "jxl", "ls")}
    print(f"{len(images)} images; lossless: JPEG XL e9 {mean_lossless['jxl']:.3f} bpp, "
          f"JPEG 2000 reversible {mean_lossless['rev']:.3f} bpp; estimated for a context "
          f"least-squares coder: {mean_lossless['ls']:.3f} bpp\n")
    print("| quality | bpp | PSNR | rate vs JPEG 2000-log | H_eff sarcodec | H_eff JPEG 2000-log | scalar estimate | shannon estimate |")
    print("|---|---|---|---|---|---|---|---|")
    for q in sorted(per_q, key=lambda s: int(s.lstrip("q"))):
        v = per_q[q]
        m = {k: float(np.mean([x[k] for x in v])) for k in v[0]}
        line = f"| {q} | {m['bpp']:.3f} | {m['psnr']:.2f} | {pct(m['saving'])} | {m['h']:.3f} | {m['h_anchor']:.3f} |"
        if m["h_anchor"] - mean_lossless["rev"] <= HIGH_RATE_FIT and m["scalar"] > 0:
            est = [pct(float(np.mean([math.log(x[k]) - x["ln_anchor"] for x in v]))) for k in ("scalar", "shannon")]
            line += f" {m['scalar']:.3f} ({est[0]}) | {m['shannon']:.3f} ({est[1]}) |"
        else:
            line += " not high-rate | not high-rate |"
        print(line)


if __name__ == "__main__":
    main()
