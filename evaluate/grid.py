"""The robustness grid: detectors x (clean + degradation x severity) on a COCO-format dataset.

For every condition the images are degraded on the fly with ``isp_sim`` (per-image seed
``image_seed(seed, f"{label}/{file_name}")``, the convention of ``python -m isp_sim degrade``) or read from a degraded
copy (``degraded_root/<label>/<file_name>``, written by that tool). Each model's detections on each condition are
cached as one JSON file per (model, condition), written atomically, and reused when the checkpoint (SHA-256), the
image list, the seed and the image source (for a degraded copy: its files' sizes and modification times) match, so
an interrupted run resumes where it stopped. ``results.json`` is written atomically at the end (never a partial
file), followed by the Markdown report and the plots (:mod:`evaluate.report`).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .common import EvaluateError, Timer, atomic_write_json, file_sha256, load_average, text_sha256
from .conditions import Condition, build_grid
from .metrics import RestorationAccumulator, coco_metrics, robustness_summary

log = logging.getLogger("evaluate.grid")
RESULTS_FORMAT = "evaluate-results-v1"
CACHE_FORMAT = "evaluate-detections-v1"


@dataclass
class GridConfig:
    """What to evaluate.

    degradations: specs or groups (:mod:`evaluate.conditions`), e.g. ``["default"]``, ``["noise", "jpeg:420"]``,
    ``["all", "composites"]``. severities: ``"1..5"``, ``"1,3,5"``. seed: base seed of the per-image degradation
    seeds. batch_size: images per forward pass. max_images: evaluate the first N images (0 = all). degraded_root:
    read a condition's images from ``degraded_root/<label>/`` when that folder exists (else on the fly).
    missing: "error" | "skip" for images missing on disk. score_threshold: detections below it are dropped before
    COCO evaluation (0 keeps everything the detector returns, the COCO convention). sample_images /
    sample_score: images in the sample grid and the score above which boxes are drawn. threads: torch CPU threads
    (0 = leave as is). restore_batch: images per DiR restoration call. roundtrip: also evaluate the clean images
    unprocessed to RAW and rendered back by the simulator's ISP without degradation (reference, not in mPC).
    """

    degradations: list[str] = field(default_factory=lambda: ["default"])
    severities: str = "1..5"
    seed: int = 0
    batch_size: int = 4
    max_images: int = 0
    degraded_root: str = ""
    missing: str = "error"
    score_threshold: float = 0.0
    sample_images: int = 3
    sample_score: float = 0.5
    threads: int = 0
    restore_batch: int = 8
    roundtrip: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.degradations, str):
            self.degradations = [self.degradations]
        self.degradations = list(self.degradations)
        self.severities = str(self.severities) if not isinstance(self.severities, (list, tuple)) else \
            ",".join(str(int(s)) for s in self.severities)
        if self.missing not in ("error", "skip"):
            raise EvaluateError(f"missing must be 'error' or 'skip', got {self.missing!r}")
        if self.batch_size < 1:
            raise EvaluateError("batch_size must be >= 1")
        if not 0.0 <= float(self.score_threshold) < 1.0:
            raise EvaluateError(f"score_threshold must be in [0, 1), got {self.score_threshold}")

    def conditions(self) -> list[Condition]:
        return build_grid(self.degradations, self.severities, self.roundtrip)


@dataclass
class ModelSpec:
    """A detector checkpoint and the tag it is reported under."""

    tag: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``NAME=PATH`` or ``PATH`` (tag: the parent folder for ``model_final.pt``/``last.pt``, else the stem)."""
        name, sep, path = str(text).partition("=")
        if not sep:
            name, path = "", text
        p = Path(path)
        if not name:
            name = p.parent.name if p.stem in ("model_final", "last", "model") and p.parent.name else p.stem
        return cls(name, p)


