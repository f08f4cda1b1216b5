"""The .sarc container, the integer entropy model and the coder: exactness, determinism, rejection."""
from __future__ import annotations

import dataclasses
import functools
import io
import math
from pathlib import Path
import struct
import zlib

import numpy as np
import pytest
import torch

import sarcodec
from sarcodec import bitstream, codec, preprocess, rdoq
from sarcodec.bitstream import FormatError, Header
from sarcodec.codec import decode_latents
from sarcodec.weights import bundled_path
from sarcodec.entropy import Z_RADIUS, IntHyperSynthesis, build_y_tables, quantize_pmf
from sarcodec.model import A_FRAC_BITS, ModelConfig, SarCodecModel

from .conftest import EVAL, need, sea_with_ship
from .test_fuzz import layout, stored_header, with_header


def small_file(model, s1_array) -> bytes:
    return sarcodec.encode_array(s1_array[0, :200, :330], 4, tile=128, model=model)


@pytest.mark.parametrize("major", [4, 5, 6, 7])
def test_header_roundtrip_exact_floats(major):
    h = Header(width=3, height=2, bands=2, dtype="float32", tile=64, quality=2, model_id="0123456789abcdef", model_name="m",
               mappings=[{"domain": "log", "lo": -23.123456789012345, "hi": 0.1 + 0.2, "floor": 1e-7},
                         {"domain": "log", "lo": 20.118, "hi": 60.515, "factor": 20.0, "floor": 9.0}],
               nodata=float("nan"), crs="EPSG:32631", transform=[1e-4 / 3, 0.0, -4.713113284561462, -0.0, -1e300, 4830114.70107],
               gcps=[["1", "", 0.5, 0.5, 13.25, 41.5, 0.0]], gcp_crs="EPSG:4326", tags={"UNITS": "sigma0"}, descriptions=["VH", None])
    h2 = Header.from_bytes(h.to_bytes(major), major)
    assert np.isnan(h2.nodata) and dataclasses.replace(h2, nodata=None) == dataclasses.replace(h, nodata=None)
    assert [math.copysign(1.0, v) for v in h2.transform] == [1, 1, -1, -1, -1, 1]  # -0.0 stays -0.0
    h3 = dataclasses.replace(h, mappings=[{"domain": "db", "lo": -30.0, "hi": 5e-324}] * 2, nodata=-99.0, crs="WKT text",
                             transform=None, model_name="sarcodec-hp7", model_id="98b41c1a6075dcd6")
    assert Header.from_bytes(h3.to_bytes(major), major) == h3


@pytest.mark.parametrize("lo, hi, centi", [(-23.45, -3.21, True), (-0.05, 61.2, True), (12.0, 42.5, True),
                                           (-23.456, -3.21, False), (0.1 + 0.2, 0.5, False), (0.0, 255.0, False)])
def test_band_levels_in_hundredths_are_stored_as_such(lo, hi, centi):
    # format 6.1: whole hundredths (what fit_mapping gives for dB levels) as 2 varints, when shorter
    h = Header(width=3, height=2, bands=1, dtype="float32", tile=64, quality=2, model_id="98b41c1a6075dcd6",
               model_name="sarcodec-hp7", mappings=[{"domain": "log", "lo": lo, "hi": hi}])
    core6, core5 = bitstream.core_bytes(h, 6)[0], bitstream.core_bytes(h, 5)[0]
    assert Header.from_bytes(h.to_bytes(6), 6) == h and Header.from_bytes(h.to_bytes(5), 5) == h == Header.from_bytes(h.to_bytes())
    assert (len(core6) < len(core5)) == centi and (core6 == core5) == (not centi)
    if centi:
        with pytest.raises(FormatError, match="band mapping malformed"):  # format 5 has no such bit
            Header.from_bytes(h.to_bytes(6), 5)


def test_newer_minor_version_is_named(model, s1_array, monkeypatch):
    # A 7.x reader refuses what a newer minor version adds, and says why
    data = small_file(model, s1_array)
    levels = [{"domain": "db", "lo": -23.45, "hi": -3.21}]
    for minor, says in ((2, r"malformed; the file is format 7\.2, newer than this sarcodec \(7\.1\): update sarcodec"),
                        (1, r"header band mapping malformed$")):
        with monkeypatch.context() as m:
            m.setattr(bitstream, "MINOR", minor)
            m.setattr(bitstream, "MAP_CENTI", 64)  # stands in for a mapping bit this reader does not know
            newer = with_header(data, lambda d: d.update(mappings=levels))
        assert newer[4:6] == bytes([7, minor])
        with pytest.raises(FormatError, match=says):
            sarcodec.decode_array(newer, model=model)


@pytest.mark.parametrize("encoder, in_core_6, in_core_7", [
    ("sarcodec 0.1.0", True, True), ("sarcodec 1023.99.99", True, True), ("sarcodec 12.0.345", True, False),
    ("sarcodec 1024.0.0", True, False), ("sarcodec 0.1", False, False), ("sarcodec 0.1.0rc1", False, False),
    ("sarcodec 01.1.0", False, False), ("gdal 3.9.0", False, False), ("sarcodec 0.1.٣", False, False), ("", False, False)])
