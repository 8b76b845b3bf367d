"""Training/evaluation data for PyNET: the Zurich RAW-to-RGB (ZRR) layout and synthetic RAW/sRGB pairs.

Conventions (ZRR, as the authors' loaders use them):

* RAW patches are single-channel RGGB Bayer PNGs of 10-bit sensor counts (black level ~64, not subtracted),
  stored as 8-bit PNGs when all values fit, otherwise 16-bit: the stored integers are read as-is, never rescaled
  by the container's bit depth.
* Normalisation: counts / (4 * 255) (``ZRR_NORM``), no black subtraction, no clipping.
* Packing: ``(4, H/2, W/2)`` in the order ``[B, G(0,1), R, G(1,0)]`` of the RGGB mosaic, i.e. isp_sim's
  ``("B", "Gr", "R", "Gb")`` (Gr = green on the red row).
* Targets: 8-bit sRGB JPEGs; level ``L`` uses the image resized by ``2**-L`` with PIL bilinear filtering, /255.

Samples are ``(raw, target)``: ``raw`` float32 ``(4, h, w)``, ``target`` float32 ``(3, 2h / 2**L, 2w / 2**L)``
in [0, 1].

Synthetic pairs (:class:`SyntheticPairs`): random crops of sRGB images are unprocessed to linear RAW with
:func:`isp_sim.unprocess.unprocess` (random camera matrix and gains per sample), then quantised like the ZRR
sensor (10-bit counts, black level 64, white level 1023). The embedded default uses images that ship with
scikit-image (:func:`skimage_images`), two of them held out for validation.
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from isp_sim.bayer import pack_np
from isp_sim.errors import ISPInputError
from isp_sim.io import read_bayer_png_counts, read_image

log = logging.getLogger(__name__)

ZRR_NORM = 4 * 255  # = 1020
ZRR_BLACK = 64
ZRR_WHITE = 1023
PYNET_ORDER = ("B", "Gr", "R", "Gb")
ZRR_TRAIN_SIZE, ZRR_TEST_SIZE = 46_839, 1_204

# scikit-image sample images that ship with the wheel (no download): name -> loader attribute
SKIMAGE_TRAIN = ("astronaut", "chelsea", "hubble_deep_field", "retina", "immunohistochemistry", "motorcycle")
SKIMAGE_VAL = ("coffee", "rocket")


class DataError(ISPInputError):
    """A dataset file or folder cannot be used; the message names it."""


# ----------------------------------------------------------------------------------------------- packing
def pack_pynet(mosaic: np.ndarray, pattern: str = "RGGB", norm: float = ZRR_NORM) -> np.ndarray:
    """Bayer mosaic ``(H, W)`` of counts -> float32 ``(4, H/2, W/2)`` in PyNET order, divided by ``norm``."""
    packed = pack_np(np.asarray(mosaic), pattern, order=PYNET_ORDER)  # (H/2, W/2, 4)
    return np.ascontiguousarray(packed.transpose(2, 0, 1), dtype=np.float32) / np.float32(norm)


def linear_to_zrr_counts(linear: np.ndarray | torch.Tensor, quantize: bool = True):
    """Linear RAW in [0, 1] (black/white normalised) -> ZRR-like 10-bit counts ``64 + x * (1023 - 64)``."""
    if isinstance(linear, torch.Tensor):
        c = ZRR_BLACK + linear.clamp(0, 1) * (ZRR_WHITE - ZRR_BLACK)
        return torch.round(c) if quantize else c
    c = ZRR_BLACK + np.clip(linear, 0, 1) * (ZRR_WHITE - ZRR_BLACK)
    return np.round(c) if quantize else c


def read_zurich_raw(path: str | Path) -> np.ndarray:
    """Stored integer counts (H, W) of a ZRR Bayer PNG (8- or 16-bit), as-is. Raises ``DataError`` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: RAW patch not found")
    try:
        arr = read_bayer_png_counts(path)
    except ISPInputError as e:
        raise DataError(str(e)) from None
    if arr.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: expected an 8- or 16-bit single-channel PNG, got dtype {arr.dtype}")
    if arr.shape[0] % 2 or arr.shape[1] % 2:
        raise DataError(f"{path}: Bayer mosaic size {arr.shape[1]}x{arr.shape[0]} must be even")
    return arr


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) sRGB image; raises ``DataError`` naming the file."""
    try:
        return read_image(path)
    except ISPInputError as e:
        raise DataError(str(e)) from None
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None


def resize_target(rgb: np.ndarray, level: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H / 2**L, W / 2**L) in [0, 1]; PIL bilinear (antialiased) as in the
    authors' PyTorch loader."""
    from PIL import Image

    if level:
        h, w = rgb.shape[:2]
        rgb = np.asarray(Image.fromarray(rgb).resize((w >> level, h >> level), Image.BILINEAR))
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(255.0)


