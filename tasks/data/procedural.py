"""A procedurally generated instance-segmentation dataset that needs no download.

Objects of several classes (disc, square, triangle, star, ring, cross) with random colours, shading, sizes, rotations
and partial occlusion are composited onto backgrounds cut from the real photographs that ship with scikit-image.
Every mask is exact (it is the rasterised shape minus what later objects cover), and the image is written losslessly
(PNG by default), so the pixels and the annotation agree exactly.

The output is COCO format::

    out_dir/
      train/000000.png ...          images (uint8 sRGB, H x W x 3)
      val/000000.png ...
      annotations/instances_train.json, instances_val.json   (RLE masks, boxes [x, y, w, h], areas)
      meta.json                     generation parameters (re-generation is skipped when they match)

Every image has its own generator ``np.random.default_rng([seed, split, index])``, so image ``i`` of a split is the
same whatever ``n_train``/``n_val`` are.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

log = logging.getLogger(__name__)

CLASSES = ("disc", "square", "triangle", "star", "ring", "cross")
# scikit-image images that are bundled with the package (no network access needed).
BACKGROUNDS = (
    "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "stereo_motorcycle",
    "immunohistochemistry", "brick", "grass", "gravel", "camera", "coins", "moon", "clock", "cell",
)
_SPLIT_ID = {"train": 0, "val": 1}
FORMAT_VERSION = 1


@dataclass
class ProceduralSpec:
    """Generation parameters. Sizes in pixels; ``object_size`` is the min/max of an object's outer diameter."""

    n_train: int = 400
    n_val: int = 100
    seed: int = 0
    image_size: int = 160
    min_objects: int = 2
    max_objects: int = 6
    object_size: tuple[int, int] = (18, 64)
    min_visible: float = 0.35
    image_format: str = "png"
    classes: tuple[str, ...] = field(default=CLASSES)

    def __post_init__(self) -> None:
        self.object_size = tuple(int(v) for v in self.object_size)
        self.classes = tuple(self.classes)
        unknown = [c for c in self.classes if c not in CLASSES]
        if unknown:
            raise ValueError(f"unknown procedural classes {unknown}; choose from {CLASSES}")
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {self.image_format!r}")
        if not (0 < self.object_size[0] <= self.object_size[1] <= self.image_size):
            raise ValueError(f"object_size {self.object_size} must satisfy 0 < min <= max <= image_size")
        if not (1 <= self.min_objects <= self.max_objects):
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")


# ----------------------------------------------------------------------------------------------- backgrounds
_BG_CACHE: dict[str, np.ndarray] = {}


