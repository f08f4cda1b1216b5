"""The default preset's per-file model choice: where it samples, what it picks on real data, and that
files made with any of its models decode by themselves."""
from __future__ import annotations

import numpy as np
import pytest
import rasterio

import sarcodec
from sarcodec.choice import WINDOW, ModelSet, sample_windows
from sarcodec.codec import DecodeError
from sarcodec.weights import PRESETS, load_preset

from .conftest import EVAL, need


@pytest.fixture(scope="module")
def default_set() -> ModelSet:
    s = load_preset("default")
    assert isinstance(s, ModelSet) and [m.name + ".pt" for m in s.models] == list(PRESETS["default"])
    return s


@pytest.mark.parametrize("h,w", [(53, 77), (256, 256), (300, 400), (1024, 1024), (100, 5000), (25000, 16000)])
def test_sample_windows_inside_and_aligned(h, w):
    wins = sample_windows(h, w, 16)
    assert 1 <= len(wins) <= 4 and len(set(wins)) == len(wins)
    if h * w <= 2 * WINDOW * WINDOW:
        assert wins == [(0, h, 0, w)]  # small images are coded whole
        return
    for r0, r1, c0, c1 in wins:
        assert 0 <= r0 < r1 <= h and 0 <= c0 < c1 <= w
        assert r1 - r0 == min(h, WINDOW) and c1 - c0 == min(w, WINDOW)
        assert (r0 % 16 == 0 or r1 == h) and (c0 % 16 == 0 or c1 == w)
    assert len(wins) == min(4, max(1, round(h * w / 16 / WINDOW**2)))


def test_sentinel1_and_mstar_pick_their_models(default_set):
    """The Sentinel-1 specialist codes eval Sentinel-1 better and the general model MSTAR: the choice
    finds that, the header names the model, and decode needs no hint."""
    s1 = rasterio.open(need(EVAL / "s1-vh-8bit" / "s1a-iw-grdh-vh-20201204-220.tif")).read()[:, :512, :512]
    mstar = rasterio.open(need(EVAL / "mstar-xband-8bit" / "mstar-000851.jpg")).read()
    general, specialist = (m.name for m in default_set.models[:2])
    for img, want in ((s1, specialist), (mstar, general)):
        stats: dict = {}
        data = sarcodec.encode_array(img, 3, model=default_set, stats=stats)
        assert stats["model"] == want and min(stats["choice"], key=stats["choice"].get) == want, stats
        again = sarcodec.encode_array(img, 3, model=default_set)
        assert again == data  # the choice is deterministic
        rec, h = sarcodec.decode_array(data)
        assert h.model_name == want and rec.shape == img.shape
        alone = sarcodec.encode_array(img, 3, model=next(m for m in default_set.models if m.name == want))
        assert alone == data  # the chosen model's own file, byte for byte


def test_set_rules(default_set):
    general, specialist = default_set.models[:2]
    with pytest.raises(ValueError, match="quality ladder"):
        ModelSet((general, sarcodec.load_model(preset="fast")))
    img = np.random.default_rng(0).integers(0, 255, (1, 64, 64), dtype=np.uint8)
    data = sarcodec.encode_array(img, 2, model=specialist)
    assert sarcodec.decode_array(data, model=default_set)[1].model_name == specialist.name
    with pytest.raises(DecodeError, match=specialist.name):
        sarcodec.decode_array(data, model=ModelSet((general,)))


def test_a_despeckled_product_picks_its_model(default_set):
    """A multi-temporally averaged sigma0 chip (weak speckle, sharp structure) is coded best by one of
    the models trained on despeckled products; the file decodes by itself."""
    path = need(EVAL / "float" / "cnnspecklefilter-north_america164_snippet_vh.tif")
    img = rasterio.open(path).read()
    despeckled = {m.name for m in default_set.models[2:]}
    assert len(despeckled) == len(default_set.models) - 2 >= 1
    stats: dict = {}
    data = sarcodec.encode_array(img, 3, model=default_set, stats=stats)
    assert stats["model"] in despeckled and min(stats["choice"], key=stats["choice"].get) == stats["model"], stats
    assert set(stats["choice"]) == {m.name for m in default_set.models}  # every model was tried
    rec, h = sarcodec.decode_array(data)
    assert h.model_name == stats["model"] and rec.shape == img.shape and rec.dtype == img.dtype
