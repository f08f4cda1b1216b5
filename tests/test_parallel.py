"""Tile-level worker processes: the same bytes and pixels for any number of workers, errors and
regions handled as in one process."""
from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import sarcodec
from sarcodec import bitstream
from sarcodec.parallel import fork_available

from .conftest import run_cli, sha

pytestmark = pytest.mark.skipif(not fork_available(), reason="tile workers need fork (Linux)")


def test_workers_give_identical_files_and_pixels(s1_array, model):
    src = s1_array[0, :600, :700]
    one = sarcodec.encode_array(src, 4, tile=256, model=model, workers=1)
    two = sarcodec.encode_array(src, 4, tile=256, model=model, workers=2)
    assert one == two
    a, _ = sarcodec.decode_array(one, model=model, workers=1)
    b, _ = sarcodec.decode_array(one, model=model, workers=3)
    assert np.array_equal(a, b)
    win = (100, 250, 400, 300)  # a region across tile borders, latents decoded by the workers
    c, _ = sarcodec.decode_array(one, model=model, window=win, workers=2)
    assert np.array_equal(c[0], a[0, 250:550, 100:500])


def test_cli_workers_on_a_file(tmp_path, s1_file):
    outs = []
    for w in ("1", "2"):
        sarc, tif = tmp_path / f"a{w}.sarc", tmp_path / f"a{w}.tif"
        r = run_cli("encode", s1_file, sarc, "--preset", "fast", "--tile", "256", "--workers", w)
        assert r.returncode == 0, r.stderr
        r = run_cli("decode", sarc, tif, "--workers", w)
        assert r.returncode == 0, r.stderr
        outs.append((sha(sarc), sha(tif)))
    assert outs[0][0] == outs[1][0]
    import rasterio

    with rasterio.open(tmp_path / "a1.tif") as d1, rasterio.open(tmp_path / "a2.tif") as d2:
        assert np.array_equal(d1.read(), d2.read())
        assert d1.transform == d2.transform and d1.crs == d2.crs


def test_bad_tile_in_a_worker_is_one_clean_line(tmp_path, s1_array):
    fast = sarcodec.load_model(preset="fast")
    data = sarcodec.encode_array(s1_array[0, :512, :512], 4, tile=128, model=fast)
    r = bitstream.Reader(io.BytesIO(data), len(data))
    payloads = [r.payload(i) for i in range(r.header.n_tiles)]
    # checksums fine, tile unusable (flags say whole words, the length says otherwise): found by the worker decoding it
    p = payloads[9] if payloads[9][0] & bitstream.FLAG_TRIMMED else payloads[9][:-1]
    payloads[9] = bytes([p[0] & ~bitstream.FLAG_TRIMMED]) + p[1:]
    bad = tmp_path / "bad.sarc"
    bad.write_bytes(bitstream.pack(r.header, payloads))
    res = run_cli("decode", bad, tmp_path / "out.tif", "--workers", "2")
    assert res.returncode == 2, res.stderr
    assert "tile 9: latent length does not match the tile flags" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert list(tmp_path.iterdir()) == [bad]  # no output, no partial file


def test_ctrl_c_while_workers_fork_is_not_lost(tmp_path):
    """A SIGINT that lands while the pool forks is raised inside Python's at-fork handlers, which
    print and drop exceptions: the run would carry on and finish as if never interrupted."""
    script = tmp_path / "fork_int.py"
    script.write_text(textwrap.dedent("""
        import os, signal
        from sarcodec.parallel import TileMap
        def ident(state, i):
            return i

        os.register_at_fork(after_in_parent=lambda: os.kill(os.getpid(), signal.SIGINT))
        try:
            with TileMap(None, lambda: None, 2) as tm:
                done = list(tm.imap(ident, [(i,) for i in range(50)]))
        except KeyboardInterrupt:
            print("interrupted")
        else:
            print("finished", len(done))
    """))
    # SIG_DFL in the child: a pytest started as a background job (SIGINT ignored) would hand the
    # ignored SIGINT down, and a Python started so installs no KeyboardInterrupt handler
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.stdout.strip() == "interrupted", r.stdout + r.stderr
