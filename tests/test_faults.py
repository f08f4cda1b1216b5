"""Faults during output: disk full, unwritable target, Ctrl-C mid-write. Never a partial file."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

import sarcodec
from sarcodec import bitstream
from sarcodec.cli import app

from .conftest import EVAL, need


def leftovers(d):
    return [p.name for p in d.iterdir() if p.name.endswith(".partial")]


def test_disk_full_during_encode_leaves_nothing(tmp_path, s1_file, model, monkeypatch):
    real_add = bitstream.Writer.add

    def full(self, index, payload):
        real_add(self, index, payload[: len(payload) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bitstream.Writer, "add", full)
    with pytest.raises(OSError):
        sarcodec.encode_file(s1_file, tmp_path / "o.sarc", 4, model=model)
    assert not (tmp_path / "o.sarc").exists() and not leftovers(tmp_path)
    r = CliRunner().invoke(app, ["encode", str(s1_file), str(tmp_path / "o.sarc")])
    assert r.exit_code == 1 and "No space left on device" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.sarc").exists() and not leftovers(tmp_path)


def test_disk_full_during_decode_leaves_nothing(tmp_path, s1_file, model, monkeypatch):
    sarcodec.encode_file(s1_file, tmp_path / "a.sarc", 2, tile=256, model=model)
    from sarcodec import codec as codec_mod

    calls = {"n": 0}
    real = codec_mod.Decoder.decode_tile

    def failing(self, *a):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a)

    monkeypatch.setattr(codec_mod.Decoder, "decode_tile", failing)
    with pytest.raises(OSError):
        sarcodec.decode_file(tmp_path / "a.sarc", tmp_path / "o.tif", model=model)
    assert not (tmp_path / "o.tif").exists() and not leftovers(tmp_path)


def test_unwritable_target_is_one_clean_line(tmp_path, s1_file):
    r = CliRunner().invoke(app, ["encode", str(s1_file), "/proc/sarcodec-cannot-write-here.sarc"])
    assert r.exit_code in (1, 2) and "Traceback" not in r.output
    assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1


@pytest.mark.parametrize("extra", [[], ["--preset", "fast", "--workers", "2"]], ids=["default", "fast-2-workers"])
def test_ctrl_c_mid_write_leaves_nothing(tmp_path, extra):
    files = sorted(need(EVAL / "s1-vh-8bit").glob("*.tif"))[:4]
    tiles = []
    for f in files:
        with rasterio.open(f) as ds:
            tiles.append(ds.read(1))
            prof = ds.profile
    big = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]])
    src = tmp_path / "big.tif"
    prof.update(width=2048, height=2048)
    with rasterio.open(src, "w", **prof) as ds:
        ds.write(big, 1)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = subprocess.Popen([sys.executable, "-m", "sarcodec.cli", "encode", str(src), str(out_dir / "big.sarc"), "--tile", "64", *extra],
                         stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         # a shell running us in the background hands down SIGINT ignored; undo that
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not leftovers(out_dir) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    assert leftovers(out_dir), "encoder never started writing"
    time.sleep(0.05)  # 1,024 small tiles: seconds of work left, whatever the machine's speed
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert os.listdir(out_dir) == []
