"""Model architecture configuration, importable without torch.

The runtime (``sarcodec.runtime``, ``sarcodec.weights``) needs the architecture facts of a weights
file -- channel counts, latent stride, halos, entropy-model options -- also for the fast preset,
which must not import torch; ``sarcodec.model`` builds the torch modules from the same dataclass.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import lot

BLOCK = 16  # block size of the default model's lapped transform: its latent stride
LOG_GAIN_RATE = 10.0  # GainUnits store log-gains divided by this, so that Adam adapts them quickly


@dataclass
class ModelConfig:
    """Architecture hyper-parameters; stored in every exported weights file."""

    latent: int = 256  # M: channels of y (one per coefficient of the 16x16 lapped transform)
    hyper: int = 64  # channels of z
    hyper_hidden: int = 64
    c4: int = 64  # channels at 1/4 resolution
    c8: int = 128  # channels at 1/8 resolution
    c16: int = 160  # channels at 1/16 resolution
    s16_extra: int = 0  # bottleneck residual blocks added to the synthesis at 1/16 (wide context, little compute)
    q_film: bool = False  # synthesis features scaled and shifted per quality (model.QualityFilm)
    qualities: int = 8
    lambdas: list[float] = field(
        default_factory=lambda: [0.0003, 0.00064, 0.00136, 0.0029, 0.0062, 0.0132, 0.028, 0.06]
    )
    transform: str = "lapped16"  # or "lot8" (fast preset)
    hs_head: str = "full"  # or "macro" (see sarcodec.entropy.IntHyperSynthesis)
    skip_min_scale: bool = False  # do not code latents whose scale index is 0 (fast preset)
    # per quality: latents whose scale index is below this are not coded (the encoder sets them to
    # their mean); chosen after training with the training objective (benchmarks/tune_skip.py).
    # Empty: only skip_min_scale applies.
    skip_groups: list[int] = field(default_factory=list)

    @classmethod
    def fast(cls) -> "ModelConfig":
        """The fast preset: numpy-only inference, ~100 MACs per pixel in all."""
        return cls(latent=64, hyper=16, hyper_hidden=32, transform="lot8", hs_head="macro", skip_min_scale=True)

    @property
    def stride(self) -> int:
        """Pixels per latent position along each axis."""
        return lot.B if self.transform == "lot8" else BLOCK

    @property
    def halo_px(self) -> int:
        """Analysis context a tile needs beyond its pixels (a multiple of the stride)."""
        return lot.B if self.transform == "lot8" else 4 * BLOCK

    @property
    def halo_lat(self) -> int:
        """Synthesis context a tile needs beyond its latents (latent positions)."""
        return 1 if self.transform == "lot8" else 4 + self.s16_extra

    def first_coded_group(self, quality: int) -> int:
        """Scale-index groups below this are not coded at ``quality`` (1-based)."""
        if self.skip_groups:
            return self.skip_groups[quality - 1]
        return 1 if self.skip_min_scale else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.transform == "lapped16":  # the fields added with the fast preset keep their defaults
            for k in ("transform", "hs_head", "skip_min_scale"):  # out of older models' ids
                d.pop(k)
        if not self.skip_groups:  # likewise
            d.pop("skip_groups")
        if not self.s16_extra:  # likewise (added after sarcodec-hp7)
            d.pop("s16_extra")
        if not self.q_film:  # likewise
            d.pop("q_film")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
