"""Rate-distortion training of ``SarCodecModel`` on SAR rasters (CPU or CUDA, same code).

Training samples go through the same preprocessing as ``encode`` (``sarcodec.preprocess``):

* half of the crops (``1 - full_range``) are coded as the 8-bit product they are (``identity`` domain, v/255);
* the other half (``full_range``) are turned into full-dynamic-range intensities -- ``(v/255)^2``, re-speckled
  with Gamma(L, 1/L) speckle (L = 1..5 looks, or none), in 30 % of the crops averaged spatially
  (a Gaussian multilook, sigma 0.6-2.5 px: weak-speckle products such as multi-temporal averages,
  whose neighbouring pixels differ by ~0.2-0.3 dB where the 8-bit sources differ by ~0.9 dB),
  random gain over 60 dB -- and mapped with the ``log`` domain fitted on the crop, as ``encode``
  does for uint16 / float32 input;
* with ``despeckled`` > 0, that share of the crops is drawn first as despeckled full-range products
  (``despeckled_product``: block-multilooked, decimated and Lee-filtered; sharp structure, weak speckle).

With ``ensemble`` (weights files of the models of a preset) the model is trained to join them: the
encoder codes each file with whichever model of its preset is cheapest, so each crop's loss is
weighted by the chance that this model is cheaper on it than the best of them (``win_weights``), and
the export is selected by the validation score of the per-crop cheaper of the two.

In ``partial`` of the crops the last rows and/or columns (up to one latent block less 1 px) are
replaced by copies of the last kept row / column and left out of the distortion and the pixel
count: what ``encode`` does to an image whose size is not a multiple of the block, so the model
learns to code the real pixels of a partial block well (small chips have many of them).

Each crop gets a random quality q in 0..7 (``qualities``: in that subset); its loss is ``L = bpp + lambda_q * 255^2 * MSE`` over the
real pixels of the normalised image, computed in float32.  The batch
loss is the mean of L, or with ``balance`` the mean of L / (running mean of L at that quality),
times the mean over qualities of those running means: the gradient of sum_q log L_q, which counts
a relative improvement equally at every quality.  Plain L lets the high qualities (L ~ 2.5 at q8,
~0.18 at q1) dominate the shared transforms, while BD-rate, measured on log-rate, gains ~3x more
from a dB at the low rates (~2 dB per rate doubling there, ~7 at q8).  Validation then selects by
the mean over qualities of log L_q.

CUDA runs the same float32 model (cuDNN may use TF32 for the convolutions).  No autocast: float16
autocast, which this module used on CUDA before, needs a gradient scaler against underflowing
gradients and moves the rate estimate (q1's bpp by 1.5 % in a CPU-autocast check), and on an H200
the float32 model kept the GPU only a quarter busy: the CPU side sets the pace (drawing crops, and
dispatching the ~5,000 operator calls of a step, which ``--compile`` may cut; not yet tried there).
With ``workers`` that many processes draw them ahead of the model (``BatchLoader``; by default
none on the CPU and all cores but two on a GPU).

Non-finite losses are skipped and counted, never stepped on or saved.  A checkpoint (model,
optimiser, step, best) is written every ``checkpoint_every`` steps and ``--resume`` continues from
it; the best model by validation loss is exported with ``sarcodec.weights.export``.
"""
from __future__ import annotations

import functools
import math
import multiprocessing
import queue
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import metrics
from .codec import pad_to
from .model import ModelConfig, SarCodecModel
from .parallel import fork_available, sigint_blocked, usable_cores
from .preprocess import fit_mapping

RASTER_SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}


