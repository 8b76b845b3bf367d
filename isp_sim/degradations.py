"""Camera-ISP degradations: each a small class that samples parameters at a severity (1..5) from an explicit
generator, and a pure function that applies them.

Stages: ``raw`` degradations act on linear RAW (B, 1, H, W) in [0, 1] before the ISP; ``isp`` degradations change
the ISP's settings (white-balance gains, demosaic method, gamma, tone curve); ``srgb`` degradations act on the
rendered gamma-encoded image (B, 3, H, W) in [0, 1]. Severity ranges are in each class's ``TABLE``; higher severity
means a larger error (lower PSNR against the clean image; tested).

Variants select the part of the parameter space used; the composite pipeline's "seen" split (training
distribution) and "unseen" split (held out for generalisation tests) use different variants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

import numpy as np
import torch

from .errors import ISPInputError
from .noise import add_sensor_noise, read_from_shot, sample_iso, shot_from_iso


@dataclass
class DegradationRecord:
    """What was applied to one image: name, severity, sampled parameters (JSON-serialisable), variant."""

    name: str
    severity: int
    params: dict
    variant: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "severity": self.severity, "variant": self.variant, "params": self.params}


class Degradation:
    """Base class. Subclasses set ``name``, ``stage``, ``TABLE`` (severity -> range) and ``VARIANTS``."""

    name: ClassVar[str] = ""
    stage: ClassVar[str] = ""
    VARIANTS: ClassVar[tuple[str, ...]] = ("default",)
    TABLE: ClassVar[dict] = {}

    def __init__(self, severity: int = 3, variant: Optional[str] = None):
        if int(severity) not in (1, 2, 3, 4, 5):
            raise ISPInputError(f"{self.name}: severity must be an integer 1..5, got {severity!r}")
        variant = variant or self.VARIANTS[0]
        if variant not in self.VARIANTS:
            raise ISPInputError(f"{self.name}: unknown variant {variant!r}; choose from {self.VARIANTS}")
        self.severity, self.variant = int(severity), variant

    def sample(self, rng: np.random.Generator) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def record(self, params: dict) -> DegradationRecord:
        return DegradationRecord(self.name, self.severity, params, self.variant)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(severity={self.severity}, variant={self.variant!r})"


# ------------------------------------------------------------------------------------------------ RAW stage
def apply_exposure_error(raw: torch.Tensor, gain: float, crush: float) -> torch.Tensor:
    """Wrong exposure/ISO gain on linear RAW: ``clip((gain * x - crush) / (1 - crush), 0, 1)``.

    Values pushed above 1 clip (blown highlights); ``crush`` (a black-level over-subtraction, in [0, 0.1)) sends
    the darkest values to 0 (crushed shadows).
    """
    return ((raw * gain - crush) / (1 - crush)).clamp(0, 1)


class ExposureError(Degradation):
    """Over/under-exposure by ``ev`` stops (gain 2**±ev) with highlight clipping and shadow crush."""

    name, stage = "exposure", "raw"
    VARIANTS = ("both", "under", "over")
    TABLE = {1: (0.25, 0.5), 2: (0.5, 1.0), 3: (1.0, 1.5), 4: (1.5, 2.0), 5: (2.0, 3.0)}  # |EV| range
    CRUSH = {1: 0.002, 2: 0.004, 3: 0.006, 4: 0.008, 5: 0.01}  # max black over-subtraction

    def sample(self, rng):
        ev = float(rng.uniform(*self.TABLE[self.severity]))
        sign = {"under": -1.0, "over": 1.0}.get(self.variant) or float(rng.choice([-1.0, 1.0]))
        crush = float(rng.uniform(0, self.CRUSH[self.severity]))
        return {"ev": sign * ev, "gain": 2.0 ** (sign * ev), "crush": crush}

    @staticmethod
    def apply(raw, params, generator=None, **_):
        return apply_exposure_error(raw, params["gain"], params["crush"])


class ShotReadNoise(Degradation):
    """Sensor noise at a high ISO: heteroscedastic shot + read (``brooks``), plus row noise and 10-bit ADC
    quantisation (``eld``)."""

    name, stage = "noise", "raw"
    VARIANTS = ("brooks", "eld")
    TABLE = {1: (400, 800), 2: (800, 1600), 3: (1600, 3200), 4: (3200, 6400), 5: (6400, 12800)}  # ISO range

    def sample(self, rng):
        iso = sample_iso(rng, *self.TABLE[self.severity])
        shot = shot_from_iso(iso)
        read = read_from_shot(shot, rng)
        p = {"iso": iso, "shot": shot, "read": read, "row_sigma": 0.0, "bits": None}
        if self.variant == "eld":
            p["row_sigma"] = float(math.sqrt(read) * rng.uniform(0.3, 0.6))
            p["bits"] = 10
        return p

    @staticmethod
    def apply(raw, params, generator, **_):
        return add_sensor_noise(raw, params["shot"], params["read"], generator, params["row_sigma"], params["bits"])


# ------------------------------------------------------------------------------------------------ ISP stage
class WhiteBalanceError(Degradation):
    """Wrong white-balance gains: R and B gains scaled by ``exp(±m)``. ``temperature``: along blue-amber
    (R and B in opposite directions); ``tint``: along green-magenta (R and B together); ``any``: random angle."""

    name, stage = "white_balance", "isp"
    VARIANTS = ("temperature", "tint", "any")
    TABLE = {1: (0.10, 0.20), 2: (0.20, 0.30), 3: (0.30, 0.45), 4: (0.45, 0.60), 5: (0.60, 0.80)}  # |log gain|

    def sample(self, rng):
        m = float(rng.uniform(*self.TABLE[self.severity]))
        if self.variant == "temperature":
            angle = float(rng.choice([0.0, math.pi]))
            lr, lb = m * math.cos(angle), -m * math.cos(angle)
        elif self.variant == "tint":
            s = float(rng.choice([-1.0, 1.0]))
            lr = lb = s * m
        else:
            angle = float(rng.uniform(0, 2 * math.pi))
            lr, lb = m * math.cos(angle), m * math.sin(angle)
        return {"r_factor": math.exp(lr), "b_factor": math.exp(lb), "log_magnitude": m}

    @staticmethod
    def configure(settings: dict, params: dict) -> dict:
        f = np.array([params["r_factor"], 1.0, params["b_factor"]])
        return {**settings, "wb_gains": np.asarray(settings["wb_gains"], dtype=np.float64) * f,
                "wb_error": np.asarray(settings.get("wb_error", np.ones(3))) * f}


class GammaToneError(Degradation):
    """Wrong tone reproduction. ``gamma``: encoding gamma ``2.2 * 2**(±d)`` instead of 2.2; ``tone``: the tone
    curve's strength ``1 ± Δ`` instead of 1 (over-contrasted or flattened)."""

    name, stage = "gamma", "isp"
    VARIANTS = ("gamma", "tone")
    TABLE = {1: (0.15, 0.25), 2: (0.25, 0.40), 3: (0.40, 0.55), 4: (0.55, 0.70), 5: (0.70, 0.85)}  # |log2 gamma|
    TONE_TABLE = {1: (0.6, 0.9), 2: (0.9, 1.3), 3: (1.3, 1.7), 4: (1.7, 2.2), 5: (2.2, 2.8)}  # |Δ strength|

    def sample(self, rng):
        s = float(rng.choice([-1.0, 1.0]))
        if self.variant == "gamma":
            d = float(rng.uniform(*self.TABLE[self.severity]))
            return {"gamma": 2.2 * 2.0 ** (s * d), "tone": 1.0}
        d = float(rng.uniform(*self.TONE_TABLE[self.severity]))
        return {"gamma": 2.2, "tone": 1.0 + s * d}

    @staticmethod
    def configure(settings: dict, params: dict) -> dict:
        return {**settings, "gamma": params["gamma"], "tone": params["tone"]}


