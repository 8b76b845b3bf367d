"""Data for DiR: clean images, random patches and their degraded views.

* Images: by default the colour images shipped with scikit-image (no download), or a directory of PNG/JPEG files.
  Built-in split: training ``SKIMAGE_TRAIN``; held out for evaluation ``SKIMAGE_EVAL`` (different scenes).
* Degradations: any callable ``degrade(srgb (B,3,H,W) in [0,1], seeds: list[int]) -> degraded`` or
  ``-> (degraded, records)``; by default ``isp_sim.pipeline.CompositeISP(split)`` (random camera-ISP chain).
* :class:`PatchDataset` item ``i`` of epoch ``e`` is a pure function of ``(seed, key, e, i)``: the crop, the flips
  and the degradation seeds come from ``np.random.default_rng(image_seed(seed, ...))``, so batches do not depend on
  worker count, rank count or on resuming.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from isp_sim.seeding import image_seed

SKIMAGE_TRAIN = ("astronaut", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
                 "motorcycle_left", "colorwheel")
SKIMAGE_EVAL = ("coffee", "chelsea")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

Degrader = Callable[[torch.Tensor, list], object]


def _skimage_image(name: str) -> np.ndarray:
    import skimage.data as skd
    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skd.stereo_motorcycle()
        return left if name == "motorcycle_left" else right
    fn = getattr(skd, name, None)
    if fn is None:
        raise ValueError(f"unknown scikit-image image {name!r}")
    img = fn()
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"scikit-image image {name!r} is not an RGB image (shape {img.shape})")
    return img[..., :3]


def _to_float(img: np.ndarray, max_side: int, what: str) -> np.ndarray:
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ValueError(f"image {what} must be (H, W, 3), got shape {img.shape}")
    img = img[..., :3]
    if img.dtype == np.uint8:
        x = img.astype(np.float32) / 255.0
    elif img.dtype == np.uint16:
        x = img.astype(np.float32) / 65535.0
    elif np.issubdtype(img.dtype, np.floating):
        x = img.astype(np.float32)
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"float image {what} must be in [0, 1]")
    else:
        raise ValueError(f"image {what} has unsupported dtype {img.dtype}")
    if max_side and max(x.shape[:2]) > max_side:
        from skimage.transform import resize
        s = max_side / max(x.shape[:2])
        x = resize(x, (round(x.shape[0] * s), round(x.shape[1] * s)), anti_aliasing=True,
                   preserve_range=True).astype(np.float32)
    return np.clip(x, 0.0, 1.0)


def load_images(source: str = "skimage", names: Sequence[str] | None = None, split: str = "train",
                max_side: int = 384, min_side: int = 64) -> list[tuple[str, np.ndarray]]:
    """Clean sRGB images as ``[(name, float32 (H, W, 3) in [0, 1])]``.

    source: "skimage" or a directory. names: explicit names; None = the built-in ``split`` ("train"/"eval") for
    skimage, or for a directory all images sorted by name with every 5th held out for "eval"."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if source == "skimage":
        names = list(names) if names is not None else list(SKIMAGE_TRAIN if split == "train" else SKIMAGE_EVAL)
        imgs = [(n, _to_float(_skimage_image(n), max_side, n)) for n in names]
    else:
        root = Path(source)
        if not root.is_dir():
            raise FileNotFoundError(f"data.source must be 'skimage' or an existing directory, got {source!r}")
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if names is not None:
            files = [root / n for n in names]
        else:
            files = [p for i, p in enumerate(files) if (i % 5 == 4) == (split == "eval")]
        from skimage.io import imread
        imgs = [(p.name, _to_float(imread(p), max_side, str(p))) for p in files]
    if not imgs:
        raise ValueError(f"no {split} images found in {source!r}")
    for n, x in imgs:
        if min(x.shape[:2]) < min_side:
            raise ValueError(f"image {n} is smaller than {min_side} pixels ({x.shape[:2]})")
    return imgs


def apply_degrader(degrade: Degrader, x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """Run ``degrade(x, seeds)`` and check its output: same shape as ``x``, finite; clipped to [0, 1]."""
    out = degrade(x, [int(s) for s in seeds])
    if isinstance(out, tuple):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"degrader returned {type(out).__name__} {getattr(out, 'shape', '')}, expected a tensor of "
                         f"shape {tuple(x.shape)}")
    if not torch.isfinite(out).all():
        raise ValueError("degrader returned NaN/Inf values")
    return out.to(torch.float32).clamp(0.0, 1.0)


def make_degrader(split: str = "seen") -> Degrader:
    """The training/evaluation degradation distribution: ``isp_sim.pipeline.CompositeISP(split=split)``."""
    from isp_sim.pipeline import CompositeISP
    return CompositeISP(split=split)


