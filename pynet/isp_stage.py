"""A learned ISP stage for isp_sim: linear Bayer RAW -> PyNET -> sRGB.

PyNET was trained on Zurich RAW-to-RGB inputs: RGGB 10-bit counts with black level 64, divided by 1020, packed
as ``[B, G(0,1), R, G(1,0)]``. :class:`PyNETISP` converts isp_sim's linear RAW (black-subtracted,
white-normalised, in [0, 1]) to that convention (``64 + x * (1023 - 64)``, / 1020), packs it for any Bayer
pattern by colour site (R, green on the red row, green on the blue row, B), runs the model and returns sRGB
``(B, 3, H, W)`` in [0, 1]. The network replaces white balance, demosaicing, colour correction and tone mapping,
so the ``wb_gains``/``cam_to_rgb`` arguments of the hand-crafted ISP are accepted and ignored.

Notes: for patterns other than RGGB the 2x2 sites are regrouped by colour, which shifts the sampling phase by up
to one pixel relative to RGGB data (the authors instead rotate BGGR frames by 180 degrees); a network trained on
one sensor renders other sensors' colours imperfectly (its colour response is learned, not parameterised).
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


def linear_to_pynet_packed(raw: torch.Tensor, pattern: str = "RGGB") -> torch.Tensor:
    """Linear mosaic ``(B, 1, H, W)`` in [0, 1] -> PyNET input ``(B, 4, H/2, W/2)`` (ZRR counts / 1020)."""
    if raw.ndim != 4 or raw.shape[1] != 1:
        raise ValueError(f"learned ISP expects a Bayer mosaic (B, 1, H, W), got {tuple(raw.shape)}")
    counts = ZRR_BLACK + raw.clamp(0, 1) * (ZRR_WHITE - ZRR_BLACK)
    return pack(counts / ZRR_NORM, validate_pattern(pattern), order=PYNET_ORDER)


def raw_image_to_pynet_input(raw) -> torch.Tensor:
    """An ``isp_sim.raw.RawImage`` -> PyNET input ``(1, 4, H/2, W/2)``.

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

    ``H`` and ``W`` must be even; other sizes than multiples of 32 are handled by reflect padding.
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
        x = linear_to_pynet_packed(raw.to(dev, torch.float32), pattern)
        if self.tile is None:
            xp, (h, w) = pad_to_multiple(x)
            with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
                y = self.model(xp, level=0)[..., : 2 * h, : 2 * w]
        else:
            y = infer_tiled(self.model, x, 0, tile=self.tile, overlap=self.overlap, mode=self.mode)
        return y.clamp(0, 1).to(raw.device)

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