def test_encoder_version_is_stored_in_binary_when_it_can_be(encoder, in_core_6, in_core_7):
    # format 6 stores "sarcodec X.Y.Z" as 3 varints in the header's core, format 7 as one varint
    # 10000 X + 100 Y + Z (X < 1024, Y and Z < 100); any other text stays in the JSON part
    h = Header(width=3, height=2, bands=1, dtype="uint8", tile=64, quality=2, model_id="98b41c1a6075dcd6", model_name="sarcodec-hp7",
               mappings=[{"domain": "identity", "lo": 0.0, "hi": 255.0}], encoder=encoder)
    for major, in_core, flags_at in ((6, in_core_6, 7), (7, in_core_7, 6)):
        stored = h.to_bytes(major)
        core, held = bitstream.core_bytes(h, major)
        assert Header.from_bytes(stored, major) == h and Header.from_bytes(h.to_bytes(5), 5) == h
        assert (held == {"encoder"}) == in_core and (stored == core) == (in_core or not encoder)
        if in_core:
            assert core[flags_at] == bitstream.CORE_ENCODER and len(stored) < len(h.to_bytes(5)) - 2
            # format 5 has no such flag (nor format 7's quality in the dtype's byte)
            with pytest.raises(FormatError, match="unknown header flags" if major == 6 else "dtype code 16 unknown"):
                Header.from_bytes(stored, 5)
        # beside other JSON fields the version may cost less there: the writer takes the shorter form
        tagged = dataclasses.replace(h, descriptions=["VH"], tags={"AREA_OR_POINT": "Area"})
        assert Header.from_bytes(tagged.to_bytes(major), major) == tagged and len(tagged.to_bytes(major)) <= len(tagged.to_bytes(5))
    if in_core_7:  # the version ends the core; format 7 saves the quality's byte and 0.1.0: 2 of 3 version bytes
        x, y, z = map(int, encoder.split()[1].split("."))
        assert h.to_bytes().endswith(bitstream.varint(10000 * x + 100 * y + z))
        assert len(h.to_bytes()) == len(h.to_bytes(6)) - {"sarcodec 0.1.0": 3, "sarcodec 1023.99.99": 1}[encoder]


def test_dtype_and_quality_share_a_byte_in_format_7():
    for dtype in bitstream.DTYPES:
        for q in range(1, 9):
            h = Header(width=3, height=2, bands=1, dtype=dtype, tile=64, quality=q, model_id="98b41c1a6075dcd6",
                       model_name="sarcodec-hp7", mappings=[{"domain": "identity", "lo": 0.0, "hi": 255.0}])
            stored = h.to_bytes()
            assert stored[3] == bitstream.DTYPES.index(dtype) + 16 * (q - 1) and Header.from_bytes(stored) == h
    bad = bytearray(stored)
    bad[3] = 0x90  # quality 10
    with pytest.raises(FormatError, match="quality 10 out of range"):
        Header.from_bytes(bytes(bad))
    bad[3] = 0x05  # dtype code 5
    with pytest.raises(FormatError, match="dtype code 5 unknown"):
        Header.from_bytes(bytes(bad))


def test_format_5_header_is_smaller(tmp_path):
    # A real georeferenced float32 chip (CNNSpeckleFilter, 256 x 256): format 5 stores the size, model,
    # transform and band mapping in binary: 75 bytes, format 4's deflated JSON 86
    sarcodec.encode_file(need(EVAL / "float" / "cnnspecklefilter-834_snippet_vh.tif"), tmp_path / "c.sarc", quality=1)
    data = (tmp_path / "c.sarc").read_bytes()
    h = bitstream.Reader(io.BytesIO(data), len(data)).header
    assert h.crs == "EPSG:4326" and h.transform and h.model_name in dict(bitstream.MODEL_TABLE)
    assert len(stored_header(data)) == len(h.to_bytes()) <= len(h.to_bytes(4)) - 10


def test_pack_reader_roundtrip():
    h = Header(width=100, height=70, bands=2, dtype="uint8", tile=64, quality=1, model_id="0" * 16, model_name="m",
               mappings=[{"domain": "identity", "lo": 0.0, "hi": 255.0}] * 2)
    payloads = [bytes([i]) * (i + 1) for i in range(h.n_tiles)]
    data = bitstream.pack(h, payloads)
    r = bitstream.Reader(io.BytesIO(data), len(data))
    assert [r.payload(i) for i in range(h.n_tiles)] == payloads


def test_pmf_tables_are_valid():
    q = quantize_pmf(np.array([[0.5, 0.5, 0.0, 1e-12], [1.0, 0.0, 0.0, 0.0]]))
    assert np.all(q >= 1) and np.all(q.sum(1) == 2**16)
    pmf, radius = build_y_tables()
    for row, r in zip(pmf, radius):
        assert row[: 2 * r + 3].sum() == 2**16 and np.all(row[: 2 * r + 3] >= 1) and np.all(row[2 * r + 3 :] == 0)


def test_integer_hyper_synthesis_matches_fake_quant_training_path():
    torch.manual_seed(0)
    cfg = ModelConfig()
    m = SarCodecModel(cfg).eval()
    for p in m.h_s.parameters():
        p.data.normal_(0, 0.05)
    z = torch.randint(-5, 6, (1, cfg.hyper, 3, 4)).float()
    with torch.no_grad():
        mean_f, sidx_f = m.h_s(z)
    ihs = IntHyperSynthesis.from_float(m.h_s, cfg.latent)
    mean_i, sidx_i = ihs(z[0].numpy().astype(np.int64))
    # identical up to a rounding step of the fixed-point grid on a few elements
    diff = np.abs(mean_i / 2**A_FRAC_BITS - mean_f[0].numpy())
    assert np.mean(diff < 1.5 / 2**A_FRAC_BITS) > 0.99
    expect = np.clip(np.floor(sidx_f[0].numpy() + 0.5), 0, 63)
    assert np.mean(sidx_i == expect) > 0.99