def _background_source(name: str) -> np.ndarray:
    """A bundled scikit-image photo as float32 RGB (H, W, 3) in [0, 1]."""
    if name not in _BG_CACHE:
        import skimage.data

        img = getattr(skimage.data, name)()
        if isinstance(img, tuple):  # stereo_motorcycle -> (left, right, disparity)
            img = img[0]
        img = np.asarray(img)
        if img.dtype == bool:
            img = img.astype(np.float32)
        else:
            img = img.astype(np.float32) / (255.0 if img.max() > 1 else 1.0)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        _BG_CACHE[name] = np.ascontiguousarray(img[..., :3])
    return _BG_CACHE[name]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random square crop (size, size, 3) float32 in [0, 1] of a random bundled photo, rescaled and flipped."""
    from skimage.transform import resize

    src = _background_source(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))])
    h, w = src.shape[:2]
    side = int(min(h, w) * rng.uniform(0.25, 1.0))
    side = max(side, min(h, w, size // 2))
    y0 = int(rng.integers(0, h - side + 1))
    x0 = int(rng.integers(0, w - side + 1))
    crop = src[y0:y0 + side, x0:x0 + side]
    crop = resize(crop, (size, size), order=1, anti_aliasing=side > size, preserve_range=True).astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    # mild global contrast/brightness variation
    crop = crop * rng.uniform(0.7, 1.15) + rng.uniform(-0.08, 0.08)
    return np.clip(crop, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- shapes
def _rotate(pts: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return pts @ np.array([[c, s], [-s, c]], dtype=np.float64)


def _polygon_mask(pts_xy: np.ndarray, size: int) -> np.ndarray:
    """Boolean (size, size) mask of pixels whose centres fall inside the polygon ``pts_xy`` (N, 2) in pixels."""
    from skimage.draw import polygon

    mask = np.zeros((size, size), dtype=bool)
    rr, cc = polygon(pts_xy[:, 1], pts_xy[:, 0], shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _ellipse_mask(cx: float, cy: float, rx: float, ry: float, angle: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(angle), math.sin(angle)
    u, v = dx * c + dy * s, -dx * s + dy * c
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _shape_mask(cls: str, rng: np.random.Generator, cx: float, cy: float, diameter: float, size: int) -> np.ndarray:
    """Exact boolean mask (size, size) of one object of class ``cls`` centred at (cx, cy)."""
    r = diameter / 2.0
    angle = float(rng.uniform(0, 2 * math.pi))
    if cls == "disc":
        return _ellipse_mask(cx, cy, r, r * rng.uniform(0.85, 1.0), angle, size)
    if cls == "ring":
        aspect = rng.uniform(0.85, 1.0)
        inner = rng.uniform(0.45, 0.65)
        outer = _ellipse_mask(cx, cy, r, r * aspect, angle, size)
        hole = _ellipse_mask(cx, cy, r * inner, r * aspect * inner, angle, size)
        return outer & ~hole
    if cls == "square":
        half = r / math.sqrt(2.0)
        pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    elif cls == "triangle":
        base = np.array([math.pi / 2 + k * 2 * math.pi / 3 for k in range(3)]) + rng.uniform(-0.15, 0.15, 3)
        pts = np.stack([np.cos(base), np.sin(base)], 1) * r
    elif cls == "star":
        n = int(rng.integers(5, 7))
        inner = rng.uniform(0.38, 0.5)
        ang = np.arange(2 * n) * math.pi / n
        rad = np.where(np.arange(2 * n) % 2 == 0, r, r * inner)
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
    elif cls == "cross":
        a = r * rng.uniform(0.28, 0.4)
        pts = np.array([[-a, -r], [a, -r], [a, -a], [r, -a], [r, a], [a, a], [a, r], [-a, r], [-a, a], [-r, a],
                        [-r, -a], [-a, -a]])
    else:  # pragma: no cover - guarded by ProceduralSpec
        raise ValueError(f"unknown class {cls!r}")
    pts = _rotate(pts, angle) + np.array([cx, cy])
    return _polygon_mask(pts, size)


def _fill(rng: np.random.Generator, size: int, cx: float, cy: float, diameter: float) -> np.ndarray:
    """An object's texture (size, size, 3) in [0, 1]: a random HSV colour with a linear shading gradient + noise."""
    from skimage.color import hsv2rgb

    hsv = np.array([[[rng.uniform(0, 1), rng.uniform(0.35, 1.0), rng.uniform(0.3, 1.0)]]])
    rgb = hsv2rgb(hsv)[0, 0].astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    ramp = ((xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)) / max(diameter, 1.0)
    shade = 1.0 + rng.uniform(0.0, 0.5) * ramp
    noise = rng.normal(0.0, rng.uniform(0.0, 0.04), (size, size, 3)).astype(np.float32)
    return np.clip(rgb[None, None, :] * shade[..., None] + noise, 0.0, 1.0)