def make_single_degrader(name: str, severity: int) -> Degrader:
    """One fixed isp_sim degradation at ``severity`` (``isp_sim.pipeline.make_pipeline([name], severity)``)."""
    from isp_sim.pipeline import make_pipeline
    return make_pipeline([name], severity)


class PhotometricDegrader:
    """A small, fast sRGB-domain stand-in for the camera-ISP chain (used by the unit tests, not for results).

    Per image (seeded by its seed): exposure gain in [0.6, 1.4], per-channel white-balance error in [0.8, 1.2],
    gamma error exponent in [0.7, 1.4], Gaussian noise sigma in [0, 0.05]; output clipped to [0, 1]."""

    def __call__(self, srgb: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        if srgb.ndim != 4 or srgb.shape[1] != 3 or len(seeds) != srgb.shape[0]:
            raise ValueError(f"expected (B,3,H,W) and B seeds, got {tuple(srgb.shape)} and {len(seeds)} seeds")
        out = []
        for x, s in zip(srgb, seeds):
            rng = np.random.default_rng(int(s))
            gain = rng.uniform(0.6, 1.4)
            wb = torch.tensor(rng.uniform(0.8, 1.2, size=3), dtype=x.dtype).view(3, 1, 1)
            gam = rng.uniform(0.7, 1.4)
            sigma = rng.uniform(0.0, 0.05)
            g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
            y = (x * gain * wb).clamp(0, 1) ** gam
            y = y + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
            out.append(y.clamp(0, 1))
        return torch.stack(out)


def random_patch(img: np.ndarray, size: int, rng: np.random.Generator, augment: bool = True) -> np.ndarray:
    """A random ``size x size`` crop of ``img (H, W, 3)`` with optional random flips / 90-degree rotation."""
    h, w = img.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image {img.shape[:2]} smaller than patch {size}")
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    p = img[y:y + size, x:x + size]
    if augment:
        if rng.random() < 0.5:
            p = p[:, ::-1]
        p = np.rot90(p, int(rng.integers(0, 4)))
    return np.ascontiguousarray(p)


class PatchDataset(Dataset):
    """Random clean patches and K degraded views.

    Item: ``{"clean": (3, P, P), "views": (K, 3, P, P)}`` float32 in [0, 1] (``views`` omitted when K = 0).
    ``set_epoch(e)`` changes the patches; everything is a pure function of ``(seed, key, epoch, index)``."""

    def __init__(self, images: list[np.ndarray], patch_size: int, epoch_size: int, views: int,
                 degrade: Degrader | None, seed: int, key: str):
        if views > 0 and degrade is None:
            raise ValueError("views > 0 needs a degrader")
        self.images = images
        self.patch_size = int(patch_size)
        self.epoch_size = int(epoch_size)
        self.views = int(views)
        self.degrade = degrade
        self.seed = int(seed)
        self.key = key
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.epoch_size

    def item(self, epoch: int, index: int) -> dict[str, torch.Tensor]:
        """Item ``index`` of ``epoch`` (pure function)."""
        rng = np.random.default_rng(image_seed(self.seed, f"{self.key}/{epoch}/{index}"))
        img = self.images[int(rng.integers(0, len(self.images)))]
        clean = torch.from_numpy(random_patch(img, self.patch_size, rng).transpose(2, 0, 1).copy())
        out = {"clean": clean}
        if self.views:
            seeds = [int(s) for s in rng.integers(0, 2**62, size=self.views)]
            out["views"] = apply_degrader(self.degrade, clean[None].expand(self.views, -1, -1, -1).contiguous(),
                                          seeds)
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(self.epoch, index)


def batch_stream(dataset: PatchDataset, batch_size: int, start_step: int, total_steps: int, seed: int,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0
                 ) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(step, batch)`` for ``step in [start_step, total_steps)``; this rank's share of the global batch.

    Epoch order comes from a ``DistributedSampler(shuffle=True, seed=seed, drop_last=True)``; step ``s`` is batch
    ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``, so resuming at ``start_step`` reproduces the exact
    batches of an uninterrupted run."""
    if batch_size % world_size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the world size {world_size}")
    per_rank = batch_size // world_size
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    steps_per_epoch = len(sampler) // per_rank
    if steps_per_epoch < 1:
        raise ValueError(f"data.epoch_size {len(dataset)} too small for batch_size {batch_size}")
    step = start_step
    while step < total_steps:
        epoch, first = divmod(step, steps_per_epoch)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        order = list(sampler)
        n = min(steps_per_epoch - first, total_steps - step)
        batches = [order[(first + b) * per_rank:(first + b + 1) * per_rank] for b in range(n)]
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                            persistent_workers=False)
        for batch in loader:
            yield step, batch
            step += 1
