"""The ``.sarc`` container, version 7 (reads 1.x-6.x too): written and read only here.

Byte layout of format 7 (integers little-endian; "varint" is unsigned LEB128, 7 bits a byte, low
group first, in its shortest form)::

    offset      size   field
    0           4      magic  b"SARC"
    4           1      major format version (7); readers refuse majors they do not know
    5           1      minor format version (1); additive changes only
    6           varint L = header length in bytes (at most 16 MiB)
    .           L      header: the binary core below, then (if anything is left of the L bytes) the
                       other fields of ``Header`` as a UTF-8 JSON object (at most 16 MiB inflated)
                       in a raw DEFLATE stream (RFC 1951) with the preset dictionary ``HEADER_DICT_4``
    .           8*N-8  tile table, one record per band-tile in order (band, tile row, tile col) but
                       the last, N = bands * tiles_y * tiles_x as the header gives them:
                         u32 payload length in bytes
                         u32 CRC-32 of the payload
    .           4      CRC-32 of every byte before it (magic to the end of the table) followed by
                       the last tile's payload (which runs from the end of the others to the end
                       of the file)
    .           ...    tile payloads, back to back in table order; the file ends with the last one

A reader checks that CRC, and so the last payload, when it opens the file: a truncated file, or one
with bytes appended, is refused before any tile is used.

The header's binary core ("number": a float stored bit-exactly by ``number_bytes``: one tag byte t,
then for t < 254 a zigzag varint m and the value is m * 10**(t - 127), the float's shortest decimal
form; t = 254 is 0.0; t = 255 is followed by the float64)::

    varint width, varint height, varint bands
    u8     bits 0-3 dtype, index into DTYPES; bits 4-7 quality - 1
    varint tile size / 64
    varint model: k > 0 is MODEL_TABLE[k - 1]; 0: varint length, UTF-8 name, 8-byte id follow
    u8     flags: 1 nodata, 2 transform, 4 CRS as an EPSG code, 8 encoder version (formats 6 and 7)
    [number nodata] [varint EPSG code] [6 numbers: the affine transform a, b, c, d, e, f]
    per band, its mapping (``sarcodec.preprocess.BandMapping``): u8 bits 0-1 domain (``DOMAINS``),
           bit 2 factor 20, bit 3 factor follows (else 10), bit 4 floor follows (else 0),
           bit 5 (6.1) lo and hi in hundredths: zigzag varint 100 lo, varint 100 (hi - lo) (else
           numbers lo, hi); then numbers [factor], [floor]
    [varint 10000 X + 100 Y + Z: the encoder "sarcodec X.Y.Z" (X < 1024, Y and Z < 100); the writer
           puts it here or in the JSON part, whichever makes the header shorter]

The JSON part holds what the core does not (``EXTRA_FIELDS``: a CRS that is not a plain EPSG code, GCPs,
band descriptions, units, tags, scales and offsets, an encoder version of another form) and leaves
out fields at their default value.  For the small chips of SAR machine-learning datasets this matters:
everything but the coded data of a georeferenced 256 x 256 float32 CNNSpeckleFilter chip (with a band
description and a tag) is 81 bytes in format 7, 87 in 6.1, 91 in 6.0 and 96 in format 5 (header 70
in 7, 72 in 6.1, 75 in 6.0 and 5, of which 38 are its affine transform), 107 in format 4 (header 86),
127 in format 3; the header of a chip without georeferencing, descriptions or tags is 18 bytes in
format 7, 21 in 6.1, 24 in 6.0, 27 in format 5, 40 in format 4.

Formats 1-6 (still read): 1.0 first release; 1.1 header fields at their default value may be left
out; 2.0 header deflated with the preset dictionary ``HEADER_DICT``; 3.0 tile flag 4, a trimmed
final range-coder word; 4.0 the layout above, 20 bytes less for a one-tile file, with the whole
header as deflated JSON (``HEADER_DICT_4``, which knows the newer models, ~16 bytes less); 4.1 the
float64 dtype, and models shipped after 4.0 named without their id, see ``MODELS``; 4.2 tile flag 8,
exact pixels; 5.0 the binary header core (without flag 8: the encoder version in the JSON part)
and, before the tile table, varint N, with a length in every record, the last too; 6.0 (this
layout, but the last record holds the last payload's u32 CRC-32, which the reader checks when it
opens the file, and the closing CRC covers the bytes before it alone; in the core, dtype and
quality in a byte each, the encoder version as 3 varints X, Y, Z) without mapping bit 5: lo and hi
always as numbers (its encoder rounded dB levels to 0.001 dB); 6.1 with mapping bit 5 (the encoder
rounds them to 0.01 dB); 7.0 (this layout) without tile flag 16.  Formats 1-3
have a fixed 16-byte prelude -- magic, major, minor, u16 reserved, u32 L, u32 CRC-32 of the
header -- then the header (1.x: a zlib stream; 2.x and 3.x: raw DEFLATE with
``HEADER_DICT``), u32 N, N records of u64 payload offset from the start of the file, u32 length and
u32 CRC-32, and a CRC-32 of the count and the records; the payloads are the same in every format, at
the offsets given (format 2 has no flag 4, formats 1-4.1 no flag 8, formats 1-7.0 no flag 16).

Tile payload (one band, one tile of ``tile`` x ``tile`` pixels, smaller at the right/bottom)::

    0    1   flags: bit 0 = mask present, bit 1 = empty (every pixel masked, no latent),
             bit 2 = trimmed (format 3 and up: the latent's length is not a multiple of 4, its final word
             keeps only its 1-3 high-order bytes; see ``sarcodec.entropy``),
             bit 3 = exact pixels present (format 4.2 and up),
             bit 4 = first coded scale group follows (format 7.1 and up)
    .    1   (if bit 4) the first scale-index group the latent codes, 0..64, instead of the model's
             default at the file's quality (``ModelConfig.first_coded_group``): latents with a smaller
             scale index are not coded (they decode to their mean).  The encoder's choice per tile
             (``sarcodec.rdoq.choose_group``); absent when it is the default
    .    4   (if mask present) M = length of the zlib-compressed mask (u32)
    .    M   (if mask present) zlib stream of uint8 classes, one per pixel of the tile (row-major):
               0 = coded pixel, 1 = nodata / NaN, 2 = exact zero (log domain)
    .    4   (if exact pixels) E = length of their zlib stream (u32)
    .    E   (if exact pixels) zlib stream of: varint K (1 <= K <= pixels of the tile), K varints: the
               row-major index of the first coded pixel stored verbatim, then for each next one the
               gap to the previous index less 1, then K values in the header's dtype (little-endian).
               The decoder sets these pixels to these values after the synthesis; the encoder stores
               every coded pixel whose normalised value lies outside the range the decoder
               reproduces (bright point targets far above the band's percentiles)
    ...      (unless empty) range-coder words of the latent (u32 little-endian, the last one
             possibly trimmed; see
             ``sarcodec.entropy``); z has shape (hyper channels, ceil(ceil(th/s)/4), ceil(ceil(tw/s)/4)),
             s being the model's latent stride (16 for the default model, 8 for the fast preset)

Header fields: see ``Header``.  In the JSON of formats 1-4 (and format 5's JSON part) floats are
written with Python's shortest round-trip repr, so they are bit-exact, NaN nodata as the string "nan";
CRSs are "EPSG:n" when that code reproduces them exactly, WKT otherwise.
"""
from __future__ import annotations

