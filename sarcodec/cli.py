"""The ``sarcodec`` command line: a thin typer layer over the Python API.

Exit codes: 0 success, 2 bad input or usage, 1 other failures, 130 interrupted.
Errors are one line on stderr, never a traceback; outputs are written atomically.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional

import typer

from .parallel import auto_workers, start_workers

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="sarcodec: learned compression for SAR imagery.")

RASTER_SUFFIXES = (".tif", ".tiff", ".img", ".vrt", ".png", ".jpg", ".jpeg", ".jp2")


def _version(value: bool) -> None:
    if value:
        from . import __version__
        from .bitstream import MAJOR, MINOR
        from .weights import PRESETS

        models = ", ".join(f"{k} {' + '.join(v)}" for k, v in PRESETS.items())
        print(f"sarcodec {__version__} (writes .sarc {MAJOR}.{MINOR}; models: {models})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """sarcodec: learned compression for SAR imagery."""


def _fail(msg: str, code: int) -> None:
    print(f"sarcodec: error: {msg}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Map every failure to one line on stderr and an exit code."""
    from .bitstream import FormatError
    from .codec import DecodeError
    from .entropy import EntropyError
    from .io import InputError
    from .weights import WeightsError

    try:
        yield
    except typer.Exit:
        raise
    except (InputError, FormatError, DecodeError, EntropyError) as e:
        _fail(str(e), 2)
    except WeightsError as e:
        _fail(str(e), 1)
    except KeyboardInterrupt:
        _fail("interrupted; no output written", 130)
    except MemoryError:
        _fail("out of memory", 1)
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _fail(f"{where}{e.strerror or e}", 1)
    except Exception as e:  # noqa: BLE001 - last resort: still one line, no traceback
        _fail(f"internal error ({e.__class__.__name__}: {e})", 1)


@contextlib.contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as p:
        task = p.add_task(label, total=None)
        yield lambda done, total: p.update(task, completed=done, total=total)


def _emit(report, verb: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(vars(report)))
    else:
        print(report.line(verb), file=sys.stderr)


def _parse_window(s: str | None) -> tuple[int, int, int, int] | None:
    if s is None:
        return None
    try:
        parts = tuple(int(v) for v in s.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        _fail("--window must be COL,ROW,WIDTH,HEIGHT (four integers)", 2)
    return parts  # type: ignore[return-value]


WORKERS_HELP = ("Processes: for one file, tiles are coded in parallel; for several, files are. "
                "0: automatic (up to one per core, at most 4, where it pays). Output is identical for any number.")
PRESET_HELP = "default (best rate-distortion, torch) or fast (numpy only, several times faster)."
RDOQ_HELP = ("Choose the latent symbols, and which latents each tile codes, by rate-distortion optimisation (default; "
             "~1-3 % smaller files at the same "
             "quality; encoding ~2x slower on small chips, ~6x on large scenes; decoding unchanged); --no-rdoq rounds "
             "them. The fast preset always rounds.")


def _load(weights: Path | None, preset: str = "default"):
    """``--weights``' model, or else ``--preset``'s (the set encode chooses from, where it ships several)."""
    from .weights import load, load_preset

    return load(weights) if weights is not None else load_preset(preset)


def _expand_inputs(inputs: list[Path], output: Path, suffix: str) -> list[tuple[Path, Path]]:
    from .io import InputError

    if len(inputs) == 1 and not inputs[0].is_dir():
        return [(inputs[0], output)]
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in ((".sarc",) if suffix != ".sarc" else RASTER_SUFFIXES))
        elif p.exists():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file")
    if not files:
        raise InputError("no input files found")
    if output.exists() and not output.is_dir():
        raise InputError(f"{output}: must be a directory when there are several inputs")
    output.mkdir(parents=True, exist_ok=True)
    return [(f, output / (f.stem + suffix)) for f in files]