# ----------------------------------------------------------------------------------------------- ZRR
def _numeric_stems(folder: Path, suffix: str) -> dict[int, Path]:
    out = {}
    for p in folder.iterdir():
        if p.suffix.lower() == suffix and re.fullmatch(r"\d+", p.stem):
            out[int(p.stem)] = p
    return out


class ZurichPatches(Dataset):
    """ZRR patches: ``<root>/<split>/huawei_raw/N.png`` with ``<root>/<split>/canon/N.jpg`` (N = 0, 1, ...).

    Args:
        root: dataset root (the folder holding ``train/`` and ``test/``).
        split: "train" or "test".
        level: PyNET level of the targets (0 = full 448x448, 5 = 14x14).
        limit: use only the first ``limit`` indices (sorted numerically).
        check: verify that every RAW has its JPEG (and vice versa) at construction.

    Returns ``(raw (4, 224, 224), target (3, 448 / 2**L, 448 / 2**L))`` for the standard 448x448 patches.
    """

    def __init__(self, root: str | Path, split: str = "train", level: int = 0, limit: Optional[int] = None,
                 check: bool = True):
        self.root, self.split, self.level = Path(root), split, int(level)
        if split not in ("train", "test"):
            raise DataError(f"ZurichPatches: split must be 'train' or 'test', got {split!r}")
        self.raw_dir = self.root / split / "huawei_raw"
        self.rgb_dir = self.root / split / "canon"
        for d in (self.raw_dir, self.rgb_dir):
            if not d.is_dir():
                raise DataError(f"{d}: folder missing; expected the Zurich RAW-to-RGB layout "
                                f"<root>/{split}/huawei_raw/N.png and <root>/{split}/canon/N.jpg")
        raws = _numeric_stems(self.raw_dir, ".png")
        rgbs = _numeric_stems(self.rgb_dir, ".jpg")
        if not raws:
            raise DataError(f"{self.raw_dir}: no RAW patches named N.png")
        if check:
            lone_raw = sorted(set(raws) - set(rgbs))
            lone_rgb = sorted(set(rgbs) - set(raws))
            if lone_raw:
                raise DataError(f"{raws[lone_raw[0]]}: no matching DSLR target {self.rgb_dir / f'{lone_raw[0]}.jpg'}"
                                f" ({len(lone_raw)} RAW files lack a target)")
            if lone_rgb:
                raise DataError(f"{rgbs[lone_rgb[0]]}: no matching RAW patch {self.raw_dir / f'{lone_rgb[0]}.png'}"
                                f" ({len(lone_rgb)} targets lack a RAW file)")
        self.indices = sorted(set(raws) & set(rgbs))
        if limit is not None:
            self.indices = self.indices[: int(limit)]
        self._raws, self._rgbs = raws, rgbs

    def set_level(self, level: int) -> None:
        self.level = int(level)

    def __len__(self) -> int:
        return len(self.indices)

    def paths(self, i: int) -> tuple[Path, Path]:
        n = self.indices[i]
        return self._raws[n], self._rgbs[n]

    def __getitem__(self, i: int):
        raw_path, rgb_path = self.paths(i)
        mosaic = read_zurich_raw(raw_path)
        rgb = read_rgb(rgb_path)
        if rgb.shape[:2] != mosaic.shape:
            raise DataError(f"{rgb_path}: target is {rgb.shape[1]}x{rgb.shape[0]} but its RAW {raw_path.name} is "
                            f"{mosaic.shape[1]}x{mosaic.shape[0]}; ZRR pairs must have equal size")
        raw = torch.from_numpy(pack_pynet(mosaic, "RGGB"))
        return raw, resize_target(rgb, self.level)


