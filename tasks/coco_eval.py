"""Prediction and COCO box/mask AP with pycocotools (shared with the ``evaluate`` package).

* :func:`predict` - run a torchvision detector on images, return COCO-style result dicts.
* :func:`evaluate_detections` - COCOeval of result dicts against a ``pycocotools.coco.COCO`` ground truth.
* :func:`evaluate_coco` - both, over a :class:`tasks.data.coco.CocoDetection` (clean, degraded on the fly or read
  from a degraded copy, as the dataset is configured).

Metric keys: ``bbox_AP, bbox_AP50, bbox_AP75, bbox_APs, bbox_APm, bbox_APl, bbox_AR1, bbox_AR10, bbox_AR100,
bbox_ARs, bbox_ARm, bbox_ARl`` and the same with ``segm_``; values in [0, 1] (COCO's -1 where a size range has no
ground truth), plus ``n_images`` and ``n_detections``.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def to_image_tensor(img: Any) -> torch.Tensor:
    """A float32 (3, H, W) sRGB tensor in [0, 1] from a tensor (3,H,W) float [0,1] or uint8, a numpy uint8/float
    (H, W, 3) array, or an image file path."""
    if isinstance(img, (str, os.PathLike)):
        from .data.coco import read_rgb

        img = read_rgb(img)
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"numpy images must be (H, W, 3), got {img.shape}")
        t = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1)
        return t.float().div_(255.0) if img.dtype == np.uint8 else t.float()
    if isinstance(img, torch.Tensor):
        if img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"tensor images must be (3, H, W), got {tuple(img.shape)}")
        return img.float().div(255.0) if img.dtype == torch.uint8 else img.float()
    raise TypeError(f"unsupported image type {type(img).__name__}")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def outputs_to_coco(output: dict[str, torch.Tensor], image_id: int, label_to_cat_id: dict[int, int] | None = None,
                    score_threshold: float = 0.0, mask_threshold: float = 0.5) -> list[dict]:
    """One torchvision output dict -> COCO results (bbox [x, y, w, h], score, category_id, segmentation RLE)."""
    keep = output["scores"] >= score_threshold
    boxes = output["boxes"][keep].detach().cpu().double()
    scores = output["scores"][keep].detach().cpu().tolist()
    labels = output["labels"][keep].detach().cpu().tolist()
    masks = output.get("masks")
    if masks is not None:
        masks = (masks[keep][:, 0] >= mask_threshold).cpu().numpy().astype(np.uint8)
    res = []
    for i, (b, s, lab) in enumerate(zip(boxes.tolist(), scores, labels)):
        cat = int(label_to_cat_id[int(lab)]) if label_to_cat_id else int(lab)
        d = {"image_id": int(image_id), "category_id": cat, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
             "score": float(s)}
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[i]))
            rle["counts"] = rle["counts"].decode("ascii")
            d["segmentation"] = rle
        res.append(d)
    return res


@torch.no_grad()
def predict(model: torch.nn.Module, images: Sequence[Any], image_ids: Sequence[int] | None = None,
            label_to_cat_id: dict[int, int] | None = None, score_threshold: float = 0.0, batch_size: int = 2,
            mask_threshold: float = 0.5, progress: bool = False) -> list[dict]:
    """Detect objects in ``images`` (tensors (3,H,W) in [0,1], uint8 arrays (H,W,3) or paths).

    Returns COCO result dicts; ``image_id`` defaults to the position in ``images``; ``label_to_cat_id`` defaults to
    ``model.label_to_cat_id`` when the model has one (from :func:`tasks.checkpoint.load_detector`)."""
    m = model.module if hasattr(model, "module") else model
    if label_to_cat_id is None:
        label_to_cat_id = getattr(m, "label_to_cat_id", None)
    ids = list(range(len(images))) if image_ids is None else list(image_ids)
    if len(ids) != len(images):
        raise ValueError(f"{len(images)} images but {len(ids)} image_ids")
    was_training = m.training
    m.eval()
    dev = _model_device(m)
    results: list[dict] = []
    try:
        for start in tqdm(range(0, len(images), batch_size), desc="predict", disable=not progress, leave=False):
            batch = [to_image_tensor(x).to(dev) for x in images[start:start + batch_size]]
            outs = m(batch)
            for out, iid in zip(outs, ids[start:start + batch_size]):
                results += outputs_to_coco(out, iid, label_to_cat_id, score_threshold, mask_threshold)
    finally:
        m.train(was_training)
    return results


def evaluate_detections(coco_gt: COCO, detections: list[dict], image_ids: Iterable[int] | None = None,
                        iou_types: Sequence[str] = ("bbox", "segm"), prefix: str = "") -> dict[str, float]:
    """COCO AP/AR of ``detections`` against ``coco_gt`` restricted to ``image_ids``; see the module docstring."""
    ids = sorted(set(int(i) for i in (image_ids if image_ids is not None else coco_gt.getImgIds())))
    out: dict[str, float] = {f"{prefix}n_images": len(ids), f"{prefix}n_detections": len(detections)}
    for iou in iou_types:
        if iou == "segm" and detections and "segmentation" not in detections[0]:
            raise ValueError("segm evaluation needs detections with 'segmentation' (a mask model)")
        if not detections:
            stats = [0.0] * len(STAT_NAMES)
        else:
            # copies (loadRes adds keys); for masks drop the boxes so COCO uses mask areas for the size ranges
            dets = [({k: v for k, v in d.items() if k != "bbox"} if iou == "segm" else dict(d)) for d in detections]
            with contextlib.redirect_stdout(io.StringIO()):
                dt = coco_gt.loadRes(dets)
                ev = COCOeval(coco_gt, dt, iou)
                ev.params.imgIds = ids
                ev.evaluate()
                ev.accumulate()
                ev.summarize()
            stats = [float(s) for s in ev.stats]
        out.update({f"{prefix}{iou}_{n}": s for n, s in zip(STAT_NAMES, stats)})
    return out


def has_masks(model: torch.nn.Module) -> bool:
    m = model.module if hasattr(model, "module") else model
    return bool(getattr(m, "roi_heads", None) is not None and m.roi_heads.has_mask())


@torch.no_grad()
def evaluate_coco(model: torch.nn.Module, dataset, batch_size: int = 2, max_images: int | None = None,
                  iou_types: Sequence[str] | None = None, score_threshold: float = 0.0, progress: bool = True,
                  return_detections: bool = False) -> dict[str, Any]:
    """Box (and mask) AP of ``model`` on ``dataset`` (a CocoDetection: ``.coco``, ``.ids``, ``.label_to_cat_id``).

    Images are read as the dataset is configured (clean, degraded on the fly, or from a degraded copy).
    ``max_images`` evaluates the first N images only. Returns the metric dict (plus ``"detections"`` if asked)."""
    m = model.module if hasattr(model, "module") else model
    if iou_types is None:
        iou_types = ("bbox", "segm") if has_masks(m) else ("bbox",)
    n = len(dataset) if not max_images else min(int(max_images), len(dataset))
    # a loaded checkpoint knows its own label -> category id map; a freshly built model uses the dataset's
    label_map = getattr(m, "label_to_cat_id", None) or dataset.label_to_cat_id
    was_training = m.training
    m.eval()
    dev = _model_device(m)
    dets: list[dict] = []
    try:
        for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, leave=False):
            idx = list(range(start, min(start + batch_size, n)))
            imgs = [dataset[i][0].to(dev) for i in idx]
            outs = m(imgs)
            for out, i in zip(outs, idx):
                dets += outputs_to_coco(out, dataset.ids[i], label_map, score_threshold)
    finally:
        m.train(was_training)
    metrics: dict[str, Any] = evaluate_detections(dataset.coco, dets, dataset.ids[:n], iou_types)
    if return_detections:
        metrics["detections"] = dets
    return metrics