HS_SCRIPT = r"""
import sys, numpy as np, sarcodec
from sarcodec.entropy import Z_RADIUS
m = sarcodec.load_model(preset=sys.argv[1])
z = np.random.default_rng(3).integers(-Z_RADIUS, Z_RADIUS + 1, (m.cfg.hyper, 9, 7))
mean, sidx = m.coder.hs(z)
np.savez(sys.argv[2], mean=mean, sidx=sidx)
"""


@pytest.mark.parametrize("env", [{"OPENBLAS_NUM_THREADS": "1"}, {"OPENBLAS_NUM_THREADS": "2"},
                                 {"OPENBLAS_NUM_THREADS": "1", "OPENBLAS_CORETYPE": "Nehalem"}])
def test_integer_hyper_synthesis_is_blas_invariant(model, tmp_path, env):
    import os
    import subprocess
    import sys

    preset = "fast" if model.cfg.transform == "lot8" else "default"
    z = np.random.default_rng(3).integers(-Z_RADIUS, Z_RADIUS + 1, (model.cfg.hyper, 9, 7))
    a = model.coder.hs(z)
    r = subprocess.run([sys.executable, "-c", HS_SCRIPT, preset, tmp_path / "hs.npz"], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    b = np.load(tmp_path / "hs.npz")
    assert np.array_equal(a[0], b["mean"]) and np.array_equal(a[1], b["sidx"])


def test_coder_roundtrip_with_escapes(model):
    rng = np.random.default_rng(0)
    z = rng.integers(-3, 4, (model.cfg.hyper, 2, 3))
    y = rng.normal(0, 3, (model.cfg.latent, 7, 11)).astype(np.float32)
    y[0, 0, 0] = 5e5  # far beyond any table: escape, clamped to the escape range
    y[5, 3, 4] = -900.0
    first = 0  # code every scale group, so that the escapes above are coded
    payload, y_hat, bits = model.coder.encode(z, y, first)
    assert 0 < bits <= 8 * len(payload) + 64
    back = model.coder.decode(payload, z.shape, (7, 11), first)
    assert np.array_equal(back, y_hat)
    assert abs(y_hat[5, 3, 4] + 900.0) <= 0.5


def test_encode_is_deterministic(model, s1_array):
    assert small_file(model, s1_array) == small_file(model, s1_array)


@pytest.mark.parametrize("where", ["magic", "version", "header", "count", "table", "table_crc", "tile"])
def test_reader_rejects_damage(model, s1_array, where):
    data = bytearray(small_file(model, s1_array))
    lay = layout(bytes(data))
    pos = {"magic": 0, "version": 4, "header": lay["hstart"] + 5, "count": lay["tstart"] - 1, "table": lay["tstart"] + 9,
           "table_crc": lay["data_start"] - 2, "tile": len(data) - 3}[where]
    data[pos] ^= 0xFF
    with pytest.raises(FormatError):
        sarcodec.decode_array(bytes(data), model=model)


def test_reader_rejects_truncation_at_every_boundary(model, s1_array):
    data = small_file(model, s1_array)
    lay = layout(data)
    cuts = [0, 3, 4, 6, lay["hstart"], lay["hstart"] + lay["hlen"] - 1, lay["tstart"], lay["tstart"] + 8,
            lay["data_start"] - 4, lay["data_start"], len(data) - 1]
    for cut in cuts:
        with pytest.raises(FormatError, match="truncated|out of range"):
            sarcodec.decode_array(data[:cut], model=model)
    with pytest.raises(FormatError, match="bytes after the last tile"):
        sarcodec.decode_array(data + b"\0", model=model)


def test_header_with_forged_checksum_is_validated(model, s1_array):
    data = small_file(model, s1_array)
    forged = with_header(data, lambda h: h.update(width=10**9))  # declared size out of range, with a valid checksum
    with pytest.raises(FormatError, match="width"):
        sarcodec.decode_array(forged, model=model)


def test_tile_payload_mask_bomb_rejected():
    mask = bytes(100)
    p = bitstream.pack_tile(b"", mask + b"\0" * 10**6)
    with pytest.raises(FormatError, match="wrong size"):
        bitstream.unpack_tile(p, 100, 1)
    z = zlib.compress(bytes([7]) * 100)
    bad = bytes([1]) + struct.pack("<I", len(z)) + z
    with pytest.raises(FormatError, match="unknown classes"):
        bitstream.unpack_tile(bad, 100, 1)


def test_header_dictionaries_are_frozen():
    # Headers are deflated against these dictionaries: any edit to one breaks every file written with it.
    assert zlib.crc32(bitstream.HEADER_DICT) == 0xCCD68C49 and len(bitstream.HEADER_DICT) == 1285
    assert bitstream.HEADER_DICT_4.startswith(bitstream.HEADER_DICT)
    assert zlib.crc32(bitstream.HEADER_DICT_4) == 0x76075116 and len(bitstream.HEADER_DICT_4) == 1692


def test_shipped_models_are_named_by_number(s1_array, monkeypatch):
    # append only: a format-5 header names a shipped model by its place in MODEL_TABLE, a 4.1 header
    # the models after 4.0 by name alone (MODELS); the reader takes the id from here
    assert zlib.crc32(repr(bitstream.MODEL_TABLE[:16]).encode()) == 0xCA2F00BB
    assert list(bitstream.MODELS.items())[:2] == [("sarcodec-hp7s3", "8bc0a66834b2485f"), ("sarcodec-hp7s4", "33165a8f996df7b5")]
    m = sarcodec.load_model(bundled_path("sarcodec-hp7s3"))
    data = sarcodec.encode_array(s1_array[0, :96, :96], 2, model=m)
    r = bitstream.Reader(io.BytesIO(data), len(data))
    assert r.header.model_id == m.model_id and r.version == (7, 1) and b"hp7s3" not in stored_header(data)
    assert stored_header(data)[5] == bitstream.MODEL_INDEX[(m.name, m.model_id)] == 15
    assert sarcodec.decode_array(data)[0].shape == (1, 96, 96)
    mine = dataclasses.replace(r.header, model_name="mine", model_id="0123456789abcdef")  # not shipped: named in full
    assert Header.from_bytes(mine.to_bytes()) == mine and b"mine" in mine.to_bytes()
    assert bitstream.MODEL_TABLE[16:] == (("sarcodec-hp7l", "964cb7c3393353bb"), ("sarcodec-hp7d", "9f48a4ac8cd16ad6"),
                                          ("sarcodec-hp7e", "a1dc61a6be3030b3"), ("sarcodec-hp7f", "780d9ea9c2dc9271"),
                                          ("sarcodec-hp7g", "7a1e9bb76248992b"), ("sarcodec-hp7h", "b0b795853a3d3295"),
                                          ("sarcodec-hp7i", "e78347024e0f1513"), ("sarcodec-hp7j", "766666b6d953ddac"))
    with pytest.raises(FormatError, match="model number 25, which this sarcodec does not know"):
        Header.from_bytes(stored_header(data)[:5] + bytes([25]) + stored_header(data)[6:])
    monkeypatch.setattr(bitstream, "MAJOR", 4)
    monkeypatch.setattr(bitstream, "MINOR", 1)
    stored = bitstream.inflate_header(stored_header(sarcodec.encode_array(s1_array[0, :96, :96], 2, model=m)), 4)
    assert b"model_id" not in stored and b'"model_name":"sarcodec-hp7s3"' in stored
    with pytest.raises(FormatError, match="does not know that model"):
        Header.from_bytes(bitstream.deflate_header(stored.replace(b"sarcodec-hp7s3", b"sarcodec-hp99"), 4), 4)


def edge_padded(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """How the encoders that wrote the fixtures below extended a chip whose size is not a multiple
    of the stride (sarcodec 0.1 after format 5 repeats the local mean instead, see codec.pad_to)."""
    return np.pad(a, ((0, h - a.shape[0]), (0, w - a.shape[1])), mode="edge")


def like_old_encoders(monkeypatch) -> None:
    """Fit band mappings as the encoders that wrote the fixtures below did: dB levels to 0.001 dB
    (format 6.1 rounds them to 0.01 dB and stores hundredths).  Those encoders also rounded the
    latent (no RDOQ): the tests pass ``rdoq=False`` for the same symbols."""
    monkeypatch.setattr(codec, "fit_mapping", functools.partial(preprocess.fit_mapping, digits=3))


def test_format_1_1_file_still_decodes(tmp_path, monkeypatch):
    # Written by sarcodec before format 2 (hp3, q3) from a real OpenSARShip chip (2 bands, uint16).
    # Format 2 changed only how the header is stored, format 3 only trims final range-coder words,
    # format 4 only the layout around the payloads, format 5 how the header is stored:
    # re-encoding the same chip must give the same symbols, so the old file decodes to exactly what
    # a new file decodes to.
    old = Path(__file__).parent / "data" / "format-1.1-opensarship-q3.sarc"
    src = need(EVAL / "float" / "opensarship-grd-dn-cargo_x11505_y10248.tif")
    new = tmp_path / "new.sarc"
    monkeypatch.setattr(codec, "pad_to", edge_padded)  # the 53 x 53 chip is extended to 64 x 64
    like_old_encoders(monkeypatch)
    sarcodec.encode_file(src, new, quality=3, model=sarcodec.load_model(bundled_path("sarcodec-hp3")), rdoq=False)
    assert sarcodec.info(old)["format_version"] == "1.1" and sarcodec.info(new)["format_version"] == "7.1"
    old_b, new_b = old.read_bytes(), new.read_bytes()
    r_old = bitstream.Reader(io.BytesIO(old_b), len(old_b))
    r_new = bitstream.Reader(io.BytesIO(new_b), len(new_b))
    assert r_old.header == r_new.header
    assert r_old.header.n_tiles == 2  # 2 bands, one tile each
    for i in range(2):
        p_old, p_new = r_old.payload(i), r_new.payload(i)
        assert p_new[0] == p_old[0] | bitstream.FLAG_TRIMMED and p_new[1 : len(p_old) - 4] == p_old[1:-4]
        assert len(p_old) - 4 < len(p_new) < len(p_old)  # 1-3 bytes of the final word dropped
    assert all(np.array_equal(a, b) for a, b in zip(decode_latents(old_b), decode_latents(new_b)))
    assert len(new_b) < len(old_b) - 150  # the dictionary-deflated header
    a, _ = sarcodec.decode_array(old_b)
    b, _ = sarcodec.decode_array(new_b)
    assert a.dtype == np.uint16 and np.array_equal(a, b)


def default_groups(monkeypatch) -> None:
    """Code every tile from the model's default scale group, as encoders before format 7.1 did (the
    tests that write older formats: those cannot name another)."""
    monkeypatch.setattr(rdoq, "choose_group", lambda m, *args: m.cfg.first_coded_group(args[-1]))


def test_format_4_files_decode_as_a_new_file_does(model, s1_array, monkeypatch):
    # Format 5 changed only how the header is stored: a 4.x file has the same header and payloads.
    # The fixture was written by sarcodec 0.1 in format 4.2 (hp7s4, q2, 128 x 128 tiles) from
    # conftest's uint16 sea with a ship, so one tile has exact pixels.
    old_b = (Path(__file__).parent / "data" / "format-4.2-sea-ship-q2.sarc").read_bytes()
    like_old_encoders(monkeypatch)
    new_b = sarcodec.encode_array(sea_with_ship("uint16")[0], 2, model=sarcodec.load_model(bundled_path("sarcodec-hp7s4")), tile=128,
                                  rdoq=False)
    r_old = bitstream.Reader(io.BytesIO(old_b), len(old_b))
    r_new = bitstream.Reader(io.BytesIO(new_b), len(new_b))
    assert r_old.version == (4, 2) and r_new.version == (7, 1) and r_old.header == r_new.header
    assert [r_old.payload(i) for i in range(6)] == [r_new.payload(i) for i in range(6)]
    assert r_old.payload(1)[0] & bitstream.FLAG_EXACT
    assert np.array_equal(sarcodec.decode_array(old_b)[0], sarcodec.decode_array(new_b)[0])
    assert len(new_b) < len(old_b)
    default_groups(monkeypatch)
    new = small_file(model, s1_array)  # and what this sarcodec writes as 4.0 (tests only) decodes as 5.0 does
    monkeypatch.setattr(bitstream, "MAJOR", 4)
    monkeypatch.setattr(bitstream, "MINOR", 0)
    old = small_file(model, s1_array)
    assert bitstream.Reader(io.BytesIO(old), len(old)).version == (4, 0)
    assert np.array_equal(sarcodec.decode_array(old, model=model)[0], sarcodec.decode_array(new, model=model)[0])


def test_format_5_file_decodes_as_a_new_file_does(tmp_path, monkeypatch):
    # Format 6 changed only the layout around the header and the payloads (no tile count, no length
    # in the last record) and stores the encoder version in binary. The fixture was written by
    # sarcodec 0.1 in format 5.0 (hp7s4, q2, 128 x 128 tiles) from this GeoTIFF: conftest's uint16
    # sea with a ship, UTM 31N at 10 m, band description "VV".
    import rasterio
    from rasterio.transform import Affine

    old_b = (Path(__file__).parent / "data" / "format-5.0-sea-ship-geo-q2.sarc").read_bytes()
    a, _ = sea_with_ship("uint16")
    src = tmp_path / "sea.tif"
    with rasterio.open(src, "w", driver="GTiff", width=320, height=256, count=1, dtype="uint16", crs="EPSG:32631",
                       transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4800000.0)) as ds:
        ds.write(a, 1)
        ds.set_band_description(1, "VV")
    like_old_encoders(monkeypatch)
    sarcodec.encode_file(src, tmp_path / "new.sarc", quality=2, tile=128, model=sarcodec.load_model(bundled_path("sarcodec-hp7s4")),
                         rdoq=False)
    new_b = (tmp_path / "new.sarc").read_bytes()
    r_old = bitstream.Reader(io.BytesIO(old_b), len(old_b))
    r_new = bitstream.Reader(io.BytesIO(new_b), len(new_b))
    # the tag GDAL reports for a GeoTIFF with a CRS is no longer stored (the decoded file reports it all the same)
    assert r_old.header.tags == {"AREA_OR_POINT": "Area"} and r_new.header.tags == {}
    assert r_old.version == (5, 0) and r_new.version == (7, 1) and dataclasses.replace(r_old.header, tags={}) == r_new.header
    assert r_new.header.crs == "EPSG:32631" and r_new.header.descriptions == ["VV"] and r_new.header.encoder.startswith("sarcodec ")
    assert [r_old.payload(i) for i in range(6)] == [r_new.payload(i) for i in range(6)]
    assert np.array_equal(sarcodec.decode_array(old_b)[0], sarcodec.decode_array(new_b)[0])
    sarcodec.decode_file(tmp_path / "new.sarc", tmp_path / "new.tif")
    with rasterio.open(tmp_path / "new.tif") as ds:
        assert ds.tags() == {"AREA_OR_POINT": "Area"} and ds.crs == "EPSG:32631"
    # format 6: 1 byte of tile count and 4 of the last length (beside the description in the JSON
    # part the encoder version costs its 3 varints there too); format 7: 4 of the last tile's CRC, 1 of
    # the quality and 2 of the encoder version (one varint in the core); the tag left out: 3 more
    assert len(new_b) == len(old_b) - 5 - 7 - 3


def test_format_6_0_file_decodes_as_a_new_file_does(monkeypatch):
    # Format 6.1 rounds dB levels to 0.01 dB and stores them as hundredths. The fixture was written by
    # sarcodec 0.1 in format 6.0 (hp7s4, q2, 128 x 128 tiles) from conftest's float32 sea with a ship.
    old_b = (Path(__file__).parent / "data" / "format-6.0-sea-float-q2.sarc").read_bytes()
    hp7s4 = sarcodec.load_model(bundled_path("sarcodec-hp7s4"))
    with monkeypatch.context() as m:
        like_old_encoders(m)
        new_b = sarcodec.encode_array(sea_with_ship("float32")[0], 2, model=hp7s4, tile=128, rdoq=False)
    r_old = bitstream.Reader(io.BytesIO(old_b), len(old_b))
    r_new = bitstream.Reader(io.BytesIO(new_b), len(new_b))
    assert r_old.version == (6, 0) and r_new.version == (7, 1) and r_old.header == r_new.header
    assert [r_old.payload(i) for i in range(6)] == [r_new.payload(i) for i in range(6)]
    assert np.array_equal(sarcodec.decode_array(old_b)[0], sarcodec.decode_array(new_b)[0])
    assert len(new_b) == len(old_b) - 7  # format 7: the last tile's CRC, the quality's byte, 2 of the encoder version
    # as this sarcodec fits them: levels in hundredths, 2 varints instead of 2 numbers of 3 decimals
    # (3 bytes), and 3 more of format 7's quality and encoder version
    now = sarcodec.encode_array(sea_with_ship("float32")[0], 2, model=hp7s4, tile=128)
    (m_old,), (m_now,) = r_old.header.mappings, bitstream.Reader(io.BytesIO(now), len(now)).header.mappings
    assert (m_now["lo"], m_now["hi"]) == (round(m_old["lo"], 2), round(m_old["hi"], 2)) != (m_old["lo"], m_old["hi"])
    assert len(stored_header(now)) == len(stored_header(old_b)) - 3 - 3


def test_format_6_1_file_decodes_as_a_new_file_does():
    # Format 7 folds the last tile's CRC into the one that closes the tile table, stores the quality
    # in the dtype's byte and the encoder version as one varint. The fixture was written by sarcodec
    # 0.1 in format 6.1 (hp7d, q2, 128 x 128 tiles) from conftest's float32 sea with a ship, with the
    # georeferencing and band description below.
    old_b = (Path(__file__).parent / "data" / "format-6.1-sea-float-geo-q2.sarc").read_bytes()
    meta = {"crs": "EPSG:32631", "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 4650000.0], "descriptions": ["VV"]}
    new_b = sarcodec.encode_array(sea_with_ship("float32")[0], 2, model=sarcodec.load_model(bundled_path("sarcodec-hp7d")),
                                  tile=128, meta=meta, rdoq=False)
    r_old = bitstream.Reader(io.BytesIO(old_b), len(old_b))
    r_new = bitstream.Reader(io.BytesIO(new_b), len(new_b))
    assert r_old.version == (6, 1) and r_new.version == (7, 1) and r_old.header == r_new.header
    assert r_new.header.transform == meta["transform"] and r_new.header.descriptions == ["VV"]
    assert [r_old.payload(i) for i in range(6)] == [r_new.payload(i) for i in range(6)]
    assert [e.crc for e in r_old.entries] == [e.crc for e in r_new.entries]  # the last one from its payload in 7.0
    assert np.array_equal(sarcodec.decode_array(old_b)[0], sarcodec.decode_array(new_b)[0])
    assert len(new_b) == len(old_b) - 7 and len(stored_header(new_b)) == len(stored_header(old_b)) - 3


@pytest.mark.parametrize("dtype", ["uint16", "float32", "float64"])
def test_bright_point_target_decodes_exactly(model, dtype, monkeypatch):
    a, ship = sea_with_ship(dtype)
    stats: dict = {}
    data = sarcodec.encode_array(a, 2, model=model, tile=128, stats=stats)
    rec = sarcodec.decode_array(data, model=model)[0][0]
    assert stats["exact_pixels"] == 6 and np.array_equal(rec[ship], a[ship])
    r = bitstream.Reader(io.BytesIO(data), len(data))
    flags = [r.payload(i)[0] & bitstream.FLAG_EXACT for i in range(r.header.n_tiles)]
    assert flags == [0, bitstream.FLAG_EXACT, 0, 0, 0, 0]  # only the tile with the ship (row 0, col 1) pays
    quiet = a.copy()
    quiet[ship] = a[50:52, 50:53]
    stats = {}
    sarcodec.encode_array(quiet, 2, model=model, tile=128, stats=stats)
    assert stats["exact_pixels"] == 0  # without the ship nothing is stored verbatim
    monkeypatch.setattr(codec, "exact_pixels", lambda *args: None)  # what the decoder's range alone gives
    clipped = sarcodec.decode_array(sarcodec.encode_array(a, 2, model=model, tile=128), model=model)[0][0]
    assert clipped[ship].astype(float).max() < 0.1 * a[ship].astype(float).min()


def test_exact_pixels_are_refused_in_an_older_4_x_file(model, monkeypatch):
    a, _ = sea_with_ship("float32")
    default_groups(monkeypatch)
    monkeypatch.setattr(bitstream, "MAJOR", 4)
    monkeypatch.setattr(bitstream, "MINOR", 1)
    data = sarcodec.encode_array(a, 2, model=model, tile=128)
    with pytest.raises(FormatError, match=r"tile 1 uses a format-4\.2 flag in a 4\.1 file"):
        sarcodec.decode_array(data, model=model)


def test_scale_group_of_a_tile(model, s1_array, monkeypatch):
    ok = bitstream.pack_tile(b"\0" * 4, group=12)
    assert ok[:2] == bytes([bitstream.FLAG_GROUP, 12]) and bitstream.unpack_tile(ok, 10, 4)[4] == 12
    assert bitstream.unpack_tile(bitstream.pack_tile(b"\0" * 4), 10, 4)[4] is None  # the model's default
    for bad in (bytes([bitstream.FLAG_GROUP]), bytes([bitstream.FLAG_GROUP, 65]) + b"\0" * 4):
        with pytest.raises(FormatError, match="scale group missing or out of range"):
            bitstream.unpack_tile(bad, 10, 4)
    mask = zlib.compress(bytes([1] * 10))
    empty = bytes([bitstream.FLAG_GROUP | bitstream.FLAG_EMPTY | bitstream.FLAG_MASK, 3]) + struct.pack("<I", len(mask)) + mask
    with pytest.raises(FormatError, match="empty tile carries"):
        bitstream.unpack_tile(empty, 10, 4)
    # the flag is format 7.1's: a 7.0 file that has it is refused (and a 7.0 reader refuses it as an unknown flag)
    monkeypatch.setattr(bitstream, "MINOR", 0)
    monkeypatch.setattr(rdoq, "choose_group", lambda m, *args: m.cfg.first_coded_group(args[-1]) + 2)  # always another
    data = sarcodec.encode_array(s1_array[0, :128, :128], 4, tile=128, model=model)
    if model.refinable:
        with pytest.raises(FormatError, match=r"tile 0 uses a format-7\.1 flag in a 7\.0 file"):
            sarcodec.decode_array(data, model=model)
    else:  # the fast preset rounds: it never names a group
        assert not bitstream.Reader(io.BytesIO(data), len(data)).payload(0)[0] & bitstream.FLAG_GROUP


def test_corrupt_exact_pixels_are_rejected():
    def tile(blob: bytes, mask: bytes | None = None) -> bytes:
        z = zlib.compress(blob)
        head = bytes([bitstream.FLAG_EXACT | (bitstream.FLAG_MASK if mask else 0)])
        if mask:
            head += struct.pack("<I", len(zm := zlib.compress(mask))) + zm
        return head + struct.pack("<I", len(z)) + z + b"\0" * 4

    ok = bitstream.pack_tile(b"\0" * 4, exact=bitstream.ExactPixels([3, 7], struct.pack("<ff", 1e9, 2e9)))
    assert bitstream.unpack_tile(ok, 10, 4)[3] == bitstream.ExactPixels([3, 7], struct.pack("<ff", 1e9, 2e9))
    for blob, match in [(bytes([1, 10]) + b"\0" * 4, "out of range"),  # index 10 of a 10-pixel tile
                        (bytes([2, 3, 6]) + b"\0" * 8, "out of range"),  # 3, then 3 + 6 + 1 = 10
                        (bytes([0]), "out of range"),  # no pixel
                        (bytes([2, 3, 3]) + b"\0" * 7, "wrong size"),  # a value byte short
                        (bytes([11]) + b"\0" * 60, "out of range")]:  # more pixels than the tile has
        with pytest.raises(FormatError, match=match):
            bitstream.unpack_tile(tile(blob), 10, 4)
    with pytest.raises(FormatError, match="masked"):
        bitstream.unpack_tile(tile(bytes([1, 3]) + b"\0" * 4, mask=bytes([0, 0, 0, 1] + [0] * 6)), 10, 4)
    with pytest.raises(FormatError, match="corrupt"):
        bitstream.unpack_tile(bytes([bitstream.FLAG_EXACT]) + struct.pack("<I", 3) + b"abc", 10, 4)


def test_unknown_major_version_is_named(model, s1_array):
    data = bytearray(small_file(model, s1_array))
    data[4:6] = bytes([8, 0])
    with pytest.raises(FormatError, match=r"version 8\.0 .*reads 1\.x and 2\.x and 3\.x and 4\.x and 5\.x and 6\.x and 7\.x"):
        sarcodec.decode_array(bytes(data), model=model)


@pytest.mark.parametrize("fixture, version", [("format-3.0-opensarship-q3.sarc", (3, 0)), ("format-2.0-s1-q8.sarc", (2, 0))])
def test_format_2_and_3_files_decode_as_a_new_file_does(fixture, version, tmp_path, monkeypatch):
    # Written by sarcodec before format 4 (hp7): a 2-band OpenSARShip chip at q3 (trimmed tiles, 3.0)
    # and the top-left 128 x 160 of eval S1 scene -219 at q8 (2.0).  Format 4 changed only the layout
    # around the payloads and the header's dictionary, so a new file has the same header and payloads.
    old_b = (Path(__file__).parent / "data" / fixture).read_bytes()
    hp7 = sarcodec.load_model(bundled_path("sarcodec-hp7"))
    like_old_encoders(monkeypatch)
    if version == (3, 0):
        src = need(EVAL / "float" / "opensarship-grd-dn-cargo_x11505_y10248.tif")
        monkeypatch.setattr(codec, "pad_to", edge_padded)
        sarcodec.encode_file(src, tmp_path / "new.sarc", quality=3, model=hp7, rdoq=False)
        new_b = (tmp_path / "new.sarc").read_bytes()
    else:
        import rasterio

        with rasterio.open(need(EVAL / "s1-vh-8bit" / "s1a-iw-grdh-vh-20201204-219.tif")) as ds:
            new_b = sarcodec.encode_array(ds.read()[:, :128, :160], 8, model=hp7, rdoq=False)
    r_old = bitstream.Reader(io.BytesIO(old_b), len(old_b))
    r_new = bitstream.Reader(io.BytesIO(new_b), len(new_b))
    assert r_old.version == version and r_new.version == (7, 1)
    assert r_old.header == r_new.header
    assert [r_old.payload(i) for i in range(r_old.header.n_tiles)] == [r_new.payload(i) for i in range(r_new.header.n_tiles)]
    a, _ = sarcodec.decode_array(old_b)
    b, _ = sarcodec.decode_array(new_b)
    assert np.array_equal(a, b)
    assert len(new_b) <= len(old_b) - 30  # 20 bytes of layout, the rest from the newer dictionary


def test_damaged_format_3_file_is_rejected():
    data = (Path(__file__).parent / "data" / "format-3.0-opensarship-q3.sarc").read_bytes()
    hlen = struct.unpack_from("<I", data, 8)[0]
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            bitstream.Reader(io.BytesIO(data[:cut]), cut).payload(1)
    for pos in (9, 13, 16 + hlen // 2, 16 + hlen + 2, 16 + hlen + 4 + 32 + 1, len(data) - 1):  # length, CRC, header, count, table CRC, tile
        bad = bytearray(data)
        bad[pos] ^= 0x10
        with pytest.raises(FormatError):
            r = bitstream.Reader(io.BytesIO(bytes(bad)), len(bad))
            r.payload(0), r.payload(1)


def test_reconstruction_offsets_move_only_coded_nonzero_symbols(model):
    rng = np.random.default_rng(1)
    z = rng.integers(-3, 4, (model.cfg.hyper, 2, 3))
    y = rng.normal(0, 3, (model.cfg.latent, 7, 11)).astype(np.float32)
    first = model.cfg.first_coded_group(4)
    payload, _, _ = model.coder.encode(z, y, first)
    plain = model.coder.decode(payload, z.shape, (7, 11), first)
    table = rng.uniform(-0.4, 0.4, (64, 4)).astype(np.float32)
    payload2, y_hat, _ = model.coder.encode(z, y, first, table)
    assert payload2 == payload  # the symbols do not depend on the offsets
    moved = model.coder.decode(payload, z.shape, (7, 11), first, table)
    assert np.array_equal(moved, y_hat)
    mean_int, sidx = model.coder.hyper(z)
    mean = np.zeros(y.shape)
    mean[: mean_int.shape[0]] = mean_int[:, :7, :11] / 2**A_FRAC_BITS
    sym = np.rint(plain - mean).astype(np.int64)
    sidx = sidx[:, :7, :11]
    expect = np.sign(sym) * table[sidx, np.clip(np.abs(sym), 1, 4) - 1]
    assert (sym != 0).sum() > 100 and (np.abs(sym) >= 4).any()
    assert np.allclose(moved - plain, expect, atol=1e-5)
    assert np.array_equal(moved[sym == 0], plain[sym == 0])  # zeros and skipped latents stay at the mean


def test_training_pass_applies_the_offsets_to_the_reconstruction_only():
    cfg = ModelConfig(latent=16, hyper=8, hyper_hidden=8, c4=8, c8=8, c16=16)
    torch.manual_seed(0)
    m = SarCodecModel(cfg).eval()
    for p in m.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    x = torch.rand(2, 1, 64, 64)
    q = torch.tensor([7, 7])
    with torch.no_grad():
        m.recon.table.zero_()
        a = m(x, q, noise=False)
        m.recon.table.fill_(-0.3)
        b = m(x, q, noise=False)
    assert torch.equal(a["p_y"], b["p_y"]) and torch.equal(a["p_z"], b["p_z"])  # same symbols, same rate
    assert not torch.allclose(a["x_hat"], b["x_hat"])


def test_weights_of_a_newer_format_are_refused(tmp_path):
    from sarcodec.weights import WeightsError, export

    cfg = ModelConfig(latent=16, hyper=8, hyper_hidden=8, c4=8, c8=8, c16=16)
    path = tmp_path / "m.pt"
    export(SarCodecModel(cfg), path)
    blob = torch.load(path, weights_only=True)
    blob["version"] = 99
    torch.save(blob, path)
    with pytest.raises(WeightsError, match="newer sarcodec"):
        sarcodec.load_model(path)


def test_trimmed_final_word_decodes_to_the_same_symbols(model):
    rng = np.random.default_rng(2)
    sizes = []
    for t in range(12):
        h, w = (int(v) for v in rng.integers(1, 9, 2))
        z = rng.integers(-2, 3, (model.cfg.hyper, -(-h // 4), -(-w // 4)))
        y = rng.normal(0, 2, (model.cfg.latent, h, w)).astype(np.float32)
        first = model.cfg.first_coded_group(int(rng.integers(1, 9)))
        full, y_hat, _ = model.coder.encode(z, y, first)
        short, _, _ = model.coder.encode(z, y, first, trim=True)
        assert len(full) % 4 == 0 and full[:-4] == short[: len(full) - 4] and len(full) - 4 < len(short) <= len(full)
        assert np.array_equal(model.coder.decode(short, z.shape, (h, w), first), y_hat)
        sizes.append(len(full) - len(short))
    assert sum(sizes) >= 8  # ~1.6 bytes a tile on average


def test_small_tiles_are_trimmed(model, s1_array):
    trimmed = 0
    for n in (64, 77, 90, 100):  # a trimmed latent keeps 1-3 bytes of its final word: most small tiles
        chip = sarcodec.encode_array(s1_array[0, :n, :n], 1, model=model)
        r = bitstream.Reader(io.BytesIO(chip), len(chip))
        trimmed += bool(r.payload(0)[0] & bitstream.FLAG_TRIMMED)
        rec, _ = sarcodec.decode_array(chip, model=model)
        assert rec.shape == (1, n, n)
    assert trimmed >= 2
    big = sarcodec.encode_array(s1_array[0, :512, :512], 8, model=model, tile=512)  # latent >> TRIM_MAX_BYTES
    r = bitstream.Reader(io.BytesIO(big), len(big))
    assert r.version == (7, 1) and not r.payload(0)[0] & bitstream.FLAG_TRIMMED


def test_trimmed_tile_in_a_2_x_file_is_rejected():
    chip = bytearray((Path(__file__).parent / "data" / "format-3.0-opensarship-q3.sarc").read_bytes())
    assert chip[4] == 3
    chip[4] = 2  # formats 2 and 3 differ only in that flag
    with pytest.raises(FormatError, match="format-3 flag in a 2.x file"):
        sarcodec.decode_array(bytes(chip))
