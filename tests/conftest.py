"""Shared fixtures: the shipped model and the real SAR data in ../shared/data."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SARCODEC_DATA", ROOT.parent / "shared" / "data"))
EVAL = DATA / "eval"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test data not available: {path}")
    return path


@pytest.fixture(scope="session", params=["default", "fast"])
def model(request):
    """Each shipped model in turn: the tests that take ``model`` run for both presets."""
    import sarcodec

    return sarcodec.load_model(preset=request.param)


@pytest.fixture(scope="session")
def s1_file() -> Path:
    return need(EVAL / "s1-vh-8bit" / "s1a-iw-grdh-vh-20201204-219.tif")


@pytest.fixture(scope="session")
def s1_array(s1_file) -> np.ndarray:
    import rasterio

    with rasterio.open(s1_file) as ds:
        return ds.read()


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "sarcodec.cli", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout, stdin=subprocess.DEVNULL)


def sea_with_ship(dtype: str) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Single-look sea clutter with a 2 x 3 px ship ~40 dB above it: too few pixels to move the
    band's 99.99th percentile (8 of these 81,920), far beyond what the decoder's range reproduces."""
    rng = np.random.default_rng(11)
    intensity = rng.gamma(1.0, 1.0, (256, 320))
    ship = (slice(100, 102), slice(200, 203))
    intensity[ship] = rng.uniform(1e4, 3e4, (2, 3))
    if dtype == "uint16":  # Sentinel-1 GRD-like amplitude DN
        return np.rint(40 * np.sqrt(intensity)).astype(np.uint16), ship
    return (0.02 * intensity).astype(dtype), ship