def render_image(spec: ProceduralSpec, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Render one image. Returns uint8 (S, S, 3) and a list of {"category": name, "mask": bool (S, S)} (top last)."""
    size = spec.image_size
    img = _background(rng, size)
    objects: list[dict] = []
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    lo, hi = spec.object_size
    for _ in range(n):
        cls = spec.classes[int(rng.integers(len(spec.classes)))]
        # log-uniform diameter, so small and large objects are equally common
        d = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        margin = d * 0.3
        cx = float(rng.uniform(margin, size - margin))
        cy = float(rng.uniform(margin, size - margin))
        mask = _shape_mask(cls, rng, cx, cy, d, size)
        if mask.sum() < 12:
            continue
        tex = _fill(rng, size, cx, cy, d)
        img = np.where(mask[..., None], tex, img)
        for o in objects:  # the new object occludes earlier ones
            o["mask"] &= ~mask
        objects.append({"category": cls, "mask": mask, "full_area": int(mask.sum())})
    kept = [o for o in objects if o["mask"].sum() >= max(12, spec.min_visible * o["full_area"])]
    return (np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8), kept


def _encode(mask: np.ndarray) -> tuple[dict, list[float], int]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    area = int(mask_utils.area(rle))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle, bbox, area


def _write_split(spec: ProceduralSpec, out: Path, split: str, n: int, progress: bool = True) -> Path:
    from isp_sim.io import write_image

    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": c, "supercategory": "shape"} for i, c in enumerate(spec.classes)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations = [], []
    for i in tqdm(range(n), desc=f"procedural {split}", leave=False, disable=n < 50 or not progress):
        rng = np.random.default_rng([spec.seed, _SPLIT_ID[split], i])
        img, objs = render_image(spec, rng)
        name = f"{i:06d}.{spec.image_format}"
        write_image(img_dir / name, img, quality=95)  # atomic; PNG is lossless
        image_id = i + 1
        images.append({"id": image_id, "file_name": name, "width": spec.image_size, "height": spec.image_size})
        for o in objs:
            rle, bbox, area = _encode(o["mask"])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat_id[o["category"]],
                                "segmentation": rle, "bbox": bbox, "area": area, "iscrowd": 0})
    ann_dir = out / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    ann_path = ann_dir / f"instances_{split}.json"
    _atomic_json(ann_path, {"info": {"description": f"procedural shapes ({split})", "seed": spec.seed},
                            "images": images, "annotations": annotations, "categories": categories})
    return ann_path


def _atomic_json(path: Path, obj) -> None:
    from isp_sim.io import atomic_write_json  # temporary file + os.replace

    atomic_write_json(path, obj)


def _spec_dict(spec: ProceduralSpec) -> dict:
    d = asdict(spec)
    d["object_size"] = list(spec.object_size)
    d["classes"] = list(spec.classes)
    d["format_version"] = FORMAT_VERSION
    return d


def make_dataset(out_dir: str | os.PathLike, n_train: int = 400, n_val: int = 100, seed: int = 0,
                 image_size: int = 160, overwrite: bool = False, progress: bool = True,
                 **spec_kwargs) -> dict[str, dict[str, str]]:
    """Generate (or reuse, when ``out_dir/meta.json`` matches) the dataset (``progress``: tqdm bars).

    Returns ``{"train": {"images": dir, "annotations": json}, "val": {...}}`` with absolute paths.
    """
    spec = ProceduralSpec(n_train=n_train, n_val=n_val, seed=seed, image_size=image_size, **spec_kwargs)
    out = Path(out_dir).resolve()
    paths = {s: {"images": str(out / s), "annotations": str(out / "annotations" / f"instances_{s}.json")}
             for s in ("train", "val")}
    meta_path = out / "meta.json"
    want = _spec_dict(spec)
    if not overwrite and meta_path.is_file():
        try:
            have = json.loads(meta_path.read_text())
        except json.JSONDecodeError:
            have = None
        if have == want and all(Path(p["annotations"]).is_file() for p in paths.values()):
            log.info("procedural dataset in %s is up to date", out)
            return paths
    out.mkdir(parents=True, exist_ok=True)
    if meta_path.exists():
        meta_path.unlink()  # invalidate until the new generation is complete
    for split, n in (("train", spec.n_train), ("val", spec.n_val)):
        _write_split(spec, out, split, n, progress)
    _atomic_json(meta_path, want)
    log.info("wrote procedural dataset (%d train, %d val) to %s", spec.n_train, spec.n_val, out)
    return paths


def existing_dataset(out_dir: str | os.PathLike) -> dict[str, dict[str, str]] | None:
    """Paths of a complete procedural dataset already in ``out_dir`` (whatever its parameters), else None."""
    out = Path(out_dir).resolve()
    paths = {s: {"images": str(out / s), "annotations": str(out / "annotations" / f"instances_{s}.json")}
             for s in ("train", "val")}
    if (out / "meta.json").is_file() and all(Path(p["annotations"]).is_file() for p in paths.values()):
        return paths
    return None
