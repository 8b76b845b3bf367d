"""A learned ISP stage for isp_sim: linear Bayer RAW -> PyNET -> sRGB.

PyNET was trained on Zurich RAW-to-RGB inputs: RGGB 10-bit counts with black level 64, divided by 1020, packed
as ``[B, G(0,1), R, G(1,0)]``. :class:`PyNETISP` converts isp_sim's linear RAW (black-subtracted,
white-normalised, in [0, 1]) to that convention (``64 + x * (1023 - 64)``, / 1020), runs the model and returns sRGB
``(B, 3, H, W)`` in [0, 1]. The network replaces white balance, demosaicing, colour correction and tone mapping,
so the ``wb_gains``/``cam_to_rgb`` arguments of the hand-crafted ISP are accepted and ignored.

Other Bayer patterns: the network has only seen RGGB phase (red at (0, 0)), and regrouping another pattern's 2x2
sites by colour would feed it samples displaced by up to one pixel from where it assumes them. Instead the mosaic
is flipped or rotated so that it *is* RGGB (:data:`TO_RGGB`: BGGR rotated by 180 degrees, as the authors advise
for their DNG converter; GRBG flipped left-right; GBRG flipped up-down), rendered, and the output is given the
inverse transform (each is its own inverse), so the image is pixel-aligned with the input for every pattern.
Mosaic height and width must be even. Remaining limitation: a network trained on one sensor renders other sensors'
colours imperfectly (its colour response is learned, not parameterised).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np
import torch
import torch.nn as nn

from isp_sim.bayer import pack, validate_pattern

from .data import PYNET_ORDER, ZRR_BLACK, ZRR_NORM, ZRR_WHITE, pack_pynet
from .infer import infer_tiled, pad_to_multiple
from .model import PyNET, load_pynet


# spatial axes (of a (..., H, W) array) to reverse so that a mosaic of each pattern becomes RGGB: with even H, W,
# reversing the rows moves row phase 1 to 0 and reversing the columns moves column phase 1 to 0
TO_RGGB = {"RGGB": (), "BGGR": (-2, -1), "GRBG": (-1,), "GBRG": (-2,)}


def _flip_dims(pattern: str) -> tuple:
    return TO_RGGB[validate_pattern(pattern)]


def to_rggb_phase(x, pattern: str):
    """Flip/rotate a mosaic ``(..., H, W)`` (torch or numpy, H and W even) so that its pattern becomes RGGB."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"learned ISP: mosaic size {x.shape[-1]}x{x.shape[-2]} must be even")
    dims = _flip_dims(pattern)
    if not dims:
        return x
    return torch.flip(x, dims) if isinstance(x, torch.Tensor) else np.flip(x, dims)


def from_rggb_phase(y, pattern: str):
    """Undo :func:`to_rggb_phase` on an image rendered from the transformed mosaic (``(..., H, W)``, same size as the
    mosaic): the output becomes pixel-aligned with the original mosaic."""
    dims = _flip_dims(pattern)
    if not dims:
        return y
    return torch.flip(y, dims) if isinstance(y, torch.Tensor) else np.flip(y, dims)