import decimal
import json
import math
import struct
import zlib
from dataclasses import asdict, dataclass, field

MAGIC = b"SARC"
MAJOR = 7  # the version this writes
MINOR = 1  # additive changes only: an older 7.x reader refuses only files that use them (7.1: tile flag 16)
READS = (1, 2, 3, 4, 5, 6, 7)  # majors this reader understands
MAX_HEADER = 16 * 2**20
MAX_DIM = 2**24
MAX_BANDS = 4096
DTYPES = ("uint8", "uint16", "int16", "float32", "float64")
FLAG_MASK = 1
FLAG_EMPTY = 2
FLAG_TRIMMED = 4
FLAG_EXACT = 8
FLAG_GROUP = 16
MAX_GROUP = 64  # sarcodec.entropy.NUM_SCALES: a tile that codes from group 64 codes no latent

# Preset dictionary for the format-2 and format-3 header: strings that headers are made of (field names, common
# values, the shipped models' names and ids), the likeliest last.  Small files gain most: the header
# of a georeferenced 256 x 256 float32 image deflates to about 85 bytes with it, 295 without.
# Frozen: changing one byte makes every format-2 file unreadable (tests/test_format.py pins its CRC).
HEADER_DICT = b"".join([
    b'"gcps":[[', b'"gcp_crs":"EPSG:4326"', b'"band_tags":[{', b'"units":["dB"', b'"linear"', b'"scales":[1.0',
    b'"offsets":[0.0', b'"EPSG:3857"', b'"EPSG:326', b'"EPSG:327', b'"EPSG:3395"',
    b'"SCALING":"', b'"SOURCE_PRODUCT":"S1A_IW_GRDH_1SDV_', b'"SENSOR":"Sentinel-1A IW GRDH"', b'"UNITS":"',
    b'"sigma0"', b'"amplitude"', b'"intensity"', b'"HH","HV"]', b'"nodata":"nan"', b'"nodata":0.0,',
    b'"model_id":"619631bbd2271e85","model_name":"sarcodec-fast1"',
    b'"model_id":"667cb43bfc62b4d1","model_name":"sarcodec-fast2"',
    b'"model_id":"ef93758569f14fc4","model_name":"sarcodec-hp1"',
    b'"model_id":"2c638ef49afc9b8c","model_name":"sarcodec-hp2"',
    b'"model_id":"b5a8647aacb153e7","model_name":"sarcodec-fast3"',
    b'"model_id":"36df587d9f8ae423","model_name":"sarcodec-hp3"',
    b'"model_id":"2a1d1a0a53ba7f50","model_name":"sarcodec-hp4"',
    b'"dtype":"uint16"', b'"dtype":"int16"', b'"dtype":"uint8"',
    b'{"domain":"db","hi":0.0,"lo":-30.0}', b'{"domain":"identity","hi":255.0,"lo":0.0}',
    b'{"domain":"log","factor":20.0,"floor":1.0,"hi":60.0,"lo":20.0}',
    b'"tags":{"AREA_OR_POINT":"Point"}', b',"tile":1024,"transform":[10.0,0.0,', b',0.0,-10.0,',
    b'{"bands":1,"crs":"EPSG:4326","descriptions":["VV","VH"],"dtype":"float32","encoder":"sarcodec 0.1.0",'
    b'"height":256,"mappings":[{"domain":"log","floor":0.001,"hi":-5.0,"lo":-25.0}],"model_id":"",'
    b'"model_name":"sarcodec-","quality":1,"tags":{"AREA_OR_POINT":"Area"},"tile":1024,'
    b'"transform":[0.0001,0.0,-4.0,0.0,-8.9e-05,40.0],"width":256}',
])

# Format 4's dictionary: format 2's, then the models shipped since (the default preset's last, as the
# likeliest).  Frozen like HEADER_DICT (tests/test_format.py pins its CRC); a later format may extend it.
HEADER_DICT_4 = HEADER_DICT + b"".join([
    b'"model_id":"3cf62014ef3d9efa","model_name":"sarcodec-fast4"',
    b'"model_id":"820c026f3418d9d0","model_name":"sarcodec-hp5"',
    b'"model_id":"cb2c3ab70bf35788","model_name":"sarcodec-hp6"',
    b'"model_id":"99850ef515f0b5ca","model_name":"sarcodec-fast5"',
    b'"model_id":"a06d44491c279b30","model_name":"sarcodec-hp7s1"',
    b'"model_id":"98b41c1a6075dcd6","model_name":"sarcodec-hp7"',
    b'"model_id":"9f7c575ec8063de5","model_name":"sarcodec-hp7s2"',
])