@dataclass
class TrainConfig:
    data: list[str]
    out: str
    val: list[str] = field(default_factory=list)
    val_split: float = 0.05
    steps: int = 20000
    max_minutes: float = 0.0  # 0 = no time limit
    batch: int = 6
    crop: int = 192
    lr: float = 2e-4
    seed: int = 0
    val_every: int = 1000
    checkpoint_every: int = 250
    resume: bool = False
    init: str = ""  # exported weights file to start from (continue training across sessions)
    grow: int = 0  # with init: bottleneck residual blocks added to its synthesis at 1/16 (see training_model_from_weights)
    film: bool = False  # with init: add per-quality scales and shifts to its synthesis (model.QualityFilm)
    lambdas: list[float] = field(default_factory=list)  # override the model's rate-distortion ladder
    compile: bool = False
    device: str = "auto"
    threads: int = 0
    workers: int = -1  # data-loading processes (BatchLoader); 0 draws the crops between steps; -1: loader_workers
    balance: bool = False  # weight each quality's loss by 1 / its running mean (see module docstring)
    sample_by: str = "file"  # how crops pick their raster: see sampling_weights
    partial: float = 0.25  # share of crops with a partial last block row / column (see module docstring)
    full_range: float = 0.5  # share of crops made full-range intensities (see module docstring)
    despeckled: float = 0.0  # share of crops made despeckled full-range products (despeckled_product), before full_range
    qualities: list[int] = field(default_factory=list)  # 1-based qualities the crops are drawn at (empty: all)
    despeckled_filters: str = "fixed"  # the Lee filtering of despeckled products: a key of LEE_FILTERS
    ensemble: list[str] = field(default_factory=list)  # weights files of the models the trained one is to join (see win_weights)
    ensemble_temperature: float = 0.03  # of win_weights, on the log of the loss
    model: dict = field(default_factory=dict)  # architecture: ModelConfig.to_dict() (empty: the default model)


def list_rasters(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in RASTER_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"training data not found: {p}")
    return files


def split_files(files: list[Path], val_split: float) -> tuple[list[Path], list[Path]]:
    """(validation, training) files: a fixed pseudo-random ``val_split`` share held out."""
    order = np.random.default_rng(99).permutation(len(files))
    n_val = max(1, int(round(len(files) * val_split)))
    return [files[i] for i in sorted(order[:n_val])], [files[i] for i in sorted(order[n_val:])]


SAMPLING = ("file", "pixels", "source")


def check_sample_by(how: str) -> None:
    if how not in SAMPLING:
        raise ValueError(f"sample_by must be one of {', '.join(SAMPLING)}")


def sampling_weights(sizes: list[int], sources: list[int], how: str) -> np.ndarray | None:
    """Probability of each training raster per crop: ``file`` -- every file alike (None: the
    original uniform draw, so older recipes reproduce); ``pixels`` -- by pixel count; ``source`` --
    each ``--data`` argument alike, by pixel count within it.  With the shipped data, ``file`` gives
    the 450 small MSTAR scenes 86 % of the crops and Sentinel-1 14 %; ``source`` gives 50 / 50."""
    check_sample_by(how)
    if how == "file":
        return None
    w = np.asarray(sizes, dtype=np.float64)
    if how == "source":
        src = np.asarray(sources)
        for s in np.unique(src):
            w[src == s] /= w[src == s].sum()
    return w / w.sum()


def load_band(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)


def random_sample(img: np.ndarray, crop: int, rng: np.random.Generator, full_range: float = 0.5,
                  despeckled: float = 0.0, filters: str = "fixed") -> np.ndarray:
    """One normalised training crop (see module docstring); ``despeckled``: the chance that it is a
    despeckled product (``despeckled_product``); else ``full_range``: the chance that it is made a
    full-range intensity crop instead of coded as the 8-bit product."""
    if despeckled and rng.random() < despeckled:  # no draw at 0: the recipes before the option draw as they did
        return despeckled_product(img, crop, rng, filters)
    v = random_orientation(random_window(img, crop, rng).astype(np.float32), rng)
    if rng.random() < 1.0 - full_range:  # 0.5 (the default) draws as every recipe before the option did
        return np.ascontiguousarray(v / 255.0, dtype=np.float32)
    return synthetic_full_range(v, rng)


