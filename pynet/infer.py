"""Full-resolution PyNET inference: whole frame, overlapping tiles, and an exact tiled mode.

Input everywhere: packed RAW ``(B, 4, H, W)`` (PyNET order and normalisation, see :mod:`pynet.data`); any ``H, W``
(frames are reflect-padded to multiples of 16 and the output is cropped back). Output: ``(B, 3, 2H/2**L, 2W/2**L)``.

Modes of :func:`infer_tiled`:

* ``"seamless"``: overlapping tiles, each run through the model on its own (instance-norm statistics per tile),
  blended with linear ramps over the overlaps. Peak memory is bounded by the tile size (plus the output frame).
  Because instance-norm statistics are per image, tiles differ slightly from whole-frame inference.
* ``"exact"``: a layer-streaming executor. The network is evaluated layer by layer; each layer is computed tile
  by tile with a halo equal to its own kernel radius (reflection/zero padding and the align_corners bilinear
  upsampling are evaluated in global frame coordinates), and instance-norm statistics are reduced over the
  whole frame before the next layer reads them. The result equals whole-frame inference up to float rounding.
  Working memory per step is bounded by the tile size; the full-frame activations of the layers still needed
  are kept in RAM (``store="memory"``) or in temporary files read/written window by window (``store="disk"``,
  RAM bounded by the tile size; disk use = the live activations, several GB for a 12 MP frame).

Not offered: a "two-pass" scheme (pass 1 gathers each instance-norm layer's statistics over all tiles, pass 2
re-runs the tiles with them). Pass-1 statistics of a deep layer are measured on inputs normalised with per-tile
statistics, pass 2 feeds it inputs normalised with frame statistics; with ~100 instance norms in series the
mismatch compounds (measured 3-22 dB PSNR against whole-frame output, worse than per-tile "seamless"), while the
streaming executor above is exact.
"""
from __future__ import annotations

import math
import os
import tempfile
import weakref
from contextlib import nullcontext
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .model import LRELU_SLOPE, ConvLayer, PyNET, TensorOps

MODES = ("whole", "seamless", "exact")


# ----------------------------------------------------------------------------------------------- helpers
def pad_to_multiple(x: torch.Tensor, multiple: int = 16, min_size: int = 32) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) at the bottom/right to multiples of ``multiple`` and at least ``min_size`` (the
    level-5 maps, 1/16 of the input, need 2 pixels for reflection padding); returns (padded, (H, W)).
    Replicate padding is used where the image is too small to reflect."""
    h, w = x.shape[-2:]
    ph, pw = max((-h) % multiple, min_size - h), max((-w) % multiple, min_size - w)
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def _out_scale(level: int) -> float:
    return 2.0 / (2 ** level)


def _autocast(x: torch.Tensor, bf16: bool):
    if not bf16:
        return nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=torch.bfloat16)


def _prep(model: PyNET, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def infer_whole(model: PyNET, x: torch.Tensor, level: int = 0, bf16: bool = False,
                channels_last: bool = False) -> torch.Tensor:
    """Whole-frame inference. ``x``: (B, 4, H, W) -> (B, 3, 2H/2**L, 2W/2**L) float32."""
    xp, (h, w) = pad_to_multiple(x)
    xp = _prep(model, xp, channels_last)
    with _autocast(xp, bf16):
        y = model(xp, level=level)
    s = _out_scale(level)
    return y[..., : int(h * s), : int(w * s)].float().contiguous()


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering [0, n) with at least ``overlap`` shared samples."""
    if n <= tile:
        return [0]
    stride = tile - overlap
    if stride <= 0:
        raise ValueError(f"tile {tile} must be larger than the overlap {overlap}")
    starts = list(range(0, n - tile, stride))
    starts.append(n - tile)
    return sorted(set(starts))


def _ramp(length: int, lead: int, trail: int) -> torch.Tensor:
    """1-D blending weight: linear ramps of ``lead``/``trail`` samples at the ends, 1 elsewhere, > 0 everywhere."""
    w = torch.ones(length)
    if lead > 0:
        w[:lead] = (torch.arange(lead) + 0.5) / lead
    if trail > 0:
        w[length - trail:] = torch.minimum(w[length - trail:], (torch.arange(trail, 0, -1) - 0.5) / trail)
    return w


