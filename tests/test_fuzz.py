"""Hostile .sarc input: seeded mutations must be rejected cleanly or decode, never crash or hang.

The fast run (>= 1,000 cases) is part of the normal suite; ``-m slow`` runs a longer soak.
Outcomes are counted and printed (pytest -s shows them).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import struct
import time
import zlib

import numpy as np
import pytest

import sarcodec
from sarcodec import bitstream
from sarcodec.bitstream import FormatError
from sarcodec.codec import DecodeError
from sarcodec.io import InputError

CLEAN = (FormatError, InputError, DecodeError)


def layout(data: bytes) -> dict:
    """Where the sections of formats 4-7 start: header, tile count (4 and 5), table, payloads."""
    hlen, hstart = bitstream.read_varint(data, 6, "header length", bitstream.MAX_HEADER)
    if data[4] >= 6:  # no count: the header's band-tiles; no length in the last record (7: no record)
        n = bitstream.Header.from_bytes(data[hstart : hstart + hlen], data[4]).n_tiles
        return {"hstart": hstart, "hlen": hlen, "tstart": hstart + hlen, "n": n,
                "data_start": hstart + hlen + 8 * n - (4 if data[4] >= 7 else 0)}
    n, tstart = bitstream.read_varint(data, hstart + hlen, "tile count", len(data))
    return {"hstart": hstart, "hlen": hlen, "tstart": tstart, "n": n, "data_start": tstart + 8 * n + 4}


def stored_header(data: bytes) -> bytes:
    lay = layout(data)
    return data[lay["hstart"] : lay["hstart"] + lay["hlen"]]


def entries(data: bytes) -> list[list[int]]:
    """The tile table's [length, crc] records (format 6: the last one's length from the file size;
    7: its CRC from its payload)."""
    lay = layout(data)
    if data[4] < 6:
        return [list(struct.unpack_from("<II", data, lay["tstart"] + 8 * i)) for i in range(lay["n"])]
    records = [list(struct.unpack_from("<II", data, lay["tstart"] + 8 * i)) for i in range(lay["n"] - 1)]
    last = len(data) - lay["data_start"] - sum(length for length, _ in records)
    if data[4] >= 7:
        return records + [[last, zlib.crc32(data[len(data) - last :])]]
    return records + [[last, struct.unpack_from("<I", data, lay["tstart"] + 8 * lay["n"] - 8)[0]]]


def rebuilt(hj: bytes, table: list[list[int]], payload_bytes: bytes) -> bytes:
    """A file with this stored header, these (length, crc) records and payloads, and a valid CRC."""
    head = bitstream.head_bytes(hj, len(table))
    last = payload_bytes[len(payload_bytes) - table[-1][0] :]
    return head + bitstream.table_bytes(head, [bitstream.TileEntry(0, ln, c) for ln, c in table], last) + payload_bytes


def with_header(data: bytes, edit) -> bytes:
    """Rewrite the header's fields, a dict of ``Header``'s (stored unvalidated, valid CRC)."""
    d = dataclasses.asdict(bitstream.Reader(io.BytesIO(data), len(data)).header)
    edit(d)
    return with_stored_header(data, bitstream.Header(**d).to_bytes())


def with_stored_header(data: bytes, hj: bytes) -> bytes:
    return rebuilt(hj, entries(data), data[layout(data)["data_start"] :])


def with_table(data: bytes, edit) -> bytes:
    """Rewrite tile-table records [length, crc] (valid CRC)."""
    lay = layout(data)
    table = entries(data)
    edit(table)
    return rebuilt(data[lay["hstart"] : lay["hstart"] + lay["hlen"]], table, data[lay["data_start"] :])


def with_payload(data: bytes, index: int, new: bytes) -> bytes:
    """Replace one tile payload (valid CRC): exercises the decoder behind the checksums."""
    r = bitstream.Reader(io.BytesIO(data), len(data))
    ps = [r.payload(i) for i in range(len(r.entries))]
    ps[index] = new
    return bitstream.pack(r.header, ps)


HEADER_EDITS = [
    lambda h: h.update(width=10**9), lambda h: h.update(height=0), lambda h: h.update(width=-5), lambda h: h.update(bands=10**6),
    lambda h: h.update(width=30000, height=30000), lambda h: h.update(tile=65), lambda h: h.update(tile=10**9),
    lambda h: h.update(quality=0), lambda h: h.update(quality=99), lambda h: h.update(dtype="complex64"),
    lambda h: h.update(dtype=None), lambda h: h.update(model_id="x"), lambda h: h.update(mappings=[]),
    lambda h: h["mappings"][0].update(lo=float("1e308"), hi=-1.0), lambda h: h["mappings"][0].update(domain="sqrt"),
    lambda h: h["mappings"][0].update(hi="a"), lambda h: h.update(transform=[1, 2]), lambda h: h.update(nodata="zero"),
    lambda h: h.update(gcps="none"), lambda h: h.pop("width"), lambda h: h.update(width=True), lambda h: h.update(width=1.5),
    lambda h: h.update(extra_field={"a": [1] * 100}), lambda h: h.update(tags=[]), lambda h: h.update(bands=2),
]

# (byte position, value) in the base file's binary core (width 200 and height 150 in 2 bytes each, then
# one byte each: bands, dtype and quality, tile / 64, model number, flags, nodata 0, the band mapping):
# bands 0, dtype code 9, quality 10, tile codes 0 and 200, model number 99, unknown flags, domain code 3
CORE_EDITS = [(4, 0), (5, 9), (5, 0x93), (6, 0), (6, 200), (7, 99), (8, 0x80), (10, 3)]


def mutations(base: bytes, rng: np.random.Generator, count: int):
    lay = layout(base)
    bounds = [0, 4, 5, 6, lay["hstart"], lay["hstart"] + lay["hlen"], lay["tstart"], lay["data_start"] - 4,
              lay["data_start"], len(base)]
    for b in bounds:  # truncation at every section boundary (and one byte either side)
        for d in (-1, 0, 1):
            if 0 <= b + d < len(base):
                yield "truncate", base[: b + d]
    header = bitstream.Reader(io.BytesIO(base), len(base)).header
    core, _ = bitstream.core_bytes(header)
    assert core[:5] == bitstream.varint(200) + bitstream.varint(150) + b"\x01" and core[9] == 254  # CORE_EDITS' positions
    for k in range(len(core)):  # the binary core cut short anywhere
        yield "header", with_stored_header(base, core[:k])
    for at, value in CORE_EDITS:
        yield "header", with_stored_header(base, core[:at] + bytes([value]) + core[at + 1 :])
    yield "header", with_stored_header(base, core + b"not deflate at all")
    yield "header", with_stored_header(base, core + bitstream.deflate_header(b"[1, 2"))
    yield "header", with_stored_header(base, core + bitstream.deflate_header(b" " * (17 * 2**20)))  # inflation bomb
    yield "header", with_stored_header(base, core + zlib.compress(b"{}"))  # a format-1 header's zlib stream
    yield "header", with_stored_header(base, bitstream.deflate_header(stored_header(base)))  # a format-4 header
    for edit in HEADER_EDITS:
        try:
            yield "header", with_header(base, edit)
        except (TypeError, ValueError):
            pass
    n = lay["n"]
    r = bitstream.Reader(io.BytesIO(base), len(base))
    base_payloads = [r.payload(i) for i in range(n)]
    yield "table", with_table(base, lambda e: e[0].__setitem__(0, 2**32 - 1))
    yield "table", with_table(base, lambda e: e[0].__setitem__(0, e[0][0] + 1))  # lengths no longer add up
    yield "table", with_table(base, lambda e: e[-2].__setitem__(0, e[-2][0] - 1))  # the last tile starts a byte early
    yield "append", base + b"\0"  # a byte after the last tile
    yield "table", with_table(base, lambda e: e.pop())  # fewer records than tiles
    yield "payload", with_payload(base, 0, b"")
    yield "payload", with_payload(base, 0, b"\x07")
    yield "payload", with_payload(base, n - 1, bytes([2]))
    yield "payload", with_payload(base, 0, bytes([1]) + struct.pack("<I", 10**9))
    yield "payload", with_payload(base, 0, bytes([0]) + b"\xff" * 3)
    yield "payload", with_payload(base, 0, bytes([0]) + b"\x00" * 4)
    yield "payload", with_payload(base, 1, bytes([1]) + struct.pack("<I", 9) + zlib.compress(b"\0" * 10))
    i = 0
    while i < count:
        kind = rng.integers(0, 5)
        b = bytearray(base)
        if kind == 0:  # bit flips anywhere
            for _ in range(rng.integers(1, 4)):
                p = int(rng.integers(0, len(b)))
                b[p] ^= 1 << int(rng.integers(0, 8))
            yield "bitflip", bytes(b)
        elif kind == 1:  # random truncation
            yield "truncate", bytes(b[: int(rng.integers(0, len(b)))])
        elif kind == 2:  # appended garbage
            yield "append", bytes(b) + rng.bytes(int(rng.integers(1, 200)))
        elif kind == 3:  # payload garbage behind valid checksums
            t = int(rng.integers(0, n))
            flags = bytes([int(rng.integers(0, 4))])
            yield "payload", with_payload(base, t, flags + rng.bytes(int(rng.integers(0, 400))))
        else:  # payload bit flips behind valid checksums
            t = int(rng.integers(0, n))
            p = bytearray(base_payloads[t])
            if p:
                p[int(rng.integers(0, len(p)))] ^= 1 << int(rng.integers(0, 8))
            yield "payload-flip", with_payload(base, t, bytes(p))
        i += 1


def run_fuzz(model, base: bytes, count: int, seed: int) -> collections.Counter:
    rng = np.random.default_rng(seed)
    outcomes: collections.Counter = collections.Counter()
    for kind, data in mutations(base, rng, count):
        t = time.perf_counter()
        try:
            out, h = sarcodec.decode_array(data, model=model)
            assert out.shape == (h.bands, h.height, h.width)
            outcomes[(kind, "decoded")] += 1
        except CLEAN as e:
            assert str(e), "an error must say what is wrong"
            outcomes[(kind, "rejected")] += 1
        dt = time.perf_counter() - t
        assert dt < 10, f"{kind} took {dt:.1f} s"
    return outcomes


@pytest.fixture(scope="module")
def base(model, s1_array):
    v = s1_array[0, :150, :200].copy()
    v[:20, :] = 0
    return sarcodec.encode_array(v, 3, nodata=0, tile=64, model=model)


def report(outcomes: collections.Counter) -> str:
    total = sum(outcomes.values())
    lines = [f"fuzz: {total} cases"] + [f"  {k[0]:>13} {k[1]:>9}: {v}" for k, v in sorted(outcomes.items())]
    return "\n".join(lines)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_fuzz_fast(model, base):
    before = peak_rss_mb()
    outcomes = run_fuzz(model, base, 1000, seed=2026)
    print(report(outcomes))
    # no mutation may make the decoder allocate out of proportion to a 10 kB file
    assert peak_rss_mb() - before < 300
    assert sum(outcomes.values()) >= 1000
    assert outcomes[("bitflip", "rejected")] > 0 and outcomes[("truncate", "rejected")] > 0


@pytest.mark.slow
def test_fuzz_soak(model, base):
    outcomes = run_fuzz(model, base, 20000, seed=7)
    print(report(outcomes))
