"""Exported weights files: what ``train`` writes and what ``encode``/``decode`` load.

A weights file is a ``torch.save`` of a dict holding only tensors, strings and numbers, so it loads
with ``torch.load(weights_only=True)``:

* ``config`` (model architecture), ``meta`` (training facts), ``name``;
* ``float``: analysis, synthesis, hyper-analysis and gain parameters (float16 to keep files small;
  computed in float32);
* ``int``: the fixed-point hyper-synthesis (see ``sarcodec.entropy``);
* ``z_pmf``, ``y_pmf``, ``y_radius``: the integer probability tables;
* ``model_id``: 16 hex digits of a SHA-256 over all of the above.  Every ``.sarc`` file records it,
  and decode refuses a file made with other weights, naming the model it needs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .entropy import EntropyCoder, IntHyperSynthesis, build_y_tables, build_z_tables
from .model import Analysis, GainUnits, HyperAnalysis, ModelConfig, SarCodecModel, Synthesis

FORMAT = "sarcodec-weights"
DEFAULT_MODEL = "sarcodec-hp1.pt"
FLOAT_PARTS = ("g_a", "g_s", "h_a", "gains")


class WeightsError(ValueError):
    pass


def _model_id(blob: dict) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(blob["config"], sort_keys=True).encode())
    for group in ("float", "int"):
        for k in sorted(blob[group]):
            t = blob[group][k].contiguous()
            h.update(f"{group}/{k}/{t.dtype}/{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    for k in ("z_pmf", "y_pmf", "y_radius"):
        h.update(blob[k].numpy().tobytes())
    for k in sorted(blob.get("prior", {})):
        h.update(blob["prior"][k].numpy().tobytes())
    return h.hexdigest()[:16]


def export(model: SarCodecModel, path: str | Path, meta: dict | None = None) -> str:
    """Write the deployable weights of ``model`` to ``path``; returns the model id."""
    model = model.cpu().eval()
    floats = {}
    for part in FLOAT_PARTS:
        for k, t in getattr(model, part).state_dict().items():
            floats[f"{part}.{k}"] = t.detach().to(torch.float32 if part == "gains" else torch.float16)
    ihs = IntHyperSynthesis.from_float(model.h_s, model.cfg.latent)
    y_pmf, y_radius = build_y_tables()
    blob = {
        "format": FORMAT,
        "version": 1,
        "name": Path(path).stem,
        "config": model.cfg.to_dict(),
        "meta": json.dumps(meta or {}, sort_keys=True, default=str),
        "float": floats,
        "int": ihs.state(),
        "z_pmf": torch.from_numpy(build_z_tables(model.prior, model.cfg.hyper)),
        "y_pmf": torch.from_numpy(y_pmf),
        "y_radius": torch.from_numpy(y_radius),
        # not needed to code; lets `sarcodec train --init` continue training from this file
        "prior": {k: t.detach().float() for k, t in model.prior.state_dict().items()},
    }
    blob["model_id"] = _model_id(blob)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return blob["model_id"]


@dataclass
class CodecModel:
    """Everything encode/decode need, loaded from one weights file."""

    name: str
    model_id: str
    cfg: ModelConfig
    meta: dict
    g_a: Analysis
    g_s: Synthesis
    h_a: HyperAnalysis
    gains: GainUnits
    coder: EntropyCoder


def default_weights_path() -> Path:
    try:
        from importlib.resources import files

        p = Path(str(files("sarcodec.bundled_weights") / DEFAULT_MODEL))
        if p.is_file():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "weights" / DEFAULT_MODEL


def load(path: str | Path | None = None) -> CodecModel:
    """Load a weights file (default: the shipped model)."""
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad weights file
        raise WeightsError(f"cannot read weights file {path}: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a sarcodec weights file")
    if _model_id(blob) != blob["model_id"]:
        raise WeightsError(f"{path} is corrupt (model id mismatch)")
    cfg = ModelConfig.from_dict(blob["config"])
    parts = {"g_a": Analysis(cfg), "g_s": Synthesis(cfg), "h_a": HyperAnalysis(cfg), "gains": GainUnits(cfg)}
    for name, mod in parts.items():
        sd = {k[len(name) + 1 :]: v.float() for k, v in blob["float"].items() if k.startswith(name + ".")}
        mod.load_state_dict(sd)
        mod.eval()
        for p in mod.parameters():
            p.requires_grad_(False)
    ihs = IntHyperSynthesis.from_state(blob["int"], cfg.latent)
    coder = EntropyCoder(ihs, blob["z_pmf"].numpy(), blob["y_pmf"].numpy(), blob["y_radius"].numpy())
    return CodecModel(str(blob["name"]), str(blob["model_id"]), cfg, json.loads(blob["meta"]), coder=coder, **parts)


def load_checkpoint_model(ckpt: str | Path, best: bool = True) -> SarCodecModel:
    """The float training model from a ``.ckpt`` written by ``sarcodec train``."""
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = SarCodecModel(ModelConfig.from_dict(ck["model_config"]))
    model.load_state_dict(ck["best_model"] if best and "best_model" in ck else ck["model"])
    return model.eval()


def training_model_from_weights(path: str | Path) -> SarCodecModel:
    """Rebuild the float training model from an exported file (to continue training from it).

    Float parts come from their float16 copies, the hyper-synthesis from its exact fixed-point
    weights (the training model's fake-quantised values), the prior from its stored parameters.
    """
    from .model import MEAN_GAIN, SIDX_GAIN, W_FRAC_BITS, A_FRAC_BITS

    blob = torch.load(path, map_location="cpu", weights_only=True)
    if blob.get("format") != FORMAT or "prior" not in blob:
        raise WeightsError(f"{path} cannot seed training (not a sarcodec weights file with training parameters)")
    cfg = ModelConfig.from_dict(blob["config"])
    model = SarCodecModel(cfg)
    for part in FLOAT_PARTS:
        getattr(model, part).load_state_dict({k[len(part) + 1 :]: v.float() for k, v in blob["float"].items() if k.startswith(part + ".")})
    ihs = IntHyperSynthesis.from_state(blob["int"], cfg.latent)
    n = len(ihs.layers)
    with torch.no_grad():
        for i, (conv, layer) in enumerate(zip(model.h_s.convs, ihs.layers)):
            w, b = layer.weight.astype(np.float64), layer.bias.astype(np.float64)
            if i == n - 1:
                g = np.array([MEAN_GAIN] * cfg.latent + [SIDX_GAIN] * cfg.latent, dtype=np.float64)
                w, b = w / g[:, None, None, None], b / g
            conv.weight.copy_(torch.from_numpy(w / 2**W_FRAC_BITS))
            conv.bias.copy_(torch.from_numpy(b / 2 ** (W_FRAC_BITS + A_FRAC_BITS)))
    model.prior.load_state_dict(blob["prior"])
    return model


def param_count(model: CodecModel) -> int:
    n = sum(p.numel() for m in (model.g_a, model.g_s, model.h_a, model.gains) for p in m.parameters())
    n += sum(int(np.prod(layer.weight.shape)) + layer.bias.size for layer in model.coder.hs.layers)
    return n