def _code_files(inputs: list[Path], suffix: str, fn: Callable, verb: str, as_json: bool, workers: int,
                weights: Path | None, preset: str | None, **kw) -> None:
    """``encode``/``decode`` on INPUT... OUTPUT: one file with a progress bar, or several via ``_run_many``.

    The model: ``weights`` or ``preset``'s shipped one; with neither (decode), the one each file names.
    """
    if len(inputs) < 2:
        _fail("need an INPUT and an OUTPUT", 2)
    jobs = _expand_inputs(inputs[:-1], inputs[-1], suffix)
    if len(jobs) > 1:
        _run_many(jobs, fn, workers, as_json, verb, weights=weights, preset=preset, **kw)
        return
    model = _load(weights, preset or "default") if weights is not None or preset is not None else None
    with _progress(verb[:-1] + "ing", not as_json and sys.stderr.isatty()) as prog:
        report = fn(jobs[0][0], jobs[0][1], model=model, progress=prog, workers=workers, **kw)
    _emit(report, verb, as_json)


def _run_many(jobs: list[tuple[Path, Path]], fn: Callable, workers: int, as_json: bool, verb: str, **kw) -> None:
    """Run ``fn(src, dst, **kw)`` on several files; failures are reported per file, exit 1 if any."""
    from concurrent.futures import ProcessPoolExecutor

    failures = 0
    workers = min(workers or auto_workers(), len(jobs))
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(workers,)) as ex:
            start_workers(ex)
            results = list(ex.map(_safe_call, [fn] * len(jobs), jobs, [kw] * len(jobs)))
    else:
        results = [_safe_call(fn, job, kw) for job in jobs]
    for (src, _), (report, err) in zip(jobs, results):
        if err:
            failures += 1
            print(f"sarcodec: error: {src}: {err}", file=sys.stderr)
        else:
            _emit(report, verb, as_json)
    if failures:
        raise typer.Exit(1)


def _worker_init(workers: int) -> None:
    if hasattr(signal, "pthread_sigmask"):  # forked by start_workers with SIGINT blocked: Ctrl-C stops workers too
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    n = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _safe_call(fn: Callable, job: tuple[Path, Path], kw: dict):
    try:
        kw = dict(kw)
        weights, preset = kw.pop("weights"), kw.pop("preset", None)
        if weights is not None or preset is not None:  # per process: models are not shared across processes
            kw["model"] = _load(weights, preset or "default")
        return fn(job[0], job[1], **kw), None
    except Exception as e:  # noqa: BLE001 - reported per file
        return None, str(e)


@app.command()
def encode(
    inputs: list[Path] = typer.Argument(..., help="Input raster(s) or folder, then the output .sarc (or output folder)."),
    quality: int = typer.Option(4, "--quality", "-q", min=1, max=8, help="1 = smallest file, 8 = most faithful."),
    domain: str = typer.Option("auto", help="auto, identity, log (linear amplitude/intensity) or db (values already in dB)."),
    tile: int = typer.Option(1024, help="Tile size in pixels (multiple of 64): the unit of random access."),
    preset: str = typer.Option("default", help=PRESET_HELP),
    weights: Optional[Path] = typer.Option(None, help="Weights file (default: the shipped model of --preset)."),
    workers: int = typer.Option(0, min=0, help=WORKERS_HELP),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per file on stdout."),
    rdoq: bool = typer.Option(True, "--rdoq/--no-rdoq", help=RDOQ_HELP),
) -> None:
    """Compress SAR raster(s) to .sarc."""
    from .codec import encode_file

    with _errors():
        _code_files(inputs, ".sarc", encode_file, "encoded", as_json, workers, weights, preset, quality=quality, force=force,
                    domain=domain, tile=tile, rdoq=rdoq)


@app.command()
def decode(
    inputs: list[Path] = typer.Argument(..., help="Input .sarc file(s) or folder, then the output GeoTIFF (or folder)."),
    window: Optional[str] = typer.Option(None, help="Decode only COL,ROW,WIDTH,HEIGHT (pixels)."),
    weights: Optional[Path] = typer.Option(None, help="Weights file (default: the shipped model the file names)."),
    compress: str = typer.Option("none", help="Lossless compression of the output GeoTIFF: none, deflate, zstd or lzw."),
    workers: int = typer.Option(0, min=0, help=WORKERS_HELP),
    force: bool = typer.Option(False, "--force", help="Overwrite existing outputs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per file on stdout."),
) -> None:
    """Decompress .sarc file(s) to GeoTIFF."""
    from .codec import decode_file

    with _errors():
        win = _parse_window(window)
        _code_files(inputs, ".tif", decode_file, "decoded", as_json, workers, weights, None, force=force, window=win,
                    compress=compress)


