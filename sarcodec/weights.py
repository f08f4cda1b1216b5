"""Exported weights files: what ``train`` writes and what ``encode``/``decode`` load.

A weights file is a ``torch.save`` of a dict holding only tensors, strings and numbers, so it loads
with ``torch.load(weights_only=True)``:

* ``config`` (model architecture), ``meta`` (training facts), ``name``;
* ``float``: analysis, synthesis, hyper-analysis and gain parameters (float16 to keep files small;
  computed in float32) and, from version 2 on, the reconstruction offsets ``recon.table`` (float32);
* ``int``: the fixed-point hyper-synthesis (see ``sarcodec.entropy``);
* ``z_pmf``, ``y_pmf``, ``y_radius``: the integer probability tables;
* ``model_id``: 16 hex digits of a SHA-256 over all of the above.  Every ``.sarc`` file records it,
  and decode refuses a file made with other weights, naming the model it needs.

The same dict can also be stored as a pickle-free ``.npz`` (numpy only): the fast preset ships that
way so that encode/decode with it never import torch.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .choice import ModelSet
from .config import ModelConfig
from .entropy import NUM_SCALES, RECON_MAX, EntropyCoder, IntHyperSynthesis, output_gains
from .runtime import CodecModel, LotModel, TorchModel

if TYPE_CHECKING:
    from .model import SarCodecModel

FORMAT = "sarcodec-weights"
DEFAULT_MODEL = "sarcodec-hp7l.pt"
# each preset's models: the encoder chooses among them per file (sarcodec.choice); the first is the
# general one, what ``load(preset=...)`` returns
PRESETS = {"default": (DEFAULT_MODEL, "sarcodec-hp7s4.pt", "sarcodec-hp7i.pt", "sarcodec-hp7e.pt", "sarcodec-hp7h.pt",
                       "sarcodec-hp7j.pt"),
           "fast": ("sarcodec-fast5.npz",)}
FLOAT_PARTS = ("g_a", "g_s", "h_a", "gains", "recon")
VERSION = 2  # 1: up to hp5 / fast4; 2: adds the reconstruction offsets (older readers would ignore them)
SUFFIXES = (".pt", ".npz")


class WeightsError(ValueError):
    pass


def _np(t) -> np.ndarray:
    return t.contiguous().numpy() if hasattr(t, "contiguous") else np.ascontiguousarray(t)


def _model_id(blob: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(blob["config"], sort_keys=True).encode())
    for group in ("float", "int"):
        for k in sorted(blob[group]):
            t = blob[group][k]
            h.update(f"{group}/{k}/{t.dtype}/{tuple(t.shape)}".encode())
            h.update(_np(t).tobytes())
    for k in ("z_pmf", "y_pmf", "y_radius"):
        h.update(_np(blob[k]).tobytes())
    for k in sorted(blob.get("prior", {})):
        h.update(_np(blob["prior"][k]).tobytes())
    return h.hexdigest()[:16]


def _save_npz(blob: dict, path: Path) -> None:
    """Flat, pickle-free numpy archive: ``group/key`` arrays, strings and the config as JSON."""
    flat = {}
    for k, v in blob.items():
        if isinstance(v, dict) and k != "config":
            flat.update({f"{k}/{kk}": np.asarray(vv) for kk, vv in v.items()})
        elif k == "config":
            flat[k] = np.array(json.dumps(v, sort_keys=True))
        else:
            flat[k] = np.asarray(v)
    with open(path, "wb") as f:
        np.savez_compressed(f, **flat)


def _load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        blob: dict = {}
        for k in z.files:
            if "/" in k:
                g, kk = k.split("/", 1)
                blob.setdefault(g, {})[kk] = z[k]
            else:
                v = z[k]
                blob[k] = v.item() if v.ndim == 0 and v.dtype.kind in "UO" else v
        blob["config"] = json.loads(blob["config"])
        blob["version"] = int(blob["version"])
        for g in ("float", "int", "prior"):
            blob.setdefault(g, {})
    return blob


def export(model: "SarCodecModel", path: str | Path, meta: dict | None = None) -> str:
    """Write the deployable weights of ``model`` to ``path`` (``.pt``: torch, ``.npz``: numpy); returns the model id."""
    import torch

    from .entropy import build_y_tables, build_z_tables

    path = Path(path)
    model = model.cpu().eval()
    fast = model.cfg.transform == "lot8"
    floats = {}
    for part in FLOAT_PARTS:
        for k, t in getattr(model, part).state_dict().items():
            floats[f"{part}.{k}"] = t.detach().to(torch.float32 if part in ("gains", "recon") or fast else torch.float16)
    ihs = IntHyperSynthesis.from_float(model.h_s, model.cfg.latent, model.cfg.hs_head)
    y_pmf, y_radius = build_y_tables()
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "name": path.stem,
        "config": model.cfg.to_dict(),
        "meta": json.dumps(meta or {}, sort_keys=True, default=str),
        "float": floats,
        "int": {k: torch.from_numpy(v) for k, v in ihs.state().items()},
        "z_pmf": torch.from_numpy(build_z_tables(model.prior, model.cfg.hyper)),
        "y_pmf": torch.from_numpy(y_pmf),
        "y_radius": torch.from_numpy(y_radius),
        # not needed to code; lets `sarcodec train --init` continue training from this file
        "prior": {k: t.detach().float() for k, t in model.prior.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".npz":
        blob = {k: ({kk: _np(vv) for kk, vv in v.items()} if isinstance(v, dict) and k != "config" else
                    (_np(v) if hasattr(v, "contiguous") else v)) for k, v in blob.items()}
        blob["model_id"] = _model_id(blob)
        _save_npz(blob, tmp)
    else:
        blob["model_id"] = _model_id(blob)
        torch.save(blob, tmp)
    tmp.replace(path)
    return blob["model_id"]


def _read_blob(path: Path) -> dict:
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".npz":
            blob = _load_npz(path)
        else:
            import torch

            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/unzipping failure is a bad weights file
        raise WeightsError(f"cannot read weights file {path}: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a sarcodec weights file")
    if not 1 <= int(blob.get("version", 0)) <= VERSION:
        raise WeightsError(f"{path} is weights format version {blob.get('version')}; this sarcodec reads 1..{VERSION} "
                           "(a newer sarcodec is needed)")
    if _model_id(blob) != blob["model_id"]:
        raise WeightsError(f"{path} is corrupt (model id mismatch)")
    return blob


def _recon(blob: dict, cfg: ModelConfig, path: Path) -> np.ndarray | None:
    """The reconstruction offsets of a weights file (None for files without them)."""
    t = blob["float"].get("recon.table")
    if t is None:
        return None
    t = _np(t).astype(np.float32)
    if t.shape != (cfg.qualities, NUM_SCALES, RECON_MAX) or not np.isfinite(t).all():
        raise WeightsError(f"{path}: reconstruction offsets malformed")
    return t


def bundled_dir() -> Path:
    try:
        from importlib.resources import files

        p = Path(str(files("sarcodec.bundled_weights")))
        if (p / DEFAULT_MODEL).is_file():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "weights"


def preset_paths(preset: str = "default") -> list[Path]:
    """The shipped weights files of ``preset``, its general model first."""
    if preset not in PRESETS:
        raise WeightsError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return [bundled_dir() / name for name in PRESETS[preset]]


def default_weights_path(preset: str = "default") -> Path:
    """The general model of ``preset``."""
    return preset_paths(preset)[0]


def load_preset(preset: str = "default") -> CodecModel | ModelSet:
    """What ``encode`` uses by default: the preset's model, or the set it chooses from per file."""
    models = tuple(load(p) for p in preset_paths(preset))
    return models[0] if len(models) == 1 else ModelSet(models)


