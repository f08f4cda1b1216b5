"""Training: a tiny real run exports loadable weights; resume continues; non-finite batches are skipped."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import sarcodec
from sarcodec import codec, train as train_mod
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

    def poisoned(img, crop, rng, *rest):
        calls["n"] += 1
        x = real(img, crop, rng, *rest)
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


def _tiny_exported(path, seed: int) -> str:
    """Export a tiny default-architecture model with non-trivial parameters; returns its id."""
    from sarcodec.model import ModelConfig, SarCodecModel
    from sarcodec.weights import export

    torch.manual_seed(seed)
    m = SarCodecModel(ModelConfig(latent=16, hyper=8, hyper_hidden=8, c4=8, c8=8, c16=16))
    for p in m.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)
    return export(m, path)


def test_training_can_start_from_exported_weights(tmp_path):
    from sarcodec.weights import export, training_model_from_weights

    a = _tiny_exported(tmp_path / "a.pt", 3)
    b = export(training_model_from_weights(tmp_path / "a.pt"), tmp_path / "b.pt")
    assert a == b  # the exported file is a faithful seed for further training


def test_a_grown_synthesis_starts_as_the_model_it_grew_from(tmp_path):
    from sarcodec.weights import WeightsError, default_weights_path, export, training_model_from_weights

    _tiny_exported(tmp_path / "a.pt", 4)
    small = training_model_from_weights(tmp_path / "a.pt").eval()
    grown = training_model_from_weights(tmp_path / "a.pt", grow=2).eval()
    assert grown.cfg.s16_extra == 2 and grown.cfg.halo_lat == small.cfg.halo_lat + 2
    assert "s16_extra" not in small.cfg.to_dict()  # older models keep their ids
    y = torch.randn(1, 16, 6, 5)
    with torch.no_grad():
        assert torch.equal(small.g_s(y), grown.g_s(y))
    for p in grown.g_s.more.parameters():  # the new blocks train
        p.data.add_(torch.randn_like(p) * 0.01)
    export(grown, tmp_path / "g.pt")
    again = training_model_from_weights(tmp_path / "g.pt", grow=1)  # grows further: blocks 0-1 load, 2 is new
    assert again.cfg.s16_extra == 3
    with torch.no_grad():
        assert torch.allclose(again.g_s.eval()(y), grown.g_s(y), atol=1e-2)  # stored as float16
    m = load(tmp_path / "g.pt")
    img = (np.random.default_rng(1).random((150, 130)) * 255).astype(np.uint8)
    r, _ = sarcodec.decode_array(sarcodec.encode_array(img, 4, model=m, tile=64), model=m)
    assert r.shape == (1, 150, 130)
    with pytest.raises(WeightsError, match="default architecture"):
        training_model_from_weights(default_weights_path("fast"), grow=1)


def test_a_quality_conditioned_synthesis_starts_as_its_base_and_decodes_per_quality(tmp_path):
    from sarcodec.model import count_macs
    from sarcodec.weights import WeightsError, default_weights_path, export, training_model_from_weights

    _tiny_exported(tmp_path / "a.pt", 4)
    base = training_model_from_weights(tmp_path / "a.pt").eval()
    film = training_model_from_weights(tmp_path / "a.pt", film=True).eval()
    assert film.cfg.q_film and "q_film" not in base.cfg.to_dict()  # older models keep their ids
    y, q = torch.randn(2, 16, 6, 5), torch.tensor([0, 7])
    with torch.no_grad():
        assert torch.equal(base.g_s(y), film.g_s(y, q))  # starts as the identity
        with pytest.raises(ValueError, match="pass q"):
            film.g_s(y)
    assert count_macs(film.g_s, (1, 16, 4, 4), q[:1]) == count_macs(base.g_s, (1, 16, 4, 4))
    with torch.no_grad():  # as training would move it: quality 8 only
        film.g_s.film.log_scale[7].uniform_(-0.5, 0.5)
        film.g_s.film.shift[7].uniform_(-0.5, 0.5)
    export(film, tmp_path / "f.pt")
    m = load(tmp_path / "f.pt")
    assert m.cfg.q_film and m.model_id != load(tmp_path / "a.pt").model_id
    again = training_model_from_weights(tmp_path / "f.pt", film=True).eval()  # already conditioned: loads as is
    with torch.no_grad():
        assert torch.allclose(again.g_s(y, q), film.g_s(y, q), atol=1e-2)  # stored as float16
    img = (np.random.default_rng(1).random((150, 130)) * 255).astype(np.uint8)
    a = load(tmp_path / "a.pt")
    for quality, same in ((1, True), (8, False)):
        blob = sarcodec.encode_array(img, quality, model=m, tile=64)
        r, _ = sarcodec.decode_array(blob, model=m)
        r0, _ = sarcodec.decode_array(sarcodec.encode_array(img, quality, model=a, tile=64), model=a)
        assert r.shape == (1, 150, 130) and np.array_equal(r, r0) == same
    with pytest.raises(WeightsError, match="default architecture"):
        training_model_from_weights(default_weights_path("fast"), film=True)


def test_training_pass_simulates_the_skipped_latents():
    """Where the coder skips a latent (scale index below the quality's first coded group), the
    training pass must reconstruct from its mean and charge no bits, as the coder does."""
    import torch

    from sarcodec.model import ModelConfig, SarCodecModel

    torch.manual_seed(0)
    m = SarCodecModel(ModelConfig(c4=8, c8=8, c16=8, hyper=8, hyper_hidden=8)).eval()
    with torch.no_grad():
        m.h_s.convs[-1].bias.add_(torch.randn_like(m.h_s.convs[-1].bias))  # spread the scale indices around 16
    x = torch.rand(4, 1, 64, 64)
    q = torch.tensor([0, 2, 4, 2])
    seen = {}
    m.h_s.register_forward_hook(lambda mod, inp, out: seen.update(sidx=out[1].detach()))
    with torch.no_grad():
        plain = m(x, q, noise=False)
        k = int(seen["sidx"].median().round())
        m.cfg.skip_groups = [0, 0, k, 0, 64, 0, 0, 0]
        out = m(x, q, noise=False)
    sidx, p = seen["sidx"], out["p_y"]
    assert torch.all(p[2] == 1.0)  # K = 64: nothing coded, no bits
    skipped = sidx[[1, 3]] < k - 0.5
    assert skipped.any() and (~skipped).any()
    assert torch.all(p[[1, 3]][skipped] == 1.0) and torch.all(p[[1, 3]][~skipped] == plain["p_y"][[1, 3]][~skipped])
    assert torch.equal(p[0], plain["p_y"][0])  # K = 0 skips nothing
    assert not torch.equal(out["x_hat"][1], plain["x_hat"][1])  # skipped latents reconstruct from their mean


def test_cli_trains_the_fast_preset(tmp_path):
    from .conftest import run_cli

    files = sorted(need(EVAL / "mstar-xband-8bit").glob("*.jpg"))[:4]
    args = [a for f in files for a in ("--data", f)]
    out = tmp_path / "new" / "f.npz"  # a folder that does not exist yet is made before training starts
    r = run_cli("train", *args, "--out", out, "--preset", "fast", "--steps", "2", "--batch", "2", "--crop", "64",
                "--val-split", "0.25", "--val-every", "2", "--threads", "1")
    assert r.returncode == 0, r.stderr
    m = load(out)
    assert m.cfg.transform == "lot8" and m.cfg.skip_min_scale and m.stride == 8
    r = run_cli("train", *args, "--out", tmp_path / "g.pt", "--preset", "tiny")
    assert r.returncode == 2 and "--preset must be one of default, fast" in r.stderr
    r = run_cli("train", *args, "--out", tmp_path / "g.pt", "--grow", "2")
    assert r.returncode == 2 and "--grow needs --init" in r.stderr and not (tmp_path / "g.pt").exists()
    r = run_cli("train", *args, "--out", tmp_path / "g.pt", "--film")
    assert r.returncode == 2 and "--film needs --init" in r.stderr and not (tmp_path / "g.pt").exists()
    r = run_cli("train", *args, "--out", tmp_path / "g.pt", "--sample-by", "scene")
    assert r.returncode == 2 and "--sample-by must be one of file, pixels, source" in r.stderr
    for dev, msg in (("tpu", "--device must be auto, cpu or cuda, not 'tpu'"), ("cuda", "--device cuda: torch")):
        if dev == "cuda" and torch.cuda.is_available():
            continue
        r = run_cli("train", *args, "--out", tmp_path / "d" / "g.pt", "--device", dev)
        assert r.returncode == 2 and msg in r.stderr and not (tmp_path / "d").exists()
    r = run_cli("train", *args, "--out", tmp_path / "g.pt", "--workers", "-2")
    assert r.returncode == 2 and "--workers must be -1 (automatic) or >= 0" in r.stderr and not (tmp_path / "g.pt").exists()
    r = run_cli("train", *args, "--out", tmp_path / "g.pt", "--ensemble", tmp_path / "none.pt")
    assert r.returncode == 2 and "--ensemble: no such weights file" in r.stderr and not (tmp_path / "g.pt").exists()
    r = run_cli("train", *args, "--out", tmp_path / "g.pt", "--ensemble", out, "--ensemble-temperature", "0")
    assert r.returncode == 2 and "--ensemble-temperature must be > 0" in r.stderr and not (tmp_path / "g.pt").exists()


def test_sampling_weights_balance_files_pixels_or_sources():
    from sarcodec.train import sampling_weights

    sizes, sources = [100, 100, 100, 700], [0, 1, 1, 1]
    assert sampling_weights(sizes, sources, "file") is None  # the original uniform draw
    assert np.allclose(sampling_weights(sizes, sources, "pixels"), [0.1, 0.1, 0.1, 0.7])
    assert np.allclose(sampling_weights(sizes, sources, "source"), [0.5, 0.5 / 9, 0.5 / 9, 3.5 / 9])
    with pytest.raises(ValueError, match="sample_by"):
        sampling_weights(sizes, sources, "scene")


def test_train_rejects_unknown_sampling_before_loading_rasters(tmp_path, monkeypatch):
    loaded = []
    monkeypatch.setattr(train_mod, "load_band", lambda p: loaded.append(p) or np.zeros((64, 64), np.uint8))
    files = sorted(need(EVAL / "mstar-xband-8bit").glob("*.jpg"))[:2]
    cfg = TrainConfig(data=[str(f) for f in files], out=str(tmp_path / "t.pt"), steps=1, sample_by="scene")
    with pytest.raises(ValueError, match="sample_by must be one of file, pixels, source"):
        train(cfg, log=lambda m: None)
    assert not loaded and not (tmp_path / "t.pt").exists()


def test_training_draws_crops_by_source(tmp_path, monkeypatch):
    """``sample_by="source"``: each --data folder gets half of the crops however many files it holds."""
    a = sorted(need(EVAL / "mstar-xband-8bit").glob("*.jpg"))
    few, many = tmp_path / "few", tmp_path / "many"
    few.mkdir(), many.mkdir()
    for f in a[:2]:
        (few / f.name).symlink_to(f)
    for f in a[2:20]:
        (many / f.name).symlink_to(f)
    drawn = []
    real = train_mod.random_sample
    monkeypatch.setattr(train_mod, "random_sample", lambda img, crop, rng, *rest: drawn.append(img.shape) or real(img, crop, rng, *rest))
    monkeypatch.setattr(train_mod, "load_band", lambda p: np.full((256 + len(p.parent.name), 256), 100, np.uint8))
    cfg = TrainConfig(data=[str(few), str(many)], val=[str(few / a[0].name)], out=str(tmp_path / "t.pt"), steps=30, batch=4,
                      crop=64, val_every=1000, checkpoint_every=1000, threads=1, partial=0.0, sample_by="source",
                      model={"latent": 16, "hyper": 8, "hyper_hidden": 8, "c4": 8, "c8": 8, "c16": 16})
    train(cfg, log=lambda m: None)
    from_few = sum(s[0] == 256 + 3 for s in drawn)  # the "few" rasters are 259 rows high, "many" 260
    assert len(drawn) == 120 and 40 <= from_few <= 80  # file-uniform draws would give ~12


def test_gaussian_multilook_keeps_the_mean_and_weakens_speckle():
    rng = np.random.default_rng(0)
    speckled = rng.gamma(1.0, 1.0, (96, 80))  # single-look intensity of a flat scene: ENL 1
    ml = train_mod.gaussian_multilook(speckled, 1.5)
    assert ml.shape == speckled.shape
    assert abs(ml.mean() - speckled.mean()) < 0.02 * speckled.mean()
    enl = ml.mean() ** 2 / ml.var()
    assert 10 < enl < 60  # ~4 pi sigma^2 = 28 independent looks for a Gaussian window of sigma 1.5
    flat = np.full((20, 30), 0.25)
    assert np.allclose(train_mod.gaussian_multilook(flat, 2.0), 0.25)  # reflecting borders: no darkening at the edges


def test_partial_block_pads_like_the_encoder_and_masks_the_padding():
    rng = np.random.default_rng(1)
    v = np.random.default_rng(2).random((64, 48)).astype(np.float32)
    cuts = set()
    for _ in range(40):
        x, mask = train_mod.partial_block(v, 16, rng)
        rows, cols = int(mask[:, 0].sum()), int(mask[0].sum())
        assert 48 < rows <= 64 and 32 < cols <= 48 and (rows, cols) != (64, 48)
        assert mask.sum() == rows * cols and mask[:rows, :cols].all()
        assert np.array_equal(x[:rows, :cols], v[:rows, :cols])
        assert np.array_equal(x, codec.pad_to(v[:rows, :cols], 64, 48))
        cuts.add((rows < 64, cols < 48))
    assert cuts == {(True, False), (False, True), (True, True)}


def test_rd_loss_counts_only_the_real_pixels():
    x = torch.rand(2, 1, 32, 32)
    x_hat = x.clone()
    x_hat[..., 24:] += 0.5  # all the error is in the last 8 columns
    fake = {"x_hat": x_hat, "p_y": torch.full((2, 4, 2, 2), 0.5), "p_z": torch.ones(2, 2, 1, 1)}
    model = lambda x, q, noise: fake  # noqa: E731 - stands in for SarCodecModel's forward
    lambdas, q = torch.tensor([1.0]), torch.zeros(2, dtype=torch.long)
    mask = torch.ones_like(x)
    _, bpp_all, mse_all, _ = train_mod.rd_loss(model, x, q, lambdas)
    _, bpp_one, mse_one, _ = train_mod.rd_loss(model, x, q, lambdas, mask=mask)
    assert torch.allclose(bpp_all, bpp_one) and torch.allclose(mse_all, mse_one)
    mask[..., 24:] = 0
    _, bpp, mse, _ = train_mod.rd_loss(model, x, q, lambdas, mask=mask)
    assert torch.all(mse == 0) and torch.allclose(bpp, bpp_all * 32 / 24)  # same bits over fewer real pixels


def test_balanced_training_tracks_each_quality_and_resumes(tmp_path):
    files = sorted(need(EVAL / "mstar-xband-8bit").glob("*.jpg"))[:5]
    out = tmp_path / "bal.pt"
    cfg = TrainConfig(data=[str(f) for f in files], out=str(out), steps=3, batch=4, crop=64, val_every=3, val_split=0.2,
                      threads=1, balance=True, model={"latent": 16, "hyper": 8, "hyper_hidden": 8, "c4": 8, "c8": 8, "c16": 16})
    summary = train(cfg, log=lambda m: None)
    ck = torch.load(out.with_suffix(".ckpt"), weights_only=True)
    seen, running = ck["seen"], ck["running"]
    assert seen.sum() == 12
    assert torch.all((running == 1.0) == (seen == 0))  # every quality drawn has its own mean loss
    v = summary["history"][-1]
    losses = np.array([r["bpp"] for r in v["per_quality"]])  # bpp grows with quality: the scores are per quality
    assert np.all(np.diff(losses) > 0)
    assert summary["best"] == min(h["balanced"] for h in summary["history"]) and np.isfinite(summary["best"])
    cfg.steps, cfg.resume = 5, True
    train(cfg, log=lambda m: None)
    assert torch.load(out.with_suffix(".ckpt"), weights_only=True)["seen"].sum() == 20


def test_training_on_part_of_the_ladder_draws_and_validates_only_those_qualities(tmp_path):
    from sarcodec.train import draw_batch

    images = [np.random.default_rng(0).integers(0, 256, (200, 200)).astype(np.uint8)]
    _, _, q = draw_batch(images, None, 64, 64, 0.0, 16, 8, np.random.default_rng(3), subset=(3, 5, 7))
    assert set(q.tolist()) == {3, 5, 7}
    files = sorted(need(EVAL / "mstar-xband-8bit").glob("*.jpg"))[:5]
    out = tmp_path / "hq.pt"
    cfg = TrainConfig(data=[str(f) for f in files], out=str(out), steps=3, batch=4, crop=64, val_every=3, val_split=0.2,
                      threads=1, balance=True, qualities=[6, 7, 8],
                      model={"latent": 16, "hyper": 8, "hyper_hidden": 8, "c4": 8, "c8": 8, "c16": 16})
    summary = train(cfg, log=lambda m: None)
    seen = torch.load(out.with_suffix(".ckpt"), weights_only=True)["seen"]
    assert seen[:5].sum() == 0 and seen[5:].sum() == 12
    assert [r["quality"] for r in summary["history"][-1]["per_quality"]] == [6, 7, 8]  # the score that picks the export
    with pytest.raises(ValueError, match="qualities"):
        train(TrainConfig(data=cfg.data, out=str(tmp_path / "bad.pt"), steps=1, batch=2, crop=64, val_split=0.2, threads=1,
                          qualities=[9], model=cfg.model), log=lambda m: None)
    # the whole ladder (what the CLI's default "1-8" passes) trains exactly as no subset: the old draw
    runs = []
    for qs in ([], list(range(1, 9))):
        c = dataclasses.replace(cfg, out=str(tmp_path / f"all{len(qs)}.pt"), qualities=qs, steps=2, val_every=2)
        train(c, log=lambda m: None)
        runs.append(torch.load(tmp_path / f"all{len(qs)}.ckpt", weights_only=True))
    assert torch.equal(runs[0]["seen"], runs[1]["seen"])
    assert all(torch.equal(runs[0]["model"][k], runs[1]["model"][k]) for k in runs[0]["model"])


def test_rd_loss_weights_each_crop():
    x = torch.rand(2, 1, 16, 16)
    fake = {"x_hat": x + 0.1, "p_y": torch.full((2, 4, 1, 1), 0.5), "p_z": torch.ones(2, 2, 1, 1)}
    model = lambda x, q, noise: fake  # noqa: E731 - stands in for SarCodecModel's forward
    lambdas, q = torch.tensor([0.01, 0.02]), torch.tensor([0, 1])
    plain, bpp, mse, _ = train_mod.rd_loss(model, x, q, lambdas)
    per_crop = bpp + lambdas[q] * 255.0**2 * mse
    weighted, *_ = train_mod.rd_loss(model, x, q, lambdas, weight=torch.tensor([2.0, 0.5]))
    assert torch.isclose(plain, per_crop.mean()) and torch.isclose(weighted, (per_crop * torch.tensor([2.0, 0.5])).mean())


def test_win_weights_follow_which_model_is_cheaper_and_pass_no_gradient():
    own = torch.tensor([1.0, 1.0, 1.0, 0.2], requires_grad=True)
    rival = torch.tensor([1.0, 1.2, 0.8, 0.2 * 1.03])
    w = train_mod.win_weights(own, rival, 0.03)
    assert torch.isclose(w[0], torch.tensor(0.5)) and w[1] > 0.99 and w[2] < 0.01  # equal, clearly cheaper, clearly dearer
    assert torch.isclose(w[3], torch.sigmoid(torch.log(torch.tensor(1.03)) / 0.03))  # relative: the same at any loss level
    assert not w.requires_grad  # a weight of the loss, not part of it
    assert train_mod.win_weights(own, rival, 0.3)[2] > w[2]  # a higher temperature weighs the dearer crops more


def test_rival_losses_take_the_cheapest_model_per_crop():
    x = torch.rand(3, 1, 16, 16)
    lambdas, q = torch.tensor([0.01, 0.02]), torch.tensor([0, 1, 1])

    def fake(err, p):  # stands in for SarCodecModel's forward: a fixed error and likelihood per crop
        out = {"x_hat": x + torch.tensor(err)[:, None, None, None], "p_y": torch.tensor(p)[:, None, None, None].expand(3, 4, 1, 1),
               "p_z": torch.ones(3, 2, 1, 1)}
        return lambda x, q, noise: out

    a, b = fake([0.1, 0.0, 0.2], [0.5, 0.25, 0.5]), fake([0.0, 0.1, 0.2], [0.5, 0.5, 0.25])
    per = [train_mod.crop_losses(*train_mod.rd_loss(m, x, q, lambdas)[1:3], q, lambdas) for m in (a, b)]
    assert torch.equal(train_mod.rival_losses([a, b], x, q, lambdas), torch.minimum(*per))
    assert (per[0] < per[1]).tolist() == [False, True, True]  # each model wins somewhere: the minimum mixes them


def test_training_to_join_other_models_is_selected_by_the_joint_score(tmp_path):
    """--ensemble: the rivals are loaded frozen, validation reports the score of the per-crop cheaper of
    this model and them, which selects the export; the weights record what the model was trained to join."""
    files = sorted(need(EVAL / "mstar-xband-8bit").glob("*.jpg"))[:5]
    _tiny_exported(tmp_path / "r1.pt", 4)
    _tiny_exported(tmp_path / "r2.pt", 5)
    rival_bytes = (tmp_path / "r2.pt").read_bytes()
    out = tmp_path / "j.pt"
    cfg = TrainConfig(data=[str(f) for f in files], out=str(out), steps=4, batch=3, crop=64, val_every=2, val_split=0.2,
                      threads=1, balance=True, init=str(tmp_path / "r1.pt"), ensemble=[str(tmp_path / "r2.pt")])
    lines = []
    summary = train(cfg, log=lines.append)
    scores = [h["ensemble"] for h in summary["history"]]
    assert len(scores) == 3 and all(np.isfinite(scores)) and summary["best"] == min(scores)
    assert all(h["ensemble"] <= h["balanced"] + 1e-9 for h in summary["history"])  # the cheaper of two: never worse than this model alone
    alone = float(next(m for m in lines if m.startswith("validation score of the models joined")).split()[-1])
    assert all(s <= alone + 1e-9 for s in scores)  # ... nor than the rivals alone
    assert json.loads(torch.load(out, weights_only=True)["meta"])["ensemble"] == ["r2.pt"]
    assert (tmp_path / "r2.pt").read_bytes() == rival_bytes  # frozen
    cfg.steps, cfg.resume = 5, True
    assert train(cfg, log=lambda m: None)["steps"] == 5


def _draw(rng: np.random.Generator, shape=(3, 1, 64, 64)):
    return rng.random(shape).astype(np.float32), np.ones(shape, np.float32), rng.integers(0, 8, shape[0])


_PARENT = os.getpid()


def _fails_in_worker(rng: np.random.Generator):
    if os.getpid() != _PARENT:
        raise SystemExit(3)
    return _draw(rng)


def test_batch_loader_order_does_not_depend_on_the_number_of_workers():
    from sarcodec.train import BatchLoader

    got = {}
    for workers in (1, 3):
        with BatchLoader(_draw, np.random.default_rng(0), workers, key=[5, 100]) as batches:
            got[workers] = [next(batches) for _ in range(7)]
    want = [_draw(np.random.default_rng([5, 100, k])) for k in range(7)]
    for w in got.values():
        assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2]) for a, b in zip(w, want))
    # without workers the batches come from the run's own generator, as before workers existed
    with BatchLoader(_draw, np.random.default_rng(9)) as batches:
        first = next(batches)
    assert np.array_equal(first[0], _draw(np.random.default_rng(9))[0])


def test_batch_loader_reports_a_dead_worker_instead_of_waiting():
    from sarcodec.train import BatchLoader

    with BatchLoader(_fails_in_worker, np.random.default_rng(0), 1) as batches:
        with pytest.raises(RuntimeError, match="data loader worker 0 stopped"):
            next(batches)


def test_draw_batch_keeps_the_in_loop_draw_order():
    """Old recipes reproduce: raster choice, crops, partial blocks, then qualities, from one generator."""
    from sarcodec.train import draw_batch

    images = [np.random.default_rng(i).integers(0, 256, (300, 280)).astype(np.uint8) for i in range(3)]
    x, m, q = draw_batch(images, None, 4, 64, 0.5, 16, 8, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    which = rng.integers(0, 3, 4)
    crops = [train_mod.random_sample(images[i], 64, rng) for i in which]
    masks = [np.ones_like(c) for c in crops]
    for j in np.flatnonzero(rng.random(4) < 0.5):
        crops[j], masks[j] = train_mod.partial_block(crops[j], 16, rng)
    assert np.array_equal(x[:, 0], np.stack(crops)) and np.array_equal(m[:, 0], np.stack(masks))
    assert np.array_equal(q, rng.integers(0, 8, 4)) and x.shape == (4, 1, 64, 64) and x.dtype == np.float32


def test_loader_workers_are_automatic_only_on_a_gpu(monkeypatch):
    from sarcodec.train import loader_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
    assert loader_workers(-1, cpu) == 0 and loader_workers(3, cpu) == 3 and loader_workers(0, cuda) == 0
    monkeypatch.setattr(train_mod, "usable_cores", lambda: 16)
    assert loader_workers(-1, cuda) == 14
    monkeypatch.setattr(train_mod, "usable_cores", lambda: 2)
    assert loader_workers(-1, cuda) == 1


def test_training_with_loader_workers(tmp_path):
    files = sorted(need(EVAL / "mstar-xband-8bit").glob("*.jpg"))[:4]
    out = tmp_path / "w.pt"
    cfg = TrainConfig(data=[str(f) for f in files], out=str(out), steps=3, batch=2, crop=64, val_every=1000,
                      checkpoint_every=1000, val_split=0.25, threads=1, workers=2,
                      model={"latent": 16, "hyper": 8, "hyper_hidden": 8, "c4": 8, "c8": 8, "c16": 16})
    summary = train(cfg, log=lambda m: None)
    assert summary["steps"] == 3 and summary["skipped"] == 0 and load(out).cfg.latent == 16


def test_full_range_share_of_the_crops():
    """--full-range 0 codes every crop as the 8-bit product, 1 none; the default draws as before the
    option (8-bit when the first uniform draw after the flips is below 0.5)."""
    img = np.random.default_rng(3).integers(1, 256, (200, 200)).astype(np.uint8)

    def is_8bit(c: np.ndarray) -> bool:
        return np.allclose(c * 255.0, np.round(c * 255.0), atol=1e-3)

    for share, want in ((0.0, True), (1.0, False)):
        rng = np.random.default_rng(5)
        assert all(is_8bit(train_mod.random_sample(img, 64, rng, share)) == want for _ in range(20))
    got = [is_8bit(train_mod.random_sample(img, 64, np.random.default_rng(s))) for s in range(40)]
    old = []
    for s in range(40):
        rng = np.random.default_rng(s)
        rng.integers(0, 200 - 64 + 1), rng.integers(0, 200 - 64 + 1), rng.integers(0, 4), rng.random()
        old.append(bool(rng.random() < 0.5))
    assert got == old and 0 < sum(got) < 40


def test_lee_filter_smooths_flat_speckle_and_keeps_edges_and_points():
    rng = np.random.default_rng(1)
    flat = rng.gamma(4.0, 1.0 / 4.0, (64, 64))  # 4-look speckle on a flat scene
    out = train_mod.lee_filter(flat, 2, 4.0)
    assert out.shape == flat.shape and abs(out.mean() - flat.mean()) < 0.02
    assert out.var() < 0.3 * flat.var()
    scene = np.ones((64, 64))
    scene[:, 32:] = 100.0  # a 20 dB step and a point target: far above what speckle varies by
    scene[10, 50] = 10000.0
    kept = train_mod.lee_filter(scene, 2, 4.0)
    assert np.allclose(kept[:, :30], 1.0) and np.allclose(kept[20:, 34:], 100.0)  # flat on either side ...
    assert (kept[:, 31] < 20).all() and (kept[:, 32] > 75).all() and kept[10, 50] > 7500  # ... and still a step, and a point
    assert np.allclose(train_mod.box_mean(np.arange(35.0).reshape(5, 7), 1)[2, 3], 17.0)  # a 3 x 3 mean


def test_despeckled_products_are_drawn_only_when_asked():
    """--despeckled 0 draws as before (no extra random number); 1 makes every crop a despeckled product:
    full range, finite, and (multilooked k x k, Lee-filtered) far smoother than the re-speckled crops."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:600, :600]
    reflectivity = 0.05 + 0.3 * (np.sin(xx / 40.0) * np.cos(yy / 55.0)) ** 2
    img = np.clip(255 * np.sqrt(reflectivity * rng.gamma(4.0, 0.25, (600, 600))), 1, 255).astype(np.uint8)
    for s in range(5):
        a = train_mod.random_sample(img, 128, np.random.default_rng(s), 0.5)
        assert np.array_equal(a, train_mod.random_sample(img, 128, np.random.default_rng(s), 0.5, 0.0))
    rng = np.random.default_rng(5)
    d = [train_mod.random_sample(img, 128, rng, 0.0, 1.0) for _ in range(6)]
    f = [train_mod.log_normalised((img[i : i + 128, :128] / 255.0) ** 2, rng) for i in range(0, 360, 60)]  # as speckled
    assert all(c.shape == (128, 128) and c.dtype == np.float32 and np.isfinite(c).all() for c in d)
    assert not np.allclose(d[0] * 255.0, np.round(d[0] * 255.0), atol=1e-3)  # not the 8-bit product

    def roughness(c: np.ndarray) -> float:
        return float(np.median(np.abs(np.diff(c, axis=1))) / (np.percentile(c, 99) - np.percentile(c, 1)))

    assert np.median([roughness(c) for c in d]) < 0.5 * np.median([roughness(c) for c in f])
    small = train_mod.despeckled_product(img[:100, :90], 128, np.random.default_rng(0))  # smaller than one crop: padded
    assert small.shape == (128, 128) and np.isfinite(small).all()


@pytest.mark.parametrize("filters", ["mixed", "heavy", "all"])
def test_drawn_lee_filters_vary_the_smoothing_per_crop(monkeypatch, filters):
    """"fixed" draws no extra random number (old recipes reproduce); "mixed" and "heavy" draw one of
    their filterings per crop, all of them in a few draws, and the result stays a finite full-range crop."""
    img = np.random.default_rng(0).integers(1, 256, (600, 600)).astype(np.uint8)
    assert np.array_equal(train_mod.despeckled_product(img, 128, np.random.default_rng(1)),
                          train_mod.despeckled_product(img, 128, np.random.default_rng(1), "fixed"))
    used = []
    real = train_mod.lee_filter

    def spy(inten, r=2, looks=4.0):
        used.append((r, looks))
        return real(inten, r, looks)

    monkeypatch.setattr(train_mod, "lee_filter", spy)
    rng = np.random.default_rng(2)
    drawn = set()
    for _ in range(40):
        used.clear()
        c = train_mod.despeckled_product(img, 128, rng, filters)
        assert tuple(used) in train_mod.LEE_FILTERS[filters] and c.shape == (128, 128) and np.isfinite(c).all()
        drawn.add(tuple(used))
    assert drawn == set(train_mod.LEE_FILTERS[filters])
