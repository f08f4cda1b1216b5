"""The fast preset: the numpy runtime equals the torch training model, never imports torch, and picks
itself at decode time from the file header."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import sarcodec
from sarcodec import lot, metrics
from sarcodec.entropy import A_FRAC_BITS, IntHyperSynthesis
from sarcodec.model import ModelConfig, SarCodecModel
from sarcodec.weights import export, load, training_model_from_weights

from .conftest import run_cli


@pytest.mark.parametrize("shape", [(8, 8), (40, 56), (64, 200)])
def test_lapped_transform_starts_as_perfect_reconstruction(shape):
    a, s = lot.init_bases()
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    y = lot.analysis(x, a)
    assert y.shape == (64, shape[0] // 8, shape[1] // 8)
    assert np.abs(lot.synthesis(y, s) - x).max() < 1e-5
    # channel 0 is the DC: GAIN x block mean x 8 (orthonormal 8x8 DCT)
    assert np.allclose(y[0, 0, 0], lot.GAIN * 8 * x[:8, :8].mean(), rtol=1e-5)


@pytest.fixture(scope="module")
def random_fast(tmp_path_factory):
    """A fast-preset model with random (non-trivial) parameters, exported and reloaded."""
    torch.manual_seed(1)
    m = SarCodecModel(ModelConfig.fast()).eval()
    with torch.no_grad():
        m.g_a.a.add_(0.1 * torch.randn_like(m.g_a.a))
        m.g_s.s.add_(0.01 * torch.randn_like(m.g_s.s))
        for p in m.h_s.parameters():
            p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("fast") / "rand-fast.npz"
    export(m, path)
    return m, path


def test_numpy_runtime_matches_torch_model(random_fast):
    m, path = random_fast
    rt = load(path)
    assert "torch" not in type(rt).__module__
    u = np.random.default_rng(2).random((96, 128), dtype=np.float32)
    q = torch.tensor([5])
    with torch.no_grad():
        y_t = (m.g_a(torch.from_numpy(u)[None, None]) * m.gains.gain(q))[0].numpy()
        z_t = m.h_a(torch.from_numpy(y_t)[None])[0].numpy()
        x_t = m.g_s(torch.from_numpy(y_t)[None] * m.gains.igain(q))[0, 0].numpy()
    y = rt.analysis(u, 6)
    assert np.allclose(y, y_t, rtol=1e-4, atol=1e-3 * np.abs(y_t).max())
    assert np.allclose(rt.hyper_analysis(y), z_t, atol=1e-3 * max(1.0, np.abs(z_t).max()))
    assert np.allclose(rt.synthesis(y, 6), x_t, atol=1e-4)


def test_macro_head_integer_path_matches_fake_quant(random_fast):
    m, _ = random_fast
    z = torch.randint(-6, 7, (1, 16, 3, 5)).float()
    with torch.no_grad():
        mean_f, sidx_f = m.h_s(z)
    ihs = IntHyperSynthesis.from_float(m.h_s, 64, "macro")
    mean_i, sidx_i = ihs(z[0].numpy().astype(np.int64))
    assert mean_i.shape == (1, 12, 20) and sidx_i.shape == (64, 12, 20)
    assert np.all(mean_f[0, 1:].numpy() == 0)
    assert np.mean(np.abs(mean_i[0] / 2**A_FRAC_BITS - mean_f[0, 0].numpy()) < 1.5 / 2**A_FRAC_BITS) > 0.99
    assert np.mean(sidx_i == np.clip(np.floor(sidx_f[0].numpy() + 0.5), 0, 63)) > 0.99


def test_export_reload_continues_training_exactly(random_fast):
    m, path = random_fast
    back = training_model_from_weights(path)
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items()):
        assert torch.allclose(a.float(), b.float(), atol=1.0 / 2**12), k


@pytest.mark.parametrize("first_group", [1, 3, 12, 64])
def test_skipped_latents_are_not_coded(random_fast, first_group):
    _, path = random_fast
    rt = load(path)
    z = np.random.default_rng(1).integers(-2, 3, (16, 2, 2))
    mean, sidx = rt.coder.hs(z)
    y = np.random.default_rng(0).normal(0, 2, (64, 8, 8)).astype(np.float32)
    payload, y_hat, bits = rt.coder.encode(z, y, first_group)
    back = rt.coder.decode(payload, z.shape, (8, 8), first_group)
    assert np.array_equal(back, y_hat)
    skipped = sidx < first_group
    assert skipped.any()
    # y_hat is the mean there, whatever y was
    assert np.all(y_hat[skipped] == np.broadcast_to(np.pad(mean / 2**A_FRAC_BITS, ((0, 63), (0, 0), (0, 0))), y.shape)[skipped])
    if first_group == 64:  # nothing but z coded
        assert bits == rt.coder.encode(z, np.zeros_like(y), 64)[2]


def test_skip_groups_per_quality_roundtrip_and_validation(s1_array, tmp_path):
    fast = load(sarcodec.weights.default_weights_path("fast"))
    assert fast.cfg.skip_groups and fast.cfg.first_coded_group(1) == fast.cfg.skip_groups[0]
    src = s1_array[0, :256, :256]
    sizes = []
    for groups in ([1] * 8, [12] * 8):
        fast.cfg.skip_groups = groups
        data = sarcodec.encode_array(src, 4, model=fast)
        out, _ = sarcodec.decode_array(data, model=fast)
        sizes.append(len(data))
        assert metrics.psnr(src, out[0], 255.0) > 20.0
    assert sizes[1] < sizes[0]
    cfg = ModelConfig.fast()
    assert cfg.first_coded_group(3) == 1 and "skip_groups" not in cfg.to_dict()
    m = SarCodecModel(cfg)
    m.cfg.skip_groups = [70] * 8
    export(m, tmp_path / "bad.npz")
    with pytest.raises(sarcodec.weights.WeightsError, match="skip_groups"):
        load(tmp_path / "bad.npz")


def test_shipped_fast_model_roundtrip_and_auto_selection(s1_array):
    fast = sarcodec.load_model(preset="fast")
    default = sarcodec.load_model()
    assert fast.model_id != default.model_id and fast.stride == 8
    src = s1_array[0, :300, :420]
    data = sarcodec.encode_array(src, 4, model=fast)
    assert sarcodec.decode_array(data)[0].shape == (1, 300, 420)  # model found from the header
    out, h = sarcodec.decode_array(data)
    assert h.model_id == fast.model_id
    assert metrics.psnr(src, out[0], 255.0) > 22.0


def test_fast_cli_never_imports_torch(tmp_path, s1_file):
    script = (
        "import sys\n"
        "from sarcodec.cli import app\n"
        "for args in (['encode', sys.argv[1], sys.argv[2], '--preset', 'fast', '-q', '3'], ['decode', sys.argv[2], sys.argv[3]]):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", script, s1_file, tmp_path / "a.sarc", tmp_path / "a.tif"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False"
    # and the default CLI decodes it too (model chosen from the header)
    r = run_cli("decode", tmp_path / "a.sarc", tmp_path / "b.tif")
    assert r.returncode == 0, r.stderr
