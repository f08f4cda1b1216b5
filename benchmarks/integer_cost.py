"""What the exact integer entropy model costs: BD-rate of the shipped codec vs the float model.

    python benchmarks/integer_cost.py --ckpt weights/NAME.ckpt [--weights weights/NAME.pt] [--limit 8]

Float path: the training model (``SarCodecModel.forward(noise=False)``) with float means, continuous
scales and the learned float prior; rate = information content of the rounded symbols, distortion of
its reconstruction.  Integer path: the real codec (``encode_array``/``decode_array``: fixed-point
hyper-synthesis, 64 quantised scales, integer tables, range coder, container), on the same images.
Both on the 8-bit eval Sentinel-1 images; prints per-quality points and the BD-rate.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import rasterio
import torch

import sarcodec
from sarcodec import metrics
from sarcodec.weights import load, load_checkpoint_model

EVAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval" / "s1-vh-8bit"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", type=Path, required=True)
    ap.add_argument("--weights", type=Path, default=None)
    ap.add_argument("--limit", type=int, default=8)
    args = ap.parse_args()
    fm = load_checkpoint_model(args.ckpt)
    cm = load(args.weights)
    files = sorted(EVAL.glob("*.tif"))[: args.limit]
    imgs = []
    for f in files:
        with rasterio.open(f) as ds:
            imgs.append(ds.read(1))
    fl, it, fi = [], [], []
    for q in range(1, 9):
        fb, fp, ib, ip, ideal = [], [], [], [], []
        for a in imgs:
            x = torch.from_numpy(a / 255.0).float()[None, None]
            with torch.no_grad():
                out = fm(x, torch.tensor([q - 1]), noise=False)
            bits = float(-torch.log2(out["p_y"]).sum() - torch.log2(out["p_z"]).sum())
            rec = np.clip(np.rint(out["x_hat"][0, 0].numpy() * 255), 0, 255)
            fb.append(bits / a.size)
            fp.append(metrics.psnr(a, rec, 255))
            stats: dict = {}
            data = sarcodec.encode_array(a, q, model=cm, stats=stats)
            r, _ = sarcodec.decode_array(data, model=cm)
            ib.append(8 * len(data) / a.size)
            ideal.append(stats["ideal_bits"] / a.size)
            ip.append(metrics.psnr(a, r[0], 255))
        fl.append((np.mean(fb), np.mean(fp)))
        it.append((np.mean(ib), np.mean(ip)))
        fi.append((np.mean(ideal), np.mean(ip)))
        print(f"q{q}: float model {fl[-1][0]:.4f} bpp {fl[-1][1]:.3f} dB | integer model {fi[-1][0]:.4f} bpp "
              f"| file {it[-1][0]:.4f} bpp {it[-1][1]:.3f} dB", flush=True)
    bd_int = metrics.bd_rate([p[0] for p in fl], [p[1] for p in fl], [p[0] for p in fi], [p[1] for p in fi])
    bd_file = metrics.bd_rate([p[0] for p in fl], [p[1] for p in fl], [p[0] for p in it], [p[1] for p in it])
    print(f"BD-rate of the integer entropy model (information content under the integer tables, float16 "
          f"weights, reconstruction of the real decoder) vs the float model: {bd_int:+.2f} %")
    print(f"BD-rate of the whole file (range coder, masks, header, tile table included) vs the float model: {bd_file:+.2f} %")


if __name__ == "__main__":
    main()
