"""`SynthesisConfig`: the anomaly-synthesis settings of a method's config.

Why: CFRG, DRAEM, DeSTSeg and RealNet take the same fields, checks, texture folder and
synthesizer from their configs; written once here, each method only overrides defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from threecad.anomaly_synthesis.synthesizer import DRAWS, AnomalySynthesizer
from threecad.anomaly_synthesis.textures import TEXTURES, texture_root
from threecad.errors import ThreecadError


@dataclass
class SynthesisConfig:
    """The anomaly-synthesis fields of a method's config, and their checks.

    A mixin for a `MethodConfig`: list it first (`class XConfig(SynthesisConfig, TrainedConfig)`),
    so that its fields follow the base's and its checks run after the base's. A method whose
    paper draws otherwise overrides a default in its own config (`draw: str = "release"`).
    """

    textures: str = "dtd"  # anomaly textures: "dtd" (the paper's; procedural when DTD is absent) | "procedural"
    dtd_root: str | None = None  # DTD folder; None = `threecad download --dataset dtd`'s folder
    draw: str = "augmented"  # how anomalies are drawn: "augmented" | "release" (3CAD's) | "draem" | "destseg"
    beta_max: float = 0.8  # anomaly opacity: x_a = x(1-M) + (1-b) tex M + b x M, b ~ U[0, beta_max)
    perlin_max_scale: int = 5  # Perlin lattice 2^t cells per axis, t in 0..perlin_max_scale

    def __post_init__(self) -> None:
        super().__post_init__()  # the config base's checks and the method's `validate`
        if self.textures not in TEXTURES:
            raise ThreecadError(f"config textures={self.textures}: must be one of {', '.join(TEXTURES)}")
        if self.draw not in DRAWS:
            raise ThreecadError(f"config draw={self.draw}: must be one of {', '.join(DRAWS)}")
        if not 0.0 <= self.beta_max <= 1.0:
            raise ThreecadError(f"config beta_max={self.beta_max}: must be in [0, 1]")
        if not 0 <= self.perlin_max_scale <= 8:
            raise ThreecadError(f"config perlin_max_scale={self.perlin_max_scale}: must be in 0..8")

    def dtd_folder(self, method: str) -> str | None:
        """The DTD folder the synthesizer reads, or None for procedural textures (`texture_root`)."""
        return texture_root(self.textures, self.dtd_root, method)

    def synthesizer(self, seed: int, dtd_root: str | None, keys: Sequence[str] | None = None) -> AnomalySynthesizer:
        """The synthesizer these settings describe, at the config's `image_size`, with textures in
        the config's channel order (`colour`, RGB for a config without one)."""
        return AnomalySynthesizer(self.image_size, dtd_root=dtd_root, beta_max=self.beta_max,
                                  perlin_max_scale=self.perlin_max_scale, seed=seed, draw=self.draw, keys=keys,
                                  colour=getattr(self, "colour", "rgb"))