def bundled_path(name: str) -> Path | None:
    """The shipped weights file called ``name`` (a model name as recorded in .sarc headers), if any."""
    for suffix in SUFFIXES:
        p = bundled_dir() / (name + suffix)
        if p.is_file():
            return p
    return None


def load(path: str | Path | None = None, preset: str = "default") -> CodecModel:
    """Load a weights file (default: the shipped model of ``preset``)."""
    path = Path(path) if path is not None else default_weights_path(preset)
    blob = _read_blob(path)
    cfg = ModelConfig.from_dict(blob["config"])
    if cfg.skip_groups and (len(cfg.skip_groups) != cfg.qualities or not all(0 <= k <= NUM_SCALES for k in cfg.skip_groups)):
        raise WeightsError(f"{path}: skip_groups {cfg.skip_groups} invalid")
    ihs = IntHyperSynthesis.from_state(blob["int"], cfg.latent)
    coder = EntropyCoder(ihs, _np(blob["z_pmf"]), _np(blob["y_pmf"]), _np(blob["y_radius"]))
    recon = _recon(blob, cfg, path)
    common = dict(name=str(blob["name"]), model_id=str(blob["model_id"]), meta=json.loads(str(blob["meta"])), coder=coder,
                  recon=recon)
    # parameters outside the transforms: the integer hyper-synthesis and the offsets
    n_int = sum(int(np.prod(layer.weight.shape)) + layer.bias.size for layer in ihs.layers) + (0 if recon is None else recon.size)
    if cfg.transform == "lot8":
        params = {k: _np(v).astype(np.float32) for k, v in blob["float"].items() if not k.startswith("recon.")}
        n = sum(v.size for v in params.values()) + n_int
        return LotModel(cfg=cfg, n_params=n, params=params, **common)
    if cfg.transform != "lapped16":
        raise WeightsError(f"{path}: unknown transform {cfg.transform!r} (newer sarcodec needed?)")
    from .model import Analysis, GainUnits, HyperAnalysis, Synthesis

    parts = {"g_a": Analysis(cfg), "g_s": Synthesis(cfg), "h_a": HyperAnalysis(cfg), "gains": GainUnits(cfg)}
    for name, mod in parts.items():
        sd = {k[len(name) + 1 :]: v.float() for k, v in blob["float"].items() if k.startswith(name + ".")}
        mod.load_state_dict(sd)
        mod.eval()
        for p in mod.parameters():
            p.requires_grad_(False)
    n = sum(p.numel() for m in parts.values() for p in m.parameters()) + n_int
    return TorchModel(cfg=cfg, n_params=n, modules=parts, **common)