def linear_to_pynet_packed(raw: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Linear mosaic ``(B, 1, H, W)`` in [0, 1] -> PyNET input ``(B, 4, H/2, W/2)`` (ZRR counts / 1020).

    The mosaic is first brought to RGGB phase with :func:`to_rggb_phase`; render, then apply
    :func:`from_rggb_phase` with the same ``pattern`` to align the output with ``raw``."""
    if raw.ndim != 4 or raw.shape[1] != 1:
        raise ValueError(f"learned ISP expects a Bayer mosaic (B, 1, H, W), got {tuple(raw.shape)}")
    counts = ZRR_BLACK + to_rggb_phase(raw, pattern).clamp(0, 1) * (ZRR_WHITE - ZRR_BLACK)
    return pack(counts / ZRR_NORM, "RGGB", order=PYNET_ORDER)


def raw_image_to_pynet_input(raw) -> torch.Tensor:
    """An ``isp_sim.raw.RawImage`` -> PyNET input ``(1, 4, H/2, W/2)`` in RGGB phase (see :func:`to_rggb_phase`;
    undo it on the rendered image with ``from_rggb_phase(image, raw.pattern)``).

    Frames already in the ZRR convention (RGGB, black level 64, white level 1023, e.g. Zurich PNGs) are packed from
    their stored counts exactly as the authors' loader does (/1020, no clipping); other frames are mapped from
    their linear RAW to ZRR-like counts (``64 + x * 959``)."""
    if raw.pattern == "RGGB" and all(b == ZRR_BLACK for b in raw.black_level) and raw.white_level == ZRR_WHITE:
        return torch.from_numpy(pack_pynet(raw.counts, "RGGB"))[None]
    lin = torch.from_numpy(np.ascontiguousarray(raw.linear(clip=True)))[None, None]
    return linear_to_pynet_packed(lin, raw.pattern)


class PyNETISP(nn.Module):
    """Learned-ISP stage: ``forward(raw (B, 1, H, W) linear in [0, 1], pattern) -> sRGB (B, 3, H, W) in [0, 1]``.

    Args:
        model: a :class:`PyNET` (or pass ``checkpoint``).
        checkpoint: path of a PyNET checkpoint (authors' ``pynet_level_0.pth`` or one from ``pynet.train``).
        tile: None = whole-frame inference; otherwise tiled inference with this packed tile size.
        overlap, mode: tiled-inference settings (see :func:`pynet.infer.infer_tiled`).
        differentiable: keep autograd (whole-frame only), e.g. to back-propagate through the learned ISP.

    ``H`` and ``W`` must be even; other sizes than multiples of 32 are handled by reflect padding. Non-RGGB
    mosaics are flipped/rotated to RGGB phase and the output transformed back (see the module docstring).
    """

    def __init__(self, model: Optional[PyNET] = None, checkpoint: Optional[str | os.PathLike] = None,
                 tile: Optional[int] = None, overlap: int = 64, mode: str = "seamless",
                 differentiable: bool = False):
        super().__init__()
        if (model is None) == (checkpoint is None):
            raise ValueError("PyNETISP: pass exactly one of model= or checkpoint=")
        self.model = load_pynet(checkpoint) if checkpoint is not None else model
        self.model.eval()
        self.tile, self.overlap, self.mode, self.differentiable = tile, overlap, mode, differentiable
        if differentiable and tile is not None:
            raise ValueError("PyNETISP: differentiable=True needs whole-frame inference (tile=None)")

    def forward(self, raw: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
        if raw.shape[-2] % 2 or raw.shape[-1] % 2:
            raise ValueError(f"learned ISP: mosaic size {raw.shape[-1]}x{raw.shape[-2]} must be even")
        dev = next(self.model.parameters()).device
        x = linear_to_pynet_packed(raw.to(dev, torch.float32), pattern)  # RGGB phase
        if self.tile is None:
            xp, (h, w) = pad_to_multiple(x)
            with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
                y = self.model(xp, level=0)[..., : 2 * h, : 2 * w]
        else:
            y = infer_tiled(self.model, x, 0, tile=self.tile, overlap=self.overlap, mode=self.mode)
        return from_rggb_phase(y, pattern).clamp(0, 1).to(raw.device)

    def process(self, raw: torch.Tensor, wb_gains=None, cam_to_rgb=None, pattern: str = "RGGB",
                **ignored) -> torch.Tensor:
        """Drop-in for ``isp_sim.isp.process``: the learned ISP ignores WB gains / colour matrices."""
        return self.forward(raw, pattern)

    @torch.no_grad()
    def render(self, raw_image) -> np.ndarray:
        """An ``isp_sim.raw.RawImage`` -> uint8 sRGB (H, W, 3)."""
        lin = torch.from_numpy(np.ascontiguousarray(raw_image.linear(clip=True)))[None, None]
        y = self.forward(lin, raw_image.pattern)
        return (y[0].permute(1, 2, 0).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


PyNETStage = PyNETISP  # name used by isp_sim.pipeline's documentation
