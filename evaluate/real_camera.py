"""Detectors on what real camera pipelines produce.

Renderings of a RAW frame:

* ``libraw:<ALGO>`` - the camera reference: LibRaw (``isp_sim.io.camera_render``) with each demosaic algorithm of
  the wheel (LINEAR, VNG, PPG, AHD, DCB, DHT, AAHD), plus two other settings: ``libraw:AHD+autowb`` (LibRaw's
  grey-world auto white balance instead of the as-shot one) and ``libraw:DCB+fbdd`` (FBDD noise reduction);
* ``sim:<demosaic>`` - the simulator's hand-crafted ISP (``isp_sim.isp.render_raw_image``: WB, demosaic, CCM,
  gamma 2.2, smoothstep tone) with ``menon`` (its reference), ``malvar`` or ``bilinear`` demosaicing;
* ``pynet:<which>`` - the learned ISP stage (``pynet.isp_stage.PyNETISP``), from a checkpoint or, when none is
  given, an **untrained** (randomly initialised, seed 0) PyNET - which is then a lower bound, not a learned ISP.

Two evaluations:

1. **Real RAW files** (``../shared/data/real_raw``; skipped cleanly when absent) have no box annotations. The
   label-free *consistency score* of a rendering is the COCO AP of the detector's predictions on it against its
   own predictions on the reference rendering (``libraw:AHD``) of the same RAW, keeping reference predictions with
   score >= ``pseudo_gt_score`` (0.3 by default: detectors trained briefly on small data rarely exceed 0.5 on
   out-of-domain photographs, and 0.3 still drops the low-score tail that torchvision keeps from 0.05) as pseudo
   ground truth. The reference against itself scores 1.0
   (whenever it has pseudo ground truth); a RAW whose reference has no prediction above the threshold cannot be
   scored and is counted in ``n_raw_without_pseudo_gt``.
2. **Real RAW files with objects composited in the RAW domain** (when the detector knows the procedural classes of
   :mod:`tasks.data.procedural`): procedural objects (their sRGB texture mapped into the frame's own camera space
   through the inverse of the simulator's ISP: inverse tone curve, gamma 2.2, inverse colour matrix, inverse
   white-balance gains, then the frame's Bayer pattern) are written into each real RAW crop, which then goes through
   every rendering. Background, sensor, black/white levels and the rendering pipelines are real; the objects are
   synthetic and noise-free (quantised to the sensor's counts). Their masks give true AP per rendering, and the
   consistency score is computed on the same frames.
3. **Annotated images** (a COCO-format dataset): each clean image is unprocessed into a synthetic RAW
   (``isp_sim.unprocess``, a random camera per image from ``image_seed(seed, "real-camera/<file>")``, 12-bit
   counts, black level 256) and rendered by every pipeline above; the ground truth gives the true AP per rendering,
   and the consistency score is computed there too, so the label-free score can be checked against true AP.

Large frames are centre-cropped to ``max_side`` sensor pixels (CFA phase kept) before rendering.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .common import EvaluateError, atomic_write_json, atomic_write_text, load_average
from .metrics import coco_metrics, make_coco, psnr_ssim

log = logging.getLogger("evaluate.real_camera")

LIBRAW_DEFAULT = ("AHD", "LINEAR", "VNG", "PPG", "DCB", "DHT", "AAHD", "AHD+autowb", "DCB+fbdd")
SIM_DEFAULT = ("menon", "malvar", "bilinear")
REFERENCE = "libraw:AHD"


def default_raw_dir() -> Path:
    """``$ISP_SHARED_DIR/data/real_raw`` or ``<repo>/../shared/data/real_raw``."""
    shared = os.environ.get("ISP_SHARED_DIR")
    if shared:
        return Path(shared) / "data" / "real_raw"
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_raw"


@dataclass
class RealCameraConfig:
    """raw_dir: folder of real RAW files ("" = :func:`default_raw_dir`). max_side: centre crop (sensor pixels).
    libraw / simulator: LibRaw settings and simulator demosaics to render with. pynet: include the learned ISP;
    pynet_checkpoint: its weights ("" = untrained PyNET, width ``pynet_width``, seed 0). reference: the rendering
    whose predictions are the pseudo ground truth. pseudo_gt_score: score threshold of the pseudo ground truth.
    gt_images: annotated images to render (0 = all of the dataset given). seed: synthetic-RAW camera seed (and
    composited objects). sample_raws: RAW files shown in the sample sheet. composite_objects: also evaluate the real
    RAW crops with procedural objects composited in the RAW domain (procedural-class detectors only)."""

    raw_dir: str = ""
    max_side: int = 512
    libraw: list[str] = field(default_factory=lambda: list(LIBRAW_DEFAULT))
    simulator: list[str] = field(default_factory=lambda: list(SIM_DEFAULT))
    pynet: bool = True
    pynet_checkpoint: str = ""
    pynet_width: float = 0.25
    reference: str = REFERENCE
    pseudo_gt_score: float = 0.3
    gt_images: int = 0
    seed: int = 0
    batch_size: int = 2
    sample_raws: int = 3
    composite_objects: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < float(self.pseudo_gt_score) <= 1.0:
            raise EvaluateError(f"pseudo_gt_score must be in (0, 1], got {self.pseudo_gt_score}")
        if self.max_side < 32:
            raise EvaluateError("max_side must be >= 32")
        if self.reference not in self.rendering_names(check=False):
            raise EvaluateError(f"reference rendering {self.reference!r} is not among the renderings "
                                f"{self.rendering_names(check=False)}")

    def rendering_names(self, check: bool = True) -> list[str]:
        names = [f"libraw:{a}" for a in self.libraw] + [f"sim:{d}" for d in self.simulator]
        if self.pynet:
            names.append(f"pynet:{Path(self.pynet_checkpoint).stem if self.pynet_checkpoint else 'untrained'}")
        if check:
            for n in names:
                _check_rendering(n)
        return names


def _check_rendering(name: str) -> None:
    kind, _, what = name.partition(":")
    if kind == "libraw":
        algo = what.split("+")[0].upper()
        import rawpy

        from isp_sim.io import algo_supported

        if algo not in rawpy.DemosaicAlgorithm.__members__:
            raise EvaluateError(f"unknown LibRaw demosaic {algo!r} in {name!r}; choose from "
                                f"{[a.name for a in rawpy.DemosaicAlgorithm]}")
        if not algo_supported(rawpy.DemosaicAlgorithm[algo]):
            raise EvaluateError(f"LibRaw demosaic {algo} is not available in this rawpy build ({name!r})")
        for opt in what.split("+")[1:]:
            if opt not in ("autowb", "fbdd"):
                raise EvaluateError(f"unknown LibRaw option {opt!r} in {name!r}; use +autowb or +fbdd")
    elif kind == "sim":
        from isp_sim.demosaic import DEMOSAICERS

        if what not in DEMOSAICERS:
            raise EvaluateError(f"unknown simulator demosaic {what!r}; choose from {sorted(DEMOSAICERS)}")
    elif kind != "pynet":
        raise EvaluateError(f"unknown rendering {name!r}; use libraw:<ALGO>[+autowb|+fbdd], sim:<demosaic>, pynet")


# --------------------------------------------------------------------------------------------------- renderers
def build_pynet(cfg: RealCameraConfig):
    """The learned-ISP stage: from ``cfg.pynet_checkpoint``, or an untrained PyNET (explicit seed 0)."""
    from pynet.isp_stage import PyNETISP

    if cfg.pynet_checkpoint:
        p = Path(cfg.pynet_checkpoint)
        if not p.is_file():
            raise EvaluateError(f"PyNET checkpoint not found: {p}")
        try:
            return PyNETISP(checkpoint=p)
        except (ValueError, RuntimeError) as e:
            raise EvaluateError(f"cannot load PyNET checkpoint {p}: {e}") from e
    from pynet.model import PyNET

    return PyNETISP(model=PyNET(variant="pytorch", width=cfg.pynet_width, seed=0))


def render(raw, name: str, pynet_isp=None) -> np.ndarray:
    """One rendering (see the module docstring) of an ``isp_sim.raw.RawImage`` -> uint8 (H, W, 3)."""
    kind, _, what = name.partition(":")
    if kind == "libraw":
        import rawpy

        from isp_sim.io import camera_render

        algo, *opts = what.split("+")
        kw: dict[str, Any] = {}
        if "autowb" in opts:
            kw.update(use_camera_wb=False, use_auto_wb=True)
        if "fbdd" in opts:
            kw["fbdd_noise_reduction"] = rawpy.FBDDNoiseReductionMode.Full
        return camera_render(raw, algo, **kw)
    if kind == "sim":
        from isp_sim.isp import render_raw_image

        with torch.no_grad():
            return render_raw_image(raw, demosaic=what)
    if kind == "pynet":
        if pynet_isp is None:
            raise EvaluateError("a pynet rendering needs the PyNET stage (build_pynet)")
        return pynet_isp.render(raw)
    raise EvaluateError(f"unknown rendering {name!r}")


def render_all(raw, names: Sequence[str], pynet_isp=None) -> dict[str, np.ndarray]:
    out = {}
    for n in names:
        img = render(raw, n, pynet_isp)
        if img.dtype != np.uint8:
            img = (img / 257).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
        out[n] = img
    shapes = {v.shape for v in out.values()}
    if len(shapes) > 1:
        raise EvaluateError(f"{getattr(raw, 'path', 'RAW')}: renderings differ in size {shapes}; boxes could not "
                            "be compared")
    return out


def centre_crop(raw, max_side: int):
    h, w = raw.shape
    th, tw = min(h, max_side), min(w, max_side)
    th -= th % 2
    tw -= tw % 2
    if (th, tw) == (h, w):
        return raw
    return raw.crop(max(0, (h - th) // 2), max(0, (w - tw) // 2), th, tw)


def list_raw_files(raw_dir: str | Path) -> list[Path]:
    """RAW files in ``raw_dir`` that ``isp_sim.io.read_raw`` understands (JSON sidecars are skipped)."""
    from isp_sim.io import BAYER_IMAGE_SUFFIXES, HEADERLESS_SUFFIXES, RAWPY_SUFFIXES

    d = Path(raw_dir)
    if not d.is_dir():
        return []
    ok = RAWPY_SUFFIXES | HEADERLESS_SUFFIXES | BAYER_IMAGE_SUFFIXES | {".npy"}
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in ok)


def synthetic_raw(image: np.ndarray, seed: int, pattern: str = "RGGB", bits: int = 12, black: float = 256.0):
    """A clean sRGB uint8 image -> ``RawImage`` by unprocessing (random camera from ``seed``, brightness gain 1,
    ``bits``-bit counts). Odd sizes are edge-padded to even."""
    from isp_sim.raw import RawImage
    from isp_sim.seeding import numpy_rng
    from isp_sim.unprocess import sample_unprocess_params, unprocess

    h, w = image.shape[:2]
    img = np.pad(image, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    params = dataclasses.replace(sample_unprocess_params(numpy_rng(seed)), rgb_gain=1.0)
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        lin, _ = unprocess(x, [params], pattern)
    white = float(2 ** bits - 1)
    counts = np.round(black + lin[0, 0].numpy().astype(np.float64) * (white - black)).astype(np.uint16)
    return RawImage(counts, pattern, black, white, bits, wb_gains=tuple(params.wb_gains),
                    xyz_to_cam=np.asarray(params.xyz_to_cam), path=f"synthetic(seed={seed})")


def composite_objects(raw, seed: int, min_objects: int = 2, max_objects: int = 5):
    """Write procedural objects into a real ``RawImage`` in its own camera space (see the module docstring).

    Returns ``(raw_with_objects, annotations)``; annotations are COCO dicts (``category_id`` = 1 + index in
    ``tasks.data.procedural.CLASSES``, RLE ``segmentation``, ``bbox``, ``area``) without ids."""
    from pycocotools import mask as mask_utils

    from isp_sim.bayer import mosaic_np
    from isp_sim.color import gamma_decode, inverse_smoothstep
    from tasks.data.procedural import CLASSES, ProceduralSpec, render_image

    h, w = raw.shape
    side = min(h, w)
    spec = ProceduralSpec(n_train=1, n_val=1, image_size=side, min_objects=min_objects, max_objects=max_objects,
                          object_size=(max(8, side // 9), max(9, int(side * 0.45))))
    img, objs = render_image(spec, np.random.default_rng([int(seed), 0x0B7EC7]))
    top, left = (h - side) // 2, (w - side) // 2
    srgb = torch.from_numpy(img.astype(np.float32) / 255.0)
    lin = gamma_decode(inverse_smoothstep(srgb), 2.2).numpy().astype(np.float64)       # linear sRGB (S, S, 3)
    cam = lin @ np.linalg.inv(raw.cam_to_srgb()).T                                    # camera RGB after WB
    cam = np.clip(cam / np.asarray(raw.gains_or_gray_world())[None, None, :], 0.0, 1.0)  # before WB
    full = np.zeros((h, w, 3))
    full[top:top + side, left:left + side] = cam
    union = np.zeros((h, w), bool)
    anns = []
    for o in objs:
        m = np.zeros((h, w), np.uint8)
        m[top:top + side, left:left + side] = o["mask"]
        union |= m.astype(bool)
        rle = mask_utils.encode(np.asfortranarray(m))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        anns.append({"category_id": CLASSES.index(o["category"]) + 1, "segmentation": rle, "bbox": bbox,
                     "area": float(m.sum()), "iscrowd": 0})
    site = mosaic_np(full, raw.pattern)                                               # linear RAW in [0, 1]
    black = raw.black_map().astype(np.float64)
    counts = np.round(black + site * (raw.white_level - black))
    out = raw.counts.astype(np.float64).copy()
    out[union] = counts[union]
    out = np.clip(out, 0, np.iinfo(raw.counts.dtype).max if raw.counts.dtype.kind in "ui" else None)
    new = dataclasses.replace(raw, counts=out.astype(raw.counts.dtype), path=f"{raw.path}+objects(seed={seed})")
    return new, anns


# --------------------------------------------------------------------------------------------------- scoring
def pseudo_ground_truth(ref_dets: Sequence[dict], images: Sequence[dict], categories: Sequence[dict],
                        score: float) -> Any:
    """A COCO ground truth from the reference predictions with score >= ``score``."""
    from pycocotools import mask as mask_utils

    anns = []
    for d in ref_dets:
        if d["score"] < score:
            continue
        a = {"id": len(anns) + 1, "image_id": d["image_id"], "category_id": d["category_id"],
             "bbox": list(d["bbox"]), "iscrowd": 0, "area": float(d["bbox"][2] * d["bbox"][3])}
        if "segmentation" in d:
            a["segmentation"] = d["segmentation"]
            rle = dict(d["segmentation"])
            rle["counts"] = rle["counts"].encode("ascii") if isinstance(rle["counts"], str) else rle["counts"]
            a["area"] = float(mask_utils.area(rle))
        anns.append(a)
    return make_coco({"images": list(images), "annotations": anns, "categories": list(categories)})


def consistency_scores(dets: dict[str, list[dict]], images: Sequence[dict], categories: Sequence[dict],
                       reference: str, score: float, iou_types: Sequence[str]) -> dict[str, dict]:
    """Per rendering: COCO AP of its predictions against the pseudo ground truth from ``reference``."""
    gt = pseudo_ground_truth(dets[reference], images, categories, score)
    with_gt = sorted({a["image_id"] for a in gt.dataset["annotations"]})
    out = {}
    for name, ds in dets.items():
        row: dict[str, Any] = {"n_pseudo_gt": len(gt.dataset["annotations"]), "n_images_scored": len(with_gt),
                               "n_images": len(images),
                               "n_detections_above_threshold": sum(d["score"] >= score for d in ds)}
        if with_gt:
            keep = [d for d in ds if d["image_id"] in set(with_gt)]
            m = coco_metrics(gt, keep, with_gt, iou_types, where=f"consistency/{name}")
            row.update({k: v for k, v in m.items() if k.endswith(("_AP", "_AP50", "_AP75"))})
        else:
            row.update({f"{t}_{k}": None for t in iou_types for k in ("AP", "AP50", "AP75")})
        out[name] = row
    return out


def _categories(model) -> list[dict]:
    return [{"id": int(c), "name": model.class_names[i] if i < len(model.class_names) else str(c)}
            for i, c in enumerate(model.label_to_cat_id.values())]


def _predict(model, images: list[np.ndarray], ids: list[int], batch_size: int) -> list[dict]:
    from tasks.coco_eval import predict

    return predict(model, images, ids, batch_size=batch_size)


# --------------------------------------------------------------------------------------------------- the runs
def evaluate_real_raws(loaded: Sequence, cfg: RealCameraConfig, progress: bool = True,
                       keep_images: int = 0) -> dict[str, Any]:
    """Render every real RAW of ``cfg.raw_dir`` and compute each model's consistency scores.

    Returns ``{"status": "ok"|"skipped", "raw_files": [...], "renderings": [...], "models": {tag: {rendering:
    {...}}}, "image_similarity": {rendering: {"psnr_vs_reference", "ssim_vs_reference"}}, "samples": [...]}``."""
    raw_dir = Path(cfg.raw_dir) if cfg.raw_dir else default_raw_dir()
    files = list_raw_files(raw_dir)
    if not files:
        log.warning("no real RAW files in %s: real-camera consistency skipped", raw_dir)
        return {"status": "skipped", "reason": f"no RAW files in {raw_dir}", "raw_dir": str(raw_dir)}
    from isp_sim.errors import ISPInputError
    from isp_sim.io import read_raw

    names = cfg.rendering_names()
    pyn = build_pynet(cfg) if cfg.pynet else None
    from tasks.data.procedural import CLASSES

    procedural = [lm for lm in loaded if list(lm.model.class_names) == list(CLASSES)
                  and sorted(lm.model.label_to_cat_id.values()) == list(range(1, len(CLASSES) + 1))]
    do_comp = cfg.composite_objects and bool(procedural)
    images, renders, errors, info = [], [], [], []
    comp_renders, comp_anns = [], []
    t0 = time.perf_counter()
    for i, f in enumerate(tqdm(files, desc="render RAWs", disable=not progress, leave=False)):
        try:
            raw = centre_crop(read_raw(f, on_overflow="clip"), cfg.max_side)
            r = render_all(raw, names, pyn)
            if do_comp:
                from isp_sim.seeding import image_seed

                craw, anns = composite_objects(raw, image_seed(cfg.seed, f"composite/{f.name}"))
                cr = render_all(craw, names, pyn)
        except (ISPInputError, EvaluateError, OSError, ValueError) as e:
            log.warning("skipping %s: %s", f, e)
            errors.append({"file": str(f), "error": str(e)})
            continue
        h, w = raw.shape
        images.append({"id": len(images) + 1, "file_name": f.name, "width": int(w), "height": int(h)})
        renders.append(r)
        if do_comp:
            comp_renders.append(cr)
            comp_anns += [dict(a, image_id=images[-1]["id"], id=len(comp_anns) + k + 1) for k, a in enumerate(anns)]
        info.append({"file": f.name, "pattern": raw.pattern, "crop": [int(h), int(w)],
                     "wb_known": raw.wb_gains is not None, "color_matrix_known": raw.xyz_to_cam is not None})
    render_s = time.perf_counter() - t0
    if not images:
        return {"status": "skipped", "reason": f"no RAW file in {raw_dir} could be rendered", "errors": errors}
    sim = _similarity(renders, names, cfg.reference)
    out: dict[str, Any] = {"status": "ok", "raw_dir": str(raw_dir), "raw_files": info, "errors": errors,
                           "renderings": names, "reference": cfg.reference, "pseudo_gt_score": cfg.pseudo_gt_score,
                           "pynet": _pynet_note(cfg), "image_similarity": sim, "models": {},
                           "seconds": {"render": round(render_s, 2)}}
    ids = [im["id"] for im in images]
    all_dets = {}
    for lm in loaded:
        t = time.perf_counter()
        dets = {n: _predict(lm.model, [r[n] for r in renders], ids, cfg.batch_size) for n in names}
        all_dets[lm.spec.tag] = dets
        out["models"][lm.spec.tag] = consistency_scores(dets, images, _categories(lm.model), cfg.reference,
                                                        cfg.pseudo_gt_score, lm.iou_types)
        out["seconds"][f"predict_{lm.spec.tag}"] = round(time.perf_counter() - t, 2)
    if do_comp:
        from tasks.data.procedural import CLASSES as _C

        cats = [{"id": k + 1, "name": n} for k, n in enumerate(_C)]
        gt = make_coco({"images": images, "annotations": comp_anns, "categories": cats})
        out["composited"] = {"status": "ok", "n_objects": len(comp_anns), "models": {}}
        comp_dets = {}
        for lm in procedural:
            dets = {n: _predict(lm.model, [r[n] for r in comp_renders], ids, cfg.batch_size) for n in names}
            comp_dets[lm.spec.tag] = dets
            out["composited"]["models"][lm.spec.tag] = _true_and_consistency(
                dets, gt, ids, images, cats, cfg, lm.iou_types, lm.spec.tag)
    else:
        out["composited"] = {"status": "skipped", "reason": "disabled" if not cfg.composite_objects else
                             "no detector with the procedural classes"}
    if keep_images:
        out["_samples"] = {"images": images[:keep_images], "renders": renders[:keep_images], "dets": all_dets}
        if do_comp:
            out["_samples"]["composited"] = {"renders": comp_renders[:keep_images], "dets": comp_dets}
    return out


def _true_and_consistency(dets: dict, gt, ids, images, cats, cfg: RealCameraConfig, iou_types, tag: str) -> dict:
    true = {k: coco_metrics(gt, d, ids, iou_types, where=f"{tag}/{k}") for k, d in dets.items()}
    cons = consistency_scores(dets, images, cats, cfg.reference, cfg.pseudo_gt_score, iou_types)
    return {k: {"true": {m: v for m, v in true[k].items() if m.endswith(("_AP", "_AP50", "_AP75"))},
                "consistency": cons[k]} for k in dets}


def evaluate_gt_renderings(loaded: Sequence, data, cfg: RealCameraConfig, progress: bool = True) -> dict[str, Any]:
    """Synthetic RAWs of an annotated dataset (``evaluate.grid.GridData``) through every rendering: true AP per
    rendering (and the consistency score, to check the label-free score against it)."""
    from isp_sim.seeding import image_seed

    names = cfg.rendering_names()
    pyn = build_pynet(cfg) if cfg.pynet else None
    n = len(data.ids) if not cfg.gt_images else min(cfg.gt_images, len(data.ids))
    per_render: dict[str, list[np.ndarray]] = {k: [] for k in ["original"] + names}
    sims: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    t0 = time.perf_counter()
    for i in tqdm(range(n), desc="render GT set", disable=not progress, leave=False):
        clean = data.clean(i)
        raw = synthetic_raw(clean, image_seed(cfg.seed, f"real-camera/{data.files[i]}"))
        r = render_all(raw, names, pyn)
        h, w = clean.shape[:2]
        per_render["original"].append(clean)
        for k, v in r.items():
            v = np.ascontiguousarray(v[:h, :w])
            per_render[k].append(v)
            sims[k].append(psnr_ssim(clean, v))
    render_s = time.perf_counter() - t0
    ids = data.ids[:n]
    images = [data.coco.imgs[i] for i in ids]
    out: dict[str, Any] = {"status": "ok", "annotations": str(data.ann_file), "n_images": n, "renderings":
                           ["original"] + names, "reference": cfg.reference, "pseudo_gt_score": cfg.pseudo_gt_score,
                           "pynet": _pynet_note(cfg), "models": {}, "seconds": {"render": round(render_s, 2)},
                           "image_similarity": {k: {"psnr_vs_original": float(np.mean([min(p, 100.0) for p, _ in v])),
                                                    "ssim_vs_original": float(np.mean([s for _, s in v]))}
                                                for k, v in sims.items()}}
    for lm in loaded:
        t = time.perf_counter()
        dets = {k: _predict(lm.model, imgs, ids, cfg.batch_size) for k, imgs in per_render.items()}
        out["models"][lm.spec.tag] = _true_and_consistency(
            dets, data.coco, ids, images, [data.coco.cats[c] for c in sorted(data.coco.cats)], cfg, lm.iou_types,
            lm.spec.tag)
        out["seconds"][f"predict_{lm.spec.tag}"] = round(time.perf_counter() - t, 2)
    return out


def _pynet_note(cfg: RealCameraConfig) -> str:
    if not cfg.pynet:
        return "not evaluated"
    if cfg.pynet_checkpoint:
        return f"PyNET weights from {cfg.pynet_checkpoint}"
    return (f"UNTRAINED PyNET (random initialisation, seed 0, width {cfg.pynet_width}): a lower bound, not a "
            "learned ISP; give a checkpoint (python -m pynet train ...) for meaningful PyNET numbers")


def _similarity(renders: list[dict], names: Sequence[str], ref: str) -> dict[str, dict]:
    out = {}
    for n in names:
        vals = [psnr_ssim(r[ref], r[n]) for r in renders]
        out[n] = {"psnr_vs_reference": float(np.mean([min(p, 100.0) for p, _ in vals])),
                  "ssim_vs_reference": float(np.mean([s for _, s in vals]))}
    return out


# --------------------------------------------------------------------------------------------------- report
def real_camera_markdown(res: dict, level: int = 2) -> str:
    from .report import fmt, md_table

    h = "#" * level
    out = [f"{h} Real-camera outputs\n\n"]
    raws = res.get("real_raw", {})
    gt = res.get("gt_renderings", {})
    note = (raws.get("pynet") or gt.get("pynet") or "")
    out.append("Renderings: LibRaw (camera reference) with each demosaic algorithm and two other settings "
               "(+autowb: LibRaw auto white balance; +fbdd: FBDD noise reduction), the simulator's hand-crafted ISP "
               f"(sim:<demosaic>), and PyNET ({note}).\n")
    if raws.get("status") == "ok":
        out.append(f"\n{h}# Real RAW files: label-free consistency\n\n"
                   f"{len(raws['raw_files'])} RAW frames from `{raws['raw_dir']}` (centre crops "
                   f"{', '.join('x'.join(map(str, r['crop'])) for r in raws['raw_files'])}). Consistency = COCO AP of "
                   f"the predictions on a rendering against the same detector's predictions on `{raws['reference']}` "
                   f"with score >= {raws['pseudo_gt_score']} (pseudo ground truth). The reference scores 1.0 by "
                   "construction. 'scored RAWs' = frames whose reference has at least one prediction above the "
                   "threshold (others cannot be scored).\n\n")
        for tag, rows in raws["models"].items():
            out.append(f"**{tag}**\n\n")
            segm = any("segm_AP" in r for r in rows.values())
            header = ["rendering", "box AP (consistency)", "box AP50"] + (["mask AP"] if segm else []) + \
                ["scored RAWs", "pseudo-GT boxes", "dets >= thr", "PSNR vs ref (dB)"]
            table = []
            for n, r in rows.items():
                table.append([n, fmt(r.get("bbox_AP")), fmt(r.get("bbox_AP50"))]
                             + ([fmt(r.get("segm_AP"))] if segm else [])
                             + [f"{r['n_images_scored']}/{r['n_images']}", r["n_pseudo_gt"],
                                r["n_detections_above_threshold"],
                                "(reference)" if n == raws["reference"] else
                                fmt(raws["image_similarity"][n]["psnr_vs_reference"], 1)])
            out.append(md_table(header, table) + "\n")
    else:
        out.append(f"\nReal RAW files: skipped ({raws.get('reason', 'not run')}).\n")
    comp = raws.get("composited", {})
    if comp.get("status") == "ok":
        out.append(f"\n{h}# Real RAW files with objects composited in the RAW domain (true AP)\n\n"
                   f"{comp['n_objects']} procedural objects written into the same {len(raws['raw_files'])} real RAW "
                   "crops in each frame's own camera space (inverse simulator ISP, then its Bayer pattern); the "
                   "background, sensor data and rendering pipelines are real, the objects synthetic and noise-free. "
                   "True AP uses the composited masks; consistency is the label-free score on the same frames.\n\n")
        out.append(_true_table(comp["models"], raws.get("image_similarity", {}), "psnr_vs_reference",
                               "PSNR vs ref, no objects (dB)"))
    elif raws.get("status") == "ok":
        out.append(f"\nComposited objects: skipped ({comp.get('reason', 'not run')}).\n")
    if gt.get("status") == "ok":
        out.append(f"\n{h}# Annotated images through real pipelines (synthetic RAW, true AP)\n\n"
                   f"{gt['n_images']} images of `{gt['annotations']}` unprocessed to 12-bit RAW (random camera per "
                   "image) and rendered by each pipeline; 'original' is the clean sRGB image itself. True AP uses the "
                   "dataset's ground truth; consistency is the label-free score above, on the same images, to show "
                   "how well it tracks true AP.\n\n")
        out.append(_true_table(gt["models"], gt.get("image_similarity", {}), "psnr_vs_original",
                               "PSNR vs original (dB)"))
    return "".join(out)


def _true_table(models: dict, sims: dict, sim_key: str, sim_label: str) -> str:
    from .report import fmt, md_table

    out = []
    for tag, rows in models.items():
        out.append(f"**{tag}**\n\n")
        segm = any("segm_AP" in r["true"] for r in rows.values())
        header = ["rendering", "true box AP", "true box AP50"] + (["true mask AP"] if segm else []) + \
            ["consistency box AP", sim_label]
        table = []
        for n, r in rows.items():
            sim = sims.get(n, {}).get(sim_key)
            table.append([n, fmt(r["true"].get("bbox_AP")), fmt(r["true"].get("bbox_AP50"))]
                         + ([fmt(r["true"].get("segm_AP"))] if segm else [])
                         + [fmt(r["consistency"].get("bbox_AP")), fmt(sim, 1) if sim is not None else "-"])
        out.append(md_table(header, table) + "\n")
    return "".join(out)


def sample_sheet(samples: dict, names: Sequence[str], loaded: Sequence, path: Path, score: float) -> str | None:
    """Rows: RAW frames x models; columns: renderings with that model's detections (score >= ``score``)."""
    from isp_sim.sheet import contact_sheet

    from .report import draw_detections

    if not samples or not samples.get("images"):
        return None
    rows = []
    comp = samples.get("composited")
    for k, (im, rend) in enumerate(zip(samples["images"], samples["renders"])):
        for lm in loaded:
            cats = {c["id"]: c["name"] for c in _categories(lm.model)}
            variants = [("", rend, samples["dets"][lm.spec.tag])]
            if comp and lm.spec.tag in comp["dets"]:
                variants.append(("+obj ", comp["renders"][k], comp["dets"][lm.spec.tag]))
            for tag, rr, dets in variants:
                rows.append([(f"{im['file_name'][:14]} {tag}{n} {lm.spec.tag}",
                              draw_detections(rr[n], [d for d in dets[n] if d["image_id"] == im["id"]], cats, score,
                                              size=192)) for n in names])
    contact_sheet(rows, path, tile=192)
    return path.name


