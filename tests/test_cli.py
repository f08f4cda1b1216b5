"""The command line: happy paths, --json, and every bad-input path (one line, exit code, no output)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from sarcodec.weights import PRESETS

from .conftest import EVAL, need, run_cli, sea_with_ship, sha


def assert_clean_failure(r, code: int, *fragments: str):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for f in fragments:
        assert f.lower() in lines[0].lower(), lines[0]
    assert r.stdout == ""


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, s1_file):
    d = tmp_path_factory.mktemp("cli")
    out = d / "scene.sarc"
    r = run_cli("encode", s1_file, out, "--quality", "3", "--json")
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


def test_encode_json_and_info(encoded, s1_file):
    out, rep = encoded
    assert rep["bytes"] == out.stat().st_size and rep["quality"] == 3
    assert rep["width"] == 1024 and rep["dtype"] == "uint8"
    assert 0 < rep["bpp"] < 8
    r = run_cli("info", out, "--json")
    assert r.returncode == 0
    info = json.loads(r.stdout)
    assert info["tiles"] == 1 and info["quality"] == 3 and "3395" in info["crs"]
    specialist = Path(PRESETS["default"][1]).stem
    assert rep["model"] == info["model"] == specialist  # the default preset's choice for a Sentinel-1 scene
    r = run_cli("info", out)
    assert r.returncode == 0 and "model_id" in r.stdout


def test_decode_human_summary_and_existing_output(encoded, tmp_path):
    out, _ = encoded
    dst = tmp_path / "d.tif"
    r = run_cli("decode", out, dst)
    assert r.returncode == 0 and r.stdout == ""
    assert "bpp" in r.stderr and "decoded" in r.stderr
    before = sha(dst)
    r = run_cli("decode", out, dst)
    assert_clean_failure(r, 2, "already exists", "--force")
    assert sha(dst) == before
    r = run_cli("decode", out, dst, "--force", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["width"] == 1024


def test_missing_input(tmp_path):
    r = run_cli("encode", tmp_path / "nope.tif", tmp_path / "o.sarc")
    assert_clean_failure(r, 2, "no such file")
    assert not (tmp_path / "o.sarc").exists()


def test_not_a_raster(tmp_path):
    txt = tmp_path / "notes.tif"
    txt.write_text("this is not a raster\n")
    r = run_cli("encode", txt, tmp_path / "o.sarc")
    assert_clean_failure(r, 2, "not a raster")
    assert not (tmp_path / "o.sarc").exists()
    r = run_cli("decode", txt, tmp_path / "o.tif")
    assert_clean_failure(r, 2, "not a .sarc file")
    assert not (tmp_path / "o.tif").exists()


def test_directory_input(tmp_path):
    r = run_cli("info", tmp_path)
    assert_clean_failure(r, 2, "directory")


def test_complex_and_unsupported_dtypes(tmp_path):
    slc = need(EVAL / "float" / "terrasarx-slc-crop.tif")
    before = sha(slc)
    r = run_cli("encode", slc, tmp_path / "o.sarc")
    assert_clean_failure(r, 2, "complex")
    assert sha(slc) == before and not (tmp_path / "o.sarc").exists()
    p = tmp_path / "i32.tif"
    with rasterio.open(p, "w", driver="GTiff", width=8, height=8, count=1, dtype="int32") as ds:
        ds.write(np.ones((1, 8, 8), dtype=np.int32))
    r = run_cli("encode", p, tmp_path / "o.sarc")
    assert_clean_failure(r, 2, "int32", "not supported")


def test_float64_geotiff_keeps_its_dtype(tmp_path):
    # float64 sigma0 (e.g. written by numpy scripts) is coded like float32 and decodes to float64
    a = (np.random.default_rng(5).gamma(4.0, 0.0125, (1, 96, 80))).astype(np.float64)
    p = tmp_path / "f64.tif"
    with rasterio.open(p, "w", driver="GTiff", width=80, height=96, count=1, dtype="float64", crs="EPSG:32633",
                       transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4e6)) as ds:
        ds.write(a)
    r = run_cli("encode", p, tmp_path / "o.sarc", "-q", "6")
    assert r.returncode == 0, r.stderr
    assert run_cli("decode", tmp_path / "o.sarc", tmp_path / "o.tif").returncode == 0
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert ds.dtypes == ("float64",) and ds.crs.to_epsg() == 32633 and ds.transform.c == 500000.0
        b = ds.read()
    assert np.all(b > 0) and abs(float(np.mean(10 * np.log10(b / a)))) < 0.5


def test_ship_in_a_uint16_sea_scene_keeps_its_peak(tmp_path):
    # GRD-like amplitude DN: a ship far above the sea's percentiles is stored exactly, and the user is told
    a, ship = sea_with_ship("uint16")
    p = tmp_path / "sea.tif"
    with rasterio.open(p, "w", driver="GTiff", width=a.shape[1], height=a.shape[0], count=1, dtype="uint16",
                       crs="EPSG:32631", transform=Affine(10.0, 0.0, 400000.0, 0.0, -10.0, 5.7e6)) as ds:
        ds.write(a[None])
    r = run_cli("encode", p, tmp_path / "o.sarc", "-q", "1")
    assert r.returncode == 0 and "6 pixels beyond the band's range stored exactly" in r.stderr, r.stderr
    assert run_cli("decode", tmp_path / "o.sarc", tmp_path / "o.tif").returncode == 0
    with rasterio.open(tmp_path / "o.tif") as ds:
        assert np.array_equal(ds.read(1)[ship], a[ship]) and ds.crs.to_epsg() == 32631


def test_inf_input_refused(tmp_path):
    p = tmp_path / "inf.tif"
    v = np.ones((1, 64, 64), dtype=np.float32)
    v[0, 5, 5] = np.inf
    with rasterio.open(p, "w", driver="GTiff", width=64, height=64, count=1, dtype="float32") as ds:
        ds.write(v)
    r = run_cli("encode", p, tmp_path / "o.sarc")
    assert_clean_failure(r, 2, "inf")
    assert not (tmp_path / "o.sarc").exists()
    assert not list(tmp_path.glob(".*partial"))


def test_corrupt_and_truncated_sarc(encoded, tmp_path):
    out, _ = encoded
    data = out.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    bad = tmp_path / "flip.sarc"
    bad.write_bytes(bytes(flipped))
    r = run_cli("decode", bad, tmp_path / "o.tif")
    assert_clean_failure(r, 2, "checksum")
    assert not (tmp_path / "o.tif").exists()
    trunc = tmp_path / "trunc.sarc"
    trunc.write_bytes(data[: len(data) - 100])
    r = run_cli("decode", trunc, tmp_path / "o.tif")
    assert_clean_failure(r, 2, "truncated file")
    assert not (tmp_path / "o.tif").exists()
    r = run_cli("info", tmp_path / "absent.sarc")
    assert_clean_failure(r, 2, "no such file")


def test_usage_errors(encoded, tmp_path, s1_file):
    out, _ = encoded
    r = run_cli("encode", s1_file, tmp_path / "o.sarc", "--quality", "9")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = run_cli("decode", out, tmp_path / "o.tif", "--window", "1,2,3")
    assert_clean_failure(r, 2, "--window")
    r = run_cli("decode", out, tmp_path / "o.tif", "--window", "1000,0,100,100")
    assert_clean_failure(r, 2, "not inside")
    assert not (tmp_path / "o.tif").exists()
    r = run_cli("encode", s1_file, tmp_path / "o.sarc", "--domain", "sqrt")
    assert_clean_failure(r, 2, "domain")
    r = run_cli("encode", s1_file, s1_file, "--force")
    assert_clean_failure(r, 2, "overwrite the input")


def test_unwritable_output_dir(tmp_path, s1_file):
    r = run_cli("encode", s1_file, tmp_path / "missing-dir" / "o.sarc")
    assert_clean_failure(r, 2, "does not exist")


def test_wrong_model_is_named(encoded, tmp_path):
    import torch

    out, _ = encoded
    from sarcodec.weights import default_weights_path

    blob = torch.load(default_weights_path(), weights_only=True)
    blob["y_pmf"] = blob["y_pmf"].clone()
    blob["y_pmf"][0, 0] += 1
    from sarcodec.weights import _model_id

    blob["model_id"] = _model_id(blob)
    other = tmp_path / "other.pt"
    torch.save(blob, other)
    r = run_cli("decode", out, tmp_path / "o.tif", "--weights", other)
    assert_clean_failure(r, 2, "encoded with model")
    assert not (tmp_path / "o.tif").exists()


def test_several_inputs_to_directory(tmp_path):
    srcs = sorted((EVAL / "float").glob("opensarship-grd-dn-*.tif"))[:3]
    if len(srcs) < 3:
        pytest.skip("data missing")
    r = run_cli("encode", *srcs, tmp_path / "enc", "--workers", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 3
    r = run_cli("decode", tmp_path / "enc", tmp_path / "dec", "--json")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == sorted(s.stem + ".tif" for s in srcs)


def test_decode_output_compression_option(encoded, tmp_path):
    out, _ = encoded
    r = run_cli("decode", out, tmp_path / "plain.tif")
    assert r.returncode == 0, r.stderr
    r = run_cli("decode", out, tmp_path / "z.tif", "--compress", "deflate")
    assert r.returncode == 0, r.stderr
    with rasterio.open(tmp_path / "plain.tif") as a, rasterio.open(tmp_path / "z.tif") as b:
        assert a.compression is None and b.compression.name.lower() == "deflate"
        assert np.array_equal(a.read(), b.read()) and a.crs == b.crs and a.transform == b.transform
    r = run_cli("decode", out, tmp_path / "bad.tif", "--compress", "rar")
    assert_clean_failure(r, 2, "compression")
    assert not (tmp_path / "bad.tif").exists()


def test_unknown_preset_is_a_clean_error(s1_file, tmp_path):
    r = run_cli("encode", s1_file, tmp_path / "o.sarc", "--preset", "turbo")
    assert_clean_failure(r, 1, "preset")
    assert not (tmp_path / "o.sarc").exists()


def test_version():
    import sarcodec
    from sarcodec.weights import DEFAULT_MODEL

    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"sarcodec {sarcodec.__version__} (writes .sarc 7.1;") and DEFAULT_MODEL in r.stdout


def test_bench_default_codecs_and_unknown_codec(tmp_path):
    """`sarcodec bench` runs every codec unless told otherwise; an unknown name is one line, exit 2,
    and no output folder."""
    src = need(EVAL / "float" / "pyrosar-s1a-vv-db.tif")
    out = tmp_path / "b"
    r = run_cli("bench", "--data", src, "--qualities", "1,5", "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    from sarcodec.bench import CODECS

    assert {row["codec"] for row in json.loads(r.stdout)} | {"lossless"} == set(CODECS)
    r = run_cli("bench", "--data", src, "--codecs", "nope,jpegxl", "--out", tmp_path / "c")
    assert_clean_failure(r, 2, "unknown codec", "nope", "jpeg2000-log")
    assert not (tmp_path / "c").exists()
