"""The forward camera ISP in torch: linear Bayer RAW -> gamma-encoded sRGB.

Stages (all batched over ``B``, differentiable except the final 8-bit quantisation):
1. white balance: per-site gains on the mosaic, then clip to [0, 1] (sensor/ISP saturation);
2. demosaic (see :mod:`isp_sim.demosaic`);
3. colour correction: camera RGB -> linear sRGB with a 3x3 matrix, clip to [0, 1];
4. gamma encoding ``x ** (1 / gamma)`` (default 2.2);
5. global tone curve: ``y + t * (smoothstep(y) - y)`` with strength ``t`` (1 = the default S-curve, 0 = none);
6. optional quantisation to ``bits`` (8 -> uint8 levels).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch

from .bayer import cfa_masks, validate_pattern
from .color import gamma_encode, smoothstep
from .demosaic import demosaic as _demosaic
from .errors import ISPInputError

Scalar = Union[float, torch.Tensor]


def _batch_param(v, b: int, n: int, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(v, dtype=np.float32) if not isinstance(v, torch.Tensor) else v)
    t = t.to(like.device, like.dtype)
    if t.shape == (n,) if n > 1 else t.ndim == 0:
        t = t.expand(b, *t.shape)
    if t.shape[0] != b:
        raise ISPInputError(f"{name}: expected a batch of {b}, got shape {tuple(t.shape)}")
    return t


def apply_white_balance(raw: torch.Tensor, wb_gains, pattern: str = "RGGB", clip: bool = True) -> torch.Tensor:
    """Multiply each mosaic site by its colour's gain. ``wb_gains``: (3,) or (B, 3), (R, G, B)."""
    b = raw.shape[0]
    g = _batch_param(wb_gains, b, 3, raw, "wb_gains")
    m = cfa_masks(pattern, raw.shape[-2], raw.shape[-1], raw.device, raw.dtype)
    gain_map = torch.einsum("bc,chw->bhw", g, m)[:, None]
    out = raw * gain_map
    return out.clamp(0, 1) if clip else out


def apply_ccm(rgb: torch.Tensor, ccm, clip: bool = True) -> torch.Tensor:
    """Apply a 3x3 colour matrix per pixel: ``out[c] = sum_k ccm[c, k] * rgb[k]``. ``ccm``: (3,3) or (B,3,3)."""
    b = rgb.shape[0]
    m = _batch_param(ccm, b, 3, rgb, "ccm") if isinstance(ccm, torch.Tensor) and ccm.ndim == 3 else \
        torch.as_tensor(np.asarray(ccm, dtype=np.float32) if not isinstance(ccm, torch.Tensor) else ccm).to(
            rgb.device, rgb.dtype).expand(b, 3, 3)
    out = torch.einsum("bck,bkhw->bchw", m, rgb)
    return out.clamp(0, 1) if clip else out


def apply_tone(srgb: torch.Tensor, strength: Scalar = 1.0) -> torch.Tensor:
    """Blend towards the smoothstep S-curve: ``y + t (smoothstep(y) - y)``; t may be a (B,) tensor."""
    t = strength
    if isinstance(t, torch.Tensor) and t.ndim == 1:
        t = t.to(srgb.device, srgb.dtype).view(-1, 1, 1, 1)
    if torch.is_grad_enabled() and (srgb.requires_grad or (isinstance(t, torch.Tensor) and t.requires_grad)):
        return (srgb + t * (smoothstep(srgb) - srgb)).clamp(0, 1)
    # Same values without autograd, in two allocations instead of ~10 (this op is memory-bound on large frames).
    c = srgb.clamp(0, 1)
    s = torch.mul(c, -2.0).add_(3.0).mul_(c).mul_(c)          # smoothstep(c)
    return s.sub_(c).mul_(t).add_(c).clamp_(0, 1)


def quantize(x: torch.Tensor, bits: int = 8, straight_through: bool = False) -> torch.Tensor:
    """Round [0, 1] values to ``2**bits - 1`` levels; ``straight_through`` keeps gradients (identity backward)."""
    levels = float(2 ** bits - 1)
    q = torch.round(x.clamp(0, 1) * levels) / levels
    return x + (q - x).detach() if straight_through else q


def process(
    raw: torch.Tensor,
    wb_gains,
    cam_to_rgb,
    pattern: str = "RGGB",
    demosaic: str = "menon",
    gamma: Scalar = 2.2,
    tone: Scalar = 1.0,
    bits: Optional[int] = None,
) -> torch.Tensor:
    """Render linear RAW ``(B, 1, H, W)`` in [0, 1] to gamma-encoded sRGB ``(B, 3, H, W)`` in [0, 1].

    ``raw`` may also be 3-channel linear camera RGB ``(B, 3, H, W)`` (no demosaic step).
    ``gamma`` and ``tone`` are floats or per-image ``(B,)`` tensors.
    """
    if raw.ndim != 4 or raw.shape[1] not in (1, 3):
        raise ISPInputError(f"process expects (B, 1, H, W) mosaic or (B, 3, H, W) camera RGB, got {tuple(raw.shape)}")
    pattern = validate_pattern(pattern)
    if raw.shape[1] == 1:
        x = apply_white_balance(raw, wb_gains, pattern)
        rgb = _demosaic(x, pattern, demosaic).clamp(0, 1)
    else:
        g = _batch_param(wb_gains, raw.shape[0], 3, raw, "wb_gains")
        rgb = (raw * g[:, :, None, None]).clamp(0, 1)
    rgb = apply_ccm(rgb, cam_to_rgb)
    y = gamma_encode(rgb, gamma)
    y = apply_tone(y, tone)
    return quantize(y, bits) if bits else y


@dataclass
class ISPSettings:
    """Per-batch settings of the forward ISP (what a degradation may get wrong)."""

    wb_gains: torch.Tensor  # (B, 3)
    cam_to_rgb: torch.Tensor  # (B, 3, 3)
    pattern: str = "RGGB"
    demosaic: str = "menon"
    gamma: torch.Tensor = field(default_factory=lambda: torch.tensor(2.2))
    tone: torch.Tensor = field(default_factory=lambda: torch.tensor(1.0))


class ISP(torch.nn.Module):
    """Module wrapper around :func:`process` with fixed demosaic/gamma/tone defaults."""

    def __init__(self, pattern: str = "RGGB", demosaic: str = "menon", gamma: float = 2.2, tone: float = 1.0):
        super().__init__()
        self.pattern, self.demosaic, self.gamma, self.tone = validate_pattern(pattern), demosaic, gamma, tone

    def forward(self, raw: torch.Tensor, wb_gains, cam_to_rgb) -> torch.Tensor:
        return process(raw, wb_gains, cam_to_rgb, self.pattern, self.demosaic, self.gamma, self.tone)


def render_raw_image(raw_image, demosaic: str = "menon", gamma: float = 2.2, tone: float = 1.0) -> np.ndarray:
    """Render an :class:`isp_sim.raw.RawImage` with the simulator's ISP -> uint8 (H, W, 3)."""
    x = raw_image.tensor()
    out = process(x, raw_image.gains_or_gray_world(), raw_image.cam_to_srgb(), raw_image.pattern, demosaic, gamma,
                  tone, bits=8)
    return (out[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
