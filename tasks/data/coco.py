"""COCO-format detection / instance-segmentation datasets (pycocotools), with optional ISP degradations.

A sample is ``(image, target)``: ``image`` float32 (3, H, W) sRGB in [0, 1]; ``target`` the torchvision detection
dict ``{"boxes": (N, 4) float32 xyxy pixels, "labels": (N,) int64 in 1..K, "masks": (N, H, W) uint8,
"image_id": int64 scalar, "area": (N,) float32, "iscrowd": (N,) int64}``. Labels are contiguous (1..K, 0 is
background) and map back to COCO category ids through ``dataset.label_to_cat_id``.

Degradations: either on the fly with an ``isp_sim`` pipeline seeded per image by
``isp_sim.seeding.image_seed(seed, file_name)``, or read from a degraded copy of the image folder written by
``python -m isp_sim degrade`` (same file names), given as ``degraded_dir``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset file or annotation cannot be used; the message names the file and the problem."""


@dataclass
class DegradationConfig:
    """Which ISP degradations to apply on the fly.

    ``names`` + ``severity`` -> ``isp_sim.pipeline.make_pipeline(names, severity)``; ``composite`` ("seen" or
    "unseen") -> ``isp_sim.pipeline.CompositeISP(split)`` (a random chain per image). ``prob_clean`` is the
    probability that an image is left clean (training mixes). ``per_epoch``: the per-image seed also depends on the
    epoch (fresh degradations every epoch in training); off, the seed is ``image_seed(seed, file_name)``, or
    ``image_seed(seed, f"{key_prefix}/{file_name}")`` with a ``key_prefix``: set it to the condition folder name of
    ``python -m isp_sim degrade`` (e.g. "noise-3") to draw the same per-image parameters as that tool.
    """

    names: list[str] = field(default_factory=list)
    severity: int = 0
    composite: str = ""
    seed: int = 0
    prob_clean: float = 0.0
    per_epoch: bool = False
    key_prefix: str = ""

    def __post_init__(self) -> None:
        # validate now (a config typo must not surface only at the first batch, or at the first evaluation after
        # hours of training): names, severity and composite split are checked by building the pipeline
        if isinstance(self.names, str):
            self.names = [n.strip() for n in self.names.split(",") if n.strip()]
        self.names = list(self.names)
        if not 0.0 <= float(self.prob_clean) <= 1.0:
            raise ValueError(f"degradation prob_clean must be in [0, 1], got {self.prob_clean}")
        if self.names and self.composite:
            raise ValueError(f"give degradation names {self.names} (with a severity) or composite "
                             f"{self.composite!r}, not both")
        if self.names and int(self.severity) < 1:
            raise ValueError(f"degradation names {self.names} need a severity 1..5 (severity 0 would leave every "
                             "image clean)")
        if self.enabled:
            self.build()

    @property
    def enabled(self) -> bool:
        return bool(self.composite) or (bool(self.names) and self.severity > 0)

    def build(self) -> Callable:
        """The ``isp_sim`` pipeline: ``(srgb (B,3,H,W) in [0,1], seeds list[int]) -> (degraded, records)``."""
        from isp_sim import pipeline as isp_pipeline

        if self.composite:
            return isp_pipeline.CompositeISP(self.composite)
        return isp_pipeline.make_pipeline(list(self.names), int(self.severity))


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB; raises FileNotFoundError / DatasetError naming the file."""
    from isp_sim.errors import ISPInputError
    from isp_sim.io import read_image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {p}")
    try:
        return read_image(p)
    except ISPInputError as e:
        raise DatasetError(f"cannot decode image {p}: {e}") from e


def _load_coco(ann_file: str | os.PathLike) -> COCO:
    p = Path(ann_file)
    if not p.is_file():
        raise FileNotFoundError(f"annotation file not found: {p}")
    import contextlib
    import io

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            return COCO(str(p))
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{p} is not a COCO instances file: {e}") from e


class CocoDetection(Dataset):
    """A COCO instances file + its image folder as torchvision detection samples.

    Args:
        image_dir: folder with the images (``file_name`` relative to it).
        ann_file: COCO instances JSON (boxes; polygon, uncompressed or compressed RLE masks).
        degradation: on-the-fly ISP degradations (see :class:`DegradationConfig`), or None.
        degraded_dir: read images from this folder (same file names) instead, e.g. ``python -m isp_sim degrade``'s
            output; mutually exclusive with ``degradation``.
        missing: "error" raises FileNotFoundError naming the first missing image at construction; "skip" drops
            images missing on disk and reports them (``self.missing``, a log warning).
        crowd: "drop" removes ``iscrowd=1`` annotations from the targets (pycocotools' evaluation still ignores
            detections on crowd regions, as it reads them from the JSON); "keep" includes them with ``iscrowd=1``.
        with_masks: decode instance masks into ``target["masks"]``.
        hflip: random horizontal flip (training) drawn from a generator seeded by (seed, epoch, index).
        skip_empty: drop images that have no (non-crowd) annotations (training).
        seed: base seed for augmentation.
    """

    def __init__(self, image_dir: str | os.PathLike, ann_file: str | os.PathLike,
                 degradation: DegradationConfig | None = None, degraded_dir: str | os.PathLike | None = None,
                 missing: str = "error", crowd: str = "drop", with_masks: bool = True, hflip: bool = False,
                 skip_empty: bool = False, seed: int = 0, image_ids: Sequence[int] | None = None) -> None:
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
        if crowd not in ("drop", "keep"):
            raise ValueError(f"crowd must be 'drop' or 'keep', got {crowd!r}")
        if degradation is not None and degradation.enabled and degraded_dir:
            raise ValueError("give either on-the-fly degradation or degraded_dir, not both")
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir}")
        self.read_dir = Path(degraded_dir) if degraded_dir else self.image_dir
        if degraded_dir and not self.read_dir.is_dir():
            raise FileNotFoundError(f"degraded image folder not found: {self.read_dir}")
        self.coco = _load_coco(self.ann_file)
        self.crowd, self.with_masks, self.hflip, self.seed = crowd, with_masks, hflip, int(seed)
        self.degradation = degradation if (degradation is not None and degradation.enabled) else None
        self._pipeline = None
        self.epoch = 0

        cat_ids = sorted(self.coco.getCatIds())
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(cat_ids)}
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in cat_ids]

        ids = sorted(self.coco.imgs) if image_ids is None else [int(i) for i in image_ids]
        unknown = [i for i in ids if i not in self.coco.imgs]
        if unknown:
            raise DatasetError(f"image ids {unknown[:5]} are not in {self.ann_file}")
        self.missing: list[str] = []
        present = []
        for i in ids:
            fn = self.coco.imgs[i]["file_name"]
            if (self.read_dir / fn).is_file():
                present.append(i)
            elif missing == "error":
                raise FileNotFoundError(f"image {fn!r} (id {i}) of {self.ann_file} is missing: "
                                        f"{self.read_dir / fn} does not exist")
            else:
                self.missing.append(fn)
        if self.missing:
            log.warning("%s: skipped %d image(s) missing from %s, e.g. %s", self.ann_file, len(self.missing),
                        self.read_dir, ", ".join(self.missing[:5]))
        if skip_empty:
            present = [i for i in present if any(not a.get("iscrowd", 0) for a in
                                                 self.coco.imgToAnns.get(i, []))]
        self.ids = present

    @property
    def num_classes(self) -> int:
        """Number of object categories (without background)."""
        return len(self.label_to_cat_id)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        """Make augmentation / per-epoch degradation draws depend on the epoch."""
        self.epoch = int(epoch)

    def file_name(self, index: int) -> str:
        return self.coco.imgs[self.ids[index]]["file_name"]

    def _image_seed(self, file_name: str) -> int:
        from isp_sim.seeding import image_seed

        d = self.degradation
        key = f"{d.key_prefix}/{file_name}" if d.key_prefix else file_name
        if d.per_epoch:
            key = f"epoch{self.epoch}/{key}"
        return image_seed(d.seed, key)

    def _degrade(self, img: torch.Tensor, file_name: str) -> tuple[torch.Tensor, Any]:
        """Degrade one image (3, H, W) in [0, 1]; odd sizes are edge-padded to even for the Bayer pipeline and
        cropped back. Returns (image, isp_sim record or None when left clean)."""
        seed = self._image_seed(file_name)
        if self.degradation.prob_clean > 0:
            coin = np.random.default_rng(seed ^ 0x5EED).random()
            if coin < self.degradation.prob_clean:
                return img, None
        if self._pipeline is None:
            self._pipeline = self.degradation.build()
        h, w = img.shape[-2:]
        x = img[None]
        if h % 2 or w % 2:
            x = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        with torch.no_grad():
            out, records = self._pipeline(x, [seed])
        return out[0, :, :h, :w].clamp(0.0, 1.0).contiguous(), records[0]

    def target_for(self, image_id: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """The torchvision target of ``image_id`` (see the module docstring); boxes clipped to the image."""
        anns = self.coco.imgToAnns.get(image_id, [])
        if self.crowd == "drop":
            anns = [a for a in anns if not a.get("iscrowd", 0)]
        boxes, labels, masks, areas, crowd = [], [], [], [], []
        for a in anns:
            if a["category_id"] not in self.cat_id_to_label:
                raise DatasetError(f"{self.ann_file}: annotation {a.get('id')} has unknown category "
                                   f"{a['category_id']}")
            x, y, w, h = (float(v) for v in a["bbox"])
            x0, y0 = max(0.0, x), max(0.0, y)
            x1, y1 = min(float(width), x + w), min(float(height), y + h)
            if x1 - x0 < 1.0 or y1 - y0 < 1.0:
                continue  # degenerate (torchvision requires positive width and height)
            boxes.append([x0, y0, x1, y1])
            labels.append(self.cat_id_to_label[a["category_id"]])
            areas.append(float(a.get("area", w * h)))
            crowd.append(int(a.get("iscrowd", 0)))
            if self.with_masks:
                if "segmentation" not in a or not a["segmentation"]:
                    m = np.zeros((height, width), np.uint8)  # box-only annotation: fill the box
                    m[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = 1
                else:
                    m = self.coco.annToMask(a)
                    if m.shape != (height, width):
                        raise DatasetError(f"{self.ann_file}: mask of annotation {a.get('id')} is {m.shape}, "
                                           f"image {image_id} is {(height, width)}")
                masks.append(m)
        t = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "area": torch.tensor(areas, dtype=torch.float32),
            "iscrowd": torch.tensor(crowd, dtype=torch.int64),
        }
        if self.with_masks:
            t["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                          else torch.zeros((0, height, width), dtype=torch.uint8))
        return t

    def load(self, index: int) -> dict[str, Any]:
        """Everything about sample ``index``: image, target, file_name, isp_sim degradation record (or None)."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        fn = info["file_name"]
        arr = read_rgb(self.read_dir / fn)
        h, w = arr.shape[:2]
        if ("height" in info and "width" in info) and (info["height"], info["width"]) != (h, w):
            raise DatasetError(f"{self.read_dir / fn} is {w}x{h} but {self.ann_file} says "
                               f"{info['width']}x{info['height']}")
        img = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        record = None
        if self.degradation is not None:
            img, record = self._degrade(img, fn)
        target = self.target_for(image_id, h, w)
        if self.hflip:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 100_003 + index)
            if torch.rand((), generator=g).item() < 0.5:
                img, target = hflip(img, target)
        return {"image": img, "target": target, "file_name": fn, "record": record}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.load(index)
        return s["image"], s["target"]


def hflip(img: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Horizontally flip an image (3, H, W) and its target (boxes xyxy, masks)."""
    w = img.shape[-1]
    t = dict(target)
    b = t["boxes"].clone()
    b[:, [0, 2]] = w - target["boxes"][:, [2, 0]]
    t["boxes"] = b
    if "masks" in t:
        t["masks"] = t["masks"].flip(-1)
    return img.flip(-1), t


def collate(batch: list) -> tuple[list, list]:
    """Detection collate: lists of images and targets (images may differ in size)."""
    return [b[0] for b in batch], [b[1] for b in batch]