# Every shipped model (name, id) in the order of release: a format-5 header names its model by its
# position here plus 1, in one byte (0: name and id follow in full).  Append only; tests pin it.
MODEL_TABLE = (
    ("sarcodec-fast1", "619631bbd2271e85"), ("sarcodec-fast2", "667cb43bfc62b4d1"), ("sarcodec-hp1", "ef93758569f14fc4"),
    ("sarcodec-hp2", "2c638ef49afc9b8c"), ("sarcodec-fast3", "b5a8647aacb153e7"), ("sarcodec-hp3", "36df587d9f8ae423"),
    ("sarcodec-hp4", "2a1d1a0a53ba7f50"), ("sarcodec-fast4", "3cf62014ef3d9efa"), ("sarcodec-hp5", "820c026f3418d9d0"),
    ("sarcodec-hp6", "cb2c3ab70bf35788"), ("sarcodec-fast5", "99850ef515f0b5ca"), ("sarcodec-hp7s1", "a06d44491c279b30"),
    ("sarcodec-hp7", "98b41c1a6075dcd6"), ("sarcodec-hp7s2", "9f7c575ec8063de5"), ("sarcodec-hp7s3", "8bc0a66834b2485f"),
    ("sarcodec-hp7s4", "33165a8f996df7b5"), ("sarcodec-hp7l", "964cb7c3393353bb"),
    ("sarcodec-hp7d", "9f48a4ac8cd16ad6"), ("sarcodec-hp7e", "a1dc61a6be3030b3"), ("sarcodec-hp7f", "780d9ea9c2dc9271"),
    ("sarcodec-hp7g", "7a1e9bb76248992b"), ("sarcodec-hp7h", "b0b795853a3d3295"),
    ("sarcodec-hp7i", "e78347024e0f1513"), ("sarcodec-hp7j", "766666b6d953ddac"),
)
MODEL_INDEX = {m: i + 1 for i, m in enumerate(MODEL_TABLE)}

# The shipped models that HEADER_DICT_4 does not know (those after hp7s2; model name -> id).  A
# format-4.1 header names these by name alone and the reader takes the id from here: ~4 deflated
# bytes instead of the ~17 that a 16-digit id the dictionary has never seen costs.
MODELS = dict(MODEL_TABLE[MODEL_INDEX[("sarcodec-hp7s2", "9f7c575ec8063de5")] :])

# The binary header core (formats 5-7): flags, band mapping bits, the fields it leaves to the JSON part.
CORE_NODATA, CORE_TRANSFORM, CORE_EPSG, CORE_ENCODER = 1, 2, 4, 8
DOMAINS = ("identity", "log", "db")  # mapping bits 0-1
MAP_FACTOR20, MAP_FACTOR, MAP_FLOOR, MAP_CENTI = 4, 8, 16, 32
NUMBER_MAX = 2**49  # zigzag mantissas from here on: the float64 is as short
EXTRA_FIELDS = ("crs", "gcps", "gcp_crs", "descriptions", "tags", "band_tags", "units", "scales", "offsets", "encoder")


def header_dict(major: int) -> bytes:
    return HEADER_DICT_4 if major >= 4 else HEADER_DICT


class FormatError(ValueError):
    """The file is not a valid .sarc file; the message says what is wrong."""


