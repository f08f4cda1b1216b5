"""Checks that need another machine: decoding there, and training on a CUDA GPU.

sarcodec promises that a file decodes the same everywhere (identical entropy-decoded symbols,
images equal up to float noise in the synthesis) and that ``sarcodec train`` runs on a GPU when
there is one.  ``tests/test_portability.py`` imitates other CPUs on the development machine; this
script takes the files to a real other machine (another CPU, torch and numpy version) and, where
it has a GPU, trains there.

    # here: encode real eval rasters, record what decoding them must give
    python benchmarks/device_check.py prepare DIR
    # there (sarcodec's tree on PYTHONPATH, constriction installed): compare
    python benchmarks/device_check.py decode DIR
    # there: `sarcodec train` options as keywords, e.g.
    python benchmarks/device_check.py train data=D1,D2 out=x.pt init=weights/sarcodec-hp7.pt batch=32 crop=256 \\
        workers=14 max_minutes=6 lr=1e-4 balance=1

The other machine need not have rasterio: ``train`` then reads the training rasters (8-bit GeoTIFF
and JPEG) with Pillow, which gives the same pixels.
"""
from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EVAL = ROOT.parent / "shared" / "data" / "eval"

# (name, source raster, crop window rows/cols, quality, preset)
CASES = [
    ("s1-q1", "s1-vh-8bit/s1a-iw-grdh-vh-20201204-219.tif", 512, 1, "default"),
    ("s1-q4", "s1-vh-8bit/s1a-iw-grdh-vh-20201204-219.tif", 512, 4, "default"),
    ("s1-q8", "s1-vh-8bit/s1a-iw-grdh-vh-20201204-219.tif", 512, 8, "default"),
    ("s1-fast-q4", "s1-vh-8bit/s1a-iw-grdh-vh-20201204-219.tif", 512, 4, "fast"),
    ("whu-q4", "float/whu-sentinel1_113_20171021_1220_VH_city_1_1.tif", 500, 4, "default"),
    ("sen1floods11-q2", "float/sen1floods11-Spain_7370579_S1Hand.tif", 512, 2, "default"),
    ("ship-q6", "float/opensarship-grd-dn-cargo_x10661_y11170.tif", 90, 6, "default"),
]


def latent_digest(data: bytes) -> str:
    import sarcodec.codec as codec

    h = hashlib.sha256()
    for y in codec.decode_latents(data):
        h.update(np.ascontiguousarray(y, dtype=np.float32).tobytes())
    return h.hexdigest()


def prepare(out: Path) -> None:
    import rasterio

    import sarcodec

    out.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, src, size, quality, preset in CASES:
        path = EVAL / src
        with rasterio.open(path) as ds:
            arr = ds.read()[:, :size, :size]
        data = sarcodec.encode_array(arr, quality, model=sarcodec.load_model(preset=preset))
        (out / f"{name}.sarc").write_bytes(data)
        image, _ = sarcodec.decode_array(data)
        expected[f"{name}.latents"] = np.frombuffer(latent_digest(data).encode(), np.uint8)
        expected[f"{name}.image"] = image
        print(f"{name}: {path.name} {arr.shape} {arr.dtype} -> {len(data)} bytes")
    np.savez_compressed(out / "expected.npz", **expected)


def decode(folder: Path) -> int:
    import torch

    import sarcodec

    print(f"torch {torch.__version__}, numpy {np.__version__}, python {sys.version.split()[0]}")
    expected = np.load(folder / "expected.npz")
    bad = 0
    for name, *_ in CASES:
        data = (folder / f"{name}.sarc").read_bytes()
        same = latent_digest(data) == bytes(expected[f"{name}.latents"]).decode()
        image, _ = sarcodec.decode_array(data)
        ref = expected[f"{name}.image"]
        floats = ref.dtype.kind == "f"
        exact = bool(np.array_equal(image, ref, equal_nan=floats))
        same &= bool(np.array_equal(np.isnan(image), np.isnan(ref))) if floats else True  # nodata where it was
        diff = float(np.nanmax(np.abs(image.astype(np.float64) - ref.astype(np.float64))))
        print(f"{name}: symbols {'identical' if same else 'DIFFER'}, image {'identical' if exact else f'max |diff| {diff:.3g}'}")
        bad += (not same) or diff > (1e-3 * float(np.nanmax(np.abs(ref))) if floats else 1)
    return 1 if bad else 0


def parse(value: str, kind: str) -> object:
    """A ``TrainConfig`` field's value from text (its annotation is a string here)."""
    if kind.startswith("list"):
        return [float(v) for v in value.split(",")] if "float" in kind else value.split(",")
    return {"bool": lambda v: v in ("1", "true", "yes"), "int": int, "float": float}.get(kind, str)(value)


def train(args: list[str]) -> None:
    import torch

    from sarcodec import train as train_mod

    try:
        import rasterio  # noqa: F401
    except ImportError:
        from PIL import Image

        train_mod.load_band = lambda p: np.asarray(Image.open(p))
    kinds = {f.name: str(f.type) for f in fields(train_mod.TrainConfig)}
    unknown = [a for a in args if "=" not in a or a.split("=", 1)[0] not in kinds]
    if unknown:
        sys.exit(f"not NAME=VALUE with a TrainConfig field: {' '.join(unknown)}")
    kw = {k: parse(v, kinds[k]) for k, v in (a.split("=", 1) for a in args)}
    cfg = train_mod.TrainConfig(**kw)
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}", flush=True)
    t0 = time.time()
    summary = train_mod.train(cfg, log=lambda m: print(f"[{time.time() - t0:6.0f} s] {m}", flush=True))
    print(f"{summary['steps']} steps, {summary['skipped']} skipped, {time.time() - t0:.0f} s in all")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("prepare", "decode", "train") or (sys.argv[1] != "train" and len(sys.argv) != 3):
        sys.exit(__doc__)
    what, rest = sys.argv[1], sys.argv[2:]
    if what == "prepare":
        prepare(Path(rest[0]))
    elif what == "decode":
        sys.exit(decode(Path(rest[0])))
    elif what == "train":
        train(rest)
    else:
        sys.exit(f"unknown command {what!r}: prepare, decode or train")
