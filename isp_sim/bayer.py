"""Bayer colour-filter-array geometry: mosaicing, packing to 4 channels and back.

A pattern names the colours of the 2x2 tile in raster order: ``"RGGB"`` has red at (0, 0), green at (0, 1)
and (1, 0), blue at (1, 1). The two greens are told apart by the row they share: ``Gr`` shares a row with
red, ``Gb`` with blue. All functions work on any value domain (linear or gamma-encoded, normalised or counts);
they only move samples.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import ISPInputError

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
CANONICAL_ORDER = ("R", "Gr", "Gb", "B")
_COLOR_INDEX = {"R": 0, "G": 1, "B": 2}


def validate_pattern(pattern: str) -> str:
    """Return the upper-case pattern or raise ``ISPInputError`` for an unknown one."""
    p = str(pattern).upper()
    if p not in PATTERNS:
        raise ISPInputError(f"unknown Bayer pattern {pattern!r}; expected one of {', '.join(PATTERNS)}")
    return p


def site_positions(pattern: str) -> dict[str, tuple[int, int]]:
    """Map ``R``, ``Gr``, ``Gb``, ``B`` to their (row, col) offset inside the 2x2 tile."""
    p = validate_pattern(pattern)
    cells = {(0, 0): p[0], (0, 1): p[1], (1, 0): p[2], (1, 1): p[3]}
    out: dict[str, tuple[int, int]] = {}
    red_row = next(pos[0] for pos, c in cells.items() if c == "R")
    for pos, c in cells.items():
        if c == "G":
            out["Gr" if pos[0] == red_row else "Gb"] = pos
        else:
            out[c] = pos
    return out


def _check_order(order: Sequence[str]) -> tuple[str, ...]:
    order = tuple(order)
    if sorted(order) != sorted(CANONICAL_ORDER):
        raise ISPInputError(f"packing order {order} must be a permutation of {CANONICAL_ORDER}")
    return order


def _check_even(h: int, w: int, what: str) -> None:
    if h % 2 or w % 2:
        raise ISPInputError(f"{what}: Bayer mosaic size {h}x{w} must be even in both dimensions")


def cfa_masks(pattern: str, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(3, H, W) 0/1 masks telling which colour (R, G, B) each mosaic site samples."""
    p = validate_pattern(pattern)
    m = torch.zeros(3, height, width, device=device, dtype=dtype)
    for (dy, dx), c in zip(((0, 0), (0, 1), (1, 0), (1, 1)), p):
        m[_COLOR_INDEX[c], dy::2, dx::2] = 1
    return m


def mosaic(rgb: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Sample an RGB image ``(B, 3, H, W)`` through a Bayer CFA -> mosaic ``(B, 1, H, W)``. Differentiable."""
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ISPInputError(f"mosaic expects (B, 3, H, W), got {tuple(rgb.shape)}")
    masks = cfa_masks(pattern, rgb.shape[-2], rgb.shape[-1], rgb.device, rgb.dtype)
    return (rgb * masks).sum(dim=1, keepdim=True)


def pack(raw: torch.Tensor, pattern: str = "RGGB", order: Sequence[str] = CANONICAL_ORDER) -> torch.Tensor:
    """Space-to-depth: mosaic ``(B, 1, H, W)`` -> ``(B, 4, H/2, W/2)`` with channels in ``order``."""
    if raw.ndim != 4 or raw.shape[1] != 1:
        raise ISPInputError(f"pack expects a mosaic (B, 1, H, W), got {tuple(raw.shape)}")
    _check_even(raw.shape[-2], raw.shape[-1], "pack")
    pos = site_positions(pattern)
    return torch.cat([raw[:, :, pos[c][0]::2, pos[c][1]::2] for c in _check_order(order)], dim=1)


def unpack(packed: torch.Tensor, pattern: str = "RGGB", order: Sequence[str] = CANONICAL_ORDER) -> torch.Tensor:
    """Depth-to-space: ``(B, 4, h, w)`` in ``order`` -> mosaic ``(B, 1, 2h, 2w)``."""
    if packed.ndim != 4 or packed.shape[1] != 4:
        raise ISPInputError(f"unpack expects (B, 4, h, w), got {tuple(packed.shape)}")
    pos = site_positions(pattern)
    b, _, h, w = packed.shape
    out = packed.new_zeros(b, 1, 2 * h, 2 * w)
    for i, c in enumerate(_check_order(order)):
        out[:, 0, pos[c][0]::2, pos[c][1]::2] = packed[:, i]
    return out


def per_site_values(values: Sequence[float], pattern: str) -> dict[str, float]:
    """Map 4 per-site values given in raster order of the 2x2 tile to ``R``/``Gr``/``Gb``/``B``."""
    vals = [float(v) for v in values]
    if len(vals) != 4:
        raise ISPInputError(f"expected 4 per-site values, got {len(vals)}")
    raster = {(0, 0): vals[0], (0, 1): vals[1], (1, 0): vals[2], (1, 1): vals[3]}
    return {c: raster[p] for c, p in site_positions(pattern).items()}


# numpy twins: (H, W, 3) <-> (H, W) <-> (H/2, W/2, 4)
def mosaic_np(rgb: np.ndarray, pattern: str = "RGGB") -> np.ndarray:
    """numpy ``(H, W, 3)`` -> mosaic ``(H, W)``, same dtype."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ISPInputError(f"mosaic_np expects (H, W, 3), got {rgb.shape}")
    p = validate_pattern(pattern)
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for (dy, dx), c in zip(((0, 0), (0, 1), (1, 0), (1, 1)), p):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, _COLOR_INDEX[c]]
    return out


def pack_np(raw: np.ndarray, pattern: str = "RGGB", order: Sequence[str] = CANONICAL_ORDER) -> np.ndarray:
    """numpy mosaic ``(H, W)`` -> ``(H/2, W/2, 4)`` with channels in ``order``."""
    if raw.ndim != 2:
        raise ISPInputError(f"pack_np expects a mosaic (H, W), got {raw.shape}")
    _check_even(*raw.shape, "pack_np")
    pos = site_positions(pattern)
    return np.stack([raw[pos[c][0]::2, pos[c][1]::2] for c in _check_order(order)], axis=-1)


def unpack_np(packed: np.ndarray, pattern: str = "RGGB", order: Sequence[str] = CANONICAL_ORDER) -> np.ndarray:
    """numpy ``(h, w, 4)`` -> mosaic ``(2h, 2w)``."""
    if packed.ndim != 3 or packed.shape[2] != 4:
        raise ISPInputError(f"unpack_np expects (h, w, 4), got {packed.shape}")
    pos = site_positions(pattern)
    h, w, _ = packed.shape
    out = np.empty((2 * h, 2 * w), dtype=packed.dtype)
    for i, c in enumerate(_check_order(order)):
        out[pos[c][0]::2, pos[c][1]::2] = packed[..., i]
    return out