# ----------------------------------------------------------------------------------------------- statistics
def _chan_merge(stats: dict, key, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
    """Combine (count, mean, M2) of a new chunk into ``stats[key]`` (Chan et al. parallel variance)."""
    if key not in stats:
        stats[key] = [n, mean, m2]
        return
    n0, mean0, m20 = stats[key]
    tot = n0 + n
    delta = mean - mean0
    stats[key] = [tot, mean0 + delta * (n / tot), m20 + m2 + delta ** 2 * (n0 * n / tot)]



# ----------------------------------------------------------------------------------------------- tiled
@torch.no_grad()
def infer_tiled(model: PyNET, x: torch.Tensor, level: int = 0, tile: int = 256, overlap: int = 32,
                mode: str = "seamless", bf16: bool = False, channels_last: bool = False,
                store: str = "memory", store_dir: Optional[str] = None, progress: bool = False) -> torch.Tensor:
    """Tiled full-frame inference (see the module docstring for ``mode``).

    ``tile``/``overlap``: tile size and minimum overlap in packed pixels (multiples of 16). For ``"exact"``,
    ``tile`` is the per-layer tile size in that layer's own pixels and ``overlap`` is unused.
    ``x``: (B, 4, H, W) -> (B, 3, 2H/2**L, 2W/2**L) float32.
    """
    if mode not in MODES:
        raise ValueError(f"infer_tiled: mode must be one of {MODES}, got {mode!r}")
    if mode == "whole":
        return infer_whole(model, x, level, bf16, channels_last)
    if mode == "exact" and bf16:
        raise ValueError("infer_tiled: bf16 is not available in exact mode (it reproduces float32 whole-frame "
                         "inference); use mode='seamless' or 'whole' for bf16")
    if tile % 16 or overlap % 16 or tile <= 0 or overlap < 0:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be non-negative multiples of 16")
    if mode != "exact" and tile < 32:
        raise ValueError(f"tile {tile} too small: tiles are run through the whole network, whose level-5 maps "
                         f"(1/16 of the tile) need at least 2 pixels for reflection padding; use tile >= 32")
    xp, (h, w) = pad_to_multiple(x)
    s = _out_scale(level)
    outs = []
    for b in range(xp.shape[0]):
        xb = xp[b:b + 1]
        if mode == "exact":
            y = run_exact(model, xb, level, tile=tile, store=store, store_dir=store_dir)
        else:
            y = _run_blended(model, xb, level, tile, overlap, mode, bf16, channels_last, progress)
        outs.append(y[..., : int(h * s), : int(w * s)])
    return torch.cat(outs, 0)


def _run_blended(model, x, level, tile, overlap, mode, bf16, channels_last, progress):
    H, W = x.shape[-2:]
    ys, xs = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    th, tw = min(tile, H), min(tile, W)
    s = _out_scale(level)
    out = torch.zeros(1, 3, int(H * s), int(W * s))
    wsum = torch.zeros(1, 1, int(H * s), int(W * s))
    oh, ow = int(th * s), int(tw * s)
    tiles = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    it = tiles
    if progress:
        from tqdm import tqdm

        it = tqdm(tiles, desc=f"tiles ({mode})", unit="tile")
    for i, j in it:
        y0, x0 = ys[i], xs[j]
        xt = _prep(model, x[..., y0:y0 + th, x0:x0 + tw], channels_last)
        with _autocast(xt, bf16):
            yt = model.run(xt, level, TensorOps()).float()
        lead_y = int((ys[i - 1] + th - y0) * s) if i > 0 else 0
        trail_y = int((y0 + th - ys[i + 1]) * s) if i + 1 < len(ys) else 0
        lead_x = int((xs[j - 1] + tw - x0) * s) if j > 0 else 0
        trail_x = int((x0 + tw - xs[j + 1]) * s) if j + 1 < len(xs) else 0
        wt = _ramp(oh, lead_y, trail_y)[:, None] * _ramp(ow, lead_x, trail_x)[None, :]
        oy, ox = int(y0 * s), int(x0 * s)
        out[..., oy:oy + oh, ox:ox + ow] += yt.cpu() * wt
        wsum[..., oy:oy + oh, ox:ox + ow] += wt
    return out / wsum


# ----------------------------------------------------------------------------------------------- exact streaming
class _Handle:
    """A full-frame activation (C, H, W) that is read window by window."""

    C: int
    H: int
    W: int

    @property
    def shape(self):
        return (1, self.C, self.H, self.W)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:  # in-bounds window, (1, C, h, w)
        raise NotImplementedError


class _Stored(_Handle):
    """Stored values plus a pending per-channel affine (frame instance norm) and LeakyReLU applied on read.

    ``store="disk"`` keeps the values in a temporary file laid out (H, W, C) and accessed with positional reads and
    writes (one per row of a window), so they occupy no process memory (unlike a memory map, whose touched pages
    count towards the resident set).
    """

    def __init__(self, C, H, W, store: str, store_dir: Optional[str], data: Optional[torch.Tensor] = None):
        self.C, self.H, self.W = C, H, W
        self.scale = self.shift = None
        self.relu = False
        if data is not None:
            self.kind, self.data = "memory", data
        elif store == "disk":
            fd, path = tempfile.mkstemp(prefix="pynet_act_", suffix=".f32", dir=store_dir)
            os.ftruncate(fd, C * H * W * 4)
            self.kind, self.fd = "disk", fd
            weakref.finalize(self, _close_unlink, fd, path)
        else:
            self.kind, self.data = "memory", torch.empty(C, H, W)

    def write(self, y0, y1, x0, x1, v: torch.Tensor) -> None:
        if self.kind == "disk":
            rows = np.ascontiguousarray(v[0].permute(1, 2, 0).numpy(), dtype=np.float32)  # (h, w, C)
            for r in range(y1 - y0):
                os.pwrite(self.fd, rows[r].tobytes(), ((y0 + r) * self.W + x0) * self.C * 4)
        else:
            self.data[:, y0:y1, x0:x1] = v[0]

    def read(self, y0, y1, x0, x1):
        if self.kind == "disk":
            n = (x1 - x0) * self.C * 4
            buf = b"".join(os.pread(self.fd, n, ((y0 + r) * self.W + x0) * self.C * 4) for r in range(y1 - y0))
            arr = np.frombuffer(buf, dtype=np.float32).reshape(y1 - y0, x1 - x0, self.C)
            v = torch.from_numpy(arr.copy()).permute(2, 0, 1)[None]
        else:
            v = self.data[None, :, y0:y1, x0:x1]
        if self.scale is not None:
            v = v * self.scale[None, :, None, None] + self.shift[None, :, None, None]
        if self.relu:
            v = F.leaky_relu(v, LRELU_SLOPE)
        return v


def _close_unlink(fd: int, path: str) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
    _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class _Cat(_Handle):
    def __init__(self, parts):
        self.parts = list(parts)
        self.C = sum(p.C for p in self.parts)
        self.H, self.W = self.parts[0].H, self.parts[0].W

    def read(self, y0, y1, x0, x1):
        return torch.cat([p.read(y0, y1, x0, x1) for p in self.parts], dim=1)


class _Sum(_Handle):
    def __init__(self, a, b):
        self.a, self.b = a, b
        self.C, self.H, self.W = a.C, a.H, a.W

    def read(self, y0, y1, x0, x1):
        return self.a.read(y0, y1, x0, x1) + self.b.read(y0, y1, x0, x1)


def _read_padded(h: _Handle, y0: int, y1: int, x0: int, x1: int, mode: str) -> torch.Tensor:
    """Window [y0, y1) x [x0, x1) of ``h`` (after its pending ops), padded beyond the frame by reflection
    (``mode="reflect"``) or zeros."""
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h.H), max(x0, 0), min(x1, h.W)
    v = h.read(cy0, cy1, cx0, cx1)
    pads = (cx0 - x0, x1 - cx1, cy0 - y0, y1 - cy1)
    if any(pads):
        v = F.pad(v, pads, mode="reflect" if mode == "reflect" else "constant")
    return v


