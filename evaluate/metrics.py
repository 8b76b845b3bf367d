"""Metrics: COCO box/mask AP (pycocotools, through :mod:`tasks.coco_eval`), robustness summaries (P, mPC, rPC as in
Michaelis et al. 2019), and restoration PSNR/SSIM (scikit-image).

Robustness (Michaelis et al. 2019, mmdetection ``robustness_eval.py``):

* **P** = the metric on the clean set;
* **mPC** = the mean of the metric over every degradation x severity (1..5) evaluated;
* **rPC** = mPC / P (undefined, reported as None, when P = 0).

The same means are reported per degradation (over its severities), per severity (over degradations) and per split
(``seen`` / ``unseen``: :mod:`evaluate.conditions`); composite chains are summarised separately and are not part of
mPC. COCO returns -1 for a size range without ground truth; such values are treated as undefined and skipped.
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .common import EvaluateError
from .conditions import Condition

#: metric keys summarised by default (others stay in the per-condition tables)
SUMMARY_KEYS = ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


# --------------------------------------------------------------------------------------------------- COCO AP
def make_coco(dataset: dict):
    """A ``pycocotools.coco.COCO`` from an in-memory dict (images, annotations, categories), quietly."""
    from pycocotools.coco import COCO

    coco = COCO()
    d = {"images": [], "annotations": [], "categories": [], **dataset}
    d.setdefault("info", {})
    coco.dataset = d
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_detections(coco_gt, detections: Sequence[dict], image_ids: Iterable[int] | None = None,
                     where: str = "detections") -> None:
    """Clear errors for detections pycocotools would reject with a bare assertion or KeyError."""
    ids = set(int(i) for i in (image_ids if image_ids is not None else coco_gt.getImgIds()))
    cats = set(coco_gt.getCatIds())
    for k, d in enumerate(detections):
        for key in ("image_id", "category_id", "score"):
            if key not in d:
                raise EvaluateError(f"{where}: detection {k} lacks '{key}'")
        if "bbox" not in d and "segmentation" not in d:
            raise EvaluateError(f"{where}: detection {k} has neither 'bbox' nor 'segmentation'")
        if int(d["image_id"]) not in ids:
            raise EvaluateError(f"{where}: detection {k} is on image {d['image_id']}, which is not among the "
                                f"{len(ids)} evaluated ground-truth images")
        if int(d["category_id"]) not in cats:
            raise EvaluateError(f"{where}: detection {k} has category {d['category_id']}, not in the ground truth "
                                f"categories {sorted(cats)[:10]}")
        if not math.isfinite(float(d["score"])):
            raise EvaluateError(f"{where}: detection {k} has a non-finite score")


def coco_metrics(coco_gt, detections: Sequence[dict], image_ids: Iterable[int] | None = None,
                 iou_types: Sequence[str] = ("bbox",), where: str = "detections") -> dict[str, float]:
    """COCO AP/AR (``bbox_AP``, ``bbox_AP50``, ... ``segm_ARl``, in [0, 1]; -1 where COCO leaves it undefined),
    plus ``n_images`` / ``n_detections``. Empty ``detections`` give 0 (not an error).

    Delegates to :func:`tasks.coco_eval.evaluate_detections` after validating the detections."""
    from tasks.coco_eval import evaluate_detections

    ids = sorted(set(int(i) for i in (image_ids if image_ids is not None else coco_gt.getImgIds())))
    check_detections(coco_gt, detections, ids, where)
    if "segm" in iou_types and detections and any("segmentation" not in d for d in detections):
        raise EvaluateError(f"{where}: mask AP needs 'segmentation' in every detection (a mask model)")
    # copies: COCO.loadRes adds keys (area, id) to the dicts it is given
    dets = [dict(d) for d in detections]
    return evaluate_detections(coco_gt, dets, ids, tuple(iou_types))


def gt_as_detections(coco_gt, image_ids: Iterable[int] | None = None, with_masks: bool = True) -> list[dict]:
    """The ground truth of ``image_ids`` as COCO detections (score 1), e.g. to check that AP is exactly 1."""
    ids = set(int(i) for i in (image_ids if image_ids is not None else coco_gt.getImgIds()))
    out = []
    for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=sorted(ids), iscrowd=False)):
        d = {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": 1.0}
        if with_masks and a.get("segmentation"):
            rle = dict(coco_gt.annToRLE(a))  # polygons / uncompressed RLE -> compressed RLE (needs image size)
            if isinstance(rle.get("counts"), bytes):
                rle["counts"] = rle["counts"].decode("ascii")
            d["segmentation"] = rle
        out.append(d)
    return out


# --------------------------------------------------------------------------------------------------- robustness
def _defined(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v)) and float(v) >= 0


def mean_defined(values: Iterable[Any]) -> float | None:
    """Mean of the defined values (not None / NaN / COCO's -1); None when there are none."""
    vals = [float(v) for v in values if _defined(v)]
    return float(np.mean(vals)) if vals else None


def mpc(values: Iterable[Any]) -> float | None:
    """Mean performance under corruption: the mean over all degradation x severity results given."""
    return mean_defined(values)


def rpc(mpc_value: float | None, clean_value: float | None) -> float | None:
    """Relative performance under corruption, mPC / P (None when either is undefined or P is 0)."""
    if not _defined(mpc_value) or not _defined(clean_value) or float(clean_value) == 0.0:
        return None
    return float(mpc_value) / float(clean_value)


def robustness_summary(per_condition: Mapping[str, Mapping[str, Any]], conditions: Sequence[Condition],
                       keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, Any]:
    """P / mPC / rPC and breakdowns of ``per_condition[label][key]`` over ``conditions`` (one must be clean).

    Returns ``{"P": {key: v}, "mPC": {...}, "rPC": {...}, "n_conditions": n, "per_degradation": {spec: {"mean":
    {key: v}, "rPC": {...}, "by_severity": {sev: {key: v}}, "split": ...}}, "per_severity": {sev: {key: v}},
    "splits": {"seen"|"unseen"|"other": {"mPC": {...}, "rPC": {...}, "n_conditions": n}}, "composites": {...},
    "roundtrip": {key: v}}`` (the last two only when evaluated).
    Keys absent from every condition are left out."""
    clean = [c for c in conditions if c.is_clean]
    if not clean:
        raise EvaluateError("robustness summary needs the clean condition (P)")
    if clean[0].label not in per_condition:
        raise EvaluateError("no results for the clean condition")
    keys = [k for k in keys if any(k in per_condition.get(c.label, {}) for c in conditions)]
    p = {k: per_condition[clean[0].label].get(k) for k in keys}
    singles = [c for c in conditions if c.kind == "single" and c.label in per_condition]
    comps = [c for c in conditions if c.kind == "composite" and c.label in per_condition]

    def agg(conds: Sequence[Condition]) -> dict[str, float | None]:
        return {k: mpc(per_condition[c.label].get(k) for c in conds) for k in keys}

    out: dict[str, Any] = {"P": p, "mPC": agg(singles), "n_conditions": len(singles)}
    out["rPC"] = {k: rpc(out["mPC"][k], p[k]) for k in keys}
    per_deg: dict[str, Any] = {}
    for spec in dict.fromkeys(c.spec for c in singles + comps):
        cs = [c for c in singles + comps if c.spec == spec]
        m = agg(cs)
        per_deg[spec] = {"mean": m, "rPC": {k: rpc(m[k], p[k]) for k in keys}, "kind": cs[0].kind,
                         "splits": sorted(set(c.split for c in cs)),
                         "by_severity": {str(c.severity): {k: per_condition[c.label].get(k) for k in keys}
                                         for c in sorted(cs, key=lambda c: c.severity)}}
    out["per_degradation"] = per_deg
    out["per_severity"] = {str(s): agg([c for c in singles if c.severity == s])
                           for s in sorted(set(c.severity for c in singles))}
    splits = {}
    for name in ("seen", "unseen", "other"):
        cs = [c for c in singles if c.split == name]
        if cs:
            m = agg(cs)
            splits[name] = {"mPC": m, "rPC": {k: rpc(m[k], p[k]) for k in keys}, "n_conditions": len(cs)}
    out["splits"] = splits
    rt = [c for c in conditions if c.kind == "reference" and c.label in per_condition]
    if rt:
        out["roundtrip"] = {k: per_condition[rt[0].label].get(k) for k in keys}
    if comps:
        m = agg(comps)
        out["composites"] = {"mean": m, "rPC": {k: rpc(m[k], p[k]) for k in keys}, "n_conditions": len(comps)}
    return out


# --------------------------------------------------------------------------------------------------- restoration
def psnr_ssim(reference: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of two uint8 (H, W, 3) images (scikit-image; PSNR is inf for identical images)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    if reference.shape != test.shape:
        raise EvaluateError(f"PSNR/SSIM: shapes differ {reference.shape} vs {test.shape}")
    if reference.dtype != np.uint8 or test.dtype != np.uint8:
        raise EvaluateError("PSNR/SSIM expects uint8 images")
    if np.array_equal(reference, test):
        return float("inf"), 1.0
    psnr = peak_signal_noise_ratio(reference, test, data_range=255)
    win = min(7, *(s - (1 - s % 2) for s in reference.shape[:2]))
    ssim = structural_similarity(reference, test, data_range=255, channel_axis=-1, win_size=max(3, win))
    return float(psnr), float(ssim)


class RestorationAccumulator:
    """Per-condition means of PSNR/SSIM of the degraded input and of the restored image against the clean one.

    Infinite PSNR (identical images) is capped at 100 dB for the mean (and counted in ``n_identical``)."""

    CAP = 100.0

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[float, float, float, float]]] = {}

    def add(self, label: str, clean: np.ndarray, degraded: np.ndarray, restored: np.ndarray | None) -> None:
        pd, sd = psnr_ssim(clean, degraded)
        pr, sr = psnr_ssim(clean, restored) if restored is not None else (float("nan"), float("nan"))
        self.rows.setdefault(label, []).append((pd, sd, pr, sr))

    def summary(self, label: str) -> dict[str, float]:
        a = np.array(self.rows.get(label, []), dtype=np.float64).reshape(-1, 4)
        if not len(a):
            return {}
        capped = np.where(np.isinf(a[:, [0, 2]]), self.CAP, a[:, [0, 2]])
        out = {"n_images": int(len(a)), "psnr_degraded": float(np.mean(capped[:, 0])),
               "ssim_degraded": float(np.mean(a[:, 1])), "n_identical": int(np.isinf(a[:, 0]).sum()),
               "psnr_restored": None, "ssim_restored": None}
        if not np.isnan(a[:, 2]).all():
            out["psnr_restored"] = float(np.nanmean(capped[:, 1]))
            out["ssim_restored"] = float(np.nanmean(a[:, 3]))
        return out
