"""PyNET training losses: MSE, (MS-)SSIM, VGG-19 perceptual loss, and the published per-level combinations.

All image arguments are sRGB tensors ``(B, 3, H, W)`` with values nominally in [0, 1].

Per-level weights (``LEVEL_LOSS_WEIGHTS``), from the authors' code:

======  =================================  ======================================================
level   "pytorch" (PyTorch release)        "paper" (TF release, the paper's reference code)
======  =================================  ======================================================
5, 4    MSE                                100 MSE
3, 2    10 MSE + VGG                       100 MSE + VGG
1       10 MSE + VGG                       50 MSE + VGG
0       MSE + VGG + 0.4 (1 - MS-SSIM)      20 MSE + VGG + 20 (1 - SSIM)   (single-scale SSIM)
======  =================================  ======================================================

The TF release computes its VGG term on a 0-255 MatConvNet VGG-19; here both variants use torchvision's VGG-19
(ImageNet mean/std normalisation) cut after relu5_4, so the "paper" VGG term is on a different scale than in TF.
"""
from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

LEVEL_LOSS_WEIGHTS = {
    "pytorch": {5: {"mse": 1.0}, 4: {"mse": 1.0}, 3: {"mse": 10.0, "vgg": 1.0}, 2: {"mse": 10.0, "vgg": 1.0},
                1: {"mse": 10.0, "vgg": 1.0}, 0: {"mse": 1.0, "vgg": 1.0, "ms_ssim": 0.4}},
    "paper": {5: {"mse": 100.0}, 4: {"mse": 100.0}, 3: {"mse": 100.0, "vgg": 1.0}, 2: {"mse": 100.0, "vgg": 1.0},
              1: {"mse": 50.0, "vgg": 1.0}, 0: {"mse": 20.0, "vgg": 1.0, "ssim": 20.0}},
}
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_CLAMP_MIN = 1e-6
VGG_RELU5_4 = 36  # torchvision vgg19().features[:36] ends with relu5_4
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all pixels and channels."""
    return F.mse_loss(pred, target)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB, shape (B,): ``10 log10(range^2 / MSE)`` on float images (no quantisation)."""
    err = ((pred.float() - target.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(data_range ** 2 / err)


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    w2 = (g[:, None] * g[None, :]).to(dtype)
    return w2.expand(channels, 1, size, size).contiguous()


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, window_size: int, sigma: float, data_range: float):
    """Per-image SSIM and contrast-structure means, shape (B,), with a valid (unpadded) Gaussian window.

    The window shrinks to ``min(window_size, H, W)`` for small images (as in the implementation the authors used).
    """
    c = x.shape[1]
    size = min(window_size, x.shape[-2], x.shape[-1])
    win = _gaussian_window(size, sigma, c, x.device, x.dtype)
    mu_x = F.conv2d(x, win, groups=c)
    mu_y = F.conv2d(y, win, groups=c)
    sxx = F.conv2d(x * x, win, groups=c) - mu_x ** 2
    syy = F.conv2d(y * y, win, groups=c) - mu_y ** 2
    sxy = F.conv2d(x * y, win, groups=c) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    ssim_map = ((2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)) * cs_map
    return ssim_map.flatten(1).mean(1), cs_map.flatten(1).mean(1)


def ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5,
         data_range: float = 1.0) -> torch.Tensor:
    """Single-scale SSIM per image, shape (B,); Gaussian 11/1.5 valid window, C1=(0.01 L)^2, C2=(0.03 L)^2."""
    return _ssim_terms(x, y, window_size, sigma, data_range)[0]


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5, data_range: float = 1.0,
            weights=MS_SSIM_WEIGHTS, clamp_min: Optional[float] = SSIM_CLAMP_MIN) -> torch.Tensor:
    """Multi-scale SSIM per image, shape (B,): ``prod_{i<M} cs_i^w_i * ssim_M^w_M`` over 5 scales (2x2 average
    pooling between scales), valid Gaussian window.

    NaN guard: the authors' implementation raises possibly negative ``cs``/``ssim`` means to fractional powers,
    which gives NaN (their issue #7). Here each term is clamped to ``[clamp_min, inf)`` before the power
    (TF's ``ssim_multiscale`` clamps at 0 instead; a small positive floor also keeps the gradient finite).
    ``clamp_min=None`` reproduces the unclamped original. Images smaller than 2**(scales-1) pixels use fewer
    scales (the remaining weights are renormalised).
    """
    w = torch.tensor(weights, dtype=x.dtype, device=x.device)
    levels = len(weights)
    while levels > 1 and min(x.shape[-2], x.shape[-1]) < 2 ** (levels - 1):
        levels -= 1
    if levels < len(weights):
        w = w[:levels] / w[:levels].sum()
    vals = []
    for i in range(levels):
        s, cs = _ssim_terms(x, y, window_size, sigma, data_range)
        vals.append(s if i == levels - 1 else cs)
        if i < levels - 1:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    v = torch.stack(vals, dim=1)  # (B, levels)
    if clamp_min is not None:
        v = v.clamp_min(clamp_min)
    return torch.prod(v ** w, dim=1)


