"""The encoder's rate-distortion optimised quantisation (sarcodec.rdoq): what it changes and what it must not."""
from __future__ import annotations

import io

import numpy as np
import pytest

import sarcodec
from sarcodec import bitstream, rdoq
from sarcodec.entropy import Z_RADIUS
from sarcodec.weights import load_preset

from .conftest import EVAL, need, run_cli, sha


@pytest.fixture(scope="module")
def chip() -> np.ndarray:
    """A real multi-temporally averaged Sentinel-1 sigma0 chip (float32, linear), 256 x 256."""
    import rasterio

    with rasterio.open(need(EVAL / "float" / "cnnspecklefilter-834_snippet_vh.tif")) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def member():
    """One torch model of the default preset (its despeckled-product member hp7h)."""
    from sarcodec.weights import bundled_path, load_preset

    assert "sarcodec-hp7h" in load_preset().name
    return sarcodec.load_model(bundled_path("sarcodec-hp7h"))


def normalised(chip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chip as the encoder hands it to the model, and its valid pixels."""
    from sarcodec.codec import CLASS_VALID, ArraySource, fit_band, model_input, pixel_classes

    mapping = fit_band(ArraySource(chip), 0, chip.dtype, None, "auto")
    cls = pixel_classes(chip[0], None, mapping.domain)
    return model_input(chip[0], cls, mapping), cls == CLASS_VALID


def _cost(model, u: np.ndarray, y: np.ndarray, z: np.ndarray, quality: int) -> tuple[float, float]:
    """(bits of the coded latent, squared error of its decoded image) when ``y`` is handed to the coder."""
    _, y_hat, bits = model.coder.encode(z, y, model.cfg.first_coded_group(quality), model.offsets(quality))
    err = model.synthesis(y_hat, quality).astype(np.float64) - u
    return bits, float((err * err).sum())


@pytest.mark.parametrize("quality", [2, 6])
def test_refine_lowers_the_rate_distortion_cost(chip, member, quality):
    u, valid = normalised(chip)
    y = member.analysis(u, quality)
    z = np.clip(np.round(member.hyper_analysis(y)), -Z_RADIUS, Z_RADIUS).astype(np.int64)
    everything = (slice(None), slice(None))
    y_ref = rdoq.refine(member, y, everything, z, u, valid, quality)
    lam = member.cfg.lambdas[quality - 1] * 255.0**2
    b0, e0 = _cost(member, u, y, z, quality)
    b1, e1 = _cost(member, u, y_ref, z, quality)
    assert b1 + lam * e1 < b0 + lam * e0  # the measured objective falls ...
    assert b1 < b0  # ... here by spending fewer bits
    mean_int, _ = member.coder.hs(z)
    steps = y_ref[: mean_int.shape[0]] - mean_int / 256.0
    assert np.array_equal(steps, np.rint(steps))  # whole symbols from the mean: the coder's rounding keeps them
    assert not np.array_equal(steps, np.rint(y[: mean_int.shape[0]] - mean_int / 256.0))


def _psnr_db(ref: np.ndarray, rec: np.ndarray) -> float:
    a, b = 10 * np.log10(ref.astype(np.float64)), 10 * np.log10(np.maximum(rec.astype(np.float64), 1e-30))
    return 10 * np.log10((a.max() - a.min()) ** 2 / np.mean((a - b) ** 2))


def test_refined_files_are_smaller_at_the_same_quality_and_deterministic(chip):
    rounded = sarcodec.encode_array(chip, 4, rdoq=False)
    refined = sarcodec.encode_array(chip, 4)  # the default
    assert sarcodec.encode_array(chip, 4) == refined
    assert len(refined) < len(rounded)
    (a, _), (b, _) = sarcodec.decode_array(rounded), sarcodec.decode_array(refined)
    assert abs(_psnr_db(chip, b) - _psnr_db(chip, a)) < 0.1


def test_refine_across_tiles(s1_array):
    """Tiles refined one by one (their neighbours' latents as analysed) still decode seamlessly, and
    the file costs less J = bits + lambda * SSE (8-bit values, about the models' normalised domain)."""
    crop = np.ascontiguousarray(s1_array[:, 100:484, 200:584])  # 384 x 384: 2 x 2 tiles of 256, partial ones
    rounded = sarcodec.encode_array(crop, 5, tile=256, rdoq=False)
    refined = sarcodec.encode_array(crop, 5, tile=256)
    assert len(refined) < len(rounded)
    (a, _), (b, _) = sarcodec.decode_array(rounded), sarcodec.decode_array(refined)
    lam = load_preset().models[0].cfg.lambdas[5 - 1]

    def sse(x: np.ndarray) -> float:
        return float(((x.astype(np.float64) - crop) ** 2).sum())

    assert 8 * len(refined) + lam * sse(b) < 8 * len(rounded) + lam * sse(a)
    assert sse(b) < 1.05 * sse(a)  # 0.2 dB
    edge = np.abs(b[0, 250:262].astype(np.float64) - crop[0, 250:262]).mean()  # across the tile seam
    assert edge < 2 * np.abs(b.astype(np.float64) - crop).mean()


def test_the_tile_codes_from_the_scale_group_of_lowest_cost(chip, member):
    """choose_group ends where group_cost is lowest among its neighbours, never above the default's."""
    u, valid = normalised(chip)
    everything = (slice(None), slice(None))
    for quality in (1, 8):
        y = member.analysis(u, quality)
        z = np.clip(np.round(member.hyper_analysis(y)), -Z_RADIUS, Z_RADIUS).astype(np.int64)
        group = rdoq.choose_group(member, y, everything, z, u, valid, quality)
        cost = {g: rdoq.group_cost(member, y, everything, z, u, valid, quality, g) for g in range(group - 1, group + 2)}
        default = member.cfg.first_coded_group(quality)
        assert cost[group] < min(cost[group - 1], cost[group + 1])
        assert cost[group] <= rdoq.group_cost(member, y, everything, z, u, valid, quality, default)


def test_a_tile_names_the_scale_group_it_codes_from(chip, member, monkeypatch):
    """A group other than the model's default is written in the tile (format 7.1) and decoded from it:
    coding from a higher group leaves more latents at their mean (smaller, coarser), 64 codes none."""
    default = member.cfg.first_coded_group(3)
    sizes, errors = [], []
    for group in (default, default + 4, 64):
        monkeypatch.setattr(rdoq, "choose_group", lambda *args, g=group: g)
        data = sarcodec.encode_array(chip, 3, model=member)
        reader = bitstream.Reader(io.BytesIO(data), len(data))
        payload = reader.payload(0)
        assert reader.version == (7, 1) and bool(payload[0] & bitstream.FLAG_GROUP) == (group != default)
        assert group == default or payload[1] == group
        rec = sarcodec.decode_array(data, model=member)[0]
        sizes.append(len(data))
        errors.append(float(np.mean((np.log(rec.astype(np.float64)) - np.log(chip.astype(np.float64))) ** 2)))
    assert sizes[0] > sizes[1] > sizes[2] and errors[0] < errors[1] < errors[2]


def test_large_tiles_are_refined_in_chunks(s1_array, monkeypatch):
    """A tile wider than rdoq.CHUNK latents is refined chunk by chunk (bounded memory): shrunk to 8
    latents here, a 256-px tile is 2 x 2 chunks; the file still decodes, smaller at the same quality."""
    crop = np.ascontiguousarray(s1_array[:, 300:556, 400:656])
    one = sarcodec.encode_array(crop, 4, tile=256)
    monkeypatch.setattr(rdoq, "CHUNK", 8)
    calls = []
    search = rdoq._search
    monkeypatch.setattr(rdoq, "_search", lambda *a: calls.append(a[2]) or search(*a))
    chunked = sarcodec.encode_array(crop, 4, tile=256)
    assert len(calls) == 4 and chunked != one
    rounded = sarcodec.encode_array(crop, 4, tile=256, rdoq=False)
    assert len(chunked) < len(rounded)
    (a, _), (b, _) = sarcodec.decode_array(rounded), sarcodec.decode_array(chunked)
    assert np.mean((b.astype(np.float64) - crop) ** 2) < 1.02 * np.mean((a.astype(np.float64) - crop) ** 2)


def test_fast_preset_rounds(chip):
    fast = sarcodec.load_model(preset="fast")
    assert sarcodec.encode_array(chip, 3, model=fast) == sarcodec.encode_array(chip, 3, model=fast, rdoq=False)


def test_cli_no_rdoq(tmp_path, chip):
    src = need(EVAL / "float" / "cnnspecklefilter-834_snippet_vh.tif")
    for flag in ("--rdoq", "--no-rdoq"):
        r = run_cli("encode", src, tmp_path / f"{flag}.sarc", "-q", "2", flag)
        assert r.returncode == 0, r.stderr
    assert sha(tmp_path / "--rdoq.sarc") != sha(tmp_path / "--no-rdoq.sarc")
    assert (tmp_path / "--rdoq.sarc").stat().st_size < (tmp_path / "--no-rdoq.sarc").stat().st_size
