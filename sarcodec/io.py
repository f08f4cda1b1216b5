"""Raster input/output through rasterio, metadata capture, and atomic output files.

Reading: any GDAL raster with 1..N bands of uint8, uint16, int16 or float32, read window by window.
Writing: a tiled, deflate-compressed GeoTIFF with the same size, band count, dtype, CRS,
geotransform, GCPs, nodata, band descriptions, units, scales/offsets and tags as the input.
Outputs go to a temporary file in the target directory, are flushed and fsync'ed, then renamed:
an interrupted or failed run leaves no partial file and never touches the input.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np

from .bitstream import DTYPES as SUPPORTED_DTYPES


class InputError(ValueError):
    """Bad input or usage (exit code 2)."""


def _rasterio():
    import rasterio

    return rasterio


GDAL_CACHE_MB = 256  # bounds GDAL's block cache (default: 5% of RAM) so memory follows the tile size


def gdal_env():
    """rasterio environment for streaming work: a bounded block cache."""
    return _rasterio().Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


def check_input_path(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied")


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator:
    """Open a raster for reading, turning GDAL failures into one-line ``InputError``s."""
    rasterio = _rasterio()
    path = Path(path)
    check_input_path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = rasterio.open(path)
    except rasterio.errors.RasterioIOError:
        raise InputError(f"{path}: not a raster GDAL can read") from None
    with ds:
        dtype = ds.dtypes[0]
        if ds.count < 1 or ds.width < 1 or ds.height < 1:
            raise InputError(f"{path}: raster has no pixels")
        if len(set(ds.dtypes)) != 1:
            raise InputError(f"{path}: bands have different data types ({', '.join(sorted(set(ds.dtypes)))})")
        if dtype.startswith("complex"):
            raise InputError(f"{path}: complex (SLC) data is not supported yet; convert it to amplitude or intensity first")
        if dtype not in SUPPORTED_DTYPES:
            raise InputError(f"{path}: data type {dtype} is not supported (use {', '.join(SUPPORTED_DTYPES)})")
        yield ds


def compact_crs(crs) -> str | None:
    """'EPSG:n' when that code reproduces the CRS exactly, else its WKT (saves ~1 kB per file)."""
    if not crs:
        return None
    from rasterio.crs import CRS

    epsg = crs.to_epsg()
    if epsg is not None and CRS.from_epsg(epsg).to_wkt() == crs.to_wkt():
        return f"EPSG:{epsg}"
    return crs.to_wkt()


def raster_metadata(ds) -> dict:
    """Everything the decoded GeoTIFF must carry, as JSON-able values (Header fields).  A tag
    AREA_OR_POINT=Area is left out where the raster has a CRS: a GeoTIFF with one reports it when the
    tag is absent (GDAL writes pixel-is-area), so the decoded file carries it all the same."""
    gcps, gcp_crs = ds.gcps
    tags = dict(ds.tags())
    if tags.get("AREA_OR_POINT") == "Area" and (ds.crs or gcp_crs):
        del tags["AREA_OR_POINT"]
    return {
        "width": ds.width,
        "height": ds.height,
        "bands": ds.count,
        "dtype": ds.dtypes[0],
        "nodata": None if ds.nodata is None else float(ds.nodata),
        "crs": compact_crs(ds.crs),
        "transform": None if ds.transform.is_identity else list(ds.transform)[:6],
        "gcps": [[g.id, g.info, g.row, g.col, g.x, g.y, g.z] for g in gcps],
        "gcp_crs": compact_crs(gcp_crs),
        "descriptions": list(ds.descriptions),
        "tags": tags,
        "band_tags": [dict(ds.tags(i + 1)) for i in range(ds.count)],
        "units": list(ds.units),
        "scales": [float(s) for s in ds.scales],
        "offsets": [float(o) for o in ds.offsets],
    }


def window_metadata(meta: dict, col: int, row: int) -> dict:
    """Georeferencing of a sub-image starting at (col, row)."""
    out = dict(meta)
    if meta.get("transform"):
        a, b, c, d, e, f = meta["transform"]
        out["transform"] = [a, b, c + a * col + b * row, d, e, f + d * col + e * row]
    out["gcps"] = [[g[0], g[1], g[2] - row, g[3] - col, g[4], g[5], g[6]] for g in meta.get("gcps", [])]
    return out


def check_output_path(dst: Path, force: bool, src: Path | None = None) -> None:
    if src is not None and dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise InputError(f"{dst}: output would overwrite the input")
    if dst.is_dir():
        raise InputError(f"{dst}: is a directory")
    if dst.exists() and not force:
        raise InputError(f"{dst}: already exists (use --force to overwrite)")
    parent = dst.parent if str(dst.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{parent}: output directory does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{parent}: output directory is not writable")


@contextlib.contextmanager
def atomic_output(dst: str | Path, force: bool = False, src: str | Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; on success fsync and rename it to ``dst``."""
    dst = Path(dst)
    check_output_path(dst, force, Path(src) if src else None)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.partial")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dst)
        with contextlib.suppress(OSError):
            dfd = os.open(dst.parent if str(dst.parent) else ".", os.O_RDONLY)
            os.fsync(dfd)
            os.close(dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


COMPRESSIONS = ("none", "deflate", "zstd", "lzw")


@contextlib.contextmanager
def create_geotiff(path: Path, meta: dict, width: int, height: int, compress: str = "none") -> Iterator:
    """Open a tiled GeoTIFF for writing with ``meta`` (Header fields) applied.

    ``compress`` is the GeoTIFF's own (lossless) compression of the decoded values; ``none`` by
    default, as decoded speckle barely compresses (deflate: -2.5 % on a decoded 16-bit scene, at
    13x the write time).  Compressed outputs use all cores.
    """
    rasterio = _rasterio()
    from rasterio.control import GroundControlPoint
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    if compress not in COMPRESSIONS:
        raise InputError(f"unknown compression {compress!r}; choose one of {', '.join(COMPRESSIONS)}")
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": meta["bands"],
        "dtype": meta["dtype"],
        "BIGTIFF": "IF_SAFER",
    }
    if compress != "none":
        profile.update(compress=compress, num_threads="ALL_CPUS")
        if compress == "deflate":
            profile["zlevel"] = 1
    if width >= 256 and height >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    if meta.get("nodata") is not None:
        profile["nodata"] = meta["nodata"]
    if meta.get("crs"):
        profile["crs"] = CRS.from_user_input(meta["crs"])
    if meta.get("transform"):
        profile["transform"] = Affine(*meta["transform"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = rasterio.open(path, "w", **profile)
    with ds:
        if meta.get("gcps"):
            gcps = [GroundControlPoint(row=g[2], col=g[3], x=g[4], y=g[5], z=g[6], id=g[0], info=g[1]) for g in meta["gcps"]]
            ds.gcps = (gcps, CRS.from_user_input(meta["gcp_crs"]) if meta.get("gcp_crs") else None)
        if meta.get("tags"):
            ds.update_tags(**meta["tags"])
        for i in range(meta["bands"]):
            if i < len(meta.get("descriptions") or []) and meta["descriptions"][i]:
                ds.set_band_description(i + 1, meta["descriptions"][i])
            if i < len(meta.get("band_tags") or []) and meta["band_tags"][i]:
                ds.update_tags(i + 1, **meta["band_tags"][i])
            if i < len(meta.get("units") or []) and meta["units"][i]:
                ds.set_band_unit(i + 1, meta["units"][i])
        if meta.get("scales") and any(s != 1.0 for s in meta["scales"]):
            ds.scales = tuple(meta["scales"])
        if meta.get("offsets") and any(o != 0.0 for o in meta["offsets"]):
            ds.offsets = tuple(meta["offsets"])
        yield ds


def write_window(ds, band: int, row: int, col: int, block: np.ndarray) -> None:
    from rasterio.windows import Window

    ds.write(block, band + 1, window=Window(col, row, block.shape[1], block.shape[0]))


def read_window(ds, band: int, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
    from rasterio.windows import Window

    return ds.read(band + 1, window=Window(col0, row0, col1 - col0, row1 - row0))


def read_sample(ds, band: int, max_pixels: int) -> np.ndarray:
    """The whole band, or every k-th pixel of every k-th row (at most ``max_pixels``).

    Read in strips of full rows: GDAL's decimating ``out_shape`` read is an order of magnitude
    slower on compressed tiled GeoTIFFs (17 s vs 0.3 s for 4096 x 4096 deflate), and only one strip
    is in memory at a time.
    """
    import math

    if ds.width * ds.height <= max_pixels:
        return ds.read(band + 1)
    k = math.ceil(math.sqrt(ds.width * ds.height / max_pixels))
    strip = max(k, (2048 // k) * k)  # rows per read, a multiple of k so the row phase stays fixed
    parts = [read_window(ds, band, r, min(r + strip, ds.height), 0, ds.width)[::k, ::k] for r in range(0, ds.height, strip)]
    return np.concatenate(parts)