@app.command()
def info(
    input: Path = typer.Argument(..., help="A .sarc file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Describe a .sarc file without decoding it."""
    from .codec import info as sarc_info

    with _errors():
        d = sarc_info(input)
        if as_json:
            print(json.dumps(d))
            return
        from rich.console import Console
        from rich.table import Table

        t = Table(show_header=False, box=None)
        for k, v in d.items():
            if k == "crs" and v:
                v = v[:60] + ("..." if len(v) > 60 else "")
            if k == "bpp":
                v = f"{v:.4f}"
            t.add_row(k, str(v))
        Console().print(t)


@app.command()
def demo(
    quality: Optional[list[int]] = typer.Option(None, "--quality", "-q", help="Qualities to run (default: all)."),
    keep: Optional[Path] = typer.Option(None, help="Folder to keep the .sarc and decoded files in."),
    preset: str = typer.Option("default", help=PRESET_HELP),
) -> None:
    """Encode and decode the bundled Sentinel-1 sample at every quality; print bytes, bpp and PSNR."""
    import tempfile

    import numpy as np
    import rasterio
    from rich.console import Console
    from rich.table import Table

    from . import metrics
    from .codec import decode_file, encode_file

    with _errors():
        src = Path(__file__).parent / "data" / "demo-s1-vh.tif"
        model = _load(None, preset)
        qs = quality or list(range(1, 9))
        with tempfile.TemporaryDirectory() as td:
            out = keep or Path(td)
            out.mkdir(parents=True, exist_ok=True)
            with rasterio.open(src) as ds:
                ref = ds.read()
            t = Table(title=f"sarcodec demo: {src.name} ({ref.shape[2]}x{ref.shape[1]} uint8, Sentinel-1 VH), model {model.name}")
            for col in ("quality", "model", "bytes", "bpp", "ratio", "PSNR dB", "encode s", "decode s"):
                t.add_column(col, justify="right")
            for q in qs:
                e = encode_file(src, out / f"demo-q{q}.sarc", q, force=True, model=model)
                d = decode_file(out / f"demo-q{q}.sarc", out / f"demo-q{q}.tif", force=True, model=model)
                with rasterio.open(out / f"demo-q{q}.tif") as ds:
                    rec = ds.read()
                t.add_row(str(q), e.model.removeprefix("sarcodec-"), f"{e.bytes:,}", f"{e.bpp:.3f}", f"{e.ratio:.1f}", f"{metrics.psnr(ref, rec, 255.0):.2f}",
                          f"{e.seconds:.2f}", f"{d.seconds:.2f}")
                assert rec.shape == ref.shape and rec.dtype == np.uint8
            Console().print(t)


def _parse_qualities(s: str) -> list[int]:
    qs: list[int] = []
    for part in s.split(","):
        a, _, b = part.partition("-")
        try:
            lo, hi = int(a), int(b or a)
        except ValueError:
            _fail(f"--qualities: cannot parse {s!r} (e.g. 1-8 or 1,4,8)", 2)
        qs += list(range(lo, hi + 1))
    if not qs or min(qs) < 1 or max(qs) > 8:
        _fail("--qualities must lie in 1..8", 2)
    return sorted(set(qs))


@app.command()
def bench(
    data: list[Path] = typer.Option(..., "--data", help="Image file or folder (repeatable); each folder is a dataset."),
    out: Path = typer.Option(Path("bench-out"), "--out", help="Output folder (results.csv/json, rd.png, crops.png, report.md)."),
    codecs: str = typer.Option("all", help="Comma-separated codecs (sarcodec, jpeg2000, jpeg2000-log, jpegxl, avif, lossless), or all."),
    qualities: str = typer.Option("1-8", help="sarcodec qualities, e.g. 1-8 or 2,4,6."),
    limit: int = typer.Option(0, help="At most this many images per dataset (0: all)."),
    preset: str = typer.Option("default", help=PRESET_HELP),
    weights: Optional[Path] = typer.Option(None, help="Weights file (default: the shipped model of --preset)."),
    as_json: bool = typer.Option(False, "--json", help="Print the BD-rate summary as JSON on stdout."),
    rdoq: bool = typer.Option(True, "--rdoq/--no-rdoq", help="sarcodec's encoder setting (see encode --help)."),
) -> None:
    """Rate-distortion, radiometry and speed against JPEG 2000, JPEG XL, AVIF and lossless references."""
    from .bench import CODECS, run as run_bench

    with _errors():
        qs = _parse_qualities(qualities)
        for p in data:
            if not p.exists():
                _fail(f"{p}: no such file or folder", 2)
        try:
            names = list(CODECS) if codecs.strip() == "all" else [c.strip() for c in codecs.split(",") if c.strip()]
            res = run_bench(data, out, names, qs, _load(weights, preset),
                            progress=sys.stderr.isatty(), limit=limit, rdoq=rdoq)
        except ValueError as e:
            _fail(str(e), 2)
        if as_json:
            print(json.dumps(res["summary"]["averaged"]))
        else:
            for a in res["summary"]["averaged"]:
                print(f"{a['dataset']}: {a['codec']} vs {a['anchor']}: BD-rate {a['bd_rate']:+.1f} %, BD-PSNR {a['bd_psnr']:+.2f} dB "
                      f"({a['images']} images)", file=sys.stderr)
            print(f"wrote {out}/results.csv, results.json, rd.png, crops.png, report.md", file=sys.stderr)


@app.command()
def train(
    data: list[Path] = typer.Option(..., "--data", help="Folder or raster file with training images (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Exported weights file, e.g. weights/NAME.pt (checkpoint: NAME.ckpt)."),
    val: Optional[list[Path]] = typer.Option(None, "--val", help="Validation folder/files; default: hold out --val-split of --data."),
    val_split: float = typer.Option(0.05, help="Fraction of --data files held out for validation when --val is not given."),
    steps: int = typer.Option(20000, help="Maximum number of optimiser steps."),
    max_minutes: float = typer.Option(0.0, help="Stop after this much training time (0: no limit); the LR schedule follows it."),
    batch: int = typer.Option(6),
    crop: int = typer.Option(192, help="Crop size (multiple of 64)."),
    lr: float = typer.Option(2e-4),
    seed: int = typer.Option(0),
    val_every: int = typer.Option(1000),
    checkpoint_every: int = typer.Option(250),
    resume: bool = typer.Option(False, help="Continue from OUT's .ckpt."),
    init: Optional[Path] = typer.Option(None, help="Start from an exported weights file (e.g. the shipped model)."),
    grow: int = typer.Option(0, help="With --init: add this many bottleneck residual blocks at 1/16 resolution to its synthesis (they start as the identity)."),
    film: bool = typer.Option(False, "--film", help="With --init: give its synthesis per-quality feature scales and shifts (they start as the identity)."),
    lambdas: Optional[str] = typer.Option(None, help="Comma-separated rate-distortion lambdas, one per quality (overrides the model's)."),
    compile: bool = typer.Option(False, "--compile", help="Use torch.compile (off by default; broken on some platforms)."),
    device: str = typer.Option("auto", help="auto (CUDA if present), cpu or cuda."),
    threads: int = typer.Option(0, help="torch CPU threads (0: torch default)."),
    workers: int = typer.Option(-1, help="Processes that draw training crops ahead of the model (0: between steps; -1: none on the CPU, all cores but two, at most 14, on a GPU)."),
    balance: bool = typer.Option(False, "--balance", help="Weight each quality's loss by 1 / its running mean (relative gains count equally)."),
    sample_by: str = typer.Option("file", help="How crops pick their raster: file (each alike), pixels (by size) or source (each --data alike, by size within)."),
    partial: float = typer.Option(0.25, help="Share of crops whose last block row/column is partly padding (as at image edges)."),
    full_range: float = typer.Option(0.5, help="Share of crops turned into re-speckled full-range intensities (log domain); the rest are coded as 8-bit."),
    despeckled: float = typer.Option(0.0, help="Share of crops drawn first as despeckled full-range products (block-multilooked, decimated, Lee-filtered), like multi-temporal averages."),
    preset: str = typer.Option("default", help="Architecture to train from scratch: default or fast (ignored with --init/--resume)."),
    qualities: str = typer.Option("1-8", help="Qualities the crops are drawn at and validated on, e.g. 4-8 (a model for part of the ladder)."),
    despeckled_filters: str = typer.Option("fixed", help="Lee filtering of the despeckled products: fixed (5x5, 4 looks), mixed (one of five per crop, lighter to heavier), heavy (one of three heavier ones) or all (any of the eight)."),
    ensemble: Optional[list[Path]] = typer.Option(None, help="Weights file of a model the trained one is to join in a preset (repeatable): each crop's loss is weighted by the chance this model codes it cheaper than the best of them, and the export is selected by the set's score."),
    ensemble_temperature: float = typer.Option(0.03, help="With --ensemble: how sharply the weight falls where this model is the dearer (on the log of the loss)."),
) -> None:
    """Train a model (rate-distortion, all eight qualities at once) and export it."""
    from .config import ModelConfig
    from .train import LEE_FILTERS, SAMPLING, TrainConfig, train as run
    from .weights import PRESETS

    with _errors():
        if crop % 64:
            _fail("--crop must be a multiple of 64", 2)
        for name, share in (("partial", partial), ("full-range", full_range), ("despeckled", despeckled)):
            if not 0.0 <= share <= 1.0:
                _fail(f"--{name} must be in 0..1", 2)
        if sample_by not in SAMPLING:
            _fail(f"--sample-by must be one of {', '.join(SAMPLING)}", 2)
        if despeckled_filters not in LEE_FILTERS:
            _fail(f"--despeckled-filters must be one of {', '.join(LEE_FILTERS)}", 2)
        if preset not in PRESETS:
            _fail(f"--preset must be one of {', '.join(PRESETS)}", 2)
        if grow and not init:
            _fail("--grow needs --init", 2)
        if film and not init:
            _fail("--film needs --init", 2)
        from .train import pick_device

        try:
            pick_device(device)
        except ValueError as e:
            _fail(f"--{e}", 2)
        if workers < -1:
            _fail("--workers must be -1 (automatic) or >= 0", 2)
        if not 0 <= grow <= 8:
            _fail("--grow must be in 0..8", 2)
        if not ensemble_temperature > 0:
            _fail("--ensemble-temperature must be > 0", 2)
        for f in ensemble or []:
            if not f.is_file():
                _fail(f"--ensemble: no such weights file: {f}", 2)
        cfg = TrainConfig(
            data=[str(d) for d in data], out=str(out), val=[str(v) for v in (val or [])], val_split=val_split, steps=steps,
            max_minutes=max_minutes, batch=batch, crop=crop, lr=lr, seed=seed, val_every=val_every,
            checkpoint_every=checkpoint_every, resume=resume, compile=compile, device=device, threads=threads, workers=workers,
            init=str(init) if init else "", grow=grow, film=film, partial=partial, full_range=full_range, despeckled=despeckled,
            balance=balance, qualities=_parse_qualities(qualities), despeckled_filters=despeckled_filters,
            ensemble=[str(f) for f in ensemble or []], ensemble_temperature=ensemble_temperature,
            sample_by=sample_by, lambdas=[float(v) for v in lambdas.split(",")] if lambdas else [],
            model=(ModelConfig.fast() if preset == "fast" else ModelConfig()).to_dict(),
        )
        run(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))


def _tune_allocator() -> None:
    """Let glibc keep freed tile-sized arrays in the heap instead of handing them back to the OS.

    Every tile allocates several 1-16 MB arrays; by default glibc serves each with a fresh mmap()
    that faults in page by page and is unmapped again on free.  Serving them from the heap, trimmed
    only past 256 MiB, took the CLI's fast decode of a 4096 x 4096 image from 0.48-0.50 s to
    0.44-0.45 s with the same peak memory.  This is the command-line process's own policy, so it is
    set here and never by the library; MALLOC_* variables in the environment take precedence, and
    it does nothing where there is no glibc.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    mallopt(m_mmap_threshold, 16 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def main() -> None:
    _tune_allocator()
    app()


if __name__ == "__main__":
    main()
