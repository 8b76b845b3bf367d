"""Unprocessing (Brooks et al., CVPR 2019): gamma-encoded sRGB -> plausible linear Bayer RAW.

Steps, each the inverse of a forward-ISP stage (:mod:`isp_sim.isp`):
inverse tone curve (smoothstep) -> inverse gamma (x ** 2.2) -> inverse colour correction (sRGB -> camera RGB with a
random convex mix of real cameras' matrices) -> inverse white-balance/brightness gains (with highlight protection)
-> clip to [0, 1] -> mosaic. All parameters are sampled from an explicit generator and returned, so
``process(unprocess(x))`` reproduces ``x`` (up to demosaicing and highlight clipping).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch

from .bayer import mosaic as _mosaic
from .color import gamma_decode, inverse_smoothstep, random_xyz_to_cam, rgb_to_cam_from_xyz_to_cam
from .errors import ISPInputError


@dataclass
class UnprocessParams:
    """Sampled camera: colour matrix and gains. Gains are forward-ISP multipliers (R, G, B)."""

    xyz_to_cam: np.ndarray  # (3, 3)
    ccm_weights: np.ndarray  # (4,) convex weights over the camera bank
    rgb_gain: float  # overall brightness gain, 1 / N(0.8, 0.1)
    red_gain: float  # U(1.9, 2.4)
    blue_gain: float  # U(1.5, 1.9)

    @property
    def rgb_to_cam(self) -> np.ndarray:
        return rgb_to_cam_from_xyz_to_cam(self.xyz_to_cam)

    @property
    def cam_to_rgb(self) -> np.ndarray:
        return np.linalg.inv(self.rgb_to_cam)

    @property
    def wb_gains(self) -> np.ndarray:
        """Forward white-balance gains (R, G, B) including the brightness gain."""
        return np.array([self.red_gain, 1.0, self.blue_gain]) * self.rgb_gain

    def to_dict(self) -> dict:
        d = asdict(self)
        d["xyz_to_cam"] = np.asarray(self.xyz_to_cam).tolist()
        d["ccm_weights"] = np.asarray(self.ccm_weights).tolist()
        return d


def sample_unprocess_params(rng: np.random.Generator) -> UnprocessParams:
    """Draw a random camera (colour matrix, brightness and WB gains) from ``rng``."""
    xyz_to_cam, w = random_xyz_to_cam(rng)
    rgb_gain = 1.0 / float(np.clip(rng.normal(0.8, 0.1), 0.4, 1.2))
    return UnprocessParams(xyz_to_cam=xyz_to_cam, ccm_weights=w, rgb_gain=rgb_gain,
                           red_gain=float(rng.uniform(1.9, 2.4)), blue_gain=float(rng.uniform(1.5, 1.9)))


def _stack(params: Sequence[UnprocessParams], like: torch.Tensor):
    rgb_to_cam = torch.tensor(np.stack([p.rgb_to_cam for p in params]), dtype=like.dtype, device=like.device)
    gains = torch.tensor(np.stack([p.wb_gains for p in params]), dtype=like.dtype, device=like.device)
    return rgb_to_cam, gains


def unprocess(
    srgb: torch.Tensor,
    params: Sequence[UnprocessParams],
    pattern: str = "RGGB",
    mosaic: bool = True,
    gamma: float = 2.2,
    tone: bool = True,
    protect_highlights: bool = True,
):
    """Invert the forward ISP. ``srgb``: gamma-encoded (B, 3, H, W) in [0, 1]; one params entry per image.

    Returns ``(raw, meta)``: ``raw`` is linear (B, 1, H, W) (or camera RGB (B, 3, H, W) with ``mosaic=False``) in
    [0, 1]; ``meta`` holds ``wb_gains`` (B, 3) and ``cam_to_rgb`` (B, 3, 3) tensors for :func:`isp_sim.isp.process`.
    ``protect_highlights`` keeps near-white pixels from being darkened below saturation (Brooks' safe gains), so
    that highlights clip realistically in the forward ISP.
    """
    if srgb.ndim != 4 or srgb.shape[1] != 3:
        raise ISPInputError(f"unprocess expects sRGB (B, 3, H, W), got {tuple(srgb.shape)}")
    if len(params) != srgb.shape[0]:
        raise ISPInputError(f"unprocess: {len(params)} parameter sets for a batch of {srgb.shape[0]}")
    if not torch.isfinite(srgb).all():
        raise ISPInputError("unprocess: input contains NaN or Inf")
    rgb_to_cam, gains = _stack(params, srgb)
    x = srgb.clamp(0, 1)
    if tone:
        x = inverse_smoothstep(x)
    x = gamma_decode(x, gamma)
    x = torch.einsum("bck,bkhw->bchw", rgb_to_cam, x)
    inv = (1.0 / gains)[:, :, None, None]
    if protect_highlights:
        gray = x.mean(dim=1, keepdim=True)
        mask = ((gray - 0.9).clamp(min=0) / 0.1) ** 2
        inv = torch.maximum(mask + (1 - mask) * inv, inv)
    x = (x * inv).clamp(0, 1)
    if mosaic:
        x = _mosaic(x, pattern)
    meta = {"wb_gains": gains, "cam_to_rgb": torch.linalg.inv(rgb_to_cam)}
    return x, meta
