"""Fit a trained model's reconstruction offsets (``sarcodec.model.ReconOffsets``) and export it.

    python benchmarks/fit_offsets.py --weights weights/IN.pt --out weights/OUT.pt \
        --data ../shared/data/train/s1-vh-8bit --data ../shared/data/train/mstar-xband-8bit

Models trained before the offsets existed reconstruct every coded latent at the centre of its
quantisation bin.  The offsets move only the decoder's reconstruction, not the symbols, so the rate
is unchanged and only the distortion is minimised: Adam on the offset table alone, everything else
fixed, over crops drawn by ``sarcodec train``'s sampler (8-bit crops and synthetic full-range ones),
one crop per quality each step.  Training data only (never eval/); the validation split is the one
``sarcodec train`` holds out, and its per-quality PSNR is printed before and after.  ``sarcodec
train`` learns the offsets jointly with the transforms; this script is for models trained without.
The exported file has a new model id, so files made with the input weights still need those.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

import sarcodec
from sarcodec import train as T
from sarcodec.weights import export, training_model_from_weights


def summary(v: dict) -> str:
    return " ".join(f"q{r['quality']}:{r['bpp']:.3f}/{r['psnr']:.2f}" for r in v["per_quality"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", action="append", required=True, help="training folders (repeatable)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if any("eval" in Path(p).parts for p in args.data):
        sys.exit("fit on training data, not on eval/")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    files = T.list_rasters(args.data)
    val_files, train_files = T.split_files(files, T.TrainConfig(data=args.data, out="").val_split)  # train's split
    images = [T.load_band(f) for f in train_files]
    val_x = T.val_set([T.load_band(f) for f in val_files])

    model = training_model_from_weights(args.weights)
    for p in model.parameters():
        p.requires_grad_(False)
    table = model.recon.table
    table.requires_grad_(True)
    before = T.validate(model, val_x, torch.device("cpu"))
    print(f"before: {summary(before)}", flush=True)
    opt = torch.optim.Adam([table], lr=args.lr)
    nq = model.cfg.qualities
    t0 = time.perf_counter()
    model.train()
    for step in range(1, args.steps + 1):
        x = torch.from_numpy(np.stack([T.random_sample(images[i], args.crop, rng) for i in rng.integers(0, len(images), nq)])[:, None])
        q = torch.from_numpy(rng.permutation(nq))
        out = model(x, q, noise=False)
        loss = ((out["x_hat"] - x) ** 2).mean(dim=(1, 2, 3)).sum()  # each quality's table sees only its crop
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step}/{args.steps}: MSE sum {loss.item():.3e}, |offset| mean {table.abs().mean().item():.4f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    after = T.validate(model, val_x, torch.device("cpu"))
    print(f"after:  {summary(after)}")
    meta = dict(sarcodec.load_model(args.weights).meta)
    meta["recon_offsets"] = {"from": args.weights.name, "steps": args.steps, "crop": args.crop, "lr": args.lr, "seed": args.seed,
                             "data": args.data, "seconds": round(time.perf_counter() - t0),
                             "val_psnr_before": [round(r["psnr"], 3) for r in before["per_quality"]],
                             "val_psnr_after": [round(r["psnr"], 3) for r in after["per_quality"]]}
    model_id = export(model, args.out, meta)
    print(f"wrote {args.out} (model id {model_id})")


if __name__ == "__main__":
    main()