def random_window(img: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """An n x n window of ``img`` at a random place (row, then column drawn), the image first extended
    by reflection where it is smaller than that."""
    h, w = img.shape
    if h < n or w < n:
        img = np.pad(img, ((0, max(0, n - h)), (0, max(0, n - w))), mode="reflect")
        h, w = img.shape
    r = rng.integers(0, h - n + 1)
    c = rng.integers(0, w - n + 1)
    return img[r : r + n, c : c + n]


def random_orientation(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x`` turned by a random multiple of 90 degrees, then mirrored with probability 1/2."""
    x = np.rot90(x, rng.integers(0, 4))
    return x[:, ::-1] if rng.random() < 0.5 else x


def partial_block(v: np.ndarray, block: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Replace the last 1..block-1 rows and/or columns of ``v`` by the encoder's padding (``codec.pad_to``);
    returns (image, mask of real pixels)."""
    h, w = v.shape
    mask = np.ones((h, w), np.float32)
    cut_r, cut_c = [int(rng.integers(1, block)) if rng.random() < 0.7 else 0 for _ in range(2)]
    if not cut_r and not cut_c:
        cut_c = int(rng.integers(1, block))
    v = pad_to(v[: h - cut_r, : w - cut_c], h, w)
    mask[h - cut_r :] = 0
    mask[:, w - cut_c :] = 0
    return v, mask


def gaussian_multilook(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian average of an intensity image (reflecting borders)."""
    r = max(1, int(3 * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        p = np.pad(x, [(r, r) if a == axis else (0, 0) for a in (0, 1)], mode="reflect")
        n = x.shape[axis]
        shifted = (lambda t: p[t : t + n]) if axis == 0 else (lambda t: p[:, t : t + n])
        x = sum(w * shifted(t) for t, w in enumerate(k))
    return x


def synthetic_full_range(v8: np.ndarray, rng: np.random.Generator, multilook: float = 0.3) -> np.ndarray:
    inten = (v8.astype(np.float64) / 255.0) ** 2
    looks = int(rng.integers(0, 6))
    if looks > 0:
        inten = inten * rng.gamma(looks, 1.0 / looks, size=inten.shape)
    if rng.random() < multilook:
        inten = gaussian_multilook(inten, float(rng.uniform(0.6, 2.5)))
    return log_normalised(inten, rng)


def box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over the (2r+1)^2 window around each pixel (reflecting borders), from summed-area tables."""
    n = 2 * r + 1
    h, w = x.shape
    c = np.pad(np.pad(x, r, mode="reflect").cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return (c[n:, n:] - c[:h, n:] - c[n:, :w] + c[:h, :w]) / (n * n)


def lee_filter(inten: np.ndarray, r: int = 2, looks: float = 4.0) -> np.ndarray:
    """Lee's adaptive speckle filter of an intensity image: the local mean where the local variation is
    what ``looks``-look speckle gives, the pixel itself where it is far above (edges, point targets)."""
    m = box_mean(inten, r)
    var = np.maximum(box_mean(inten * inten, r) - m * m, 0.0)
    cu2 = 1.0 / looks
    ci2 = var / np.maximum(m * m, 1e-30)
    k = np.clip((ci2 - cu2) / np.maximum(ci2 * (1.0 + cu2), 1e-30), 0.0, 1.0)
    return m + k * (inten - m)


# the Lee filter passes (half-window, looks) of a despeckled product: "fixed" one 5 x 5 4-look pass;
# "mixed" one of five per crop, lighter to heavier (as sarcodec-hp7f was trained); "heavy" one of three
# heavier than any of those (a 7 x 7 window, or the 5 x 5 pass twice): smoother products; "all" any of the eight
_MIXED = (((2, 4.0),), ((1, 2.0),), ((2, 2.0),), ((2, 3.0),), ((1, 4.0), (1, 4.0)))
_HEAVY = (((3, 4.0),), ((2, 4.0), (2, 4.0)), ((3, 2.0),))
LEE_FILTERS = {"fixed": (((2, 4.0),),), "mixed": _MIXED, "heavy": _HEAVY, "all": _MIXED + _HEAVY}


def despeckled_product(img: np.ndarray, crop: int, rng: np.random.Generator, filters: str = "fixed") -> np.ndarray:
    """A normalised full-range crop that looks like a despeckled product (multi-temporal averages such as
    the CNNSpeckleFilter snippets: little speckle, sharp structure): a k*crop square of the 8-bit image
    (k = 2..4 where the image is that large) as intensity, averaged over k x k blocks (multilooked and
    decimated: the speckle decorrelates and weakens, the structure stays sharp on the coarser grid),
    Lee-filtered (``filters``: LEE_FILTERS), rotated / flipped, at a random gain, in the log domain.  Its
    statistics come closer to those snippets' than ``gaussian_multilook``'s (median neighbour difference
    ~5/255 of the normalised range in both; the Gaussian leaves almost no power at 0.15-0.3 cycles/px)."""
    ks = [k for k in (2, 3, 4) if k * crop <= min(img.shape)] or [1]
    k = int(ks[rng.integers(0, len(ks))])
    inten = (random_window(img, k * crop, rng).astype(np.float64) / 255.0) ** 2
    inten = inten.reshape(crop, k, crop, k).mean(axis=(1, 3))
    options = LEE_FILTERS[filters]
    for r, looks in options[0] if len(options) == 1 else options[rng.integers(0, len(options))]:  # fixed: no draw
        inten = lee_filter(inten, r, looks)
    return log_normalised(random_orientation(inten, rng), rng)


def log_normalised(inten: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An intensity crop at a random gain (60 dB), mapped with the ``log`` domain fitted on it, as
    ``encode`` maps uint16 / float32 input."""
    inten = inten * 10.0 ** rng.uniform(-3, 3)
    valid = inten > 0
    m = fit_mapping(np.dtype(np.float32), inten[valid], "log")
    u = m.forward(np.where(valid, inten, m.floor))
    return np.ascontiguousarray(u, dtype=np.float32)


def draw_batch(images: list[np.ndarray], pick: np.ndarray | None, batch: int, crop: int, partial: float, block: int,
               qualities: int, rng: np.random.Generator, full_range: float = 0.5,
               despeckled: float = 0.0, subset: tuple[int, ...] = (), filters: str = "fixed") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One training batch: crops (B, 1, crop, crop) float32, masks of their real pixels (same shape)
    and quality indices (B,), drawn from ``rng`` in the order every recipe so far has used; the indices
    from ``subset`` only, if given."""
    which = rng.integers(0, len(images), batch) if pick is None else rng.choice(len(images), batch, p=pick)
    crops = [random_sample(images[i], crop, rng, full_range, despeckled, filters) for i in which]
    masks = [np.ones_like(c) for c in crops]
    for j in np.flatnonzero(rng.random(batch) < partial):
        crops[j], masks[j] = partial_block(crops[j], block, rng)
    q = rng.integers(0, qualities, batch) if not subset else np.asarray(subset)[rng.integers(0, len(subset), batch)]
    return np.stack(crops)[:, None], np.stack(masks)[:, None], q


Batch = tuple[np.ndarray, ...]


def _views(buf: object, like: Batch) -> list[np.ndarray]:
    """Arrays shaped like ``like``'s, laid one after another in the shared buffer ``buf``."""
    out, at, raw = [], 0, np.frombuffer(buf, dtype=np.uint8)
    for a in like:
        out.append(raw[at : at + a.nbytes].view(a.dtype).reshape(a.shape))
        at += a.nbytes
    return out


def _loader_worker(draw: Callable[[np.random.Generator], Batch], key: list[int], first: int, stride: int,
                   slots: list, like: Batch, free: multiprocessing.Queue, ready: multiprocessing.Queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the workers
    views = [_views(buf, like) for buf in slots]
    k = first
    while True:
        batch = draw(np.random.default_rng([*key, k]))
        slot = free.get()
        for view, a in zip(views[slot], batch):
            view[...] = a
        ready.put(slot)
        k += stride


class BatchLoader:
    """Training batches, drawn here (``workers`` 0) or by ``workers`` processes ahead of the model.

    In-process batches come from ``rng``, as they always have.  With workers, batch k is drawn from
    ``default_rng([*key, k])`` by worker k mod workers and handed out in k order, so a run does not
    depend on timing or on the number of workers.  This is what a GPU needs: re-speckling and
    log-mapping a crop costs ~3 ms on one core, far longer than the model spends on it there.
    Batches travel through two shared-memory slots per worker, and only slot numbers through queues:
    a queue pickles a 32 x 256^2 batch through a pipe in ~70 ms, which held an H200 at 15 training
    steps/s (10-19 % GPU use); with the slots it ran 25-26 steps/s.
    """

    def __init__(self, draw: Callable[[np.random.Generator], Batch], rng: np.random.Generator | None, workers: int = 0,
                 key: list[int] | None = None, slots: int = 2) -> None:
        self.draw, self.rng, self.k = draw, rng, 0
        self.procs: list = []
        self.free: list = []
        self.ready: list = []
        if not workers:
            return
        ctx = multiprocessing.get_context("fork" if fork_available() else "spawn")
        self.like = draw(np.random.default_rng(0))  # sizes the slots; not a training batch
        nbytes = sum(a.nbytes for a in self.like)
        self.slots = [[ctx.RawArray("B", nbytes) for _ in range(slots)] for _ in range(workers)]
        self.views = [[_views(buf, self.like) for buf in bufs] for bufs in self.slots]
        self.free = [ctx.Queue() for _ in range(workers)]
        self.ready = [ctx.Queue() for _ in range(workers)]
        for i in range(workers):
            for slot in range(slots):
                self.free[i].put(slot)
            self.procs.append(ctx.Process(target=_loader_worker, daemon=True, args=(
                draw, list(key or [0]), i, workers, self.slots[i], self.like, self.free[i], self.ready[i])))
        with sigint_blocked():  # a Ctrl-C during the forks would be lost (see sarcodec.parallel)
            for p in self.procs:
                p.start()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> Batch:
        if not self.procs:
            return self.draw(self.rng)
        i = self.k % len(self.procs)
        self.k += 1
        while True:
            try:
                slot = self.ready[i].get(timeout=5)
                break
            except queue.Empty:
                if not self.procs[i].is_alive():
                    raise RuntimeError(f"data loader worker {i} stopped (exit code {self.procs[i].exitcode})") from None
        batch = tuple(v.copy() for v in self.views[i][slot])
        self.free[i].put(slot)
        return batch

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.join()
        for q in (*self.free, *self.ready):
            q.cancel_join_thread()
        self.procs = []


def val_set(images: list[np.ndarray], size: int = 256, limit: int = 16, despeckled: bool = False) -> torch.Tensor:
    """Per image: its centre as 8-bit, re-speckled full range, and multilooked; with ``despeckled`` also
    a despeckled product (drawn from a generator of its own, so the other crops stay as they were)."""
    rng = np.random.default_rng(1234)
    rng_d = np.random.default_rng(4321)
    out = []
    for img in images[:limit]:
        h, w = img.shape
        if h < size or w < size:
            continue
        r, c = (h - size) // 2, (w - size) // 2
        v = img[r : r + size, c : c + size].astype(np.float32)
        out.append(v / 255.0)
        out.append(synthetic_full_range(v, rng, multilook=0.0))
        out.append(synthetic_full_range(v, rng, multilook=1.0))
        if despeckled:
            out.append(despeckled_product(img, size, rng_d))
    return torch.from_numpy(np.stack(out)[:, None])


def loader_workers(requested: int, device: torch.device) -> int:
    """Data-loading processes for ``requested`` (-1: automatic).  None on the CPU, where drawing a
    batch between steps costs ~8 % of a step and every core is busy with the model; on a GPU all
    cores but two, at most 14 (an H200 trained at 25-26 steps/s of 32 x 256^2 with 14)."""
    if requested >= 0:
        return requested
    return 0 if device.type == "cpu" else max(1, min(14, usable_cores() - 2))


def pick_device(name: str) -> torch.device:
    """``auto`` (CUDA if torch sees a GPU), ``cpu`` or ``cuda``; refused before any data is loaded."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device cuda: torch {torch.__version__} sees no CUDA GPU")
    return torch.device(name)


def rd_loss(model: SarCodecModel, x: torch.Tensor, q: torch.Tensor, lambdas: torch.Tensor, noise: bool = True,
            mask: torch.Tensor | None = None, weight: torch.Tensor | None = None):
    """Rate-distortion loss (mean over the batch, of ``weight`` (B,) times each crop's loss if given);
    ``mask`` (B,1,H,W), 1 on real pixels, limits distortion and pixel count."""
    out = model(x, q, noise=noise)
    bits_y = -torch.log2(out["p_y"].float()).sum(dim=(1, 2, 3))
    bits_z = -torch.log2(out["p_z"].float()).sum(dim=(1, 2, 3))
    err = (out["x_hat"].float() - x.float()) ** 2
    if mask is None:
        npix = x.shape[-1] * x.shape[-2]
        mse = err.mean(dim=(1, 2, 3))
    else:
        npix = mask.sum(dim=(1, 2, 3))
        mse = (err * mask).sum(dim=(1, 2, 3)) / npix
    bpp = (bits_y + bits_z) / npix
    per_crop = crop_losses(bpp, mse, q, lambdas)
    loss = (per_crop if weight is None else per_crop * weight).mean()
    return loss, bpp, mse, out["x_hat"]


def crop_losses(bpp: torch.Tensor, mse: torch.Tensor, q: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """Each crop's rate-distortion loss L = bpp + lambda_q * 255^2 * MSE."""
    return bpp + lambdas[q] * 255.0**2 * mse


def load_rivals(paths: list[str], device: torch.device) -> list[SarCodecModel]:
    """The frozen models of ``TrainConfig.ensemble``."""
    from .weights import training_model_from_weights

    return [training_model_from_weights(p).to(device).eval().requires_grad_(False) for p in paths]


@torch.no_grad()
def rival_losses(rivals: list[SarCodecModel], x: torch.Tensor, q: torch.Tensor, lambdas: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each crop's lowest loss under ``rivals`` (the training pass's noisy estimate): what the encoder,
    which codes a file with the model of the lowest rate-distortion cost, would pay if it chose among
    them alone."""
    losses = []
    for m in rivals:
        _, bpp, mse, _ = rd_loss(m, x, q, lambdas, mask=mask)
        losses.append(crop_losses(bpp, mse, q, lambdas))
    return functools.reduce(torch.minimum, losses)


def win_weights(own: torch.Tensor, rival: torch.Tensor, temperature: float) -> torch.Tensor:
    """Weights of the crops' losses (``own``) for a model that is to join a preset whose other models
    cost ``rival`` on them: the derivative of the soft minimum -T log(exp(-log own / T) + exp(-log
    rival / T)) with respect to log own, sigmoid((log rival - log own) / T).  About 1 where the model
    is clearly the cheaper, 1/2 where both cost the same, about 0 where it is clearly the dearer: it
    learns to code well what the others code worse, as the encoder's per-file choice rewards, instead
    of what they already code well."""
    return torch.sigmoid((torch.log(rival) - torch.log(own.detach())) / temperature)


def balanced_score(per_crop: list[torch.Tensor]) -> float:
    """The mean over qualities of the log of the mean crop loss (``per_crop``: one tensor per quality)."""
    return float(np.mean([np.log(float(c.double().mean())) for c in per_crop]))


@torch.no_grad()
def validate(model: SarCodecModel, xs: torch.Tensor, device: torch.device, subset: tuple[int, ...] = (),
             rival: list[torch.Tensor] | None = None) -> dict:
    """Rate, PSNR and SSIM per quality (the indices in ``subset``, or all), each crop's loss per quality,
    and the scores that select the exported weights; with ``rival`` (per quality, each crop's loss
    under the models the trained one is to join) also ``ensemble``: the balanced score of the per-crop
    cheaper of the two, what the preset with this model would score."""
    model.eval()
    lambdas = torch.tensor(model.cfg.lambdas, device=device)
    rows = []
    per_crop = []
    for qi in subset or range(model.cfg.qualities):
        bpps, psnrs, ssims, losses = [], [], [], []
        for i in range(0, len(xs), 4):
            x = xs[i : i + 4].to(device)
            q = torch.full((x.shape[0],), qi, dtype=torch.long, device=device)
            _, bpp, mse, x_hat = rd_loss(model, x, q, lambdas, noise=False)
            losses.append(crop_losses(bpp, mse, q, lambdas).cpu())
            bpps += bpp.tolist()
            for j in range(x.shape[0]):
                a = x[j, 0].cpu().numpy()
                b = x_hat[j, 0].float().clamp(0, 1).cpu().numpy()
                psnrs.append(metrics.psnr(a, b, 1.0))
                ssims.append(metrics.ssim(a, b, 1.0))
        per_crop.append(torch.cat(losses))
        rows.append({"quality": qi + 1, "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))})
    model.train()
    v = {"loss": float(np.mean([float(c.double().mean()) for c in per_crop])), "balanced": balanced_score(per_crop),
         "per_quality": rows, "crop_losses": per_crop}
    if rival is not None:
        v["ensemble"] = balanced_score([torch.minimum(a, b) for a, b in zip(per_crop, rival)])
    return v


def summary_of(v: dict) -> dict:
    """A validation result without its per-crop losses (what the history keeps)."""
    return {k: x for k, x in v.items() if k != "crop_losses"}


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Run training; returns a summary dict. Writes ``cfg.out`` (+ ``.ckpt``) on the way."""
    check_sample_by(cfg.sample_by)  # before minutes of loading rasters
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the batch shape never changes: let cuDNN pick its kernels once
    per_source = [list_rasters([d]) for d in cfg.data]  # one scan; the source index of each file weights its crops
    files = [f for fs in per_source for f in fs]
    source_of = {f: i for i, fs in enumerate(per_source) for f in fs}
    val_files, train_files = (list_rasters(cfg.val), files) if cfg.val else split_files(files, cfg.val_split)
    if not train_files:
        raise ValueError("no training rasters found")
    log(f"loading {len(train_files)} training and {len(val_files)} validation rasters")
    images = [load_band(f) for f in train_files]
    pick = sampling_weights([im.size for im in images], [source_of.get(f, 0) for f in train_files], cfg.sample_by)
    val_x = val_set([load_band(f) for f in val_files], despeckled=cfg.despeckled > 0)

    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)  # before hours of training, not at the first checkpoint
    ckpt_path = out.with_suffix(".ckpt")
    model_cfg = ModelConfig.from_dict(cfg.model) if cfg.model else ModelConfig()
    if cfg.init and not (cfg.resume and ckpt_path.exists()):
        from .weights import training_model_from_weights

        model = training_model_from_weights(cfg.init, cfg.grow, cfg.film).to(device)
        log(f"initialised from {cfg.init}" + (f", synthesis grown by {cfg.grow} blocks" if cfg.grow else "")
            + (", quality-conditioned synthesis" if cfg.film else ""))
    else:
        model = SarCodecModel(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step, skipped, best, elapsed0 = 0, 0, math.inf, 0.0
    best_state = None
    history: list[dict] = []
    # running mean of each quality's loss (balance): a plain mean over its first 50 crops, then exponential
    running, seen = torch.ones(model.cfg.qualities, dtype=torch.float64), torch.zeros(model.cfg.qualities)
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        model = SarCodecModel(ModelConfig.from_dict(ck["model_config"])).to(device)
        model.load_state_dict(ck["model"])
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        if "optimizer" in ck:
            opt.load_state_dict(ck["optimizer"])
        step, skipped, best, elapsed0 = int(ck["step"]), int(ck["skipped"]), float(ck["best"]), float(ck["elapsed"])
        best_state = ck.get("best_model")
        history = list(ck.get("history", []))
        if "running" in ck:
            running, seen = ck["running"].cpu().double(), ck["seen"].cpu()
        old = ck.get("train_config", {})
        if bool(old.get("balance", False)) != cfg.balance or list(old.get("ensemble", [])) != cfg.ensemble:
            best, best_state = math.inf, None  # selected by another validation score
        log(f"resumed from {ckpt_path} at step {step}")
    if cfg.lambdas:
        if len(cfg.lambdas) != model.cfg.qualities:
            raise ValueError(f"--lambdas needs {model.cfg.qualities} values")
        if [float(v) for v in cfg.lambdas] != model.cfg.lambdas:
            model.cfg.lambdas = [float(v) for v in cfg.lambdas]
            best, best_state = math.inf, None  # losses under another ladder are not comparable
        log(f"lambda ladder: {model.cfg.lambdas}")
    if step:
        rng = np.random.default_rng([cfg.seed, step])  # a resumed run draws new crops
        torch.manual_seed(cfg.seed * 1_000_003 + step)
    fwd = torch.compile(model) if cfg.compile else model
    lambdas = torch.tensor(model.cfg.lambdas, device=device)
    if any(not 1 <= q <= model.cfg.qualities for q in cfg.qualities):
        raise ValueError(f"qualities must lie in 1..{model.cfg.qualities}")
    subset = tuple(sorted({q - 1 for q in cfg.qualities}))  # the whole ladder draws as no subset does
    if 0 < len(subset) < model.cfg.qualities:
        log(f"crops drawn at qualities {', '.join(str(q + 1) for q in subset)} only")
    rivals = load_rivals(cfg.ensemble, device) if cfg.ensemble else []
    val_rival = None  # per quality, each validation crop's loss under the rivals' per-crop choice
    if rivals:
        log(f"joining {len(rivals)} model(s): each crop's loss weighted by the chance this model beats their best on it")
        per_rival = [validate(r, val_x, device, subset)["crop_losses"] for r in rivals]
        val_rival = [functools.reduce(torch.minimum, losses) for losses in zip(*per_rival)]
        log(f"validation score of the models joined, without this one: {balanced_score(val_rival):.4f}")
    t_start = time.time()

    def elapsed() -> float:
        return elapsed0 + time.time() - t_start

    def save_checkpoint() -> None:
        state = {
            "model_config": model.cfg.to_dict(),
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "skipped": skipped,
            "best": best,
            "elapsed": elapsed(),
            "history": history,
            "running": running,
            "seen": seen,
            "train_config": asdict(cfg),
        }
        if best_state is not None:
            state["best_model"] = best_state
        tmp = ckpt_path.with_suffix(".ckpt.tmp")
        torch.save(state, tmp)
        tmp.replace(ckpt_path)

    def score(v: dict) -> float:
        return v["ensemble"] if rivals else v["balanced"] if cfg.balance else v["loss"]

    draw = functools.partial(draw_batch, images, pick, cfg.batch, cfg.crop, cfg.partial, model.cfg.stride, model.cfg.qualities,
                             full_range=cfg.full_range, despeckled=cfg.despeckled, subset=subset,
                             filters=cfg.despeckled_filters)
    batches = BatchLoader(draw, rng, loader_workers(cfg.workers, device), key=[cfg.seed, step])
    try:
        model.train()
        t_log = time.time()
        while step < cfg.steps:
            progress = step / cfg.steps
            if cfg.max_minutes:
                progress = max(progress, elapsed() / (cfg.max_minutes * 60))
                if progress >= 1.0:
                    break
            lr = cfg.lr if progress < 0.8 else cfg.lr * (0.1 ** ((progress - 0.8) / 0.2))
            for g in opt.param_groups:
                g["lr"] = lr
            crops, masks, qs = next(batches)
            x = torch.from_numpy(crops).to(device)
            mask = torch.from_numpy(masks).to(device) if cfg.partial else None
            q = torch.from_numpy(qs).to(device)
            weight = None
            if cfg.balance:
                weight = (running[list(subset) or slice(None)].mean() / running[torch.from_numpy(qs)]).float().to(device)
            loss, bpp, mse, _ = rd_loss(fwd, x, q, lambdas, mask=mask, weight=weight)
            if rivals:  # the same pass's crop losses, each also weighted by its win weight
                per_crop = crop_losses(bpp, mse, q, lambdas)
                win = win_weights(per_crop, rival_losses(rivals, x, q, lambdas, mask), cfg.ensemble_temperature)
                loss = (per_crop * (win if weight is None else weight * win)).mean()
            if not torch.isfinite(loss):
                skipped += 1
                opt.zero_grad(set_to_none=True)
                step += 1
                continue
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # one device sync: the total norm is non-finite exactly when some gradient is
            if not torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)):
                skipped += 1
                step += 1
                continue
            opt.step()
            step += 1
            per_crop = crop_losses(bpp.detach(), mse.detach(), q, lambdas).double().cpu()
            for qi, li in zip(qs.tolist(), per_crop.tolist()):
                seen[qi] += 1
                running[qi] += max(0.02, 1.0 / float(seen[qi])) * (li - running[qi])
            if time.time() - t_log > 60:
                t_log = time.time()
                log(f"step {step} loss {loss.item():.4f} bpp {bpp.mean().item():.3f} lr {lr:.2e} skipped {skipped} elapsed {elapsed() / 60:.1f} min")
            if step % cfg.val_every == 0 or step == cfg.steps:
                v = validate(model, val_x, device, subset, val_rival)
                history.append({"step": step, "elapsed_min": elapsed() / 60, **summary_of(v)})
                msg = " ".join(f"q{r['quality']}:{r['bpp']:.2f}/{r['psnr']:.2f}" for r in v["per_quality"])
                joined = f" with the others {v['ensemble']:.4f}" if rivals else ""
                log(f"val step {step}: loss {v['loss']:.4f} balanced {v['balanced']:.4f}{joined} {msg}")
                if score(v) < best:
                    best = score(v)
                    best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            if step % cfg.checkpoint_every == 0:
                save_checkpoint()
    finally:
        batches.close()
    v = validate(model, val_x, device, subset, val_rival)
    history.append({"step": step, "elapsed_min": elapsed() / 60, **summary_of(v)})
    if score(v) < best or best_state is None:
        best = score(v)
        best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    save_checkpoint()
    from .weights import export

    final = SarCodecModel(model.cfg)
    final.load_state_dict(best_state)
    meta = {"steps": step, "wall_minutes": round(elapsed() / 60, 1), "skipped_batches": skipped, "best_val_loss": best, "balance": cfg.balance,
            "train_files": len(train_files), "data": cfg.data, "crop": cfg.crop, "batch": cfg.batch, "lr": cfg.lr}
    if cfg.ensemble:
        meta["ensemble"] = [Path(p).name for p in cfg.ensemble]
    export(final.cpu(), out, meta)
    log(f"exported {out} (best validation {'score' if cfg.balance or rivals else 'loss'} {best:.4f}, {step} steps, {skipped} skipped)")
    return {"steps": step, "skipped": skipped, "best": best, "history": history}
