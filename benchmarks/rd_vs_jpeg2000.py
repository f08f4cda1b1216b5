"""Rate-distortion of the shipped model against JPEG 2000, JPEG XL and AVIF on the evaluation data.

    python benchmarks/rd_vs_jpeg2000.py [--out bench-out] [--limit N] [--qualities 1-8] [--preset default|fast]
                                        [--weights FILE] [--codecs ...] [--sets s1,float,mstar]

Runs ``sarcodec bench`` on ``../shared/data/eval/s1-vh-8bit`` (PSNR on the 8-bit values) and on the
full-range files of ``../shared/data/eval/float`` (PSNR of the dB image; complex SLC files are left
out: sarcodec does not code them yet) -- the two sets the rate-distortion target is stated on --
and, with ``--sets mstar``, on the held-out airborne X-band scenes of
``../shared/data/eval/mstar-xband-8bit`` (8-bit, PSNR on the 8-bit values), then prints the
per-quality table, the BD-rates against ``jpeg2000-log`` and ``jpeg2000`` (and sarcodec's against
``jpegxl`` and ``avif``), and the entropy coder's overhead.  See sarcodec/bench.py for how every
codec is run and rate-matched.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT.parent / "shared" / "data" / "eval"


def main() -> None:
    from sarcodec.bench import CODECS, run
    from sarcodec.weights import load, load_preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--limit", type=int, default=0,
                    help="at most N Sentinel-1 (and MSTAR) images, and N float images per source family (whu, "
                         "opensarship, ...); 0: all")
    ap.add_argument("--qualities", default="1-8")
    ap.add_argument("--codecs", default=",".join(CODECS))
    ap.add_argument("--preset", default="default", help="shipped models to measure: default (the encoder chooses "
                    "among its models per file) or fast")
    ap.add_argument("--weights", type=Path, default=None, help="weights file to measure instead of a preset")
    ap.add_argument("--sets", default="s1,float",
                    help="comma-separated evaluation sets: s1 (s1-vh-8bit), float, mstar (mstar-xband-8bit)")
    ap.add_argument("--no-rdoq", dest="rdoq", action="store_false",
                    help="sarcodec rounds its latent at the model's thresholds instead of choosing symbols and coded latents by RDOQ (the encoder's default)")
    args = ap.parse_args()
    sets = set(args.sets.split(","))
    if not sets or sets - {"s1", "float", "mstar"}:
        ap.error("--sets takes a comma-separated list of s1, float and mstar")
    a, _, b = args.qualities.partition("-")
    qs = list(range(int(a), int(b or a) + 1)) if "," not in args.qualities else [int(x) for x in args.qualities.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="sarcodec-rd-"))
    dirs = []
    for name, folder, pattern in (("s1", "s1-vh-8bit", "*.tif"), ("mstar", "mstar-xband-8bit", "*.jpg")):
        if name not in sets:
            continue
        d = EVAL / folder
        if args.limit:  # the first N, as a folder of links
            d = tmp / folder
            d.mkdir()
            for f in sorted((EVAL / folder).glob(pattern))[: args.limit]:
                (d / f.name).symlink_to(f)
        dirs.append(d)
    if "float" in sets:  # without the complex SLC crops, as a folder of links so it stays one dataset
        flt = tmp / "float"
        flt.mkdir()
        per_family: dict[str, int] = {}
        for f in sorted((EVAL / "float").glob("*.tif")):
            family = f.name.split("-")[0]
            if "slc" in f.name or (args.limit and per_family.get(family, 0) >= args.limit):
                continue
            per_family[family] = per_family.get(family, 0) + 1
            (flt / f.name).symlink_to(f)
        dirs.append(flt)
    try:
        res = run(dirs, args.out, args.codecs.split(","), qs, load(args.weights) if args.weights else load_preset(args.preset),
                  rdoq=args.rdoq)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print((args.out / "report.md").read_text())
    print(json.dumps(res["summary"]["averaged"], indent=1))


if __name__ == "__main__":
    main()