class DemosaicArtifacts(Degradation):
    """A poorer demosaicing algorithm than the reference ISP's Menon (2007): severity 1 Malvar (2004),
    2 bilinear, 3 superpixel (half resolution), 4 quarter-resolution binning, 5 nearest neighbour."""

    name, stage = "demosaic", "isp"
    TABLE = {1: "malvar", 2: "bilinear", 3: "superpixel", 4: "binned", 5: "nearest"}

    def sample(self, rng):
        return {"method": self.TABLE[self.severity]}

    @staticmethod
    def configure(settings: dict, params: dict) -> dict:
        return {**settings, "demosaic": params["method"]}


# ------------------------------------------------------------------------------------------------ sRGB stage
class JPEGCompression(Degradation):
    """JPEG with the real codec (libjpeg via Pillow) or, in differentiable pipelines, its approximation.
    Quality range per severity; chroma subsampling sampled from the variant's set."""

    name, stage = "jpeg", "srgb"
    VARIANTS = ("any", "420", "444")
    TABLE = {1: (70, 95), 2: (45, 70), 3: (25, 45), 4: (15, 25), 5: (10, 15)}
    _SUB = {"any": ("4:4:4", "4:2:2", "4:2:0"), "420": ("4:2:0",), "444": ("4:4:4",)}

    def sample(self, rng):
        lo, hi = self.TABLE[self.severity]
        return {"quality": int(rng.integers(lo, hi + 1)), "subsampling": str(rng.choice(self._SUB[self.variant]))}

    @staticmethod
    def apply(img, params, generator=None, differentiable: bool = False):
        """``img`` (1, 3, H, W) in [0, 1] -> JPEG-decoded image, same shape."""
        from .jpeg import jpeg_differentiable, jpeg_real

        if differentiable:
            return jpeg_differentiable(img, params["quality"], params["subsampling"])
        return jpeg_real(img[0], params["quality"], params["subsampling"])[None]


DEGRADATIONS: dict[str, type[Degradation]] = {
    c.name: c for c in (ShotReadNoise, DemosaicArtifacts, ExposureError, GammaToneError, WhiteBalanceError,
                        JPEGCompression)
}
STAGE_ORDER = {"raw": 0, "isp": 1, "srgb": 2}


def degradation_names() -> list[str]:
    return list(DEGRADATIONS)


def build_degradation(name: str, severity: int = 3, variant: Optional[str] = None) -> Degradation:
    """Instantiate a degradation by registry name, e.g. ``build_degradation("noise", 4, "eld")``."""
    try:
        cls = DEGRADATIONS[name]
    except KeyError:
        raise ISPInputError(f"unknown degradation {name!r}; choose from {', '.join(DEGRADATIONS)}") from None
    return cls(severity, variant)
