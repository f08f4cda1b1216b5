"""Training: a tiny real run exports loadable weights; resume continues; non-finite batches are skipped."""
from __future__ import annotations

import numpy as np
import torch

import sarcodec
from sarcodec import train as train_mod
from sarcodec.train import TrainConfig, train
from sarcodec.weights import load

from .conftest import EVAL, need


def test_tiny_training_run_exports_and_resumes(tmp_path, monkeypatch):
    files = sorted(need(EVAL / "mstar-xband-8bit").glob("*.jpg"))[:6]  # any real rasters; no shipped model sees eval/
    out = tmp_path / "tiny.pt"
    cfg = TrainConfig(data=[str(f) for f in files], out=str(out), steps=4, batch=2, crop=64, val_every=2, checkpoint_every=2,
                      val_split=0.2, threads=1, model={"latent": 16, "hyper": 8, "hyper_hidden": 8, "c4": 8, "c8": 8, "c16": 16})
    # make one batch non-finite: it must be skipped and counted, not stepped on
    real = train_mod.random_sample
    calls = {"n": 0}

    def poisoned(img, crop, rng):
        calls["n"] += 1
        x = real(img, crop, rng)
        return np.full_like(x, np.nan) if calls["n"] == 3 else x

    monkeypatch.setattr(train_mod, "random_sample", poisoned)
    summary = train(cfg, log=lambda m: None)
    assert summary["steps"] == 4 and summary["skipped"] == 1
    blob = torch.load(out, weights_only=True)  # loads with weights_only
    assert blob["format"] == "sarcodec-weights"
    m = load(out)
    assert m.cfg.latent == 16
    img = (np.random.default_rng(0).random((70, 90)) * 255).astype(np.uint8)
    r, _ = sarcodec.decode_array(sarcodec.encode_array(img, 3, model=m), model=m)
    assert r.shape == (1, 70, 90)
    ck = torch.load(out.with_suffix(".ckpt"), weights_only=True)
    assert ck["step"] == 4 and all(torch.isfinite(t).all() for t in ck["model"].values() if t.is_floating_point())
    cfg.steps, cfg.resume = 6, True
    summary = train(cfg, log=lambda m: None)
    assert summary["steps"] == 6


def test_training_can_start_from_exported_weights(tmp_path):
    from sarcodec.model import ModelConfig, SarCodecModel
    from sarcodec.weights import export, training_model_from_weights

    cfg = ModelConfig(latent=16, hyper=8, hyper_hidden=8, c4=8, c8=8, c16=16)
    torch.manual_seed(3)
    m = SarCodecModel(cfg)
    for p in m.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)
    a = export(m, tmp_path / "a.pt")
    b = export(training_model_from_weights(tmp_path / "a.pt"), tmp_path / "b.pt")
    assert a == b  # the exported file is a faithful seed for further training