def gradient_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontal and vertical finite differences (edge/structure term)."""
    dx = (x[..., :, 1:] - x[..., :, :-1]) - (y[..., :, 1:] - y[..., :, :-1])
    dy = (x[..., 1:, :] - x[..., :-1, :]) - (y[..., 1:, :] - y[..., :-1, :])
    return dx.abs().mean() + dy.abs().mean()


class VGGPerceptualLoss(nn.Module):
    """MSE between torchvision VGG-19 ``features[:36]`` (up to relu5_4) maps of ImageNet-normalised images.

    ``weights_path``: a local file holding a torchvision ``vgg19`` state dict (full model with ``features.*`` and
    ``classifier.*`` keys, or the features part only, with or without the ``features.`` prefix); read with
    ``torch.load(weights_only=True)``. The network is frozen (``requires_grad=False``, eval mode).
    """

    def __init__(self, weights_path: str | os.PathLike):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        path = os.fspath(weights_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: VGG-19 weights file not found")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot read VGG-19 weights ({type(e).__name__}: {e})") from e
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a torchvision vgg19 state dict, got {type(sd).__name__}")
        feats = make_layers(cfgs["E"], batch_norm=False)[:VGG_RELU5_4]  # = torchvision vgg19().features[:36]
        wanted = set(feats.state_dict())
        sub = {}
        for k, v in sd.items():
            key = k[len("features."):] if k.startswith("features.") else k
            if key in wanted:
                sub[key] = v
        missing = sorted(wanted - set(sub))
        if missing:
            raise ValueError(f"{path}: not a torchvision vgg19 state dict: missing {len(missing)} of the "
                             f"relu5_4 feature weights (e.g. {missing[:3]})")
        try:
            feats.load_state_dict(sub, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: VGG-19 weights do not fit torchvision's vgg19 ({e})") from e
        for p in feats.parameters():
            p.requires_grad_(False)
        self.features = feats.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.weights_path = path

    def train(self, mode: bool = True):  # the VGG stays in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f_p = self.features((pred - self.mean) / self.std)
        with torch.no_grad():
            f_t = self.features((target - self.mean) / self.std)
        return F.mse_loss(f_p, f_t)


VGG_SUBSTITUTE = "(1 - SSIM) + L1 of image gradients"


class StructureSubstituteLoss(nn.Module):
    """Stand-in for the VGG perceptual term when no VGG-19 weights are available: ``(1 - SSIM) + gradient L1``.

    Like the VGG term, it penalises structural/edge differences rather than per-pixel error.
    """

    description = VGG_SUBSTITUTE

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1.0 - ssim(pred, target).mean()) + gradient_l1(pred, target)


class PyNETLoss(nn.Module):
    """The published loss of one level: weighted sum of ``mse``, ``vgg``, ``ms_ssim`` (1 - MS-SSIM), ``ssim``
    (1 - SSIM) terms.

    Args:
        variant: "pytorch" or "paper" (selects ``LEVEL_LOSS_WEIGHTS``); ``weights`` overrides the dict.
        level: PyNET level 0-5.
        vgg_weights: local torchvision vgg19 state-dict file; ``None`` replaces the VGG term by
            ``StructureSubstituteLoss`` and logs a warning. ``self.substitution`` then describes the replacement
            (None when nothing is replaced) so callers can record it.
        vgg_module: an already built :class:`VGGPerceptualLoss` to share between levels.

    ``forward`` returns ``(total, terms)`` where ``terms`` maps term name -> unweighted float value.
    """

    def __init__(self, variant: str = "pytorch", level: int = 0, vgg_weights: Optional[str] = None,
                 weights: Optional[dict] = None, vgg_module: Optional[nn.Module] = None):
        super().__init__()
        if weights is None:
            if variant not in LEVEL_LOSS_WEIGHTS:
                raise ValueError(f"PyNETLoss: unknown variant {variant!r}")
            weights = LEVEL_LOSS_WEIGHTS[variant][level]
        unknown = set(weights) - {"mse", "vgg", "ms_ssim", "ssim"}
        if unknown:
            raise ValueError(f"PyNETLoss: unknown loss terms {sorted(unknown)}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0.0}
        self.level = level
        self.substitution = None
        if "vgg" in self.weights:
            if vgg_module is not None:
                self.vgg = vgg_module
            elif vgg_weights:
                self.vgg = VGGPerceptualLoss(vgg_weights)
            else:
                self.vgg = StructureSubstituteLoss()
            if isinstance(self.vgg, StructureSubstituteLoss):
                self.substitution = (f"level {level}: VGG-19 perceptual term (weight {self.weights['vgg']:g}) "
                                     f"replaced by {VGG_SUBSTITUTE} (no VGG-19 weights file given)")
                log.warning(self.substitution)

    def forward(self, pred: torch.Tensor, target: torch.Tensor):
        terms = {}
        total = pred.new_zeros(())
        for name, w in self.weights.items():
            if name == "mse":
                v = mse(pred, target)
            elif name == "vgg":
                v = self.vgg(pred, target)
            elif name == "ms_ssim":
                v = 1.0 - ms_ssim(pred, target).mean()
            else:
                v = 1.0 - ssim(pred, target).mean()
            terms[name] = float(v.detach())
            total = total + w * v
        return total, terms
