"""Colour science constants and tone curves.

Linear values are scene-referred, normalised to [0, 1]; "gamma-encoded" values are display-referred sRGB-like in
[0, 1]. The forward ISP uses a power-law gamma (default 2.2, as in Brooks et al. 2019) followed by a global
smoothstep tone curve; ``unprocess`` inverts both exactly.
"""
from __future__ import annotations

import numpy as np
import torch

#: linear sRGB (D65) -> CIE XYZ
RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float64,
)

#: XYZ -> camera matrices of four real cameras (the set used by Brooks et al. 2019 for random CCMs)
XYZ_TO_CAM_BANK = np.array(
    [
        [[1.0234, -0.2969, -0.2266], [-0.5625, 1.6328, -0.0469], [-0.0703, 0.2188, 0.6406]],
        [[0.4913, -0.0541, -0.0202], [-0.613, 1.3513, 0.2906], [-0.1564, 0.2151, 0.7183]],
        [[0.838, -0.263, -0.0639], [-0.2887, 1.0725, 0.2496], [-0.0627, 0.1427, 0.5438]],
        [[0.6596, -0.2079, -0.0562], [-0.4782, 1.3016, 0.1933], [-0.097, 0.1581, 0.5181]],
    ],
    dtype=np.float64,
)


def rgb_to_cam_from_xyz_to_cam(xyz_to_cam: np.ndarray) -> np.ndarray:
    """Linear sRGB -> camera RGB matrix with rows normalised to sum 1 (so white maps to white)."""
    m = np.asarray(xyz_to_cam, dtype=np.float64) @ RGB_TO_XYZ
    return m / m.sum(axis=1, keepdims=True)


def cam_to_srgb_from_xyz_to_cam(xyz_to_cam: np.ndarray | None) -> np.ndarray:
    """Camera RGB -> linear sRGB colour-correction matrix; identity when the camera matrix is unknown."""
    if xyz_to_cam is None:
        return np.eye(3)
    return np.linalg.inv(rgb_to_cam_from_xyz_to_cam(xyz_to_cam))


def random_xyz_to_cam(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random convex combination of the camera bank; returns (matrix, weights)."""
    w = rng.uniform(1e-8, 1e8, size=len(XYZ_TO_CAM_BANK))
    w = w / w.sum()
    return np.tensordot(w, XYZ_TO_CAM_BANK, axes=1), w


def smoothstep(x: torch.Tensor) -> torch.Tensor:
    """Global S-shaped tone curve ``3x^2 - 2x^3`` on [0, 1] (gamma-encoded in, gamma-encoded out)."""
    x = x.clamp(0, 1)
    return x * x * (3 - 2 * x)


def inverse_smoothstep(y: torch.Tensor) -> torch.Tensor:
    """Exact inverse of :func:`smoothstep` on [0, 1]."""
    y = y.clamp(0, 1)
    return 0.5 - torch.sin(torch.asin(1 - 2 * y) / 3)


def gamma_encode(x: torch.Tensor, gamma) -> torch.Tensor:
    """Linear [0, 1] -> gamma-encoded ``x ** (1 / gamma)``; ``gamma`` is a float or a (B,) tensor.

    The derivative is bounded near zero (values are floored at 1e-8) so gradients stay finite.
    """
    g = _per_image(gamma, x)
    return x.clamp(min=1e-8) ** (1.0 / g)


def gamma_decode(y: torch.Tensor, gamma) -> torch.Tensor:
    """Gamma-encoded [0, 1] -> linear ``y ** gamma``."""
    g = _per_image(gamma, y)
    return y.clamp(min=1e-8) ** g


def _per_image(v, x: torch.Tensor):
    if isinstance(v, torch.Tensor) and v.ndim == 1:
        return v.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return v
