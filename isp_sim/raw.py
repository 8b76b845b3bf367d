"""The ``RawImage`` type: a Bayer mosaic plus everything needed to interpret it."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np
import torch

from .bayer import validate_pattern
from .color import cam_to_srgb_from_xyz_to_cam
from .errors import ISPInputError


@dataclass
class RawImage:
    """A sensor RAW frame.

    ``counts``: (H, W) sensor values (integer counts or float), not black-subtracted.
    ``black_level``: 4 values for the 2x2 CFA tile in raster order, in counts.
    ``white_level``: saturation level in counts. ``wb_gains``: (R, G, B) multipliers with G = 1 (as-shot),
    or None. ``xyz_to_cam``: 3x3 colour matrix (XYZ -> camera), or None when unknown.
    """

    counts: np.ndarray
    pattern: str = "RGGB"
    black_level: Sequence[float] = (0.0, 0.0, 0.0, 0.0)
    white_level: float = 1023.0
    bit_depth: Optional[int] = None
    wb_gains: Optional[Sequence[float]] = None
    xyz_to_cam: Optional[np.ndarray] = None
    iso: Optional[float] = None
    exposure_time: Optional[float] = None
    path: Optional[str] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.path or "RawImage"
        self.counts = np.asarray(self.counts)
        if self.counts.ndim != 2:
            raise ISPInputError(f"{where}: a Bayer mosaic must be 2-D (H, W), got shape {self.counts.shape}")
        h, w = self.counts.shape
        if h < 2 or w < 2 or h % 2 or w % 2:
            raise ISPInputError(f"{where}: Bayer mosaic size {h}x{w} must be even and at least 2x2")
        if self.counts.dtype.kind == "f" and not np.isfinite(self.counts).all():
            raise ISPInputError(f"{where}: RAW data contains NaN or Inf values")
        self.pattern = validate_pattern(self.pattern)
        bl = np.broadcast_to(np.asarray(self.black_level, dtype=np.float64).ravel(), (4,)) if np.size(
            self.black_level) in (1, 4) else None
        if bl is None:
            raise ISPInputError(f"{where}: black_level needs 1 or 4 values, got {self.black_level!r}")
        self.black_level = tuple(float(v) for v in bl)
        self.white_level = float(self.white_level)
        if not np.all(np.isfinite(bl)) or not np.isfinite(self.white_level):
            raise ISPInputError(f"{where}: black level {self.black_level} and white level {self.white_level} "
                                "must be finite numbers (NaN or Inf in the metadata)")
        if self.white_level <= max(self.black_level):
            raise ISPInputError(
                f"{where}: white level {self.white_level} must exceed the black level {max(self.black_level)}")
        if self.wb_gains is not None:
            g = np.asarray(self.wb_gains, dtype=np.float64).ravel()
            if g.size == 4:  # R, G, G, B
                g = np.array([g[0], (g[1] + g[2]) / 2, g[3]])
            if g.size != 3 or not np.all(np.isfinite(g)) or np.any(g <= 0):
                raise ISPInputError(f"{where}: white-balance gains must be 3 (or 4) positive numbers, got {self.wb_gains!r}")
            self.wb_gains = tuple(float(v) for v in g / g[1])
        if self.xyz_to_cam is not None:
            m = np.asarray(self.xyz_to_cam, dtype=np.float64)
            if m.shape != (3, 3) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-9:
                self.xyz_to_cam = None  # unusable matrix (e.g. all zeros from some DNGs): treat as unknown
            else:
                self.xyz_to_cam = m

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.counts.shape)

    def black_map(self) -> np.ndarray:
        """(H, W) black level per site, float32."""
        h, w = self.counts.shape
        tile = np.array(self.black_level, dtype=np.float32).reshape(2, 2)
        return np.tile(tile, (h // 2, w // 2))

    def linear(self, clip: bool = True) -> np.ndarray:
        """Black-subtracted, white-normalised linear RAW, float32 (H, W), in [0, 1] when ``clip``."""
        black = self.black_map()
        x = (self.counts.astype(np.float32) - black) / (np.float32(self.white_level) - black)
        return np.clip(x, 0.0, 1.0) if clip else x

    def tensor(self, clip: bool = True) -> torch.Tensor:
        """Linear RAW as a ``(1, 1, H, W)`` float32 tensor."""
        return torch.from_numpy(self.linear(clip))[None, None]

    def cam_to_srgb(self) -> np.ndarray:
        """Camera RGB -> linear sRGB matrix (identity when the colour matrix is unknown)."""
        return cam_to_srgb_from_xyz_to_cam(self.xyz_to_cam)

    def gains_or_gray_world(self) -> np.ndarray:
        """As-shot WB gains (R, G, B), or gray-world estimates from the mosaic when they are unknown."""
        if self.wb_gains is not None:
            return np.asarray(self.wb_gains)
        from .bayer import pack_np

        p = pack_np(self.linear(), self.pattern)
        mean = p.reshape(-1, 4).mean(axis=0) + 1e-6
        g = (mean[1] + mean[2]) / 2
        return np.array([g / mean[0], 1.0, g / mean[3]])

    def crop(self, top: int, left: int, height: int, width: int) -> "RawImage":
        """A crop that keeps the CFA phase (top/left are rounded down to even)."""
        top, left = top - top % 2, left - left % 2
        return replace(self, counts=self.counts[top:top + height, left:left + width].copy())