class ZurichFullResolution(Dataset):
    """Full-frame ZRR RAW mosaics: every ``*.png`` in ``folder`` (e.g. ``<root>/test/huawei_full_resolution``).

    Returns ``(raw (4, H/2, W/2), name)``; other files in the folder are ignored with a log message.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataError(f"{self.folder}: full-resolution RAW folder not found")
        files = sorted(self.folder.iterdir())
        self.files = [p for p in files if p.suffix.lower() == ".png"]
        skipped = [p.name for p in files if p.suffix.lower() != ".png"]
        if skipped:
            log.info("%s: ignoring %d non-PNG files (%s ...)", self.folder, len(skipped), skipped[0])
        if not self.files:
            raise DataError(f"{self.folder}: no RAW PNG files")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        p = self.files[i]
        return torch.from_numpy(pack_pynet(read_zurich_raw(p), "RGGB")), p.stem


# ----------------------------------------------------------------------------------------------- synthetic
@dataclass
class NamedImage:
    name: str
    rgb: np.ndarray  # uint8 (H, W, 3)


def skimage_images(names: Sequence[str]) -> list[NamedImage]:
    """RGB sample images shipped with scikit-image (no download). ``"motorcycle"`` = left stereo view."""
    return list(_skimage_images(tuple(names)))


@functools.lru_cache(maxsize=8)
def _skimage_images(names: tuple) -> tuple:
    import skimage.data as skd

    out = []
    for n in names:
        if n == "motorcycle":
            img = skd.stereo_motorcycle()[0]
        else:
            fn = getattr(skd, n, None)
            if fn is None:
                raise DataError(f"skimage.data has no image {n!r}")
            img = fn()
        img = np.asarray(img)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.dtype != np.uint8:
            raise DataError(f"skimage.data.{n}: expected uint8, got {img.dtype}")
        img = np.ascontiguousarray(img[..., :3])
        img.setflags(write=False)
        out.append(NamedImage(n, img))
    return tuple(out)


def folder_images(folder: str | Path) -> list[NamedImage]:
    """All readable sRGB images (jpg/png/bmp/tif/webp) in ``folder``, sorted by name; bad files raise naming them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found")
    suffixes = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(sorted(suffixes))})")
    return [NamedImage(p.name, read_rgb(p)) for p in files]


