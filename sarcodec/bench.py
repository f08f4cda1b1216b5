"""``sarcodec bench``: rate-distortion and speed of sarcodec against JPEG 2000, JPEG XL, AVIF and lossless.

For every image (each band coded separately by every codec) and every sarcodec quality:

* ``sarcodec``: the shipped model (or ``--weights``), through ``encode_array`` / ``decode_array``.
* ``jpeg2000``: OpenJPEG (imagecodecs, 9/7 irreversible, raw J2K codestream) on the native values
  (float32 is scaled linearly to uint16 first), rate-matched to sarcodec's bpp.
* ``jpeg2000-log``: the same OpenJPEG on the values sarcodec codes -- its normalised domain
  (``sarcodec.preprocess``: dB for linear SAR data), scaled to uint16 -- rate-matched.  This is the
  stronger anchor for full-range data.
* ``jpegxl``: libjxl (imagecodecs) on the same representation as ``jpeg2000-log`` (uint8 as is),
  rate-matched through its distance parameter.
* ``avif``: AV1 intra (libavif with libaom, imagecodecs) on the same representation, luma only
  (8-bit, or the uint16 domain rounded to 12 bits, AVIF's deepest), rate-matched through its
  quality level (0-100, 64 quantiser steps).  Its file carries 269 bytes of ISOBMFF boxes, which
  counts at the lowest rates of small images, as sarcodec's and JPEG 2000's headers do.
* ``lossless``: deflate and zstd GeoTIFF (with predictor) and reversible JPEG 2000: the ratio at zero error.

Rate matching: a secant search on the codec's own quality knob until the bpp is within 2%.
Metrics come from ``sarcodec.metrics`` (definitions in ``report.md``).  Results are appended per
image to ``results.json``; a rerun with the same ``--out`` skips what is already there.
"""
from __future__ import annotations

import csv
import json
import math
import resource
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import metrics
from .choice import ModelSet
from .codec import CLASS_VALID, ArraySource, fit_band, pixel_classes
from .preprocess import BandMapping
from .rdoq import REVISION as RDOQ_REVISION

CODECS = ("sarcodec", "jpeg2000", "jpeg2000-log", "jpegxl", "avif", "lossless")
# summarize: the anchors BD-rates are measured against, and the codecs each is compared with (None: all)
ANCHORS: dict[str, tuple[str, ...] | None] = {"jpeg2000-log": None, "jpeg2000": None, "jpegxl": ("sarcodec",), "avif": ("sarcodec",)}
# libaom speed 0 (slowest) .. 10.  On a 512^2 8-bit S1 crop 4 takes ~5x the time of the default 6 for
# 3.5 % fewer bytes at equal PSNR; 1 and 0 save another 2.4 / 2.6 % at 3-8x the time of 4
AVIF_SPEED = 4
RASTERS = (".tif", ".tiff", ".jpg", ".jpeg", ".png")
CROP = 192


@dataclass
class Image:
    name: str
    dataset: str
    values: np.ndarray  # (bands, H, W)
    nodata: float | None
    mappings: list[BandMapping]


def list_images(paths: list[Path]) -> list[tuple[str, Path]]:
    out = []
    for p in paths:
        if p.is_dir():
            out += [(p.name, f) for f in sorted(p.iterdir()) if f.suffix.lower() in RASTERS]
        elif p.is_file():
            out.append((p.parent.name, p))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def load_image(dataset: str, path: Path) -> Image:
    from .io import open_raster

    with open_raster(path) as ds:
        v = ds.read()
        nodata = ds.nodata
    src = ArraySource(v)
    maps = [fit_band(src, b, v.dtype, nodata, "auto") for b in range(v.shape[0])]
    return Image(path.stem, dataset, v, nodata, maps)


def db_image(v: np.ndarray, m: BandMapping, dtype: np.dtype) -> np.ndarray:
    """dB image: log domain as coded; dB input as is; 8-bit/int display amplitude as 20*log10(v)."""
    v = v.astype(np.float64)
    if m.domain == "log":
        return m.factor * np.log10(np.maximum(v, m.floor))
    if m.domain == "db":
        return v
    return 20.0 * np.log10(np.maximum(v - min(0.0, m.lo), 1.0))


def native_peak(v: np.ndarray) -> float:
    return 255.0 if v.dtype == np.uint8 else float(np.ptp(v[np.isfinite(v)])) or 1.0


def valid_mask(img: Image, b: int) -> np.ndarray:
    return pixel_classes(img.values[b], img.nodata, img.mappings[b].domain) == CLASS_VALID


