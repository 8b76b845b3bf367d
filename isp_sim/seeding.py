"""Stable per-image seeds, so results do not depend on batch size, worker count or file order."""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def image_seed(base_seed: int, key: str | int) -> int:
    """A 63-bit seed derived from ``base_seed`` and a per-image ``key`` (a file name or an index).

    The derivation is a SHA-256 hash, so it is stable across processes, Python versions and platforms.
    """
    digest = hashlib.sha256(f"{int(base_seed)}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def numpy_rng(seed: int) -> np.random.Generator:
    """The numpy generator used to sample degradation parameters for one image."""
    return np.random.default_rng(int(seed))


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (used for per-pixel noise draws)."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)
    return g