# --------------------------------------------------------------------------------------------------- data
class GridData:
    """A COCO-format dataset's ground truth and images, clean or degraded per :class:`Condition`."""

    def __init__(self, ann_file: str | Path, images_dir: str | Path | None = None, missing: str = "error",
                 max_images: int = 0, seed: int = 0, degraded_root: str | Path | None = None) -> None:
        from tasks.data.coco import CocoDetection

        ann_file = Path(ann_file)
        if not ann_file.is_file():
            raise EvaluateError(f"annotation file not found: {ann_file}")
        if images_dir is None:
            from isp_sim.dataset import guess_coco_image_root
            from isp_sim.errors import ISPInputError

            try:
                images_dir = guess_coco_image_root(ann_file, json.loads(ann_file.read_text()))
            except (ISPInputError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise EvaluateError(f"{ann_file}: cannot find its image folder ({e}); pass --images") from e
        try:
            self.ds = CocoDetection(images_dir, ann_file, missing=missing, with_masks=False)
        except FileNotFoundError as e:
            hint = " (use --missing skip to evaluate the images that exist)" if "is missing" in str(e) else ""
            raise EvaluateError(f"{e}{hint}") from e
        self.ann_file, self.images_dir = ann_file, Path(images_dir)
        self.coco = self.ds.coco
        self.ids = list(self.ds.ids[: max_images or None])
        if not self.ids:
            raise EvaluateError(f"{ann_file}: no images to evaluate in {self.images_dir}")
        self.files = [self.coco.imgs[i]["file_name"] for i in self.ids]
        self.missing = list(self.ds.missing)
        self.seed = int(seed)
        self.degraded_root = Path(degraded_root) if degraded_root else None
        self._pipelines: dict[str, Any] = {}

    def source(self, cond: Condition) -> str:
        """"clean", "on-the-fly" or "copy:<folder>" for ``cond``."""
        if cond.is_clean:
            return "clean"
        if self.degraded_root is not None and (self.degraded_root / cond.label).is_dir():
            return f"copy:{self.degraded_root / cond.label}"
        return "on-the-fly"

    def check_source(self, cond: Condition) -> None:
        src = self.source(cond)
        if src.startswith("copy:"):
            folder = Path(src[5:])
            missing = [f for f in self.files if not (folder / f).is_file()]
            if missing:
                raise EvaluateError(f"degraded copy {folder} lacks {len(missing)} of {len(self.files)} images, "
                                    f"e.g. {missing[:3]} (re-run `python -m isp_sim degrade` or remove the folder)")

    def clean(self, index: int) -> np.ndarray:
        from tasks.data.coco import read_rgb

        return read_rgb(self.images_dir / self.files[index])

    def image(self, cond: Condition, index: int) -> np.ndarray:
        """uint8 (H, W, 3) image ``index`` under ``cond``."""
        from isp_sim.io import read_image

        src = self.source(cond)
        if src == "clean":
            return self.clean(index)
        if src.startswith("copy:"):
            img = read_image(Path(src[5:]) / self.files[index])
            ref = self.coco.imgs[self.ids[index]]
            if "height" in ref and img.shape[:2] != (ref["height"], ref["width"]):
                raise EvaluateError(f"{Path(src[5:]) / self.files[index]} is {img.shape[1]}x{img.shape[0]}, the "
                                    f"annotations say {ref['width']}x{ref['height']}")
            return img
        from isp_sim.pipeline import degrade_np
        from isp_sim.seeding import image_seed

        if cond.label not in self._pipelines:
            self._pipelines[cond.label] = cond.pipeline()
        seed = image_seed(self.seed, cond.seed_key(self.files[index]))
        out, _ = degrade_np(self.clean(index), self._pipelines[cond.label], seed)
        return out

    def key(self, cond: Condition) -> dict:
        """What a cached prediction of ``cond`` depends on (besides the checkpoint): data, images, seed, source."""
        src = self.source(cond)
        k = {"ann_file": str(self.ann_file.resolve()), "ids_sha256": text_sha256(json.dumps(self.ids)),
             "n_images": len(self.ids), "condition": cond.label,
             "source": src if src in ("clean", "on-the-fly") else "copy"}
        if not cond.is_clean:
            k["seed"] = self.seed
        if src.startswith("copy:"):
            # a degraded copy rewritten since (another seed, another isp_sim version) must not reuse old predictions
            folder = Path(src[5:])
            stats = [(f, st.st_size, st.st_mtime_ns) for f in self.files for st in [(folder / f).stat()]]
            k["copy_sha256"] = text_sha256(json.dumps(stats))
        return k


# --------------------------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    sha256: str
    iou_types: tuple[str, ...]
    info: dict


def load_model(spec: ModelSpec, data: GridData | None = None) -> LoadedModel:
    """Load a detector checkpoint (clear errors for a missing file, a foreign file or a config mismatch) and check
    that its categories are the dataset's."""
    from tasks.checkpoint import CheckpointError, load_detector
    from tasks.coco_eval import has_masks

    if not spec.path.is_file():
        raise EvaluateError(f"model checkpoint not found: {spec.path}")
    try:
        model = load_detector(spec.path)
    except CheckpointError as e:
        raise EvaluateError(f"cannot load model '{spec.tag}': {e}") from e
    if data is not None:
        want = sorted(data.coco.getCatIds())
        have = sorted(model.label_to_cat_id.values())
        if have != want:
            raise EvaluateError(f"model '{spec.tag}' ({spec.path}) predicts category ids {have[:10]}, but "
                                f"{data.ann_file} has {want[:10]}: a checkpoint trained on other data")
    cfg = model.config
    info = {"checkpoint": str(spec.path), "kind": cfg.kind, "backbone": cfg.backbone,
            "class_names": list(model.class_names), "step": int(getattr(model, "checkpoint_step", 0)),
            "min_size": cfg.min_size, "max_size": cfg.max_size}
    ious = ("bbox", "segm") if has_masks(model) else ("bbox",)
    return LoadedModel(spec, model, file_sha256(spec.path), ious, info)


def load_restorer(path: str | Path):
    """A DiR restoration model (``dir.checkpoint.load_dirnet``) with clear errors."""
    from dir.checkpoint import DiRCheckpointError, load_dirnet

    p = Path(path)
    if not p.is_file():
        raise EvaluateError(f"DiR restoration checkpoint not found: {p}")
    try:
        return load_dirnet(p)
    except DiRCheckpointError as e:
        raise EvaluateError(f"cannot load the DiR restoration model: {e}") from e


@torch.no_grad()
def restore_images(net, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """DiR restoration of uint8 (H, W, 3) images (same size) -> uint8."""
    x = torch.stack([torch.from_numpy(np.array(im, copy=True)).permute(2, 0, 1) for im in images]).float() / 255
    y = net.restore(x)
    return [(t.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for t in y]


# --------------------------------------------------------------------------------------------------- cache
def cache_path(out_dir: Path, tag: str, cond: Condition) -> Path:
    return out_dir / "predictions" / tag / f"{cond.label}.json"


def _read_cache(path: Path, key: dict, entry: str = "detections") -> Any:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        log.warning("ignoring unreadable prediction cache %s", path)
        return None
    if not isinstance(obj, dict) or obj.get("format") != CACHE_FORMAT or obj.get("key") != key:
        log.info("prediction cache %s is stale (different checkpoint, images, seed or source): recomputing", path)
        return None
    return obj.get(entry)


# --------------------------------------------------------------------------------------------------- the grid
def run_grid(models: Sequence[ModelSpec | str], ann_file: str | Path, out_dir: str | Path,
             cfg: GridConfig | None = None, images_dir: str | Path | None = None,
             restorer: str | Path | None = None, progress: bool = True, report: bool = True) -> dict[str, Any]:
    """Evaluate ``models`` on the clean set and every condition of ``cfg``; write ``out_dir/results.json``,
    the report and the plots. Returns the results dict (see :mod:`evaluate.report` for its layout)."""
    cfg = cfg or GridConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    specs = [m if isinstance(m, ModelSpec) else ModelSpec.parse(m) for m in models]
    if not specs:
        raise EvaluateError("no model given")
    tags = [s.tag for s in specs]
    if len(set(tags)) != len(tags):
        raise EvaluateError(f"model tags must be unique, got {tags}; name them with NAME=PATH")
    conditions = cfg.conditions()  # validates degradation names before any work
    with timer("load"):
        data = GridData(ann_file, images_dir, cfg.missing, cfg.max_images, cfg.seed, cfg.degraded_root)
        loaded = [load_model(s, data) for s in specs]
        net = load_restorer(restorer) if restorer else None
        restorer_sha = file_sha256(restorer) if restorer else None
    for c in conditions:
        data.check_source(c)
    log.info("grid: %d models x %d conditions on %d images of %s", len(loaded), len(conditions), len(data.ids),
             data.ann_file)

    per_model: dict[str, dict] = {lm.spec.tag: {"per_condition": {}, "seconds": {}, "cached": []}
                                  for lm in loaded}
    dets_all: dict[str, dict[str, list]] = {lm.spec.tag: {} for lm in loaded}
    restor = RestorationAccumulator()
    rest_cached: dict[str, dict] = {}
    bar = tqdm(conditions, desc="grid", disable=not progress, dynamic_ncols=True)
    for cond in bar:
        bar.set_postfix_str(cond.label)
        src = data.source(cond)
        base_key = {**data.key(cond), "score_threshold": float(cfg.score_threshold)}
        todo = []
        for lm in loaded:
            key = {**base_key, "checkpoint_sha256": lm.sha256}
            dets = _read_cache(cache_path(out_dir, lm.spec.tag, cond), key)
            if dets is None:
                todo.append((lm, key))
            else:
                dets_all[lm.spec.tag][cond.label] = dets
                per_model[lm.spec.tag]["cached"].append(cond.label)
        rkey = {**base_key, "restorer_sha256": restorer_sha} if net is not None else None
        rpath = out_dir / "predictions" / "_restoration" / f"{cond.label}.json"
        if net is not None:
            r = _read_cache(rpath, rkey, "summary")
            if r is not None:
                rest_cached[cond.label] = r
        need_restore = net is not None and cond.label not in rest_cached
        if todo or need_restore:
            _run_condition(cond, data, todo, net if need_restore else None, cfg, restor, dets_all, per_model)
            for lm, key in todo:
                atomic_write_json(cache_path(out_dir, lm.spec.tag, cond),
                                  {"format": CACHE_FORMAT, "key": key, "model": lm.spec.tag,
                                   "seconds": per_model[lm.spec.tag]["seconds"].get(cond.label),
                                   "detections": dets_all[lm.spec.tag][cond.label]}, indent=None)
            if need_restore:
                rest_cached[cond.label] = restor.summary(cond.label)
                atomic_write_json(rpath, {"format": CACHE_FORMAT, "key": rkey, "summary": rest_cached[cond.label]})
        for lm in loaded:
            per_model[lm.spec.tag]["per_condition"][cond.label] = coco_metrics(
                data.coco, dets_all[lm.spec.tag][cond.label], data.ids, lm.iou_types,
                where=f"{lm.spec.tag}/{cond.label}")
        log.info("%s (%s): %s", cond.label, src, "; ".join(
            f"{t} box AP {per_model[t]['per_condition'][cond.label]['bbox_AP']:.3f}" for t in tags))
    bar.close()

    results: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "data": {"annotations": str(data.ann_file), "images": str(data.images_dir), "n_images": len(data.ids),
                 "missing_images": data.missing, "degraded_root": cfg.degraded_root or None,
                 "sources": {c.label: data.source(c) for c in conditions}},
        "config": dataclasses.asdict(cfg),
        "conditions": [c.to_dict() for c in conditions],
        "models": {},
        "restoration": None,
    }
    for lm in loaded:
        pm = per_model[lm.spec.tag]
        results["models"][lm.spec.tag] = {**lm.info, "sha256": lm.sha256, "iou_types": list(lm.iou_types),
                                          "per_condition": pm["per_condition"],
                                          "summary": robustness_summary(pm["per_condition"], conditions),
                                          "predict_seconds": pm["seconds"], "cached_conditions": pm["cached"]}
    results["warnings"] = empty_prediction_warnings(per_model, conditions, cfg.score_threshold)
    for w in results["warnings"]:
        log.warning(w)
    if net is not None:
        results["restoration"] = {"model": str(restorer), "per_condition": rest_cached,
                                  "note": "PSNR/SSIM against the clean image of the degraded input and of DiR's "
                                          "restoration R(r+(x)); PSNR of identical images capped at 100 dB"}
    results["timing"] = {**{k: round(v, 2) for k, v in timer.sections.items()}, "grid_total_s":
                         round(timer.total, 2), "load_average": load_average()}
    atomic_write_json(out_dir / "results.json", results)
    log.info("wrote %s", out_dir / "results.json")
    if report:
        from .report import sample_grid, write_report

        samples = sample_grid(data, loaded, conditions, dets_all, out_dir / "samples.png", cfg)
        write_report(results, out_dir, sample_png=samples)
    return results


def empty_prediction_warnings(per_model: dict, conditions: Sequence[Condition], score_threshold: float = 0.0
                              ) -> list[str]:
    """One message per model that returned no detection at all on some conditions (AP is 0 there, which is a
    result, not an error; but a detector that finds nothing anywhere is almost always a broken checkpoint)."""
    out = []
    for tag, pm in per_model.items():
        labels = [c.label for c in conditions if c.label in pm["per_condition"]]
        empty = [lab for lab in labels if not pm["per_condition"][lab].get("n_detections")]
        if not empty:
            continue
        msg = (f"model '{tag}' returned no detections on {len(empty)} of {len(labels)} conditions "
               f"({', '.join(empty[:8])}{', ...' if len(empty) > 8 else ''}): AP is 0 there")
        if len(empty) == len(labels):
            msg += (" - it detects nothing on any condition, clean included: check the checkpoint (untrained or "
                    "collapsed detector)" + (f" and --score-thr {score_threshold}" if score_threshold > 0 else ""))
        out.append(msg)
    return out


def _run_condition(cond: Condition, data: GridData, todo: list, net, cfg: GridConfig,
                   restor: RestorationAccumulator, dets_all: dict, per_model: dict) -> None:
    """Predict (and restore) every image of ``cond`` in chunks, so memory does not grow with the dataset."""
    from tasks.coco_eval import predict

    chunk = max(cfg.batch_size, cfg.restore_batch) * 4
    for lm, _ in todo:
        dets_all[lm.spec.tag][cond.label] = []
        per_model[lm.spec.tag]["seconds"][cond.label] = 0.0
    for start in range(0, len(data.ids), chunk):
        idx = list(range(start, min(start + chunk, len(data.ids))))
        imgs = [data.image(cond, i) for i in idx]
        ids = [data.ids[i] for i in idx]
        for lm, _ in todo:
            t = time.perf_counter()
            dets = predict(lm.model, imgs, ids, score_threshold=cfg.score_threshold, batch_size=cfg.batch_size)
            dets_all[lm.spec.tag][cond.label] += dets
            per_model[lm.spec.tag]["seconds"][cond.label] += time.perf_counter() - t
        if net is not None:
            clean = [data.clean(i) for i in idx] if not cond.is_clean else imgs
            by_shape: dict[tuple, list[int]] = {}
            for j, im in enumerate(imgs):
                by_shape.setdefault(im.shape, []).append(j)
            restored: dict[int, np.ndarray] = {}
            for js in by_shape.values():
                for b in range(0, len(js), cfg.restore_batch):
                    part = js[b:b + cfg.restore_batch]
                    for j, r in zip(part, restore_images(net, [imgs[j] for j in part])):
                        restored[j] = r
            for j in range(len(imgs)):
                restor.add(cond.label, clean[j], imgs[j], restored[j])
    for lm, _ in todo:
        per_model[lm.spec.tag]["seconds"][cond.label] = round(per_model[lm.spec.tag]["seconds"][cond.label], 3)
