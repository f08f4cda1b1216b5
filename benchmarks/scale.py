"""Large-scene benchmark: peak memory, seams, nodata and speed of the sarcodec CLI.

    python benchmarks/scale.py [--size 16384] [--speed-size 4096] [--quality 4] [--workdir DIR] [--presets default,fast]

1. Builds a size x size uint16 GeoTIFF (Sentinel-1 GRD-like amplitude) from the real 8-bit eval
   fragments: each 1024 x 1024 block is one fragment rescaled to 16-bit amplitude, with a wide
   nodata (0) border on the left and a slanted one at the top, as in real GRD scenes. Written
   window by window; nothing is committed.
2. Runs ``sarcodec encode`` and ``sarcodec decode`` as separate processes and reports wall time
   and peak memory (the process and its tile workers together, shared pages counted once).
3. Seams: PSNR of the dB image in 8-pixel bands centred on every tile border vs the interior.
4. Nodata: decoded nodata pixels must equal the input's exactly; bytes spent on all-nodata tiles.
5. Speed: the CLI (whole process, wall time) of each preset on a speed-size^2 real-derived image vs
   OpenJPEG (imagecodecs, 2 threads) at the same bpp, timed in-process (array in memory) and as a
   whole process like the CLI (Python start, GeoTIFF read or write included). Every speed is the
   median of --repeat runs (5), timed without the memory poll; peak memory comes from a separate run.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval" / "s1-vh-8bit"


def fragments() -> list[np.ndarray]:
    out = []
    for f in sorted(EVAL.glob("*.tif")):
        with rasterio.open(f) as ds:
            out.append(ds.read(1))
    if not out:
        sys.exit(f"no eval data in {EVAL}")
    return out


def to_amplitude16(v8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """8-bit display amplitude -> 16-bit DN-like amplitude (dithered, x 180), never 0."""
    return np.clip((v8.astype(np.float64) + rng.random(v8.shape)) * 180.0, 1, 65535).astype(np.uint16)


def nodata_mask(r0: int, c0: int, h: int, w: int, size: int) -> np.ndarray:
    rows = np.arange(r0, r0 + h)[:, None]
    cols = np.arange(c0, c0 + w)[None, :]
    left = cols < size // 10
    top = rows < (size // 12) + (cols * 0.05).astype(int) - size // 40
    return left | top


def build_mosaic(path: Path, size: int, with_nodata: bool = True) -> None:
    frags = fragments()
    rng = np.random.default_rng(0)
    with rasterio.open(EVAL / sorted(p.name for p in EVAL.glob("*.tif"))[0]) as ref:
        crs, transform = ref.crs, ref.transform
    prof = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint16", nodata=0, crs=crs, transform=transform,
                tiled=True, blockxsize=512, blockysize=512, compress="deflate", BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **prof) as ds:
        ds.set_band_description(1, "VH")
        k = 0
        for r0 in range(0, size, 1024):
            for c0 in range(0, size, 1024):
                h, w = min(1024, size - r0), min(1024, size - c0)
                blk = to_amplitude16(frags[k % len(frags)][:h, :w], rng)
                k += 1
                if with_nodata:
                    blk[nodata_mask(r0, c0, h, w, size)] = 0
                ds.write(blk, 1, window=Window(c0, r0, w, h))


def _kib(path: Path, field: str) -> float:
    for line in path.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _tree(pid: int) -> list[int]:
    """A process and all its descendants (the CLI's tile workers)."""
    out, todo = [], [pid]
    while todo:
        q = todo.pop()
        out.append(q)
        try:
            for t in Path(f"/proc/{q}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, ValueError):
            pass
    return out


def run_measured(args: list[str]) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak memory MiB, stderr).

    Peak memory: the larger of the process's own peak RSS (VmHWM) and the largest sum, polled every
    10 ms, of the proportional set size (PSS) of the process and its worker processes -- physical
    memory of the whole tree, pages shared between the forked workers counted once.  (getrusage of
    a forked child would also count the parent's pages at fork time.)
    """
    t = time.perf_counter()
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak_main = peak_tree = 0.0
    while p.poll() is None:
        try:
            peak_main = max(peak_main, _kib(Path(f"/proc/{p.pid}/status"), "VmHWM:"))
            peak_tree = max(peak_tree, sum(_kib(Path(f"/proc/{q}/smaps_rollup"), "Pss:") for q in _tree(p.pid)))
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    wall = time.perf_counter() - t
    err = p.stderr.read() if p.stderr else ""
    if p.returncode != 0:
        sys.exit(f"command failed: {' '.join(args)}\n{err}")
    return wall, max(peak_main, peak_tree), err.strip()


def run_timed(args: list[str], repeat: int) -> float:
    """Median wall time of ``repeat`` runs of a command, with nothing polling it (on 2 cores the
    memory poll of ``run_measured`` costs the timed process a few per cent)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        p = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - t)
        if p.returncode != 0:
            sys.exit(f"command failed: {' '.join(args)}\n{p.stderr}")
    return statistics.median(times)


def time_call(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``repeat`` in-process calls."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def cli(*a: object) -> list[str]:
    return [sys.executable, "-m", "sarcodec.cli", *map(str, a)]


def seam_psnr(orig: Path, dec: Path, tile: int) -> tuple[float, float]:
    """PSNR (dB image) of 8-pixel bands centred on tile borders vs the rest; valid pixels only."""
    se = {"border": 0.0, "interior": 0.0}
    n = {"border": 0, "interior": 0}
    lo, hi = math.inf, -math.inf
    with rasterio.open(orig) as a, rasterio.open(dec) as b:
        size_r, size_c = a.height, a.width
        for r0 in range(0, size_r, tile):
            win = Window(0, r0, size_c, min(tile, size_r - r0))
            va, vb = a.read(1, window=win).astype(np.float64), b.read(1, window=win).astype(np.float64)
            ok = va > 0
            da = 20 * np.log10(np.where(ok, va, 1))
            db = 20 * np.log10(np.where(ok, np.maximum(vb, 1), 1))
            lo, hi = min(lo, da[ok].min(initial=math.inf)), max(hi, da[ok].max(initial=-math.inf))
            rows = np.arange(r0, r0 + win.height)[:, None]
            cols = np.arange(size_c)[None, :]
            border = ((rows % tile) < 4) & (rows >= tile) | ((rows % tile) >= tile - 4) & (rows < size_r - 4)
            border = border | ((cols % tile) < 4) & (cols >= tile) | ((cols % tile) >= tile - 4) & (cols < size_c - 4)
            err = (da - db) ** 2
            for key, m in (("border", border & ok), ("interior", ~border & ok)):
                se[key] += float(err[m].sum())
                n[key] += int(m.sum())
    peak = hi - lo
    return tuple(10 * math.log10(peak**2 / (se[k] / max(1, n[k]))) for k in ("border", "interior"))  # type: ignore[return-value]


def nodata_check(orig: Path, dec: Path) -> bool:
    with rasterio.open(orig) as a, rasterio.open(dec) as b:
        for _, win in a.block_windows(1):
            if not np.array_equal(a.read(1, window=win) == 0, b.read(1, window=win) == 0):
                return False
    return True


def empty_tile_bytes(sarc: Path) -> tuple[int, int]:
    from sarcodec import bitstream

    with open(sarc, "rb") as f:
        r = bitstream.Reader(f, sarc.stat().st_size)
        sizes = [e.length for e in r.entries]
        flags = [r.payload(i)[0] for i in range(len(sizes))]
    empty = [s for s, fl in zip(sizes, flags) if fl & bitstream.FLAG_EMPTY]
    return len(empty), sum(empty)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--speed-size", type=int, default=4096)
    ap.add_argument("--quality", type=int, default=4)
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip-large", action="store_true", help="only the speed comparison")
    ap.add_argument("--skip-speed", action="store_true", help="only the large-mosaic measurements")
    ap.add_argument("--presets", default="default,fast", help="sarcodec presets to time (comma-separated)")
    ap.add_argument("--repeat", type=int, default=5, help="speed: median of this many runs of every timed step")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sarcodec-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if not args.skip_large:
        src = work / f"mosaic-{args.size}.tif"
        t = time.perf_counter()
        if not src.exists():
            build_mosaic(src, args.size)
        print(f"mosaic {args.size}x{args.size} uint16 built in {time.perf_counter() - t:.0f} s: {src}", flush=True)
        mpix = args.size * args.size / 1e6
        for preset in args.presets.split(","):
            sarc, dec = work / f"mosaic-{preset}.sarc", work / f"mosaic-{preset}-dec.tif"
            we, me, _ = run_measured(cli("encode", src, sarc, "--quality", args.quality, "--tile", args.tile, "--preset", preset, "--force"))
            wd, md, _ = run_measured(cli("decode", sarc, dec, "--force"))
            bpp = 8 * sarc.stat().st_size / (args.size * args.size)
            pb, pi = seam_psnr(src, dec, args.tile)
            n_empty, b_empty = empty_tile_bytes(sarc)
            rows = [
                ("mosaic", f"{args.size} x {args.size} uint16, q{args.quality}, tile {args.tile}, preset {preset}"),
                ("file size", f"{sarc.stat().st_size:,} bytes, {bpp:.3f} bpp"),
                ("encode", f"{we:.1f} s, {mpix / we:.2f} MPix/s, peak memory {me:.0f} MiB"),
                ("decode", f"{wd:.1f} s, {mpix / wd:.2f} MPix/s, peak memory {md:.0f} MiB"),
                ("seams (PSNR dB image)", f"8-px tile-border bands {pb:.2f} dB vs interior {pi:.2f} dB (diff {pb - pi:+.2f})"),
                ("nodata exact", str(nodata_check(src, dec))),
                ("all-nodata tiles", f"{n_empty} tiles, {b_empty} bytes in all"),
            ]
            for k, v in rows:
                print(f"{k:>24}: {v}", flush=True)
            dec.unlink()
    if args.skip_speed:
        return
    # speed: whole-process CLI (both presets) vs OpenJPEG (2 threads) at the same bpp
    s = args.speed_size
    src = work / f"speed-{s}.tif"
    if not src.exists():
        build_mosaic(src, s, with_nodata=False)
    mp = s * s / 1e6
    print(f"{'speed image':>24}: {s} x {s} uint16 real-derived, q{args.quality}", flush=True)
    for preset in args.presets.split(","):
        sarc, dec = work / f"speed-{preset}.sarc", work / f"speed-{preset}-dec.tif"
        enc_cmd = cli("encode", src, sarc, "--quality", args.quality, "--preset", preset, "--force")
        dec_cmd = cli("decode", sarc, dec, "--force")
        _, me, _ = run_measured(enc_cmd)  # peak memory; the times come from unpolled runs
        _, md, _ = run_measured(dec_cmd)
        we, wd = run_timed(enc_cmd, args.repeat), run_timed(dec_cmd, args.repeat)
        je, jd, jbpp, pe, pd = openjpeg_speed(src, work, 8.0 * sarc.stat().st_size, args.repeat)
        with rasterio.open(src) as a, rasterio.open(dec) as b:
            ok = a.read(1) > 0
            da = 20 * np.log10(np.maximum(a.read(1), 1.0))[ok]
            db = 20 * np.log10(np.maximum(b.read(1), 1.0))[ok]
        psnr = 10 * math.log10((da.max() - da.min()) ** 2 / np.mean((da - db) ** 2))
        rows = [
            (f"[{preset}] file", f"{8 * sarc.stat().st_size / (s * s):.3f} bpp, PSNR of the dB image {psnr:.2f} dB "
                                 f"(OpenJPEG at {jbpp:.3f} bpp)"),
            (f"[{preset}] CLI encode", f"{mp / we:.2f} MPix/s ({we:.2f} s whole process, peak memory {me:.0f} MiB)"),
            (f"[{preset}] CLI decode", f"{mp / wd:.2f} MPix/s ({wd:.2f} s whole process, peak memory {md:.0f} MiB)"),
            ("OpenJPEG encode (2 thr)", f"{mp / je:.2f} MPix/s in-process (array in memory); {mp / pe:.2f} MPix/s as a "
                                        f"whole process (read GeoTIFF, write .j2k)"),
            ("OpenJPEG decode (2 thr)", f"{mp / jd:.2f} MPix/s in-process; {mp / pd:.2f} MPix/s as a whole process "
                                        f"(read .j2k, write GeoTIFF)"),
            (f"[{preset}] ratios", f"encode {je / we:.2f}x OpenJPEG's in-process speed ({pe / we:.2f}x whole-process), "
                                   f"decode {jd / wd:.2f}x ({pd / wd:.2f}x)"),
        ]
        for k, v in rows:
            print(f"{k:>24}: {v}", flush=True)


OPJ_SCRIPT = r"""
import sys, time, imagecodecs, numpy as np, rasterio
mode, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "encode":
    with rasterio.open(a) as ds:
        arr = ds.read(1)
    open(b, "wb").write(imagecodecs.jpeg2k_encode(arr, level=float(sys.argv[4]), codecformat="J2K", numthreads=2))
else:
    arr = imagecodecs.jpeg2k_decode(open(a, "rb").read(), numthreads=2)
    with rasterio.open(b, "w", driver="GTiff", width=arr.shape[1], height=arr.shape[0], count=1, dtype=arr.dtype,
                       tiled=True, blockxsize=256, blockysize=256) as ds:
        ds.write(arr, 1)
"""


def openjpeg_speed(src: Path, work: Path, bits: float, repeat: int) -> tuple[float, float, float, float, float]:
    """OpenJPEG rate-matched to ``bits``: (encode s, decode s in-process, bpp, encode s, decode s whole
    process), each the median of ``repeat`` runs."""
    import imagecodecs

    from sarcodec.bench import _secant

    with rasterio.open(src) as ds:
        arr = ds.read(1)
    levels: dict = {}

    def enc(lv: float) -> bytes:
        out = imagecodecs.jpeg2k_encode(arr, level=lv, codecformat="J2K", numthreads=2)
        levels[len(out)] = lv
        return out

    data = _secant(enc, bits, 28.0, 40.0, 8.0, 120.0)
    level = levels[len(data)]
    je = time_call(lambda: imagecodecs.jpeg2k_encode(arr, level=level, codecformat="J2K", numthreads=2), repeat)
    jd = time_call(lambda: imagecodecs.jpeg2k_decode(data, numthreads=2), repeat)
    j2k, out = work / "speed.j2k", work / "speed-j2k-dec.tif"
    pe = run_timed([sys.executable, "-c", OPJ_SCRIPT, "encode", src, j2k, str(level)], repeat)
    pd = run_timed([sys.executable, "-c", OPJ_SCRIPT, "decode", j2k, out], repeat)
    return je, jd, 8.0 * len(data) / arr.size, pe, pd


if __name__ == "__main__":
    main()
