"""Round trips on real SAR files: shape, dtype, georeferencing, metadata, radiometry, odd sizes."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio

import sarcodec
from sarcodec import bitstream, codec, metrics
from sarcodec.io import InputError

from .conftest import EVAL, need


def roundtrip_file(src, tmp_path, quality=4, **kw):
    out = tmp_path / f"out-q{quality}.sarc"
    dec = tmp_path / f"out-q{quality}.tif"
    e = sarcodec.encode_file(src, out, quality, **kw)
    sarcodec.decode_file(out, dec, model=kw.get("model"))
    with rasterio.open(src) as a, rasterio.open(dec) as b:
        return e, snapshot(a), snapshot(b), a.read(), b.read()


def snapshot(ds) -> SimpleNamespace:
    return SimpleNamespace(
        width=ds.width, height=ds.height, count=ds.count, dtypes=ds.dtypes, crs=ds.crs, transform=ds.transform,
        descriptions=ds.descriptions, nodata=ds.nodata, tags=ds.tags(), band_tags=[ds.tags(i + 1) for i in range(ds.count)],
        gcps=ds.gcps,
    )


def assert_same_metadata(a, b):
    assert (b.width, b.height, b.count) == (a.width, a.height, a.count)
    assert b.dtypes == a.dtypes
    assert b.crs == a.crs
    assert b.transform.almost_equals(a.transform)
    assert b.descriptions == a.descriptions
    assert b.nodata == a.nodata or (a.nodata is not None and np.isnan(b.nodata) and np.isnan(a.nodata))
    for k, v in a.tags.items():
        assert b.tags.get(k) == v, k
    assert b.band_tags == a.band_tags


def test_s1_8bit_geotiff_quality_ladder(s1_file, tmp_path, model):
    sizes, psnrs = [], []
    for q in (1, 4, 8):
        e, a, b, va, vb = roundtrip_file(s1_file, tmp_path, q, model=model)
        assert_same_metadata(a, b)
        assert a.crs is not None
        sizes.append(e.bytes)
        psnrs.append(metrics.psnr(va, vb, 255.0))
    assert sizes[0] < sizes[1] < sizes[2]
    assert psnrs[0] < psnrs[1] < psnrs[2]
    assert psnrs[1] > 24.0  # q4 on real 8-bit Sentinel-1


def test_uint16_two_band_opensarship(tmp_path, model):
    src = need(EVAL / "float" / "opensarship-grd-dn-cargo_x10661_y11170.tif")
    e, a, b, va, vb = roundtrip_file(src, tmp_path, 6, model=model)
    assert_same_metadata(a, b)
    assert vb.dtype == np.uint16 and vb.shape == va.shape == (2, 77, 77)
    db_a = 20 * np.log10(np.maximum(va, 1).astype(float))
    db_b = 20 * np.log10(np.maximum(vb, 1).astype(float))
    assert abs(metrics.bias_db(db_a, db_b)) < 1.0
    assert metrics.psnr(db_a, db_b) > 20.0


def test_float32_linear_intensity_whu(tmp_path, model):
    src = need(EVAL / "float" / "whu-sentinel1_113_20171021_1220_VH_city_1_1.tif")
    e, a, b, va, vb = roundtrip_file(src, tmp_path, 5, model=model)
    assert_same_metadata(a, b)
    assert sarcodec.info(tmp_path / "out-q5.sarc")["domains"] == ["log"]
    assert vb.dtype == np.float32 and np.all(vb > 0)
    db_a, db_b = 10 * np.log10(va), 10 * np.log10(vb)
    assert abs(metrics.bias_db(db_a, db_b)) < 1.0
    assert metrics.psnr(db_a, db_b) > 20.0


def test_float32_db_pyrosar(tmp_path, model):
    src = need(EVAL / "float" / "pyrosar-s1a-vv-db.tif")
    e, a, b, va, vb = roundtrip_file(src, tmp_path, 5, model=model)
    assert_same_metadata(a, b)
    assert a.crs is not None and not a.transform.is_identity
    assert sarcodec.info(tmp_path / "out-q5.sarc")["domains"] == ["db"]
    assert abs(metrics.bias_db(va, vb)) < 0.5
    assert metrics.psnr(va, vb) > 25.0


def test_nan_nodata_preserved_exactly(tmp_path, model):
    src = need(EVAL / "float" / "sen1floods11-Spain_7370579_S1Hand.tif")
    with rasterio.open(src) as ds:
        prof = ds.profile
        v = ds.read()
    v[:, 100:140, 200:260] = np.nan  # a masked block, as NaN nodata
    path = tmp_path / "nan.tif"
    with rasterio.open(path, "w", **prof) as ds:
        ds.write(v)
    e, a, b, va, vb = roundtrip_file(path, tmp_path, 4, model=model)
    assert_same_metadata(a, b)
    assert np.array_equal(np.isnan(va), np.isnan(vb))
    ok = ~np.isnan(va)
    assert metrics.psnr(va[ok], vb[ok], peak=float(np.ptp(va[ok]))) > 25.0


def test_zero_and_nodata_pixels_decode_exactly(model, s1_array):
    v = (s1_array[0, :300, :300].astype(np.uint16) * 40 + 7)  # uint16 amplitude
    v[:50, :] = 0  # declared nodata border, as in Sentinel-1 GRD
    v[200:210, 200:210] = 0
    data = sarcodec.encode_array(v, 4, nodata=0, model=model)
    r, h = sarcodec.decode_array(data, model=model)
    assert np.array_equal(r[0] == 0, v == 0)


def test_log_domain_exact_zeros_without_nodata(model, s1_array):
    v = s1_array[0, :128, :128].astype(np.float32) ** 2 / 1e4
    v[10:20, 10:20] = 0.0
    r, _ = sarcodec.decode_array(sarcodec.encode_array(v, 4, model=model), model=model)
    assert np.array_equal(r[0] == 0, v == 0)


@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (300, 7), (1025, 513), (1030, 515)])
def test_odd_sizes(shape, model, s1_array):
    h, w = shape
    src = np.concatenate([s1_array[0], s1_array[0][::-1]], axis=0)[:h, :w]
    data = sarcodec.encode_array(src, 6, tile=512, model=model)
    r, hdr = sarcodec.decode_array(data, model=model)
    assert r.shape == (1, h, w) and r.dtype == np.uint8
    if h >= 64 and w >= 64:
        # no edge artefacts from the padding: the last 8 rows / columns are about as good as the rest
        # (rounding: RDOQ may rightly code less of a tile 1 pixel tall, whose bits serve one row)
        r, _ = sarcodec.decode_array(sarcodec.encode_array(src, 6, tile=512, model=model, rdoq=False), model=model)
        full = metrics.psnr(src, r[0], 255.0)
        assert metrics.psnr(src[-8:], r[0, -8:], 255.0) > full - 1.5
        assert metrics.psnr(src[:, -8:], r[0, :, -8:], 255.0) > full - 1.5


def test_tiling_is_seam_free(model, s1_array):
    src = s1_array[0, :768, :768]
    small, _ = sarcodec.decode_array(sarcodec.encode_array(src, 5, tile=256, model=model), model=model)
    big, _ = sarcodec.decode_array(sarcodec.encode_array(src, 5, tile=1024, model=model), model=model)
    p_small, p_big = metrics.psnr(src, small[0], 255), metrics.psnr(src, big[0], 255)
    assert abs(p_small - p_big) < 0.3
    # bands of 8 pixels along the tile borders are as good as the image as a whole
    rows = np.concatenate([np.arange(b - 4, b + 4) for b in (256, 512)])
    assert metrics.psnr(src[rows], small[0][rows], 255) > p_small - 0.3
    assert metrics.psnr(src[:, rows], small[0][:, rows], 255) > p_small - 0.3


def test_window_decode_matches_full_decode(model, s1_array):
    src = s1_array[0, :640, :700]
    data = sarcodec.encode_array(src, 4, tile=256, model=model)
    full, _ = sarcodec.decode_array(data, model=model)
    win, _ = sarcodec.decode_array(data, model=model, window=(300, 200, 150, 333))
    assert np.array_equal(win[0], full[0, 200:533, 300:450])
    with pytest.raises(InputError):
        sarcodec.decode_array(data, model=model, window=(600, 0, 200, 10))


def test_gcps_survive(tmp_path, model, s1_array):
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS

    gcps = [GroundControlPoint(row=r, col=c, x=-118.0 + c * 1e-4, y=34.0 - r * 1e-4, z=0.0, id=str(i))
            for i, (r, c) in enumerate([(0, 0), (0, 199), (149, 0), (149, 199)])]
    src = tmp_path / "gcp.tif"
    with rasterio.open(src, "w", driver="GTiff", width=200, height=150, count=1, dtype="uint16", nodata=0) as ds:
        ds.write(s1_array[0, :150, :200].astype(np.uint16) * 100 + 1, 1)
        ds.gcps = (gcps, CRS.from_epsg(4326))
    e, a, b, va, vb = roundtrip_file(src, tmp_path, 3, model=model)
    got, crs = b.gcps
    assert crs == CRS.from_epsg(4326)
    assert [(g.row, g.col, g.x, g.y) for g in got] == [(g.row, g.col, g.x, g.y) for g in gcps]
    # window decode shifts GCP pixel coordinates
    sarcodec.decode_file(tmp_path / "out-q3.sarc", tmp_path / "win.tif", window=(10, 20, 100, 100), model=model)
    with rasterio.open(tmp_path / "win.tif") as w:
        assert w.gcps[0][0].row == gcps[0].row - 20 and w.gcps[0][0].col == gcps[0].col - 10


@pytest.mark.parametrize("crs, tag, stored", [("EPSG:32631", "Area", False), ("EPSG:32631", "Point", True), (None, "Point", True)])
def test_area_or_point_survives(tmp_path, model, s1_array, crs, tag, stored):
    # AREA_OR_POINT=Area is what a GeoTIFF with a CRS reports without the tag: not stored there, and
    # the decoded file reports it all the same; Point is stored (a GeoTIFF without a CRS reports no Area)
    from rasterio.transform import Affine

    src = tmp_path / "tag.tif"
    with rasterio.open(src, "w", driver="GTiff", width=96, height=64, count=1, dtype="uint8", crs=crs,
                       transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4800000.0)) as ds:
        ds.write(s1_array[0, :64, :96], 1)
        ds.update_tags(AREA_OR_POINT=tag)
    sarcodec.encode_file(src, tmp_path / "t.sarc", quality=2, model=model)
    data = (tmp_path / "t.sarc").read_bytes()
    assert bitstream.Reader(io.BytesIO(data), len(data)).header.tags == ({"AREA_OR_POINT": tag} if stored else {})
    sarcodec.decode_file(tmp_path / "t.sarc", tmp_path / "t.tif", model=model)
    with rasterio.open(src) as a, rasterio.open(tmp_path / "t.tif") as b:
        assert a.tags() == b.tags() == {"AREA_OR_POINT": tag} and a.crs == b.crs and a.transform == b.transform


def test_window_georeferencing(tmp_path, s1_file, model):
    out = tmp_path / "a.sarc"
    sarcodec.encode_file(s1_file, out, 2, model=model)
    sarcodec.decode_file(out, tmp_path / "w.tif", window=(100, 50, 64, 32), model=model)
    with rasterio.open(s1_file) as a, rasterio.open(tmp_path / "w.tif") as b:
        assert (b.width, b.height) == (64, 32)
        assert b.transform.almost_equals(a.window_transform(rasterio.windows.Window(100, 50, 64, 32)))
        assert b.crs == a.crs


def test_int16_and_domains(model, s1_array):
    v = s1_array[0, :200, :200].astype(np.int16) - 100
    r, h = sarcodec.decode_array(sarcodec.encode_array(v, 6, model=model), model=model)
    assert r.dtype == np.int16 and h.mappings[0]["domain"] == "identity"
    assert metrics.psnr(v, r[0], float(np.ptp(v))) > 22
    f = (s1_array[0, :200, :200].astype(np.float32) + 1) ** 2
    _, h = sarcodec.decode_array(sarcodec.encode_array(f, 4, domain="db", model=model), model=model)
    assert h.mappings[0]["domain"] == "db"
    with pytest.raises(InputError, match="domain"):
        sarcodec.encode_array(f, 4, domain="sqrt", model=model)


def test_float64_codes_like_float32(model):
    a = np.random.default_rng(3).gamma(2.0, 0.02, (130, 70))
    d64, d32 = (sarcodec.encode_array(a.astype(t), 5, model=model) for t in (np.float64, np.float32))
    b64, h64 = sarcodec.decode_array(d64, model=model)
    b32, _ = sarcodec.decode_array(d32, model=model)
    assert h64.dtype == "float64" and b64.dtype == np.float64
    assert np.array_equal(b64, b32.astype(np.float64))


def test_outlier_pixel_stays_local(model):
    # one bad value far beyond a dB band's range must not flood the tile: the encoder limits the
    # normalised input to what the decoder can reproduce
    rng = np.random.default_rng(4)
    a = (rng.standard_normal((192, 192)) * 3.0 - 15.0).astype(np.float32)
    clean, _ = sarcodec.decode_array(sarcodec.encode_array(a, 4, model=model), model=model)
    a[90, 90] = 1e30
    dirty, h = sarcodec.decode_array(sarcodec.encode_array(a, 4, model=model), model=model)
    far = np.ones(a.shape, dtype=bool)
    far[74:107, 74:107] = False
    assert h.mappings[0]["domain"] == "db"
    assert np.abs(dirty[0] - a)[far].mean() < 1.05 * np.abs(clean[0] - a)[far].mean()


def test_unsupported_input_arrays(model):
    with pytest.raises(InputError):
        sarcodec.encode_array(np.zeros((4, 4), dtype=np.int32), model=model)
    with pytest.raises(InputError):
        sarcodec.encode_array(np.zeros((0, 4), dtype=np.uint8), model=model)
    bad = np.ones((8, 8), dtype=np.float32)
    bad[2, 2] = np.inf
    with pytest.raises(InputError, match="Inf"):
        sarcodec.encode_array(bad, model=model)


@pytest.mark.parametrize("shape", [(1, 1), (7, 300)])
def test_odd_sizes_through_files(shape, tmp_path, s1_file, model):
    h, w = shape
    with rasterio.open(s1_file) as ds:
        prof = ds.profile
        v = ds.read(window=rasterio.windows.Window(5, 9, w, h))
        prof.update(width=w, height=h, transform=ds.window_transform(rasterio.windows.Window(5, 9, w, h)))
    prof.pop("blockxsize", None), prof.pop("blockysize", None)
    prof["tiled"] = False
    src = tmp_path / "odd.tif"
    with rasterio.open(src, "w", **prof) as ds:
        ds.write(v)
    e, a, b, va, vb = roundtrip_file(src, tmp_path, 8, model=model)
    assert_same_metadata(a, b)
    assert vb.shape == va.shape


def test_padding_beyond_the_image_repeats_the_local_mean():
    # a chip whose size is not a multiple of the stride is extended for the analysis: 2 rows/columns
    # of its edge pixels, then the 5 x 5 mean along the edge, not the edge's speckle repeated as stripes
    rng = np.random.default_rng(5)
    u = (0.5 + 0.1 * np.log(rng.gamma(1.0, 1.0, (37, 45)))).astype(np.float32)
    out = codec.pad_to(u, 48, 64)
    assert out.dtype == np.float32 and np.array_equal(out[:37, :45], u)
    assert (out[37:39, :45] == u[-1]).all() and (out[:37, 45:47] == u[:, -1:]).all() and (out[37:39, 45:47] == u[-1, -1]).all()
    assert (out[39:, :45] == out[39, :45]).all() and (out[:37, 47:] == out[:37, 47:48]).all()
    assert (out[39:, 47:] == out[39, 44]).all() and (out[37:39, 47:] == out[39, 44]).all()
    assert out[40, :45].std() < 0.4 * u[-1].std() and out[:37, 50].std() < 0.4 * u[:, -1].std()
    rows = u[34:37, 8:13].astype(np.float64)  # column 10's neighbourhood, the last row counted 3 times (edge)
    assert out[40, 10] == pytest.approx((rows.sum() + 2 * rows[-1].sum()) / 25, rel=1e-6)
    assert codec.pad_to(u, 37, 45) is u
