"""Sensor noise in the linear RAW domain (values in [0, 1] after black/white normalisation).

Heteroscedastic shot + read noise (Brooks et al. 2019): ``var(x) = shot * x + read``. Its levels follow the
ISO: ``shot`` grows linearly with the analogue gain (ISO 100 -> 1e-4, ISO 12800 -> 1.2e-2 in normalised units,
log-linear in between), and ``ln read = 2.18 ln shot + 1.20 + N(0, 0.26)`` (natural log; ``read`` is a variance).
ELD-style extras (Wei et al. 2020): per-row offsets (banding) and ADC quantisation to ``bits``.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

ISO_MIN, ISO_MAX = 100.0, 12800.0
SHOT_AT_ISO_MIN, SHOT_AT_ISO_MAX = 1e-4, 0.012
READ_SLOPE, READ_INTERCEPT, READ_SPREAD = 2.18, 1.20, 0.26


def shot_from_iso(iso: float) -> float:
    """Shot-noise variance factor (normalised units) at ``iso``: log-linear between ISO 100 and 12800."""
    t = math.log(iso / ISO_MIN) / math.log(ISO_MAX / ISO_MIN)
    return math.exp(math.log(SHOT_AT_ISO_MIN) + t * (math.log(SHOT_AT_ISO_MAX) - math.log(SHOT_AT_ISO_MIN)))


def read_from_shot(shot: float, rng: Optional[np.random.Generator] = None) -> float:
    """Read-noise variance on the Brooks et al. line; ``rng`` adds the N(0, 0.26) log-spread."""
    jitter = float(rng.normal(0.0, READ_SPREAD)) if rng is not None else 0.0
    return math.exp(READ_SLOPE * math.log(shot) + READ_INTERCEPT + jitter)


def add_sensor_noise(
    raw: torch.Tensor,
    shot: float,
    read: float,
    generator: torch.Generator,
    row_sigma: float = 0.0,
    bits: Optional[int] = None,
) -> torch.Tensor:
    """Noisy RAW for one image ``(1, C, H, W)`` (or ``(C, H, W)``), clipped to [0, 1].

    Noise is drawn from ``generator`` (which must live on ``raw.device``). ``row_sigma`` is the std of a per-row
    offset; ``bits`` quantises to ``2**bits - 1`` levels (ADC). Gradients flow through ``raw`` (reparameterised).
    """
    std = torch.sqrt((raw.clamp(min=0) * shot + read).clamp(min=1e-12))
    eps = torch.randn(raw.shape, generator=generator, device=raw.device, dtype=raw.dtype)
    out = raw + std * eps
    if row_sigma > 0:
        rows = torch.randn((*raw.shape[:-1], 1), generator=generator, device=raw.device, dtype=raw.dtype)
        out = out + row_sigma * rows
    out = out.clamp(0, 1)
    if bits:
        levels = float(2 ** bits - 1)
        out = out + (torch.round(out * levels) / levels - out).detach()
    return out


def estimate_noise_variance(raw: np.ndarray, bins: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Estimate a noise-level function from one linear RAW plane (H, W) in [0, 1].

    Uses the residual of a 3x3-mean on same-colour samples (a crude but standard flat-patch method) and returns
    (mean level per bin, residual variance per bin), useful to check ``var = shot * x + read`` on real frames.
    """
    from scipy.ndimage import uniform_filter

    x = raw.astype(np.float64)
    mu = uniform_filter(x, 3, mode="mirror")
    res = (x - mu) * math.sqrt(9 / 8)
    grad = np.abs(np.gradient(mu)[0]) + np.abs(np.gradient(mu)[1])
    flat = grad < np.quantile(grad, 0.3)
    edges = np.quantile(mu[flat], np.linspace(0, 1, bins + 1))
    m, v = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = flat & (mu >= lo) & (mu < hi)
        if sel.sum() > 50:
            m.append(mu[sel].mean())
            v.append(res[sel].var())
    return np.array(m), np.array(v)


def sample_iso(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Log-uniform ISO in [lo, hi]."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def noise_params_for_images(params: Sequence[Optional[dict]]):
    return [p for p in params if p is not None]
