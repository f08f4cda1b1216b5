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


def h_eff(bpp: float, psnr: float, peak: float = 255.0) -> float:
    mse = peak**2 / 10 ** (psnr / 10)
    return bpp + 0.5 * math.log2(12 * mse)


def anchor_log_rate(points: list[tuple[float, float]], psnr: float) -> float:
    """ln(bpp) of the anchor at ``psnr``: piecewise linear in (PSNR, ln bpp), extended by the end segments."""
    pts = sorted(set(points))
    p = np.array([a for a, _ in pts])
    r = np.log([b for _, b in pts])
    if psnr > p[-1] or psnr < p[0]:
        i = -2 if psnr > p[-1] else 0
        return float(r[i] + (psnr - p[i]) * (r[i + 1] - r[i]) / (p[i + 1] - p[i]))
    return float(np.interp(psnr, p, r))


def jxl_lossless_bpp(dataset: str, image: str) -> float:
    import imagecodecs
    import rasterio

    with rasterio.open(EVAL / dataset / f"{image}.tif") as ds:
        a = ds.read(1)
    return len(imagecodecs.jpegxl_encode(a, lossless=True, effort=9)) * 8 / a.size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, help="results.json written by rd_vs_jpeg2000.py / sarcodec bench")
    args = ap.parse_args()
    rows = [r for r in json.loads(args.results.read_text())["rows"] if r["dtype"] == "uint8" and r["bands"] == 1]
    by = defaultdict(list)
    for r in rows:
        by[(r["image"], r["codec"])].append(r)
    images = sorted({r["image"] for r in rows if r["codec"] == "sarcodec"})
    if not images:
        raise SystemExit("no single-band uint8 sarcodec rows in the results")
    per_q: dict[str, list[dict]] = defaultdict(list)
    for img in images:
        anchor = [(r["psnr"], r["bpp"]) for r in by[(img, ANCHOR)]]
        rev = [r["bpp"] for r in by[(img, "lossless")] if r["setting"] == "jpeg2000-reversible"]
        if len(anchor) < 2 or not rev:
            raise SystemExit(f"{img}: needs the {ANCHOR} and lossless codecs in the results")
        h_jxl = jxl_lossless_bpp(by[(img, "sarcodec")][0]["dataset"], img)
        for r in by[(img, "sarcodec")]:
            a = next(x for x in by[(img, ANCHOR)] if x["setting"] == r["setting"])
            mse = 255.0**2 / 10 ** (r["psnr"] / 10)
            ln_anchor = anchor_log_rate(anchor, r["psnr"])
            scalar = h_jxl - 0.5 * math.log2(12 * mse)
            per_q[r["setting"]].append({
                "bpp": r["bpp"], "psnr": r["psnr"], "h": h_eff(r["bpp"], r["psnr"]), "h_anchor": h_eff(a["bpp"], a["psnr"]),
                "h_rev": rev[0], "h_jxl": h_jxl, "saving": math.log(r["bpp"]) - ln_anchor,
                "scalar": scalar, "shannon": scalar - 0.5 * math.log2(2 * math.pi * math.e / 12), "ln_anchor": ln_anchor,
            })

    def pct(log_ratio: float) -> str:
        return f"{(math.exp(log_ratio) - 1) * 100:+.1f} %"

    print(f"{len(images)} images; lossless: JPEG XL e9 {np.mean([v[0]['h_jxl'] for v in per_q.values()]):.3f} bpp, "
          f"JPEG 2000 reversible {np.mean([v[0]['h_rev'] for v in per_q.values()]):.3f} bpp\n")
    print("| quality | bpp | PSNR | rate vs JPEG 2000-log | H_eff sarcodec | H_eff JPEG 2000-log | scalar estimate | shannon estimate |")
    print("|---|---|---|---|---|---|---|---|")
    for q in sorted(per_q, key=lambda s: int(s.lstrip("q"))):
        v = per_q[q]
        m = {k: float(np.mean([x[k] for x in v])) for k in v[0]}
        line = f"| {q} | {m['bpp']:.3f} | {m['psnr']:.2f} | {pct(m['saving'])} | {m['h']:.3f} | {m['h_anchor']:.3f} |"
        if m["h_anchor"] - m["h_rev"] <= HIGH_RATE_FIT and m["scalar"] > 0:
            est = [pct(float(np.mean([math.log(x[k]) - x["ln_anchor"] for x in v]))) for k in ("scalar", "shannon")]
            line += f" {m['scalar']:.3f} ({est[0]}) | {m['shannon']:.3f} ({est[1]}) |"
        else:
            line += " not high-rate | not high-rate |"
        print(line)


if __name__ == "__main__":
    main()