def _reflect_index(idx: torch.Tensor, n: int) -> torch.Tensor:
    idx = idx.abs()
    return torch.where(idx >= n, 2 * (n - 1) - idx, idx)


def _tiles(H: int, W: int, t: int):
    for y0 in range(0, H, t):
        for x0 in range(0, W, t):
            yield y0, min(y0 + t, H), x0, min(x0 + t, W)


class _StreamOps:
    """Executor for :meth:`PyNET.run` on full-frame handles, one layer at a time, tile by tile (see module doc)."""

    def __init__(self, tile: int = 256, store: str = "memory", store_dir: Optional[str] = None):
        if store not in ("memory", "disk"):
            raise ValueError(f"store must be 'memory' or 'disk', got {store!r}")
        self.tile, self.store, self.store_dir = int(tile), store, store_dir

    def _new(self, C, H, W) -> _Stored:
        return _Stored(C, H, W, self.store, self.store_dir)

    def conv(self, layer: ConvLayer, x: _Handle) -> _Handle:
        r = layer.kernel_size // 2
        wgt, bias = layer.conv2d.weight, layer.conv2d.bias
        out = self._new(wgt.shape[0], x.H, x.W)
        stats: dict = {}
        for y0, y1, x0, x1 in _tiles(x.H, x.W, self.tile):
            v = F.conv2d(_read_padded(x, y0 - r, y1 + r, x0 - r, x1 + r, layer.pad), wgt, bias)
            if layer.has_norm:
                d = v.double()
                mean = d.mean(dim=(0, 2, 3))
                m2 = ((d - mean[None, :, None, None]) ** 2).sum(dim=(0, 2, 3))
                _chan_merge(stats, 0, d.shape[2] * d.shape[3], mean, m2)
            out.write(y0, y1, x0, x1, v)
        if layer.has_norm:
            n, mean, m2 = stats[0]
            var = m2 / n
            inst = layer.instance
            scale = inst.weight.double() / torch.sqrt(var + inst.eps)
            out.scale = scale.float()
            out.shift = (inst.bias.double() - mean * scale).float()
        out.relu = layer.relu
        return out

    def up(self, layer, x: _Handle) -> _Handle:
        if layer.kind == "bilinear_conv":
            return self._up_bilinear_conv(layer, x)
        return self._up_transposed(layer, x)

    def _up_bilinear_conv(self, layer, x: _Handle) -> _Handle:
        H, W = x.H, x.W
        wgt, bias = layer.conv2d.weight, layer.conv2d.bias
        out = self._new(wgt.shape[0], 2 * H, 2 * W)

        def src(idx: torch.Tensor, n_in: int):
            # align_corners=True source coordinates, in float32 like PyTorch's CPU kernel
            scale = torch.tensor((n_in - 1) / (2 * n_in - 1) if n_in > 1 else 0.0, dtype=torch.float32)
            p = idx.to(torch.float32) * scale
            i0 = torch.floor(p).long().clamp(0, n_in - 1)
            lam = (p - i0.to(torch.float32)).clamp(0, 1)
            i1 = torch.clamp(i0 + 1, max=n_in - 1)
            return i0, i1, lam

        for Y0, Y1, X0, X1 in _tiles(2 * H, 2 * W, self.tile):
            ry = _reflect_index(torch.arange(Y0 - 1, Y1 + 1), 2 * H)
            rx = _reflect_index(torch.arange(X0 - 1, X1 + 1), 2 * W)
            iy0, iy1, ly = src(ry, H)
            ix0, ix1, lx = src(rx, W)
            a, b = int(iy0.min()), int(iy1.max()) + 1
            c, d = int(ix0.min()), int(ix1.max()) + 1
            v = x.read(a, b, c, d)
            v = (v[:, :, iy0 - a] * (1 - ly)[None, None, :, None] + v[:, :, iy1 - a] * ly[None, None, :, None])
            v = (v[..., ix0 - c] * (1 - lx) + v[..., ix1 - c] * lx)
            v = F.leaky_relu(F.conv2d(v, wgt, bias), LRELU_SLOPE)
            out.write(Y0, Y1, X0, X1, v)
        return out

    def _up_transposed(self, layer, x: _Handle) -> _Handle:
        H, W = x.H, x.W
        deconv = layer.deconv
        out = self._new(deconv.weight.shape[1], 2 * H, 2 * W)
        for Y0, Y1, X0, X1 in _tiles(2 * H, 2 * W, self.tile):
            a, b = Y0 // 2 - 1, Y1 // 2 + 1
            c, d = X0 // 2 - 1, X1 // 2 + 1
            v = _read_padded(x, a, b, c, d, "zero")
            v = F.conv_transpose2d(v, deconv.weight, deconv.bias, stride=2, padding=0)  # TF SAME, see model
            v = F.leaky_relu(v[..., Y0 - 2 * a: Y1 - 2 * a, X0 - 2 * c: X1 - 2 * c], LRELU_SLOPE)
            out.write(Y0, Y1, X0, X1, v)
        return out

    def pool(self, x: _Handle) -> _Handle:
        out = self._new(x.C, x.H // 2, x.W // 2)
        for y0, y1, x0, x1 in _tiles(out.H, out.W, self.tile):
            out.write(y0, y1, x0, x1, F.max_pool2d(x.read(2 * y0, 2 * y1, 2 * x0, 2 * x1), 2, 2))
        return out

    def cat(self, xs):
        return _Cat(xs)

    def add(self, a, b):
        return _Sum(a, b)

    def act(self, fn, x: _Handle) -> _Handle:
        out = self._new(x.C, x.H, x.W)
        for y0, y1, x0, x1 in _tiles(x.H, x.W, self.tile):
            out.write(y0, y1, x0, x1, fn(x.read(y0, y1, x0, x1)))
        return out


@torch.no_grad()
def run_exact(model: PyNET, x: torch.Tensor, level: int = 0, tile: int = 256, store: str = "memory",
              store_dir: Optional[str] = None) -> torch.Tensor:
    """Exact layer-streaming inference of one image. ``x``: (1, 4, H, W), H and W multiples of 16.

    Returns the level output (1, 3, 2H/2**L, 2W/2**L), equal to ``model(x, level)`` up to float rounding.
    """
    if x.shape[0] != 1:
        raise ValueError(f"run_exact takes one image (1, 4, H, W), got {tuple(x.shape)}")
    model.check_input(x)
    ops = _StreamOps(tile, store, store_dir)
    inp = _Stored(x.shape[1], x.shape[2], x.shape[3], "memory", None, data=x[0].float().cpu())
    params = {p.device for p in model.parameters()}
    if params != {torch.device("cpu")}:
        raise ValueError("run_exact runs on CPU; move the model to CPU first")
    h = model.run(inp, level, ops)
    return h.read(0, h.H, 0, h.W).clone()


def compare_to_whole(model: PyNET, x: torch.Tensor, level: int = 0, **tiled) -> dict:
    """Run :func:`infer_tiled` (keyword arguments ``tiled``: mode, tile, overlap, ...) and whole-frame inference on
    ``x`` and report how far apart they are: ``{"psnr_db", "max_abs_diff", "tiled", "whole"}``. Whole-frame
    inference needs memory for the whole frame, so this is a check for frames that fit."""
    y_tiled = infer_tiled(model, x, level=level, **tiled).cpu()  # tiles are assembled on the CPU
    y_whole = infer_whole(model, x, level=level).cpu()
    return {"psnr_db": psnr_db(y_tiled, y_whole), "max_abs_diff": float((y_tiled - y_whole).abs().max()),
            "tiled": y_tiled, "whole": y_whole}


def psnr_db(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> float:
    """PSNR (dB) between two images/batches over all elements; ``inf`` when identical."""
    err = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if err == 0 else 10 * math.log10(data_range ** 2 / err)
