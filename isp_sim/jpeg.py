"""JPEG compression: the real codec (libjpeg through Pillow) and a differentiable approximation.

Both take gamma-encoded sRGB in [0, 1]. Quality is the libjpeg 1..100 scale; chroma subsampling is one of
``"4:4:4"``, ``"4:2:2"``, ``"4:2:0"``.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ISPInputError

SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}

# ITU-T T.81 Annex K example tables (luminance, chrominance), raster order
_Q_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float32).reshape(8, 8)
_Q_CHROMA = np.full((8, 8), 99, dtype=np.float32)
_Q_CHROMA[:4, :4] = np.array([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])


def _check(quality: int, subsampling: str) -> None:
    if not 1 <= int(quality) <= 100:
        raise ISPInputError(f"JPEG quality must be in 1..100, got {quality}")
    if subsampling not in SUBSAMPLING:
        raise ISPInputError(f"JPEG chroma subsampling must be one of {list(SUBSAMPLING)}, got {subsampling!r}")


def jpeg_real_np(image: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """Encode+decode uint8 (H, W, 3) with libjpeg (Pillow); returns uint8 (H, W, 3)."""
    from PIL import Image

    _check(quality, subsampling)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=int(quality), subsampling=SUBSAMPLING[subsampling])
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


def jpeg_real(x: torch.Tensor, quality: int, subsampling: str = "4:2:0") -> torch.Tensor:
    """Real codec on one image tensor ``(3, H, W)`` in [0, 1] (rounded to 8 bits first). Not differentiable."""
    u8 = (x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    out = jpeg_real_np(u8, quality, subsampling)
    return torch.from_numpy(out.astype(np.float32) / 255).permute(2, 0, 1).to(x.device, x.dtype)


def quant_tables(quality: float) -> tuple[np.ndarray, np.ndarray]:
    """libjpeg's quality scaling of the Annex K tables (values clipped to 1..255)."""
    q = float(np.clip(quality, 1, 100))
    scale = 5000 / q if q < 50 else 200 - 2 * q
    f = lambda t: np.clip(np.floor((t * scale + 50) / 100), 1, 255).astype(np.float32)  # noqa: E731
    return f(_Q_LUMA), f(_Q_CHROMA)


def _dct_matrix(device, dtype) -> torch.Tensor:
    n = 8
    m = torch.zeros(n, n, dtype=torch.float64)
    for k in range(n):
        for i in range(n):
            m[k, i] = math.cos(math.pi * (2 * i + 1) * k / (2 * n)) * (math.sqrt(1 / n) if k == 0 else math.sqrt(2 / n))
    return m.to(device, dtype)


def _soft_round(x: torch.Tensor) -> torch.Tensor:
    """Rounding with the exact value forward and the gradient of ``round(x) + (x - round(x))^3`` (Shin & Song)."""
    r = torch.round(x).detach()
    approx = r + (x - r) ** 3
    return approx + (r - approx).detach()


def _blocks(c: torch.Tensor) -> torch.Tensor:
    b, h, w = c.shape
    return c.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)


def _unblocks(c: torch.Tensor) -> torch.Tensor:
    b, nh, nw, _, _ = c.shape
    return c.permute(0, 1, 3, 2, 4).reshape(b, nh * 8, nw * 8)


def jpeg_differentiable(x: torch.Tensor, quality, subsampling: str = "4:2:0") -> torch.Tensor:
    """Differentiable JPEG approximation on ``(B, 3, H, W)`` in [0, 1].

    YCbCr (JFIF) -> optional 2x chroma subsampling -> 8x8 DCT -> quantisation with libjpeg-scaled tables and
    differentiable rounding -> inverse. ``quality`` is a number or a (B,) sequence. The image is padded by edge
    replication to a multiple of 16. Gradients flow to ``x``.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ISPInputError(f"jpeg_differentiable expects (B, 3, H, W), got {tuple(x.shape)}")
    if subsampling not in SUBSAMPLING:
        raise ISPInputError(f"JPEG chroma subsampling must be one of {list(SUBSAMPLING)}, got {subsampling!r}")
    b, _, h, w = x.shape
    qs = np.broadcast_to(np.asarray(quality, dtype=np.float32), (b,))
    ph, pw = (-h) % 16, (-w) % 16
    xp = F.pad(x.clamp(0, 1) * 255, (0, pw, 0, ph), mode="replicate")
    r, g, bl = xp[:, 0], xp[:, 1], xp[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl + 128
    if subsampling == "4:2:0":
        sub = lambda c: F.avg_pool2d(c[:, None], 2)[:, 0]  # noqa: E731
    elif subsampling == "4:2:2":
        sub = lambda c: F.avg_pool2d(c[:, None], (1, 2))[:, 0]  # noqa: E731
    else:
        sub = lambda c: c  # noqa: E731
    d = _dct_matrix(x.device, x.dtype)
    tables = [quant_tables(q) for q in qs]
    ql = torch.tensor(np.stack([t[0] for t in tables]), device=x.device, dtype=x.dtype)[:, None, None]
    qc = torch.tensor(np.stack([t[1] for t in tables]), device=x.device, dtype=x.dtype)[:, None, None]

    def code(c: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        hh, ww = c.shape[-2:]
        c = F.pad(c[:, None], (0, (-ww) % 8, 0, (-hh) % 8), mode="replicate")[:, 0]
        blk = _blocks(c - 128)
        coef = d @ blk @ d.T
        coef = _soft_round(coef / q) * q
        return (_unblocks(d.T @ coef @ d) + 128)[:, :hh, :ww]

    y2 = code(y, ql)
    cb2, cr2 = code(sub(cb), qc), code(sub(cr), qc)
    if subsampling != "4:4:4":
        up = lambda c: F.interpolate(c[:, None], size=y.shape[-2:], mode="bilinear", align_corners=False)[:, 0]  # noqa
        cb2, cr2 = up(cb2), up(cr2)
    r2 = y2 + 1.402 * (cr2 - 128)
    g2 = y2 - 0.344136 * (cb2 - 128) - 0.714136 * (cr2 - 128)
    b2 = y2 + 1.772 * (cb2 - 128)
    out = torch.stack([r2, g2, b2], dim=1)[..., :h, :w] / 255
    return out.clamp(0, 1)