def measure(img: Image, rec: np.ndarray) -> dict:
    """Distortion metrics of a reconstruction (all bands, valid pixels)."""
    out: dict[str, list[float]] = {k: [] for k in ("psnr", "psnr_db", "ssim_db", "msssim_db", "bias_db", "level_db", "local_level_db",
                                                  "enl_ref", "enl_rec", "ratio_mean", "ratio_std")}
    for b in range(img.values.shape[0]):
        ref = img.values[b]
        ok = valid_mask(img, b)
        r = rec[b].astype(np.float64)
        out["psnr"].append(metrics.psnr(ref[ok], r[ok], native_peak(ref[ok])))
        m = img.mappings[b]
        dref = db_image(ref, m, ref.dtype)
        drec = db_image(r, m, ref.dtype)
        fill = float(np.median(dref[ok])) if ok.any() else 0.0
        dref = np.where(ok, dref, fill)
        drec = np.where(ok, drec, fill)
        rng = float(np.ptp(dref[ok])) or 1.0
        out["psnr_db"].append(metrics.psnr(dref[ok], drec[ok], rng))
        out["ssim_db"].append(metrics.ssim(dref, drec, rng))
        out["msssim_db"].append(metrics.ms_ssim(dref, drec, rng))
        out["bias_db"].append(metrics.bias_db(dref[ok], drec[ok]))
        iref, irec = 10 ** (dref / 10), 10 ** (drec / 10)
        out["level_db"].append(metrics.level_db(iref[ok], irec[ok]))
        out["local_level_db"].append(metrics.local_level_db(iref, irec, ok))
        wins = metrics.homogeneous_windows(np.where(ok, iref, np.nan))
        out["enl_ref"].append(metrics.enl(iref, wins))
        out["enl_rec"].append(metrics.enl(irec, wins))
        rm, rs = metrics.ratio_stats(iref[ok], irec[ok])
        out["ratio_mean"].append(rm)
        out["ratio_std"].append(rs)
    return {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan") for k, v in out.items()}


# ---- codecs: each returns (list of per-band bytes objects, reconstruction, enc_s, dec_s) ----

def to_u16_domain(v: np.ndarray, m: BandMapping) -> np.ndarray:
    u = np.clip(m.forward(np.where(np.isfinite(v), v, m.lo if m.domain != "log" else m.floor)), 0.0, 1.0)
    return np.rint(u * 65535).astype(np.uint16)


def from_u16_domain(c: np.ndarray, m: BandMapping, dtype: np.dtype) -> np.ndarray:
    from .preprocess import to_dtype

    return to_dtype(m.inverse(c.astype(np.float64) / 65535.0), dtype)


def coded_repr(v: np.ndarray, m: BandMapping) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """What sarcodec codes, for the other codecs: uint8 as is, otherwise its normalised domain as uint16."""
    if v.dtype == np.uint8:
        return native_repr(v)
    return to_u16_domain(v, m), lambda c: from_u16_domain(c, m, v.dtype)


def native_repr(v: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Representation JPEG 2000 can code natively, and the way back."""
    if v.dtype in (np.uint8, np.uint16, np.int16):
        return v, lambda c: c.astype(v.dtype)
    ok = np.isfinite(v)
    lo, hi = float(v[ok].min()), float(v[ok].max())
    hi = hi if hi > lo else lo + 1
    c = np.rint((np.where(ok, v, lo) - lo) / (hi - lo) * 65535).astype(np.uint16)
    return c, lambda d: (d.astype(np.float64) / 65535 * (hi - lo) + lo).astype(v.dtype)


def _secant(encode: Callable[[float], bytes], target_bits: float, x0: float, x1: float, lo: float, hi: float,
            log_x: bool = False, decreasing: bool = False, iters: int = 7) -> bytes:
    """Find the knob value whose output has ``target_bits``; returns the closest encoding."""
    def f(x: float) -> tuple[float, bytes]:
        b = encode(x)
        return math.log(max(8 * len(b), 1) / target_bits), b

    tr = (math.log, math.exp) if log_x else (lambda a: a, lambda a: a)
    pts = [(x0, *f(x0)), (x1, *f(x1))]

    def probe(x: float) -> bool:
        """Encode at ``x`` unless it was tried already (False: nothing new to learn)."""
        if any(abs(x - p[0]) < 1e-9 for p in pts):
            return False
        pts.append((x, *f(x)))
        return True

    for _ in range(iters):
        (xa, fa, _), (xb, fb, _) = pts[-2], pts[-1]
        if abs(fb) < 0.02:
            break
        ta, tb = tr[0](xa), tr[0](xb)
        if fb == fa:
            step = (tr[0](hi) - tr[0](lo)) / 8 * (-1 if (fb > 0) != decreasing else 1)
            tn = tb + step
        else:
            tn = tb - fb * (tb - ta) / (fb - fa)
        if not probe(min(max(tr[1](tn), lo), hi)):
            break
    # the secant can stall on a rate curve with flat steps (tiny images): bisect a bracket instead
    for _ in range(12):
        if min(abs(p[1]) for p in pts) < 0.02:
            break
        below = [p for p in pts if p[1] < 0]
        above = [p for p in pts if p[1] > 0]
        if not below or not above:
            break
        xa, xb = max(below, key=lambda p: p[1])[0], min(above, key=lambda p: p[1])[0]
        if not probe(tr[1]((tr[0](xa) + tr[0](xb)) / 2)):
            break
    return min(pts, key=lambda p: abs(p[1]))[2]


def j2k_encode(c: np.ndarray, bits: float | None) -> bytes:
    import imagecodecs

    if bits is None:
        return imagecodecs.jpeg2k_encode(c, level=0, reversible=True, codecformat="J2K", numthreads=1)
    return _secant(lambda lv: imagecodecs.jpeg2k_encode(c, level=lv, codecformat="J2K", numthreads=1), bits, 28.0, 40.0, 8.0, 120.0)


def jxl_encode(c: np.ndarray, bits: float) -> bytes:
    import imagecodecs

    return _secant(lambda d: imagecodecs.jpegxl_encode(c, distance=d, effort=7, numthreads=1), bits, 2.0, 4.0, 0.05, 25.0,
                   log_x=True, decreasing=True)


def avif_repr(v: np.ndarray, m: BandMapping) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """``coded_repr`` within AVIF's bit depths: uint8 as is, the uint16 domain rounded to 12 bits."""
    c, back = coded_repr(v, m)
    if c.dtype == np.uint8:
        return c, back
    c12 = np.rint(c.astype(np.float64) * (4095 / 65535)).astype(np.uint16)
    return c12, lambda d: back(np.rint(d.astype(np.float64) * (65535 / 4095)).astype(np.uint16))


def avif_encode(c: np.ndarray, bits: float) -> bytes:
    import imagecodecs

    # imagecodecs codes a single-channel array losslessly whatever the level: give it three equal
    # channels and keep only luma (yuv400), which is then exactly the input
    rgb = np.repeat(c[..., None], 3, axis=-1)
    kw = dict(speed=AVIF_SPEED, numthreads=1, pixelformat="yuv400", bitspersample=8 if c.dtype == np.uint8 else 12)
    cache: dict[int, bytes] = {}  # the level is an integer: the search's fractional probes repeat encodings

    def enc(level: float) -> bytes:
        lv = int(round(level))
        if lv not in cache:
            cache[lv] = imagecodecs.avif_encode(rgb, level=lv, **kw)
        return cache[lv]

    return _secant(enc, bits, 40.0, 60.0, 0.0, 99.0)


def avif_decode(data: bytes) -> np.ndarray:
    import imagecodecs

    d = imagecodecs.avif_decode(data)
    return d if d.ndim == 2 else d[..., 0]


def j2k_header_bytes(data: bytes) -> int:
    """Bytes of a single-tile JPEG 2000 codestream that are not coded data: main and tile-part headers
    up to the SOD marker, and the EOC marker."""
    sod = data.find(b"\xff\x93")
    return sod + 2 + 2 if sod >= 0 else len(data)


def avif_header_bytes(data: bytes) -> int:
    """Bytes of an AVIF file outside its ``mdat`` box's content (ftyp, meta, box headers)."""
    pos = 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        if kind == b"mdat":
            return len(data) - (size - 8)
        if size < 8:
            break
        pos += size
    return len(data)


def sarc_header_bytes(data: bytes) -> int:
    """Bytes of a ``.sarc`` file outside its tiles' coded data: header, tile table, tile flags."""
    import io

    from .bitstream import Reader

    entries = Reader(io.BytesIO(data), len(data)).entries
    return len(data) - sum(e.length for e in entries) + len(entries)


def run_band_codec(img: Image, repr_fn, enc_fn, dec_fn, bits_per_band: list[float | None]):
    parts, rec = [], np.empty_like(img.values)
    te = td = 0.0
    for b in range(img.values.shape[0]):
        c, back = repr_fn(img.values[b], img.mappings[b])
        t = time.perf_counter()
        data = enc_fn(c, bits_per_band[b])
        te += time.perf_counter() - t
        t = time.perf_counter()
        d = dec_fn(data)
        td += time.perf_counter() - t
        rec[b] = back(d)
        parts.append(data)
    return parts, rec, te, td


def lossless_geotiff(v: np.ndarray, compress: str) -> int:
    import warnings

    from rasterio.io import MemoryFile

    pred = 3 if v.dtype.kind == "f" else 2
    with warnings.catch_warnings(), MemoryFile() as mf:
        warnings.simplefilter("ignore")
        with mf.open(driver="GTiff", width=v.shape[2], height=v.shape[1], count=v.shape[0], dtype=v.dtype.name,
                     compress=compress, predictor=pred, tiled=v.shape[1] >= 256 and v.shape[2] >= 256) as ds:
            ds.write(v)
        return len(mf.read())


def bench_image(img: Image, codecs: list[str], qualities: list[int], model, done: dict, emit: Callable[[dict], None],
                refined: int = RDOQ_REVISION) -> None:
    """Measure every codec at every setting not in ``done`` on one image.  ``refined``: sarcodec's
    encoder (``sarcodec.rdoq.REVISION``, or 0 to round), recorded in its rows."""
    import imagecodecs

    from .codec import decode_array, encode_array

    npix = img.values.shape[1] * img.values.shape[2]
    nb = img.values.shape[0]
    base = {"dataset": img.dataset, "image": img.name, "bands": nb, "width": img.values.shape[2], "height": img.values.shape[1],
            "dtype": img.values.dtype.name, "domain": img.mappings[0].domain}

    def row(codec: str, setting: str, nbytes: int, rec: np.ndarray | None, te: float, td: float, extra: dict | None = None) -> None:
        r = dict(base, codec=codec, setting=setting, bytes=nbytes, bpp=8.0 * nbytes / (npix * nb), enc_s=te, dec_s=td,
                 enc_mpix_s=npix * nb / te / 1e6 if te else float("nan"), dec_mpix_s=npix * nb / td / 1e6 if td else float("nan"),
                 peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        if rec is not None:
            r.update(measure(img, rec))
        r.update(extra or {})
        emit(r)

    def guarded(codec: str, setting: str, fn: Callable[[], None]) -> None:
        if (img.dataset, img.name, codec, setting) in done:
            return
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a failing codec is a result, not a crash
            emit(dict(base, codec=codec, setting=setting, error=f"{e.__class__.__name__}: {e}"))

    targets: dict[int, list[float]] = {}
    for q in qualities:
        def run_sarcodec(q=q) -> None:
            stats: dict = {}
            t = time.perf_counter()
            data = encode_array(img.values, q, nodata=img.nodata, model=model, stats=stats, rdoq=bool(refined))
            te = time.perf_counter() - t
            t = time.perf_counter()
            rec, _ = decode_array(data, model=model)
            td = time.perf_counter() - t
            overhead = 8 * stats["latent_bytes"] / stats["ideal_bits"] - 1 if stats["ideal_bits"] else float("nan")
            row("sarcodec", f"q{q}", len(data), rec, te, td, {"coder_overhead": overhead, "header_bytes": sarc_header_bytes(data),
                                                                "model": stats["model"], "rdoq": refined})
        guarded("sarcodec", f"q{q}", run_sarcodec)
        prev = done.get((img.dataset, img.name, "sarcodec", f"q{q}"))
        if prev and not prev.get("error"):
            # bits each band got from sarcodec at this quality: the rate-matching target
            targets[q] = [8.0 * prev["bytes"] / nb] * nb
    for q in qualities:
        if q not in targets:
            continue
        bits = targets[q]
        if "jpeg2000" in codecs:
            guarded("jpeg2000", f"q{q}", lambda bits=bits, q=q: row("jpeg2000", f"q{q}", *_sum(run_band_codec(
                img, lambda v, m: native_repr(v), j2k_encode, imagecodecs.jpeg2k_decode, bits), j2k_header_bytes)))
        if "jpeg2000-log" in codecs:
            if img.values.dtype == np.uint8 and "jpeg2000" in codecs:
                # uint8 is coded in the identity domain: jpeg2000-log is jpeg2000 on the same values
                key = (img.dataset, img.name, "jpeg2000", f"q{q}")
                if key in done and not done[key].get("error"):
                    guarded("jpeg2000-log", f"q{q}", lambda key=key: emit(dict(done[key], codec="jpeg2000-log", note="identity domain: same as jpeg2000")))
            else:
                guarded("jpeg2000-log", f"q{q}", lambda bits=bits, q=q: row("jpeg2000-log", f"q{q}", *_sum(run_band_codec(
                    img, coded_repr, j2k_encode, imagecodecs.jpeg2k_decode, bits), j2k_header_bytes)))
        if "jpegxl" in codecs:
            guarded("jpegxl", f"q{q}", lambda bits=bits, q=q: row("jpegxl", f"q{q}", *_sum(run_band_codec(
                img, coded_repr, jxl_encode, imagecodecs.jpegxl_decode, bits))))
        if "avif" in codecs:
            guarded("avif", f"q{q}", lambda bits=bits, q=q: row("avif", f"q{q}", *_sum(run_band_codec(
                img, avif_repr, avif_encode, avif_decode, bits), avif_header_bytes)))
    if "lossless" in codecs:
        for comp in ("deflate", "zstd"):
            guarded("lossless", comp, lambda comp=comp: row("lossless", comp, lossless_geotiff(img.values, comp), None, 0.0, 0.0))
        if img.values.dtype != np.float32:
            guarded("lossless", "jpeg2000-reversible", lambda: row("lossless", "jpeg2000-reversible", *_sum(run_band_codec(
                img, lambda v, m: native_repr(v), j2k_encode, imagecodecs.jpeg2k_decode, [None] * nb))))


def _sum(res, header: Callable[[bytes], int] | None = None):
    """(bytes, reconstruction, enc_s, dec_s, extra) of a band codec's result; extra: its header bytes."""
    parts, rec, te, td = res
    return sum(len(p) for p in parts), rec, te, td, {"header_bytes": sum(map(header, parts))} if header else None


def summarize(rows: list[dict], payload: bool = False) -> dict:
    """BD-rates of every codec against jpeg2000-log and jpeg2000, and of sarcodec against jpegxl and avif,
    per image and averaged per dataset.  ``payload``: rates of the coded data alone, without each
    file's headers and container (rows that record ``header_bytes`` only)."""
    from collections import defaultdict

    curves: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("error") or r["codec"] == "lossless" or (payload and r.get("header_bytes") is None):
            continue
        key = "psnr" if r["dtype"] == "uint8" else "psnr_db"
        bpp = 8.0 * (r["bytes"] - r["header_bytes"]) / (r["width"] * r["height"] * r["bands"]) if payload else r["bpp"]
        curves[(r["dataset"], r["image"])][r["codec"]].append((bpp, r[key]))
    per_image = []
    for (ds, im), cs in curves.items():
        for anchor, compared in ANCHORS.items():
            if anchor not in cs:
                continue
            a = sorted(cs[anchor])
            for codec, pts in cs.items():
                if codec == anchor or (compared is not None and codec not in compared):
                    continue
                p = sorted(pts)
                lo = max(min(x[1] for x in a), min(x[1] for x in p))
                hi = min(max(x[1] for x in a), max(x[1] for x in p))
                per_image.append({"dataset": ds, "image": im, "codec": codec, "anchor": anchor,
                                  "bd_rate": metrics.bd_rate([x[0] for x in a], [x[1] for x in a], [x[0] for x in p], [x[1] for x in p]),
                                  "bd_psnr": metrics.bd_psnr([x[0] for x in a], [x[1] for x in a], [x[0] for x in p], [x[1] for x in p]),
                                  "psnr_range": [lo, hi]})
    avg: dict = defaultdict(list)
    for r in per_image:
        avg[(r["dataset"], r["codec"], r["anchor"])].append(r)
    averaged = [{"dataset": k[0], "codec": k[1], "anchor": k[2], "images": len(v),
                 "bd_rate": float(np.nanmean([x["bd_rate"] for x in v])) if any(np.isfinite(x["bd_rate"]) for x in v) else float("nan"),
                 "bd_psnr": float(np.nanmean([x["bd_psnr"] for x in v])) if any(np.isfinite(x["bd_psnr"]) for x in v) else float("nan")}
                for k, v in sorted(avg.items())]
    return {"per_image": per_image, "averaged": averaged}


def dataset_curves(rows: list[dict]) -> dict:
    """Mean bpp and PSNR per dataset, codec and setting (for plots and tables)."""
    from collections import defaultdict

    acc: dict = defaultdict(list)
    for r in rows:
        if not r.get("error") and r["codec"] != "lossless":
            acc[(r["dataset"], r["codec"], r["setting"])].append(r)
    out: dict = defaultdict(dict)
    for (ds, codec, setting), rs in acc.items():
        key = "psnr" if rs[0]["dtype"] == "uint8" else "psnr_db"
        out[ds].setdefault(codec, []).append({
            "setting": setting, "bpp": float(np.mean([r["bpp"] for r in rs])), "psnr": float(np.mean([r[key] for r in rs])),
            "metric": key, "ssim_db": float(np.nanmean([r["ssim_db"] for r in rs])), "n": len(rs)})
    for ds in out:
        for codec in out[ds]:
            out[ds][codec].sort(key=lambda p: p["bpp"])
    return out


METRIC_DEFS = """\
| metric | definition |
|---|---|
| bpp | file bytes x 8 / (pixels x bands), container overhead included |
| header bytes | bytes of a file that are not coded data: `.sarc` header, tile table and tile flags; JPEG 2000 main and tile-part headers and EOC; AVIF boxes outside `mdat`'s content |
| PSNR | 10 log10(peak^2/MSE) on the native values over valid pixels; peak 255 for uint8, else the reference's range |
| PSNR dB | the same on the dB image (log domain: factor x log10 of the linear value; dB input as is; 8-bit display amplitude: 20 log10 v), peak = the reference's dB range |
| SSIM / MS-SSIM dB | Gaussian-window SSIM (11x11, sigma 1.5) and 5-scale MS-SSIM on the dB image |
| level dB | 10 log10(mean reconstruction intensity / mean reference intensity) over valid pixels: the bias of the mean backscatter |
| local level dB | the same per 32x32 block of valid pixels, RMS over the blocks: how far regional backscatter levels move |
| mean dB shift | mean(reconstruction dB - reference dB) over valid pixels. Not a level bias on speckled data: smoothing in the log domain keeps it at 0 while lowering the backscatter (the mean of log-intensity lies below the log of the mean by up to 2.5 dB for single-look speckle); smoothing linear values raises it while keeping the backscatter |
| ENL | mean^2/var of intensity over the 8 most homogeneous 16x16 windows of the reference (same windows for both) |
| ratio mean / std | mean and std of the ratio image reference / reconstruction intensity (1 and 0 when lossless; an unbiased reflectivity estimate keeps the mean at 1 and leaves the speckle in the ratio) |
| BD-rate | Bjontegaard rate difference (cubic fit of log-rate vs PSNR over the overlapping PSNR range); negative = fewer bytes than the anchor. PSNR on 8-bit values for uint8 images, on the dB image otherwise |
| enc/dec MPix/s | pixels x bands / wall seconds of the in-process encode/decode call (single image) |
| peak RSS | the bench process's high-water resident memory after the row (an upper bound for that codec) |
| coder overhead | sarcodec only: range-coded latent bytes vs the information content of its symbols under the model's tables |
"""


def run(paths: list[Path], out: Path, codecs: list[str], qualities: list[int], model=None, progress: bool = True,
        log: Callable[[str], None] = print, limit: int = 0, rdoq: bool = True) -> dict:
    """Run the benchmark; writes results.csv/json, rd.png, crops.png and report.md into ``out``.
    ``rdoq``: sarcodec's encoder setting (``encode_array``; recorded in its rows, and rows made with
    the other setting are measured again)."""
    from .weights import load

    bad = [c for c in codecs if c not in CODECS]
    if bad:
        raise ValueError(f"unknown codec(s) {', '.join(bad)}; choose from {', '.join(CODECS)}")
    model = model or load()
    refined = RDOQ_REVISION if rdoq and model.refinable else 0  # what the encoder will do: the fast preset always rounds
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    rows: list[dict] = json.loads(res_path.read_text())["rows"] if res_path.exists() else []
    # a row is kept if it was made with this model (and sarcodec's, with this encoder: rows record
    # sarcodec.rdoq.REVISION or 0, rows from before RDOQ rounded, True was revision 1) and measured with
    # today's metrics (level_db is the newest); older rows are measured again
    rows = [r for r in rows if r.get("model_id") in (None, model.model_id)
            and (r.get("codec") != "sarcodec" or r.get("error") or r.get("rdoq", 0) == refined)
            and (r.get("error") or r.get("codec") in ("load", "lossless") or "level_db" in r)]
    done = {(r["dataset"], r["image"], r["codec"], r["setting"]): r for r in rows}
    images = list_images(paths)
    if limit:
        per: dict = {}
        images = [x for x in images if per.setdefault(x[0], []).append(x) or len(per[x[0]]) <= limit]

    def emit(r: dict) -> None:
        r["model_id"] = model.model_id
        rows.append(r)
        done[(r["dataset"], r["image"], r["codec"], r["setting"])] = r

    def save() -> None:
        tmp = res_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"model": model.name, "model_id": model.model_id, "rows": rows}, indent=1, allow_nan=True))
        tmp.replace(res_path)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), disable=not progress) as prog:
        task = prog.add_task("bench", total=len(images))
        for dataset, path in images:
            prog.update(task, description=f"{dataset}/{path.name}")
            try:
                img = load_image(dataset, path)
            except Exception as e:  # noqa: BLE001 - unreadable image: reported as a result
                if (dataset, path.stem, "load", "-") not in done:
                    emit({"dataset": dataset, "image": path.stem, "codec": "load", "setting": "-", "error": str(e)})
                prog.advance(task)
                continue
            bench_image(img, codecs, qualities, model, done, emit, refined)
            save()
            prog.advance(task)
    summary = summarize(rows)
    summary["payload_averaged"] = summarize(rows, payload=True)["averaged"]
    tmp = res_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"model": model.name, "model_id": model.model_id, "rows": rows, "summary": summary}, indent=1))
    tmp.replace(res_path)
    write_outputs(out, rows, summary, paths, model)
    return {"rows": rows, "summary": summary}