def load_checkpoint_model(ckpt: str | Path, best: bool = True) -> "SarCodecModel":
    """The float training model from a ``.ckpt`` written by ``sarcodec train``."""
    import torch

    from .model import SarCodecModel

    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = SarCodecModel(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["best_model"] if best and "best_model" in ck else ck["model"])
    return model.eval()


def training_model_from_weights(path: str | Path, grow: int = 0, film: bool = False) -> "SarCodecModel":
    """Rebuild the float training model from an exported file (to continue training from it).

    Float parts come from their stored copies, the hyper-synthesis from its exact fixed-point
    weights (the training model's fake-quantised values), the prior from its stored parameters.
    ``grow`` adds that many bottleneck residual blocks at 1/16 to the synthesis (default
    architecture only); they start as the identity, so the grown model starts as the stored one.
    ``film`` adds per-quality scales and shifts to the synthesis (``model.QualityFilm``), likewise
    starting as the identity.
    """
    import torch

    from .entropy import A_FRAC_BITS, W_FRAC_BITS
    from .model import SarCodecModel

    blob = _read_blob(Path(path))
    if not blob.get("prior"):
        raise WeightsError(f"{path} cannot seed training (no training parameters stored)")
    cfg = ModelConfig.from_dict(blob["config"])
    new_film = film and not cfg.q_film
    if (grow or new_film) and cfg.transform != "lapped16":
        raise WeightsError("only the default architecture's synthesis can grow or be quality-conditioned")
    cfg.s16_extra += grow
    cfg.q_film = cfg.q_film or new_film
    model = SarCodecModel(cfg)
    t = lambda v: torch.from_numpy(_np(v).astype(np.float32))  # noqa: E731
    # g_s parameters that start new (as the identity), not from the file
    new = tuple(f"more.{j}." for j in range(cfg.s16_extra - grow, cfg.s16_extra)) + (("film.",) if new_film else ())
    for part in FLOAT_PARTS:
        state = {k[len(part) + 1 :]: t(v) for k, v in blob["float"].items() if k.startswith(part + ".")}
        missing, unexpected = getattr(model, part).load_state_dict(state, strict=not new)
        bad = unexpected + [k for k in missing if not k.startswith(new if part == "g_s" else ())]
        if bad:
            raise WeightsError(f"{path}: parameters do not match the architecture ({', '.join(bad)})")
    ihs = IntHyperSynthesis.from_state(blob["int"], cfg.latent)
    n = len(ihs.layers)
    g = output_gains(cfg.latent, cfg.hs_head).astype(np.float64)
    with torch.no_grad():
        for i, (conv, layer) in enumerate(zip(model.h_s.convs, ihs.layers)):
            w, b = layer.weight.astype(np.float64), layer.bias.astype(np.float64)
            if i == n - 1:
                w, b = w / g[:, None, None, None], b / g
            conv.weight.copy_(torch.from_numpy(w / 2**W_FRAC_BITS))
            conv.bias.copy_(torch.from_numpy(b / 2 ** (W_FRAC_BITS + A_FRAC_BITS)))
    model.prior.load_state_dict({k: t(v) for k, v in blob["prior"].items()})
    return model


def param_count(model: CodecModel) -> int:
    return model.n_params