class SyntheticPairs(Dataset):
    """RAW/sRGB pairs synthesised from sRGB images by unprocessing.

    Args:
        images: source images (uint8 (H, W, 3)); each must be at least ``2 * patch`` pixels in both dimensions.
        patch: packed input size (multiple of 16): RAW crops are ``2*patch`` pixels, targets ``2*patch / 2**L``.
        length: number of samples (random crops) the dataset provides.
        seed: base seed; sample ``i`` draws everything (image, crop, flips, camera) from
            ``np.random.default_rng([seed, i])``, so samples are reproducible and independent of order.
        level: target level.
        augment: random flips / 90-degree rotations of the sRGB crop (before mosaicing, so the CFA phase is kept).
        camera: "random" (new unprocessing parameters per sample) or "fixed" (one camera drawn from ``seed``).
        grid: instead of random crops, use a deterministic grid of non-overlapping crops (validation sets);
            ``length`` is then ignored.
        camera_seed: seed of the single camera used with ``camera="fixed"`` (default ``seed``).
        noise: add heteroscedastic sensor noise (isp_sim.noise: shot/read variances at an ISO drawn log-uniformly
            from ``iso_range``) plus a read-noise floor of ``read_floor`` counts (std) before the 10-bit
            quantisation. Besides realism this keeps crops of flat black regions from being perfectly constant:
            constant inputs give zero-variance instance-norm inputs, whose backward pass multiplies gradients by
            1/sqrt(eps) per layer and overflows to NaN.

    Returns ``(raw (4, patch, patch), target (3, 2*patch >> L, 2*patch >> L))``; raw = 10-bit ZRR-like counts
    (black 64, white 1023) / 1020 in PyNET packing order.
    """

    def __init__(self, images: Sequence[NamedImage], patch: int = 64, length: int = 1000, seed: int = 0,
                 level: int = 0, augment: bool = True, camera: str = "random", grid: bool = False,
                 camera_seed: Optional[int] = None, noise: bool = True, iso_range=(100.0, 1600.0),
                 read_floor: float = 1.0):
        if patch % 16:
            raise DataError(f"SyntheticPairs: patch {patch} must be a multiple of 16")
        if camera not in ("random", "fixed"):
            raise DataError(f"SyntheticPairs: camera must be 'random' or 'fixed', got {camera!r}")
        size = 2 * patch
        self.images = []
        for im in images:
            if im.rgb.shape[0] < size or im.rgb.shape[1] < size:
                raise DataError(f"{im.name}: image {im.rgb.shape[1]}x{im.rgb.shape[0]} smaller than the "
                                f"{size}x{size} crop")
            self.images.append(im)
        if not self.images:
            raise DataError("SyntheticPairs: no images")
        self.patch, self.seed, self.level, self.augment, self.camera = patch, int(seed), int(level), augment, camera
        self.camera_seed = self.seed if camera_seed is None else int(camera_seed)
        self.noise, self.iso_range, self.read_floor = bool(noise), tuple(iso_range), float(read_floor)
        if grid:
            self.crops = [(k, y, x) for k, im in enumerate(self.images)
                          for y in range(0, im.rgb.shape[0] - size + 1, size)
                          for x in range(0, im.rgb.shape[1] - size + 1, size)]
            self.length = len(self.crops)
        else:
            self.crops = None
            self.length = int(length)

    def set_level(self, level: int) -> None:
        self.level = int(level)

    def __len__(self) -> int:
        return self.length

    def _camera(self, rng: np.random.Generator):
        from isp_sim.unprocess import sample_unprocess_params

        if self.camera == "fixed":
            return sample_unprocess_params(np.random.default_rng([self.camera_seed, 2**31 - 1]))
        return sample_unprocess_params(rng)

    def sample_info(self, i: int) -> dict:
        """The random draws of sample ``i`` (image, crop, augmentation, camera), for the record."""
        return self._draw(i)[1]

    def _draw(self, i: int):
        if not 0 <= i < self.length:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, int(i)])
        size = 2 * self.patch
        if self.crops is not None:
            k, y, x = self.crops[i]
        else:
            k = int(rng.integers(len(self.images)))
            h, w = self.images[k].rgb.shape[:2]
            y = int(rng.integers(0, (h - size) // 2 + 1)) * 2
            x = int(rng.integers(0, (w - size) // 2 + 1)) * 2
        crop = self.images[k].rgb[y:y + size, x:x + size]
        rot, flip = 0, False
        if self.augment and self.crops is None:
            rot, flip = int(rng.integers(4)), bool(rng.integers(2))
            crop = np.rot90(crop, rot)
            if flip:
                crop = crop[:, ::-1]
        crop = np.ascontiguousarray(crop)
        params = self._camera(rng)
        info = dict(image=self.images[k].name, y=y, x=x, rot90=rot, flip=flip, camera=params.to_dict())
        if self.noise:
            from isp_sim.noise import read_from_shot, sample_iso, shot_from_iso

            iso = sample_iso(rng, *self.iso_range)
            shot = shot_from_iso(iso)
            read = read_from_shot(shot, rng) + (self.read_floor / (ZRR_WHITE - ZRR_BLACK)) ** 2
            info["noise"] = dict(iso=iso, shot=shot, read=read, torch_seed=int(rng.integers(2**62)))
        return (crop, params), info

    def __getitem__(self, i: int):
        from isp_sim.unprocess import unprocess

        (crop, params), info = self._draw(i)
        srgb = torch.from_numpy(crop.transpose(2, 0, 1).copy()).float().div_(255.0)[None]
        with torch.no_grad():
            linear, _ = unprocess(srgb, [params], pattern="RGGB")
            if self.noise:
                from isp_sim.noise import add_sensor_noise

                n = info["noise"]
                gen = torch.Generator().manual_seed(n["torch_seed"])
                linear = add_sensor_noise(linear, n["shot"], n["read"], gen)
        counts = linear_to_zrr_counts(linear[0, 0].numpy())
        raw = torch.from_numpy(pack_pynet(counts, "RGGB"))
        return raw, resize_target(crop, self.level)


def embedded_datasets(patch: int = 64, train_length: int = 1000, seed: int = 0, level: int = 0,
                      camera: str = "random", train_names: Sequence[str] = SKIMAGE_TRAIN,
                      val_names: Sequence[str] = SKIMAGE_VAL, **options) -> tuple[SyntheticPairs, SyntheticPairs]:
    """The embedded default data: train on random crops of scikit-image samples, validate on a grid of crops of
    held-out images (``SKIMAGE_VAL``), both synthesised by unprocessing. ``options``: ``noise``, ``iso_range``,
    ``read_floor`` of :class:`SyntheticPairs`."""
    overlap = set(train_names) & set(val_names)
    if overlap:
        raise DataError(f"embedded data: images {sorted(overlap)} are in both train and validation")
    train = SyntheticPairs(skimage_images(train_names), patch, train_length, seed, level, True, camera, **options)
    val = SyntheticPairs(skimage_images(val_names), patch, 0, seed + 1, level, False, camera, grid=True,
                         camera_seed=seed, **options)
    return train, val