class TileLayout:
    """Tile counts of a ``height`` x ``width`` raster cut into ``tile`` x ``tile`` tiles (last ones partial)."""

    height: int
    width: int
    tile: int

    @property
    def tiles_y(self) -> int:
        return -(-self.height // self.tile)

    @property
    def tiles_x(self) -> int:
        return -(-self.width // self.tile)


@dataclass
class Header(TileLayout):
    width: int
    height: int
    bands: int
    dtype: str
    tile: int
    quality: int
    model_id: str
    model_name: str
    mappings: list[dict]  # per band: sarcodec.preprocess.BandMapping.to_dict()
    nodata: float | None = None
    crs: str | None = None  # WKT
    transform: list[float] | None = None  # affine a, b, c, d, e, f
    gcps: list[list] = field(default_factory=list)  # [id, info, row, col, x, y, z]
    gcp_crs: str | None = None
    descriptions: list[str | None] = field(default_factory=list)
    tags: dict = field(default_factory=dict)
    band_tags: list[dict] = field(default_factory=list)
    units: list[str | None] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    offsets: list[float] = field(default_factory=list)
    encoder: str = ""

    @property
    def n_tiles(self) -> int:
        return self.bands * self.tiles_y * self.tiles_x

    def tile_index(self, band: int, ty: int, tx: int) -> int:
        return (band * self.tiles_y + ty) * self.tiles_x + tx

    def stored_fields(self) -> dict:
        """The fields a file stores: those at their default value (no nodata, GCPs, tags, ...) left out."""
        d = asdict(self)
        if d["nodata"] is not None and math.isnan(d["nodata"]):
            d["nodata"] = "nan"
        defaults = {"nodata": None, "crs": None, "transform": None, "gcp_crs": None, "encoder": ""}
        for k, v in list(d.items()):
            if (k in defaults and v == defaults[k]) or (k in ("gcps", "tags") and not v):
                del d[k]
            elif k in ("descriptions", "units", "band_tags") and not any(v):
                del d[k]
            elif (k == "scales" and all(x == 1.0 for x in v)) or (k == "offsets" and all(x == 0.0 for x in v)):
                del d[k]
        return d

    def to_bytes(self, major: int | None = None) -> bytes:
        """The header as format ``major`` stores it (default: the version this writes): from 5.0 the
        binary core, then the other fields as JSON deflated with ``HEADER_DICT_4`` (nothing if none);
        in 4.x all of it as deflated JSON (kept so that tests can write such files)."""
        major = MAJOR if major is None else major
        d = self.stored_fields()
        if major >= 5:  # formats 6 and 7: the encoder version in the core or the JSON part, whichever is shorter
            forms = []
            for in_core in (True, False) if major >= 6 else (False,):
                core, held = core_bytes(self, major, in_core)
                extras = {k: v for k, v in d.items() if k in EXTRA_FIELDS and k not in held}
                forms.append(core + (deflate_header(json_bytes(extras), major) if extras else b""))
            return min(forms, key=len)
        if MODELS.get(self.model_name) == self.model_id:
            del d["model_id"]
        return deflate_header(json_bytes(d), major)

    @classmethod
    def from_bytes(cls, stored: bytes, major: int = MAJOR) -> "Header":
        if major >= 5:
            d, pos = read_core(stored, major)
            extras = json_object(inflate_header(stored[pos:], major)) if pos < len(stored) else {}
            d.update((k, v) for k, v in extras.items() if k in EXTRA_FIELDS and k not in d)
        else:
            d = json_object(inflate_header(stored, major))
            if d.get("nodata") == "nan":
                d["nodata"] = float("nan")
            if "model_id" not in d and isinstance(d.get("model_name"), str):
                if d["model_name"] not in MODELS:
                    raise FormatError(f"header names model {d['model_name']!r} without its id, and this sarcodec does not "
                                      "know that model (a newer sarcodec wrote the file)")
                d["model_id"] = MODELS[d["model_name"]]
        names = cls.__dataclass_fields__
        missing = [k for k in ("width", "height", "bands", "dtype", "tile", "quality", "model_id", "mappings") if k not in d]
        if missing:
            raise FormatError(f"header lacks field(s): {', '.join(missing)}")
        try:
            h = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise FormatError(f"header fields malformed: {e}") from None
        h.validate()
        return h

    def validate(self) -> None:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        for k in ("width", "height"):
            v = getattr(self, k)
            if not is_int(v) or not 1 <= v <= MAX_DIM:
                raise FormatError(f"header field {k}={v!r} out of range 1..{MAX_DIM}")
        if not is_int(self.bands) or not 1 <= self.bands <= MAX_BANDS:
            raise FormatError(f"header field bands={self.bands!r} out of range 1..{MAX_BANDS}")
        if self.dtype not in DTYPES:
            raise FormatError(f"header dtype {self.dtype!r} not supported")
        if not is_int(self.tile) or self.tile % 64 or not 64 <= self.tile <= 8192:
            raise FormatError(f"header tile size {self.tile!r} invalid")
        if not is_int(self.quality) or not 1 <= self.quality <= 8:
            raise FormatError(f"header quality {self.quality!r} out of range 1..8")
        if not isinstance(self.model_id, str) or len(self.model_id) != 16:
            raise FormatError("header model id malformed")
        if not isinstance(self.mappings, list) or len(self.mappings) != self.bands or not all(isinstance(m, dict) for m in self.mappings):
            raise FormatError("header preprocessing parameters do not match the band count")
        if self.nodata is not None and not isinstance(self.nodata, (int, float)):
            raise FormatError("header nodata malformed")
        if self.transform is not None and (not isinstance(self.transform, list) or len(self.transform) != 6):
            raise FormatError("header transform malformed")
        if not isinstance(self.gcps, list) or not isinstance(self.tags, dict):
            raise FormatError("header georeferencing malformed")


def deflate_header(text: bytes, major: int = MAJOR) -> bytes:
    """Header JSON as stored in format ``major`` (2 and up): raw DEFLATE with ``header_dict(major)``."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, zdict=header_dict(major))
    return c.compress(text) + c.flush()


def inflate_header(stored: bytes, major: int = MAJOR) -> bytes:
    """Header JSON from its stored form in format ``major`` (1: zlib; 2 and up: raw DEFLATE + dictionary)."""
    inflater = zlib.decompressobj(15) if major == 1 else zlib.decompressobj(-15, zdict=header_dict(major))
    try:
        raw = inflater.decompress(stored, MAX_HEADER + 1)
    except zlib.error:
        raise FormatError("header is not a valid DEFLATE stream") from None
    if len(raw) > MAX_HEADER or not inflater.eof:
        raise FormatError("header is truncated or inflates beyond 16 MiB")
    return raw


def json_bytes(d: dict) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def json_object(raw: bytes) -> dict:
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"header is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(d, dict):
        raise FormatError("header is not a JSON object")
    return d


def zigzag(m: int) -> int:
    """A signed integer as the unsigned one a varint stores: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ..."""
    return 2 * m if m >= 0 else -2 * m - 1


def unzigzag(z: int) -> int:
    """Inverse of ``zigzag``."""
    return z >> 1 if not z & 1 else -((z + 1) >> 1)


def number_bytes(x: float) -> bytes:
    """A float, bit-exact, in as few bytes as its shortest decimal form allows: u8 tag t < 254 and a
    zigzag varint m, value m * 10**(t - 127); t = 254: 0.0; t = 255: the float64 (little-endian) follows."""
    x = float(x)
    if x == 0.0 and math.copysign(1.0, x) > 0:
        return bytes([254])
    if math.isfinite(x) and x != 0.0:  # -0.0 and non-finite values: the float64
        sign, digits, exp = decimal.Decimal(repr(x)).normalize().as_tuple()
        m = int("".join(map(str, digits))) * (-1 if sign else 1)
        z = zigzag(m)
        if isinstance(exp, int) and -127 <= exp <= 126 and z < NUMBER_MAX and float(f"{m}e{exp}") == x:
            return bytes([exp + 127]) + varint(z)
    return bytes([255]) + struct.pack("<d", x)


def read_number(buf: bytes, pos: int, what: str) -> tuple[float, int]:
    """Inverse of ``number_bytes``: (value, position after it)."""
    if pos >= len(buf) or (buf[pos] == 255 and pos + 9 > len(buf)):
        raise FormatError(f"truncated header ({what})")
    if buf[pos] >= 254:
        return (0.0, pos + 1) if buf[pos] == 254 else (struct.unpack_from("<d", buf, pos + 1)[0], pos + 9)
    z, end = read_varint(buf, pos + 1, f"header {what}", NUMBER_MAX - 1, width=7)
    return float(f"{unzigzag(z)}e{buf[pos] - 127}"), end


def _epsg(crs: str | None) -> int | None:
    """n for a CRS stored as "EPSG:n" (n without leading zeros), else None."""
    if crs and crs.startswith("EPSG:") and crs[5:].isdigit() and crs[5:] == str(int(crs[5:])) and int(crs[5:]) < 2**31:
        return int(crs[5:])
    return None


def _encoder_version(encoder: str, major: int = MAJOR) -> tuple[int, int, int] | None:
    """(X, Y, Z) of "sarcodec X.Y.Z" (plain decimal numbers; from format 7 X < 1024 and Y, Z < 100, as
    one varint 10000 X + 100 Y + Z), else None."""
    parts = encoder.removeprefix("sarcodec ").split(".") if encoder.startswith("sarcodec ") else []
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() and p == str(int(p)) and int(p) < 2**20 for p in parts):
        return None
    x, y, z = map(int, parts)
    if major >= 7 and not (x < 1024 and y < 100 and z < 100):
        return None
    return x, y, z


def _centi_bytes(lo: float, hi: float) -> bytes | None:
    """lo and hi as format 6.1 stores them when both are whole hundredths (``fit_mapping`` rounds
    dB levels to 0.01 dB): zigzag varint 100 lo, varint 100 (hi - lo); else None."""
    if not all(math.isfinite(v) and abs(v) < 1e12 for v in (lo, hi)):  # 100 * 1e12 < NUMBER_MAX / 2
        return None
    k, k_hi = round(lo * 100), round(hi * 100)
    if k_hi <= k or (repr(float(f"{k}e-2")), repr(float(f"{k_hi}e-2"))) != (repr(lo), repr(hi)):  # -0.0 too
        return None
    return varint(zigzag(k)) + varint(k_hi - k)


def core_bytes(h: Header, major: int = MAJOR, encoder: bool = True) -> tuple[bytes, set[str]]:
    """The binary core of ``h`` as format ``major`` (5-7) stores it (see the module docstring), and
    the fields of ``EXTRA_FIELDS`` it holds; ``encoder``: with the encoder version if it has the form
    "sarcodec X.Y.Z" (formats 6 and 7)."""
    if h.tile % 64 or h.dtype not in DTYPES:
        raise ValueError("header tile size or dtype cannot be stored")
    model = MODEL_INDEX.get((h.model_name, h.model_id), 0)
    dtype = DTYPES.index(h.dtype) | ((h.quality - 1) << 4 if major >= 7 else 0)  # 7: quality in the dtype's byte
    out = [varint(h.width), varint(h.height), varint(h.bands), bytes([dtype]), varint(h.tile // 64),
           *([] if major >= 7 else [bytes([h.quality])]), varint(model)]
    if not model:
        name = h.model_name.encode()
        out += [varint(len(name)), name, bytes.fromhex(h.model_id)]
    epsg = _epsg(h.crs)
    version = _encoder_version(h.encoder, major) if encoder and major >= 6 else None
    out.append(bytes([(CORE_NODATA if h.nodata is not None else 0) | (CORE_TRANSFORM if h.transform is not None else 0)
                      | (CORE_EPSG if epsg is not None else 0) | (CORE_ENCODER if version is not None else 0)]))
    if h.nodata is not None:
        out.append(number_bytes(h.nodata))
    if epsg is not None:
        out.append(varint(epsg))
    if h.transform is not None:
        out += [number_bytes(v) for v in h.transform]
    for m in h.mappings:
        if set(m) - {"domain", "lo", "hi", "factor", "floor"} or m["domain"] not in DOMAINS:
            raise ValueError(f"band mapping {m} cannot be stored")
        factor, floor = m.get("factor", 10.0), m.get("floor", 0.0)
        lo_hi = number_bytes(m["lo"]) + number_bytes(m["hi"])
        centi = _centi_bytes(m["lo"], m["hi"]) if major >= 6 else None
        centi = centi if centi is not None and len(centi) < len(lo_hi) else None
        out.append(bytes([DOMAINS.index(m["domain"]) | (MAP_FACTOR20 if factor == 20.0 else MAP_FACTOR if factor != 10.0 else 0)
                          | (MAP_FLOOR if floor != 0.0 else 0) | (MAP_CENTI if centi is not None else 0)]))
        out.append(centi if centi is not None else lo_hi)
        out += [number_bytes(factor)] if factor not in (10.0, 20.0) else []
        out += [number_bytes(floor)] if floor != 0.0 else []
    if version is not None:
        out += [varint(10000 * version[0] + 100 * version[1] + version[2])] if major >= 7 else [varint(v) for v in version]
    return b"".join(out), {k for k, held in (("crs", epsg is not None), ("encoder", version is not None)) if held}


def _read_byte(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    if pos >= len(buf):
        raise FormatError(f"truncated header ({what})")
    return buf[pos], pos + 1


def read_core(buf: bytes, major: int = MAJOR) -> tuple[dict, int]:
    """Inverse of ``core_bytes``: (the fields it holds, position after it); FormatError if invalid."""
    d: dict = {}
    pos = 0
    for k, limit in (("width", MAX_DIM), ("height", MAX_DIM), ("bands", MAX_BANDS)):
        d[k], pos = read_varint(buf, pos, f"header {k}", limit)
    dtype, pos = _read_byte(buf, pos, "dtype")
    if major >= 7:  # bits 0-3 dtype, 4-7 quality - 1
        dtype, d["quality"] = dtype & 15, (dtype >> 4) + 1
    if dtype >= len(DTYPES):
        raise FormatError(f"header dtype code {dtype} unknown")
    d["dtype"] = DTYPES[dtype]
    tile, pos = read_varint(buf, pos, "header tile size", 128)
    d["tile"] = 64 * tile
    if major < 7:
        d["quality"], pos = _read_byte(buf, pos, "quality")
    model, pos = read_varint(buf, pos, "header model number", 2**20)
    if model > len(MODEL_TABLE):
        raise FormatError(f"header names model number {model}, which this sarcodec does not know (a newer sarcodec "
                          "wrote the file)")
    if model:
        d["model_name"], d["model_id"] = MODEL_TABLE[model - 1]
    else:
        n, pos = read_varint(buf, pos, "header model name length", 1024)
        if pos + n + 8 > len(buf):
            raise FormatError("truncated header (model)")
        try:
            d["model_name"] = buf[pos : pos + n].decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("header model name is not UTF-8") from None
        d["model_id"], pos = buf[pos + n : pos + n + 8].hex(), pos + n + 8
    flags, pos = _read_byte(buf, pos, "flags")
    if flags & ~(CORE_NODATA | CORE_TRANSFORM | CORE_EPSG | (CORE_ENCODER if major >= 6 else 0)):
        raise FormatError("unknown header flags")
    if flags & CORE_NODATA:
        d["nodata"], pos = read_number(buf, pos, "nodata")
    if flags & CORE_EPSG:
        epsg, pos = read_varint(buf, pos, "header EPSG code", 2**31 - 1)
        d["crs"] = f"EPSG:{epsg}"
    if flags & CORE_TRANSFORM:
        d["transform"] = []
        for _ in range(6):
            v, pos = read_number(buf, pos, "transform")
            d["transform"].append(v)
    d["mappings"] = []
    known = 3 | MAP_FACTOR20 | MAP_FACTOR | MAP_FLOOR | (MAP_CENTI if major >= 6 else 0)
    for _ in range(d["bands"]):
        bits, pos = _read_byte(buf, pos, "band mapping")
        if bits & ~known or (bits & 3) >= len(DOMAINS) or bits & MAP_FACTOR20 and bits & MAP_FACTOR:
            raise FormatError("header band mapping malformed")
        m = {"domain": DOMAINS[bits & 3]}
        if bits & MAP_CENTI:
            z, pos = read_varint(buf, pos, "header band mapping", NUMBER_MAX - 1, width=7)
            span, pos = read_varint(buf, pos, "header band mapping", NUMBER_MAX - 1, width=7)
            if span < 1:
                raise FormatError("header band mapping malformed")
            k = unzigzag(z)
            m["lo"], m["hi"] = float(f"{k}e-2"), float(f"{k + span}e-2")
        else:
            m["lo"], pos = read_number(buf, pos, "band mapping")
            m["hi"], pos = read_number(buf, pos, "band mapping")
        if bits & MAP_FACTOR20:
            m["factor"] = 20.0
        elif bits & MAP_FACTOR:
            m["factor"], pos = read_number(buf, pos, "band mapping")
        if bits & MAP_FLOOR:
            m["floor"], pos = read_number(buf, pos, "band mapping")
        d["mappings"].append(m)
    if flags & CORE_ENCODER and major >= 7:
        v, pos = read_varint(buf, pos, "header encoder version", 1024 * 10000 - 1)
        d["encoder"] = f"sarcodec {v // 10000}.{v // 100 % 100}.{v % 100}"
    elif flags & CORE_ENCODER:
        version = []
        for _ in range(3):
            v, pos = read_varint(buf, pos, "header encoder version", 2**20 - 1)
            version.append(v)
        d["encoder"] = "sarcodec " + ".".join(map(str, version))
    return d, pos


@dataclass
class TileEntry:
    offset: int
    length: int
    crc: int


def varint(n: int) -> bytes:
    """Unsigned LEB128."""
    if n < 0:
        raise ValueError(f"varint of a negative number ({n})")
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def read_varint(buf: bytes, pos: int, what: str, limit: int, width: int = 5) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``: at most ``limit`` and ``width`` bytes, in its
    shortest form."""
    value = shift = 0
    for i in range(pos, min(len(buf), pos + width)):
        value |= (buf[i] & 0x7F) << shift
        shift += 7
        if not buf[i] & 0x80:
            if value > limit or (i > pos and buf[i] == 0):
                raise FormatError(f"{what} out of range")
            return value, i + 1
    raise FormatError(f"truncated file ({what})" if pos + width > len(buf) else f"{what} out of range")


def head_bytes(hj: bytes, n_tiles: int) -> bytes:
    """Formats 4-7 up to the tile table: magic, version, header length, header (4 and 5: record count)."""
    if len(hj) > MAX_HEADER:
        raise FormatError("header too large")
    return MAGIC + bytes([MAJOR, MINOR]) + varint(len(hj)) + hj + (varint(n_tiles) if MAJOR < 6 else b"")


def table_bytes(head: bytes, entries: list[TileEntry], last: bytes = b"") -> bytes:
    """The tile table of formats 4-7 and the CRC-32 that closes it: over ``head`` and the table, and
    in format 7 over ``last``, the last tile's payload, too (its record is left out)."""
    body = b"".join(struct.pack("<II", e.length, e.crc) for e in entries)
    if MAJOR >= 7:
        body = body[:-8]
        return body + struct.pack("<I", zlib.crc32(last, zlib.crc32(body, zlib.crc32(head))))
    if MAJOR >= 6:  # the last payload's length is the rest of the file
        body = body[: -8] + body[-4:]
    return body + struct.pack("<I", zlib.crc32(body, zlib.crc32(head)))


def table_size(n_tiles: int) -> int:
    """Bytes of ``table_bytes`` for ``n_tiles`` records."""
    return 8 * n_tiles + (-4 if MAJOR >= 7 else 0 if MAJOR >= 6 else 4)


def pack(header: Header, payloads: list[bytes]) -> bytes:
    """Serialise a whole file (in-memory variant of ``Writer``)."""
    head = head_bytes(header.to_bytes(), len(payloads))
    entries = [TileEntry(0, len(p), zlib.crc32(p)) for p in payloads]
    return b"".join([head, table_bytes(head, entries, payloads[-1]), *payloads])


class Reader:
    """Random access to a ``.sarc`` file object: validates everything before any tile is used."""

    def __init__(self, f, size: int) -> None:
        self.f = f
        self.size = size
        head = self._read(0, 6, "file header")
        if head[:4] != MAGIC:
            raise FormatError("not a .sarc file (bad magic)")
        major, minor = head[4], head[5]
        if major not in READS:
            raise FormatError(f"unsupported .sarc format version {major}.{minor} (this sarcodec reads "
                              f"{' and '.join(f'{m}.x' for m in READS)})")
        self.version = (major, minor)
        try:
            if major >= 4:
                self.header, self.entries = self._layout_4()
            else:
                self.header, self.entries = self._layout_1_3(major)
        except FormatError as e:
            if major == MAJOR and minor > MINOR:  # what a newer minor version adds is what this reader lacks
                raise FormatError(f"{e}; the file is format {major}.{minor}, newer than this sarcodec "
                                  f"({MAJOR}.{MINOR}): update sarcodec") from None
            raise

    def _layout_4(self) -> tuple[Header, list[TileEntry]]:
        """Formats 4-7: varint header length, header, (4, 5: varint record count,) table, its CRC."""
        major = self.version[0]
        first = self._read(0, min(self.size, 6 + 5), "file header")
        hlen, pos = read_varint(first, 6, "header length", MAX_HEADER)
        if pos + hlen > self.size:
            raise FormatError("truncated file (header)")
        head = self._read(0, min(self.size, pos + hlen + 5), "header")
        hj = head[pos : pos + hlen]
        if major >= 6:  # the header gives the record count; it is checked by the CRC below
            header = Header.from_bytes(hj, major)
            n, tstart, tlen = header.n_tiles, pos + hlen, 8 * header.n_tiles
            if tstart + tlen > self.size:
                raise FormatError("truncated or corrupt file (the tile table its header implies does not fit)")
        else:
            n, tstart = read_varint(head, pos + hlen, "tile count", (self.size - pos - hlen) // 8)
            tlen = 8 * n + 4
        if major >= 7:  # no record for the last tile
            tlen -= 4
        table = self._read(tstart, tlen, "tile table")
        running = zlib.crc32(table[:-4], zlib.crc32(head[:tstart]))
        if major < 7 and running != struct.unpack_from("<I", table, tlen - 4)[0]:
            raise FormatError("header or tile table checksum mismatch (file corrupt)")
        if major < 6:
            header = Header.from_bytes(hj, major)
            if n != header.n_tiles:
                raise FormatError(f"tile table has {n} entries, header implies {header.n_tiles}")
        entries, off = [], tstart + tlen
        for i in range(n):
            if major >= 6 and i == n - 1:
                # format 7 has no record: the CRC is set from the payload below, once the closing CRC holds
                length, crc = self.size - off, struct.unpack_from("<I", table, 8 * i)[0] if major < 7 else 0
                if length <= 0:
                    raise FormatError(f"truncated or corrupt file (its tiles before the last end at byte {off}, "
                                      f"the file has {self.size})")
            else:
                length, crc = struct.unpack_from("<II", table, 8 * i)
            entries.append(TileEntry(off, length, crc))
            off += length
        if off > self.size:
            raise FormatError(f"truncated or corrupt file (its tiles end at byte {off}, the file has {self.size})")
        if off < self.size:
            raise FormatError(f"{self.size - off} bytes after the last tile (file corrupt)")
        if major >= 6:  # checked now: a truncated or extended file is refused before any tile is used
            last = self._read(entries[-1].offset, entries[-1].length, "last tile")
            if major >= 7:  # the closing CRC covers it too; its entry keeps that payload's own CRC
                if zlib.crc32(last, running) != struct.unpack_from("<I", table, tlen - 4)[0]:
                    raise FormatError("truncated file, bytes after the last tile, or header, tile table or last tile "
                                      "corrupt (checksum mismatch)")
                entries[-1].crc = zlib.crc32(last)
            elif zlib.crc32(last) != entries[-1].crc:
                raise FormatError("truncated file, bytes after the last tile or last tile corrupt (its checksum does not match)")
        return header, entries

    def _layout_1_3(self, major: int) -> tuple[Header, list[TileEntry]]:
        """Formats 1.x-3.x: fixed prelude, header CRC, tile table with offsets and its own CRC."""
        _, hlen, hcrc = struct.unpack("<HII", self._read(6, 10, "file header"))
        if hlen > MAX_HEADER or 16 + hlen > self.size:
            raise FormatError("truncated file or header length out of range")
        hj = self._read(16, hlen, "header")
        if zlib.crc32(hj) != hcrc:
            raise FormatError("header checksum mismatch (file corrupt)")
        header = Header.from_bytes(hj, major)
        n_expected = header.n_tiles
        tstart = 16 + hlen
        (n,) = struct.unpack("<I", self._read(tstart, 4, "tile table"))
        if n != n_expected:
            raise FormatError(f"tile table has {n} entries, header implies {n_expected}")
        data_start = tstart + 4 + 16 * n + 4  # count, records, CRC
        if data_start > self.size:
            raise FormatError("truncated file (tile table)")
        body = self._read(tstart, 4 + 16 * n, "tile table")
        (tcrc,) = struct.unpack("<I", self._read(tstart + 4 + 16 * n, 4, "tile table"))
        if zlib.crc32(body) != tcrc:
            raise FormatError("tile table checksum mismatch (file corrupt)")
        entries, spans = [], []
        for i in range(n):
            off, length, crc = struct.unpack_from("<QII", body, 4 + 16 * i)
            if off < data_start or off + length > self.size:
                raise FormatError(f"tile {i} lies outside the file (offset {off}, length {length})")
            entries.append(TileEntry(off, length, crc))
            spans.append((off, off + length))
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            if b0 < a1 and a1 > a0 and b1 > b0:
                raise FormatError("tile payloads overlap")
        return header, entries

    def _read(self, off: int, n: int, what: str) -> bytes:
        self.f.seek(off)
        b = self.f.read(n)
        if len(b) != n:
            raise FormatError(f"truncated file ({what})")
        return b

    def payload(self, index: int) -> bytes:
        e = self.entries[index]
        b = self._read(e.offset, e.length, f"tile {index}")
        if zlib.crc32(b) != e.crc:
            raise FormatError(f"tile {index} checksum mismatch (file corrupt)")
        if b and b[0] & FLAG_TRIMMED and self.version[0] < 3:
            raise FormatError(f"tile {index} uses a format-3 flag in a {self.version[0]}.x file")
        if b and b[0] & FLAG_EXACT and self.version < (4, 2):
            raise FormatError(f"tile {index} uses a format-4.2 flag in a {self.version[0]}.{self.version[1]} file")
        if b and b[0] & FLAG_GROUP and self.version < (7, 1):
            raise FormatError(f"tile {index} uses a format-7.1 flag in a {self.version[0]}.{self.version[1]} file")
        return b


class Writer:
    """Streams a ``.sarc`` file: header, a reserved tile table, the payloads in table order, then the
    table and its CRC."""

    def __init__(self, f, header: Header) -> None:
        self.f = f
        self.head = head_bytes(header.to_bytes(), header.n_tiles)
        f.write(self.head)
        self.table_at = f.tell()
        self.entries: list[TileEntry] = []
        self.last = b""  # the last payload added: format 7's closing CRC covers it
        self.n = header.n_tiles
        f.write(b"\0" * table_size(self.n))

    def add(self, index: int, payload: bytes) -> None:
        if index != len(self.entries):
            raise ValueError(f"tile {index} added out of order (expected {len(self.entries)})")
        off = self.f.seek(0, 2)
        self.f.write(payload)
        self.entries.append(TileEntry(off, len(payload), zlib.crc32(payload)))
        self.last = payload

    def finish(self) -> int:
        if len(self.entries) != self.n:
            raise FormatError(f"{self.n - len(self.entries)} tiles were not written")
        end = self.f.seek(0, 2)
        self.f.seek(self.table_at)
        self.f.write(table_bytes(self.head, self.entries, self.last))
        self.f.seek(end)
        return end


@dataclass
class ExactPixels:
    """Pixels of one tile stored verbatim: row-major indices into the tile (increasing) and their
    values, ``len(index)`` items of the header's dtype as little-endian bytes."""

    index: list[int]
    values: bytes


def pack_tile(latent: bytes, mask: "bytes | None" = None, empty: bool = False, exact: ExactPixels | None = None,
              group: int | None = None) -> bytes:
    """Tile payload: flags, optional first coded scale group, optional zlib mask of per-pixel classes,
    optional exact pixels, latent words (the last one possibly trimmed)."""
    flags = ((FLAG_MASK if mask is not None else 0) | (FLAG_EMPTY if empty else 0)
             | (FLAG_TRIMMED if len(latent) % 4 else 0) | (FLAG_EXACT if exact is not None else 0)
             | (FLAG_GROUP if group is not None else 0))
    out = [bytes([flags])]
    if group is not None:
        if not 0 <= group <= MAX_GROUP:
            raise ValueError(f"scale group {group} out of range 0..{MAX_GROUP}")
        out.append(bytes([group]))
    if mask is not None:
        z = zlib.compress(mask, 9)
        out += [struct.pack("<I", len(z)), z]
    if exact is not None:
        prev, parts = -1, [varint(len(exact.index))]
        for i in exact.index:
            parts.append(varint(i - prev - 1))
            prev = i
        z = zlib.compress(b"".join(parts) + exact.values, 9)
        out += [struct.pack("<I", len(z)), z]
    if not empty:
        out.append(latent)
    return b"".join(out)


def _section(payload: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """A u32-length-prefixed section of a tile payload: (its bytes, position after it)."""
    if pos + 4 > len(payload):
        raise FormatError(f"truncated tile {what}")
    (n,) = struct.unpack_from("<I", payload, pos)
    if pos + 4 + n > len(payload):
        raise FormatError(f"tile {what} length out of range")
    return payload[pos + 4 : pos + 4 + n], pos + 4 + n


def _inflate(z: bytes, limit: int, what: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(z, limit + 1)
    except zlib.error:
        raise FormatError(f"tile {what} is corrupt") from None
    if len(out) > limit or not d.eof:
        raise FormatError(f"tile {what} has the wrong size")
    return out


def _unpack_exact(z: bytes, npix: int, itemsize: int) -> ExactPixels:
    raw = _inflate(z, 5 + npix * (5 + itemsize), "exact pixels")
    k, pos = read_varint(raw, 0, "exact pixel count", npix)
    index, prev = [], -1
    for _ in range(k):
        gap, pos = read_varint(raw, pos, "exact pixel index", npix)
        prev += gap + 1
        index.append(prev)
    if not k or prev >= npix:
        raise FormatError("tile exact pixels out of range")
    if len(raw) - pos != k * itemsize:
        raise FormatError("tile exact pixels have the wrong size")
    return ExactPixels(index, raw[pos:])


def unpack_tile(payload: bytes, npix: int, itemsize: int) -> tuple[bytes | None, bool, bytes, ExactPixels | None, int | None]:
    """-> (mask classes as bytes of length npix or None, empty, latent bytes, exact pixels or None,
    first coded scale group or None: the model's default); ``itemsize``: bytes per value of the header's dtype."""
    if not payload:
        raise FormatError("empty tile payload")
    flags = payload[0]
    if flags & ~(FLAG_MASK | FLAG_EMPTY | FLAG_TRIMMED | FLAG_EXACT | FLAG_GROUP):
        raise FormatError("unknown tile flags")
    pos, mask, exact, group = 1, None, None, None
    if flags & FLAG_GROUP:
        if len(payload) < 2 or payload[1] > MAX_GROUP:
            raise FormatError("tile scale group missing or out of range")
        pos, group = 2, payload[1]
    if flags & FLAG_MASK:
        z, pos = _section(payload, pos, "mask")
        mask = _inflate(z, npix, "mask")
        if len(mask) != npix:
            raise FormatError("tile mask has the wrong size")
        if max(mask, default=0) > 2:
            raise FormatError("tile mask has unknown classes")
    if flags & FLAG_EXACT:
        z, pos = _section(payload, pos, "exact pixels")
        exact = _unpack_exact(z, npix, itemsize)
        if mask is not None and any(mask[i] for i in exact.index):
            raise FormatError("tile exact pixels lie on masked pixels")
    empty = bool(flags & FLAG_EMPTY)
    latent = payload[pos:]
    if empty and (latent or exact is not None or group is not None):
        raise FormatError("empty tile carries latent data, exact pixels or a scale group")
    if bool(flags & FLAG_TRIMMED) != bool(len(latent) % 4):
        raise FormatError("latent length does not match the tile flags")
    if empty and (mask is None or 0 in mask):
        raise FormatError("empty tile without a full mask")
    return mask, empty, latent, exact, group