def run_real_camera(models: Sequence, out_dir: str | Path, cfg: RealCameraConfig | None = None,
                    ann_file: str | Path | None = None, images_dir: str | Path | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Both evaluations for ``models`` (ModelSpec / "NAME=PATH"); writes ``real_camera.json``, ``real_camera.md``
    and ``real_camera_samples.png`` into ``out_dir`` (atomically). ``ann_file``: annotated set for true AP."""
    from .grid import GridData, ModelSpec, load_model

    cfg = cfg or RealCameraConfig()
    cfg.rendering_names()  # validates every rendering name first
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = [m if isinstance(m, ModelSpec) else ModelSpec.parse(m) for m in models]
    data = GridData(ann_file, images_dir) if ann_file else None
    loaded = [load_model(s, data) for s in specs]
    t0 = time.perf_counter()
    res: dict[str, Any] = {"format": "evaluate-real-camera-v1", "config": dataclasses.asdict(cfg)}
    raws = evaluate_real_raws(loaded, cfg, progress, keep_images=cfg.sample_raws)
    samples = raws.pop("_samples", None)
    res["real_raw"] = raws
    res["gt_renderings"] = evaluate_gt_renderings(loaded, data, cfg, progress) if data is not None else \
        {"status": "skipped", "reason": "no annotated dataset given"}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["load_average"] = load_average()
    atomic_write_json(out_dir / "real_camera.json", res)
    png = sample_sheet(samples, raws.get("renderings", []), loaded, out_dir / "real_camera_samples.png",
                       cfg.pseudo_gt_score) if samples else None
    md = real_camera_markdown(res, level=1)
    if png:
        md += f"\n![real-camera samples]({png})\n"
    atomic_write_text(out_dir / "real_camera.md", md)
    return res


__all__ = ["RealCameraConfig", "render", "render_all", "synthetic_raw", "pseudo_ground_truth",
           "consistency_scores", "evaluate_real_raws", "evaluate_gt_renderings", "run_real_camera",
           "default_raw_dir", "list_raw_files", "build_pynet"]
