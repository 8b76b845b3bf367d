"""Losses of the DiR stages (equations also in dir/README.md).

Notation: ``z_a, z_b (N, d)`` embeddings of two degraded views of the same N images (row i of both is a positive
pair, row i vs row j != i a negative pair); ``T(z_a, z_b) (N, N)`` the critic's score matrix.

* InfoNCE lower bound:  I(a; b) >= log N - L_NCE,
  L_NCE = -1/N sum_i log( exp T_ii / sum_j exp T_ij )   (made symmetric by averaging both directions).
* JSD lower bound (Deep InfoMax / f-GAN form):
  I_JSD = E_pos[-softplus(-T_ii)] - E_neg[softplus(T_ij)], i != j;  the loss is -I_JSD.
* Feature-level alignment:  L_feat = mean|r+ - r*| / mean|r*|   (relative L1, per scale, averaged).
* Distribution-level alignment (channel moments over batch and space):
  L_dist = sum_c [(mu_c(r+) - mu_c(r*))^2 + (sd_c(r+) - sd_c(r*))^2] / sum_c sd_c(r*)^2.
* Pixel loss: mean |x_hat - x_clean| on sRGB in [0, 1].
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


class CosineCritic(nn.Module):
    """``T(a, b) = cos(a_i, b_j) / tau``: scores (N, M) from (N, d) and (M, d); ``tau`` > 0 (a temperature)."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError("temperature must be > 0")
        self.temperature = float(temperature)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / self.temperature


class BilinearCritic(nn.Module):
    """``T(a, b) = a_n^T W b_n`` with L2-normalised a, b and a learnt ``W (d, d)`` (initialised to I / tau)."""

    def __init__(self, dim: int, temperature: float = 0.1):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim) / float(temperature))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.normalize(a, dim=1) @ self.weight @ F.normalize(b, dim=1).t()


def build_critic(kind: str, dim: int, temperature: float) -> nn.Module:
    """``"cosine"`` or ``"bilinear"`` critic."""
    if kind == "cosine":
        return CosineCritic(temperature)
    if kind == "bilinear":
        return BilinearCritic(dim, temperature)
    raise ValueError(f"unknown critic {kind!r} (use 'cosine' or 'bilinear')")


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"MI embeddings must both be (N, d) with equal shapes, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    if a.shape[0] < 2:
        raise ValueError("MI bounds need N >= 2 samples (negatives come from the other samples)")


def infonce_loss(scores: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE loss from a square score matrix (positives on the diagonal). Scalar, >= 0."""
    target = torch.arange(scores.shape[0], device=scores.device)
    return 0.5 * (F.cross_entropy(scores, target) + F.cross_entropy(scores.t(), target))


def jsd_mi(scores: torch.Tensor) -> torch.Tensor:
    """JSD-based MI estimate ``E_pos[-softplus(-T)] - E_neg[softplus(T)]``; it rises towards 0 as positives and
    negatives become separable and is about ``-2 log 2`` when the critic cannot tell them apart (T = 0)."""
    n = scores.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=scores.device)
    pos = -F.softplus(-scores[eye]).mean()
    neg = F.softplus(scores[~eye]).mean()
    return pos - neg


def mi_lower_bound(a: torch.Tensor, b: torch.Tensor, critic: nn.Module, estimator: str = "infonce") -> torch.Tensor:
    """Estimate of the MI lower bound between paired embeddings ``a, b (N, d)`` (higher = more shared information).

    infonce: ``log N - L_NCE`` (in nats, at most log N); jsd: ``I_JSD``."""
    _check_pair(a, b)
    s = critic(a, b)
    if estimator == "infonce":
        return math.log(a.shape[0]) - infonce_loss(s)
    if estimator == "jsd":
        return jsd_mi(s)
    raise ValueError(f"unknown MI estimator {estimator!r} (use 'infonce' or 'jsd')")


def multiview_mi_loss(views: list[torch.Tensor], critic: nn.Module, estimator: str = "infonce"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (to minimise) and mean MI-bound estimate over all view pairs of ``views`` (K >= 2 tensors (N, d))."""
    if len(views) < 2:
        raise ValueError("need at least two views")
    bounds = [mi_lower_bound(a, b, critic, estimator) for a, b in itertools.combinations(views, 2)]
    mi = torch.stack(bounds).mean()
    return -mi, mi.detach()


def sample_locations(h: int, w: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """``min(n, h*w)`` distinct flat location indices in ``[0, h*w)``, drawn with ``generator`` (CPU)."""
    return torch.randperm(h * w, generator=generator)[: min(n, h * w)]


def local_embeddings(maps: list[torch.Tensor], n: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Per-location embeddings of K views ``(B, d, h, w)`` at the same ``n`` sampled locations -> K x ``(B*n, d)``.

    Row ``i*n + p`` of every view is image i at location p, so rows are positives across views and every other
    row (other locations, other images) is a negative."""
    b, d, h, w = maps[0].shape
    idx = sample_locations(h, w, n, generator).to(maps[0].device)
    return [m.flatten(2).index_select(2, idx).permute(0, 2, 1).reshape(-1, d) for m in maps]


def relative_l1(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Feature-level loss ``mean|pred - target| / mean|target|`` (target treated as a constant)."""
    target = target.detach()
    return (pred - target).abs().mean() / (target.abs().mean() + eps)


def channel_moments(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of ``f (B, C, H, W)`` over batch and space -> two ``(C,)``."""
    flat = f.transpose(0, 1).reshape(f.shape[1], -1)
    return flat.mean(1), flat.var(1, unbiased=False).add(1e-8).sqrt()


def moment_loss_to_stats(f: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Distribution-level loss of ``f (B,C,H,W)`` to target channel statistics ``mean, std (C,)`` (constants):
    ``sum_c[(mu_c - mean_c)^2 + (sd_c - std_c)^2] / sum_c std_c^2``."""
    mu, sd = channel_moments(f)
    mean, std = mean.detach(), std.detach()
    return (((mu - mean) ** 2).sum() + ((sd - std) ** 2).sum()) / ((std ** 2).sum() + eps)


def moment_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distribution-level loss between the channel moments of ``pred`` and of ``target`` (both (B,C,H,W))."""
    mean, std = channel_moments(target.detach())
    return moment_loss_to_stats(pred, mean, std)


def pixel_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between sRGB images (same shape)."""
    if pred.shape != target.shape:
        raise ValueError(f"pixel loss shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return (pred - target).abs().mean()
