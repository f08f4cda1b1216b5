"""Choose a trained model's per-quality skip thresholds (``ModelConfig.skip_groups``) and export it.

    python benchmarks/tune_skip.py --weights weights/IN.pt --out weights/OUT.pt \
        --data ../shared/data/train/s1-vh-8bit --data ../shared/data/train/mstar-xband-8bit

Latents whose predicted scale index is below a threshold K are not coded (the encoder sets them to
their mean, the decoder knows they are 0).  For each quality this script codes 512 x 512 crops of
*training* images (never eval/) with K = the model's current first coded group .. 16 and picks the
K that minimises the training objective at that quality, J = bits/pixel + lambda_q * MSE (8-bit
units).  The float weights are unchanged; the exported file has a new model id, so files made with
the input weights still need (and name) those.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import rasterio

import sarcodec
from sarcodec.weights import export, training_model_from_weights

K_MAX = 16


def crops(paths: list[Path], per_dir: int, size: int) -> list[np.ndarray]:
    out = []
    for d in paths:
        files = sorted(d.glob("*.tif")) if d.is_dir() else [d]
        step = max(1, len(files) // per_dir)
        for f in files[::step][:per_dir]:
            with rasterio.open(f) as ds:
                a = ds.read(1)
            if a.dtype != np.uint8:
                sys.exit(f"{f}: this script measures 8-bit training images only")
            r0, c0 = (a.shape[0] - min(size, a.shape[0])) // 2, (a.shape[1] - min(size, a.shape[1])) // 2
            out.append(a[r0 : r0 + size, c0 : c0 + size])
    return out


def objective(model, images: list[np.ndarray], quality: int, k: int) -> tuple[float, float]:
    """(bits per pixel, MSE in 8-bit units) of ``images`` coded at ``quality`` with threshold ``k``."""
    model.cfg.skip_groups = [k] * model.cfg.qualities
    bits = sse = npix = 0.0
    for a in images:
        data = sarcodec.encode_array(a, quality, model=model, tile=512)
        rec, _ = sarcodec.decode_array(data, model=model)
        bits += 8 * len(data)
        sse += float(((a.astype(np.float64) - rec[0]) ** 2).sum())
        npix += a.size
    return bits / npix, sse / npix


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, action="append", required=True, help="training folders (repeatable)")
    ap.add_argument("--per-dir", type=int, default=8, help="images per folder")
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    if any("eval" in p.parts for p in args.data):
        sys.exit("tune on training data, not on eval/")
    images = crops(args.data, args.per_dir, args.size)
    model = sarcodec.load_model(args.weights)
    base = model.cfg.first_coded_group(1)
    chosen, table = [], {}
    t0 = time.perf_counter()
    for q in range(1, model.cfg.qualities + 1):
        lam = model.cfg.lambdas[q - 1]
        js = {}
        for k in range(base, K_MAX + 1):
            bpp, mse = objective(model, images, q, k)
            js[k] = (bpp, mse, bpp + lam * mse)
        best = min(js, key=lambda k: js[k][2])
        chosen.append(best)
        table[q] = {k: [round(v, 5) for v in js[k]] for k in js}
        b0, bb = js[base], js[best]
        print(f"q{q}: K={best}  J {b0[2]:.4f} -> {bb[2]:.4f}  ({b0[0]:.3f} bpp / {10 * np.log10(255**2 / b0[1]):.2f} dB -> "
              f"{bb[0]:.3f} bpp / {10 * np.log10(255**2 / bb[1]):.2f} dB)", flush=True)
    train_model = training_model_from_weights(args.weights)
    train_model.cfg.skip_groups = chosen
    meta = dict(model.meta)
    meta["skip_groups"] = {"chosen": chosen, "from": args.weights.name, "images": len(images), "crop": args.size,
                           "data": [str(p) for p in args.data], "seconds": round(time.perf_counter() - t0),
                           "objective_per_quality_and_K": table}
    model_id = export(train_model, args.out, meta)
    print(f"skip_groups {chosen}; wrote {args.out} (model id {model_id})")
    print(json.dumps(chosen))


if __name__ == "__main__":
    main()