def write_outputs(out: Path, rows: list[dict], summary: dict, paths: list[Path], model) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    curves = dataset_curves(rows)
    plot_rd(curves, out / "rd.png")
    plot_crops(rows, paths, out / "crops.png", model)
    (out / "report.md").write_text(report_md(rows, summary, curves, model))


def plot_rd(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(curves))
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    for ax, (ds, cs) in zip(axes[0], sorted(curves.items())):
        for codec, pts in sorted(cs.items()):
            ax.plot([p["bpp"] for p in pts], [p["psnr"] for p in pts], "o-", label=codec, ms=3)
        metric = next(iter(cs.values()))[0]["metric"]
        ax.set_xscale("log")
        ax.set_xlabel("bits per pixel per band")
        ax.set_ylabel("PSNR (8-bit values) [dB]" if metric == "psnr" else "PSNR of the dB image [dB]")
        ax.set_title(ds)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_crops(rows: list[dict], paths: list[Path], path: Path, model) -> None:
    """Per dataset: the same crop of its first image at sarcodec q3's rate, all codecs, dB display."""
    import imagecodecs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .codec import decode_array, encode_array

    images = list_images(paths)
    seen: dict[str, Path] = {}
    for ds, p in images:
        seen.setdefault(ds, p)
    fig, axes = plt.subplots(max(1, len(seen)), 4, figsize=(13, 3.4 * max(1, len(seen))), squeeze=False)
    for i, (ds, p) in enumerate(sorted(seen.items())):
        try:
            img = load_image(ds, p)
        except Exception:  # noqa: BLE001
            continue
        v = img.values[:1]
        h, w = v.shape[1:]
        ch, cw = min(CROP, h), min(CROP, w)
        r0, c0 = (h - ch) // 2, (w - cw) // 2
        sub = Image(img.name, ds, np.ascontiguousarray(v[:, r0 : r0 + ch, c0 : c0 + cw]), img.nodata, img.mappings[:1])
        data = encode_array(sub.values, 3, nodata=sub.nodata, model=model)
        bits = [8.0 * len(data)]
        rec_s, _ = decode_array(data, model=model)
        _, rec_j, _, _ = run_band_codec(sub, coded_repr, j2k_encode, imagecodecs.jpeg2k_decode, bits)
        _, rec_x, _, _ = run_band_codec(sub, coded_repr, jxl_encode, imagecodecs.jpegxl_decode, bits)
        m = sub.mappings[0]
        ref_db = db_image(sub.values[0], m, v.dtype)
        ok = np.isfinite(ref_db)
        lo, hi = np.percentile(ref_db[ok], [1, 99]) if ok.any() else (0, 1)
        bpp = bits[0] / (ch * cw)
        for j, (title, arr) in enumerate([("original", sub.values[0]), ("sarcodec q3", rec_s[0]), ("JPEG 2000", rec_j[0]), ("JPEG XL", rec_x[0])]):
            d = db_image(arr, m, v.dtype)
            key = "psnr" if v.dtype == np.uint8 else "psnr_db"
            q = "" if j == 0 else f"  {measure(sub, arr[None])[key]:.2f} dB"
            axes[i, j].imshow(d, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            axes[i, j].set_title(f"{ds}: {title}" + (f" ({bpp:.2f} bpp){q}" if j else ""), fontsize=8)
            axes[i, j].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(x: float, nd: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def report_md(rows: list[dict], summary: dict, curves: dict, model) -> str:
    chosen: dict = {}  # dataset -> Counter of the models the encoder chose (images x qualities)
    for r in rows:
        if r["codec"] == "sarcodec" and r.get("model") and not r.get("error"):
            chosen.setdefault(r["dataset"], Counter())[r["model"]] += 1
    picks = "; ".join(f"{d}: " + ", ".join(f"`{m}` {n}" for m, n in sorted(c.items())) for d, c in sorted(chosen.items()))
    lines = [f"# sarcodec benchmark\n", f"Model: `{model.name}` (id `{model.model_id}`).\n",
             *([f"Models the encoder chose (images x qualities): {picks}.\n"] if isinstance(model, ModelSet) else []), "## Summary: BD-rate (negative = smaller files at equal PSNR)\n",
             "| dataset | codec | vs jpeg2000-log | vs jpeg2000 | vs jpegxl | vs avif | BD-PSNR vs jpeg2000-log | images |",
             "|---|---|---|---|---|---|---|---|"]
    by = {(a["dataset"], a["codec"], a["anchor"]): a for a in summary["averaged"]}
    for ds, codec in sorted({(a["dataset"], a["codec"]) for a in summary["averaged"]}):
        got = [by.get((ds, codec, anchor)) for anchor in ANCHORS]
        rates = " | ".join(_fmt(g["bd_rate"], 1) + " %" if g else "n/a" for g in got)
        l = got[0]
        lines.append(f"| {ds} | {codec} | {rates} | {_fmt(l['bd_psnr']) + ' dB' if l else 'n/a'} | {next(g for g in got if g)['images']} |")
    if summary.get("payload_averaged"):
        hb: dict = {}  # dataset -> codec -> header bytes of its files
        for r in rows:
            if r.get("header_bytes") is not None and not r.get("error"):
                hb.setdefault(r["dataset"], {}).setdefault(r["codec"], []).append(r["header_bytes"])
        sizes = "; ".join(f"{d}: " + ", ".join(f"{c} {np.mean(v):.0f}" for c, v in sorted(cs.items())) for d, cs in sorted(hb.items()))
        lines += ["\n## BD-rate of the coded data alone (each file's headers and container left out)\n",
                  f"Headers weigh on small images. Mean header bytes per file: {sizes}.\n",
                  "| dataset | codec | anchor | BD-rate | images |", "|---|---|---|---|---|"]
        for a in summary["payload_averaged"]:
            lines.append(f"| {a['dataset']} | {a['codec']} | {a['anchor']} | {_fmt(a['bd_rate'], 1)} % | {a['images']} |")
    lines += ["\n## BD-rate per image (PSNR range of the overlap used for the fit)\n",
              "| dataset | image | codec | anchor | BD-rate | BD-PSNR | PSNR range |", "|---|---|---|---|---|---|---|"]
    for r in sorted(summary["per_image"], key=lambda r: (r["dataset"], r["image"], r["anchor"], r["codec"])):
        lo, hi = r["psnr_range"]
        lines.append(f"| {r['dataset']} | {r['image']} | {r['codec']} | {r['anchor']} | {_fmt(r['bd_rate'], 1)} % | "
                     f"{_fmt(r['bd_psnr'])} dB | {lo:.2f}-{hi:.2f} dB |")
    lines += ["\n## Rate-distortion (means over images)\n", "![RD curves](rd.png)\n"]
    for ds, cs in sorted(curves.items()):
        metric = "PSNR (8-bit)" if next(iter(cs.values()))[0]["metric"] == "psnr" else "PSNR (dB image)"
        lines += [f"### {ds}\n", f"| codec | setting | bpp | {metric} | SSIM dB | images |", "|---|---|---|---|---|---|"]
        for codec, pts in sorted(cs.items()):
            for p in pts:
                lines.append(f"| {codec} | {p['setting']} | {p['bpp']:.3f} | {p['psnr']:.2f} | {_fmt(p['ssim_db'], 3)} | {p['n']} |")
        lines.append("")

    def mean(rs: list[dict], k: str) -> float:
        v = [r.get(k, float("nan")) for r in rs]
        return float(np.nanmean(v)) if any(math.isfinite(x) for x in v) else float("nan")

    sc = [r for r in rows if r.get("codec") == "sarcodec" and not r.get("error")]
    if sc:
        lines += ["## sarcodec radiometry and speed (means over images)\n",
                  "| setting | level dB | local level dB | mean dB shift | ENL ref | ENL rec | ratio mean | ratio std | enc MPix/s | "
                  "dec MPix/s | coder overhead |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in sorted({r["setting"] for r in sc}):
            rs = [r for r in sc if r["setting"] == s]
            lines.append(f"| {s} | {_fmt(mean(rs, 'level_db'))} | {_fmt(mean(rs, 'local_level_db'))} | {mean(rs, 'bias_db'):+.3f} | "
                         f"{mean(rs, 'enl_ref'):.2f} | {mean(rs, 'enl_rec'):.2f} | {mean(rs, 'ratio_mean'):.3f} | {mean(rs, 'ratio_std'):.3f} | "
                         f"{mean(rs, 'enc_mpix_s'):.2f} | {mean(rs, 'dec_mpix_s'):.2f} | {100 * mean(rs, 'coder_overhead'):.2f} % |")
    lossy = [r for r in rows if r.get("codec") not in ("load", "lossless") and not r.get("error") and "level_db" in r]
    if lossy:
        codecs = [c for c in CODECS if any(r["codec"] == c for r in lossy)]
        lines += ["\n## Backscatter level per codec (means over images: level dB / local level dB)\n",
                  "| dataset | setting | " + " | ".join(codecs) + " |", "|---|---|" + "---|" * len(codecs)]
        for ds, s in sorted({(r["dataset"], r["setting"]) for r in lossy}):
            cells = []
            for c in codecs:
                rs = [r for r in lossy if r["dataset"] == ds and r["setting"] == s and r["codec"] == c]
                cells.append(f"{_fmt(mean(rs, 'level_db'))} / {_fmt(mean(rs, 'local_level_db'))}" if rs else "-")
            lines.append(f"| {ds} | {s} | " + " | ".join(cells) + " |")
    ll = [r for r in rows if r.get("codec") == "lossless" and not r.get("error")]
    if ll:
        lines += ["\n## Lossless references (mean bpp)\n", "| dataset | method | bpp |", "|---|---|---|"]
        for ds, s in sorted({(r["dataset"], r["setting"]) for r in ll}):
            lines.append(f"| {ds} | {s} | {np.mean([r['bpp'] for r in ll if r['dataset'] == ds and r['setting'] == s]):.3f} |")
    errs = [r for r in rows if r.get("error")]
    if errs:
        lines += ["\n## Failures\n"] + [f"- {r['dataset']}/{r['image']} {r['codec']} {r['setting']}: {r['error']}" for r in errs]
    lines += ["\n## Crops at equal rate (dB display)\n", "![crops](crops.png)\n", "## Metric definitions\n", METRIC_DEFS]
    return "\n".join(lines) + "\n"
