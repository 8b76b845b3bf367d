"""``python -m evaluate demo``: the end-to-end main job on the embedded data, on CPU.

1. **Data** - the procedural instance-segmentation dataset of :mod:`tasks.data.procedural` (shapes on real
   scikit-image photographs; no download).
2. **Degraded sets** - ``isp_sim``'s dataset tool writes degraded copies of the validation split (every default
   degradation x severity); held-out variants (``noise:eld``, ...) that the tool cannot name are degraded on the fly
   with the same per-image seeds.
3. **DiR pretraining** - ``dir``'s MMI, DfR, alignment and restoration stages, briefly, on crops of the
   procedural training images (``dirnet.pt``).
4. **Detectors** - a ResNet-18-FPN Mask R-CNN baseline and a DiR-FPN Mask R-CNN initialised from (3), trained on the
   clean training split with ``tasks``' training code and the same schedule.
5. **Robustness grid** - both detectors on the clean set and every degradation x severity (:mod:`evaluate.grid`),
   DiR restoration PSNR/SSIM, plots, sample predictions.
6. **Real-camera outputs** - real RAW files and synthetic RAWs of the annotated validation images rendered by
   LibRaw, the simulator's ISP and PyNET (:mod:`evaluate.real_camera`).
7. **Report** - ``report.md`` with the configuration, the measured timings and every number, whatever it is.

Every stage resumes from its outputs, so an interrupted demo continues where it stopped. The default settings are
``configs/evaluate/demo.yaml``; ``--quick`` uses ``configs/evaluate/demo_quick.yaml`` (both are also built in).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from isp_sim.config import build_section, check_sections, read_yaml_mapping

from .common import EvaluateError, Timer, atomic_write_json, atomic_write_text, load_average, setup_logging
from .grid import GridConfig, ModelSpec, run_grid
from .real_camera import RealCameraConfig, real_camera_markdown, run_real_camera

log = logging.getLogger("evaluate.demo")


@dataclass
class DemoData:
    """The procedural dataset: image counts, square image side (pixels), seed."""

    n_train: int = 200
    n_val: int = 48
    image_size: int = 128
    seed: int = 0


@dataclass
class DemoDiR:
    """DiR pretraining (``dir`` stages mmi, dfr, align, restore). ``enabled: false`` -> the DiR detector starts from
    a randomly initialised DiRNet (and there is no restoration model)."""

    enabled: bool = True
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    patch_size: int = 64
    batch_size: int = 8
    mmi_steps: int = 40
    dfr_steps: int = 40
    align_steps: int = 40
    restore_steps: int = 20
    lr: float = 0.002


@dataclass
class DemoPyNET:
    """A small PyNET learned ISP trained for the real-camera renderings (``pynet`` level-wise training on synthetic
    RAW/sRGB pairs unprocessed from the scikit-image photos; the PyTorch-release topology at ``width``). Its
    checkpoint replaces ``real.pynet_checkpoint`` when that is empty. ``enabled: false`` -> an untrained PyNET is
    rendered instead (a lower bound, labelled as such). ``steps``: steps per level, coarse (5) to fine (0)."""

    enabled: bool = True
    width: float = 0.25
    patch: int = 32
    batch_size: int = 8
    steps: list[int] = field(default_factory=lambda: [10, 10, 10, 15, 100, 80])
    lr: float = 0.001

    def __post_init__(self) -> None:
        if len(self.steps) != 6 or any(int(n) < 0 for n in self.steps):
            raise ValueError(f"pynet.steps must list 6 step counts >= 0 (levels 5..0), got {self.steps}")
        if self.patch < 32 or self.patch % 16:
            raise ValueError(f"pynet.patch must be a multiple of 16 and >= 32 (level 5 sees patch / 16 pixels), "
                             f"got {self.patch}")


def _default_train_degradation() -> dict:
    return {"composite": "seen", "prob_clean": 0.5, "per_epoch": True, "seed": 0}


@dataclass
class DemoDetector:
    """The detectors' shared training schedule and head sizes (tasks.config sections model/optim/run).

    Both the baseline (ResNet-18-FPN) and the DiR detector are trained on the same images with the same on-the-fly
    ``train_degradation`` (tasks.data.coco.DegradationConfig; default: isp_sim's CompositeISP "seen" chains on half
    of the images, fresh draws every epoch: DiR's training distribution; ``{}`` = clean images only).
    ``clean_baseline``: also train a ResNet-18-FPN on clean images only, to show what the degradation augmentation
    itself buys. ``optimizer``: "adamw" or "sgd" (AdamW learns faster from scratch at this budget: measured box AP
    0.081 vs 0.060 for SGD lr 0.02 after 300 steps, 0.092 with AdamW lr 2e-3)."""

    kind: str = "mask"
    max_steps: int = 1000
    batch_size: int = 4
    optimizer: str = "adamw"
    lr: float = 0.002
    warmup_steps: int = 50
    fpn_channels: int = 64
    box_head_dim: int = 256
    mask_head_channels: int = 32
    anchor_sizes: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])
    resnet_width: int = 16
    detections_per_image: int = 20
    dir_train_encoder: bool = True
    dir_train_pilot: bool = True
    train_degradation: dict = field(default_factory=_default_train_degradation)
    clean_baseline: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")

    def models(self) -> list[tuple[str, str, dict]]:
        """(tag, backbone, train_degradation) of every detector the demo trains, in order."""
        out = [("baseline-resnet", "resnet", dict(self.train_degradation)),
               ("dir", "dir", dict(self.train_degradation))]
        if self.clean_baseline and self.train_degradation:
            out.append(("resnet-clean-trained", "resnet", {}))
        return out


@dataclass
class DemoConfig:
    out_dir: str = "outputs/evaluate_demo"
    seed: int = 0
    workers: int = 0  # detector trainings run in parallel processes (0 = CPU count // threads)
    threads: int = 1  # one intra-op thread: measured as fast on 2 free cores (0.23 vs 0.21 s/step), and 5-10x faster when the machine is shared
    data: DemoData = field(default_factory=DemoData)
    dir: DemoDiR = field(default_factory=DemoDiR)
    pynet: DemoPyNET = field(default_factory=DemoPyNET)
    detector: DemoDetector = field(default_factory=DemoDetector)
    grid: GridConfig = field(default_factory=lambda: GridConfig(degradations=["all"], severities="1..5"))
    real: RealCameraConfig = field(default_factory=lambda: RealCameraConfig(max_side=384, gt_images=12))
    write_degraded_copies: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def quick_config() -> DemoConfig:
    """The ``--quick`` preset (= configs/evaluate/demo_quick.yaml): a first look in a few minutes."""
    return DemoConfig(
        out_dir="outputs/evaluate_demo_quick",
        data=DemoData(n_train=128, n_val=16, image_size=96),
        dir=DemoDiR(mmi_steps=10, dfr_steps=10, align_steps=10, restore_steps=5),
        pynet=DemoPyNET(steps=[5, 5, 5, 5, 40, 30]),
        detector=DemoDetector(max_steps=300, warmup_steps=30, anchor_sizes=[12, 24, 48, 96, 192],
                              clean_baseline=False),
        grid=GridConfig(degradations=["default"], severities="1..5", sample_images=2),
        real=RealCameraConfig(max_side=256, gt_images=4, libraw=["AHD", "LINEAR", "VNG", "DCB", "AHD+autowb"],
                              simulator=["menon", "bilinear"], sample_raws=2))


_SECTIONS = {"data": DemoData, "dir": DemoDiR, "pynet": DemoPyNET, "detector": DemoDetector, "grid": GridConfig,
             "real": RealCameraConfig}


def config_from_dict(d: dict | None, where: str = "config") -> DemoConfig:
    """Validate a YAML-loaded dict (unknown keys are errors naming the section)."""
    d = dict(d or {})
    top = {f.name for f in dataclasses.fields(DemoConfig)}
    check_sections(d, top, where, EvaluateError)
    kw: dict[str, Any] = {k: build_section(_SECTIONS[k], v, f"{where}: section '{k}'", EvaluateError)
                          if k in _SECTIONS else v for k, v in d.items()}
    return DemoConfig(**kw)


def load_config(path: str | Path | None = None, quick: bool = False) -> DemoConfig:
    """The built-in preset (``quick`` or default), or a YAML file read with ``yaml.safe_load``."""
    if path is None:
        return quick_config() if quick else DemoConfig()
    try:
        d = read_yaml_mapping(path, EvaluateError)
    except FileNotFoundError as e:
        raise EvaluateError(f"demo config not found: {path}") from e
    return config_from_dict(d, str(path))


# --------------------------------------------------------------------------------------------------- stages
_RUN_NAMES = {"baseline-resnet": "resnet", "dir": "dir"}  # folders under models/ (kept from earlier versions)


def make_data(cfg: DemoConfig, out: Path, progress: bool = True) -> dict:
    from tasks.data.procedural import make_dataset

    d = cfg.data
    return make_dataset(out / "data" / "procedural", n_train=d.n_train, n_val=d.n_val, seed=d.seed,
                        image_size=d.image_size, progress=progress)


def write_degraded(cfg: DemoConfig, out: Path, paths: dict, progress: bool) -> dict:
    """``isp_sim``'s dataset tool on the validation split, for the specs it can name (default variants)."""
    from isp_sim.dataset import degrade_dataset

    from .conditions import expand_specs, parse_severities

    names = [s for s in expand_specs(cfg.grid.degradations) if ":" not in s]
    if not names:
        return {}
    return degrade_dataset(paths["val"]["annotations"], out / "degraded", names,
                           parse_severities(cfg.grid.severities), cfg.grid.seed, workers=1,
                           image_root=paths["val"]["images"], progress=progress)


def pretrain_dir(cfg: DemoConfig, out: Path, paths: dict, progress: bool) -> Path | None:
    """The four DiR stages on the procedural training images; returns ``dirnet.pt`` (None when disabled)."""
    if not cfg.dir.enabled:
        return None
    from dir.config import config_from_dict as dir_config
    from dir.train import output_path, train_stage

    c = cfg.dir
    steps = {"mmi": c.mmi_steps, "dfr": c.dfr_steps, "align": c.align_steps, "restore": c.restore_steps}
    stage = {s: {"steps": int(n), "batch_size": c.batch_size, "lr": c.lr, "log_every": 5,
                 "ckpt_every": max(5, int(n) // 2 or 1)} for s, n in steps.items()}
    dcfg = dir_config({
        "run": {"out_dir": str(out / "dir"), "seed": cfg.seed, "threads": cfg.threads, "device": "cpu"},
        "model": {"channels": list(c.channels)},
        "data": {"source": paths["train"]["images"], "patch_size": c.patch_size,
                 "epoch_size": max(64, c.batch_size * max(steps.values())), "views": 2, "split": "seen",
                 "max_side": 0},
        **stage,
    })
    for s in ("mmi", "dfr", "align", "restore"):
        train_stage(dcfg, s, progress=progress)
    return output_path(dcfg, "restore")


def train_pynet(cfg: DemoConfig, out: Path, progress: bool) -> tuple[Path | None, dict]:
    """Level-wise PyNET training (resumes; finished levels are skipped); returns (level-0 weights, summary)."""
    if not cfg.pynet.enabled or cfg.real.pynet_checkpoint or not cfg.real.pynet:
        return None, {}
    from pynet.train import config_from_dict as pynet_config
    from pynet.train import train as pynet_train

    c = cfg.pynet
    sched = [{"level": lvl, "steps": int(n), "batch_size": c.batch_size, "lr": c.lr if lvl else c.lr / 2}
             for lvl, n in zip(range(5, -1, -1), c.steps) if int(n) > 0]
    if not sched or sched[-1]["level"] != 0:
        raise EvaluateError("pynet.steps: level 0 (the full-resolution output) needs at least one step")
    pcfg = pynet_config({
        "model": {"variant": "pytorch", "width": c.width, "init_seed": cfg.seed},
        "data": {"kind": "embedded", "patch": c.patch, "train_length": 4000, "camera": "random", "noise": True,
                 "iso_range": [100, 1600], "seed": cfg.seed, "limit_val": 64},
        "schedule": sched, "out_dir": str(out / "pynet"), "seed": cfg.seed, "device": "cpu",
        "threads": cfg.threads or None, "ckpt_every": 50, "log_every": 10, "val_batch_size": 16,
        "progress": progress}, "demo pynet")
    summary = pynet_train(pcfg)
    saved = out / "pynet" / "demo_pynet_summary.json"
    if summary.get("levels", {}).get(0, {}).get("skipped") and saved.is_file():
        summary = json.loads(saved.read_text())      # resumed: the numbers measured when it was trained
    else:
        atomic_write_json(saved, summary)
    return out / "pynet" / "pynet_level_0.pth", summary


def detector_config(cfg: DemoConfig, out: Path, backbone: str, dir_ckpt: Path | None,
                    train_degradation: dict | None = None, run_name: str | None = None) -> dict:
    """The tasks experiment config (a plain dict, also written as YAML next to the run); ``train_degradation``
    defaults to ``cfg.detector.train_degradation``, ``run_name`` (the folder under ``models/``) to ``backbone``."""
    dt, d = cfg.detector, cfg.data
    model: dict[str, Any] = {
        "kind": dt.kind, "backbone": backbone, "num_classes": 0, "min_size": d.image_size, "max_size": d.image_size,
        "fpn_channels": dt.fpn_channels, "box_head_dim": dt.box_head_dim, "mask_head_channels": dt.mask_head_channels,
        "anchor_sizes": list(dt.anchor_sizes),
        "detector_kwargs": {"rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 200,
                            "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100,
                            "box_batch_size_per_image": 64, "box_detections_per_img": dt.detections_per_image}}
    if backbone == "resnet":
        model.update(resnet_depth=18, resnet_width=dt.resnet_width, resnet_norm="gn")
    else:
        model.update(dir_checkpoint=str(dir_ckpt) if dir_ckpt else "",
                     dir_model={} if dir_ckpt else {"channels": list(cfg.dir.channels)},
                     train_alignment=True, train_pilot=dt.dir_train_pilot, train_encoder=dt.dir_train_encoder)
    return {
        "model": model,
        "data": {"kind": "procedural", "root": str(out / "data" / "procedural"), "n_train": d.n_train,
                 "n_val": d.n_val, "image_size": d.image_size, "seed": d.seed, "hflip": True,
                 "train_degradation": dict(dt.train_degradation if train_degradation is None
                                           else train_degradation)},
        "optim": {"name": dt.optimizer, "lr": dt.lr, "momentum": 0.9, "weight_decay": 1e-4,
                  "warmup_steps": dt.warmup_steps, "schedule": "cosine", "clip_grad": 10.0},
        "run": {"out_dir": str(out / "models" / (run_name or backbone)), "max_steps": dt.max_steps, "batch_size": dt.batch_size,
                "log_every": 10, "eval_every": 0, "ckpt_every": max(10, dt.max_steps // 4), "seed": cfg.seed,
                "threads": cfg.threads, "device": "cpu", "final_eval": False},
    }


def train_detector(cfg: DemoConfig, out: Path, backbone: str, dir_ckpt: Path | None, progress: bool,
                   resumed: list | None = None, train_degradation: dict | None = None,
                   run_name: str | None = None) -> Path:
    from tasks.config import config_from_dict as tasks_config
    from tasks.train import train

    d = detector_config(cfg, out, backbone, dir_ckpt, train_degradation, run_name)
    d["run"]["progress"] = progress
    run_dir = Path(d["run"]["out_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "demo_config.yaml", yaml.safe_dump(d, sort_keys=False))
    final = run_dir / "model_final.pt"
    if final.is_file() and _done_steps(run_dir) >= cfg.detector.max_steps:
        log.info("%s detector already trained: %s", backbone, final)
        if resumed is not None:
            resumed.append(f"{run_name or backbone} detector training (already complete in {run_dir})")
        return final
    train(tasks_config(d), resume=True)
    return final


def _train_detector_job(job: tuple) -> tuple[str, list[str], float]:
    """One detector's training in a worker process (arguments are plain data so that they pickle)."""
    cfg_dict, out, backbone, dir_ckpt, degr, run_name = job
    cfg = config_from_dict(cfg_dict, "demo config (worker)")
    torch.set_num_threads(max(1, cfg.threads))
    resumed: list[str] = []
    t = time.perf_counter()
    ckpt = train_detector(cfg, Path(out), backbone, Path(dir_ckpt) if dir_ckpt else None, False, resumed, degr,
                          run_name)
    return str(ckpt), resumed, time.perf_counter() - t


def _train_pynet_job(job: tuple) -> tuple[str, dict]:
    cfg_dict, out = job
    cfg = config_from_dict(cfg_dict, "demo config (worker)")
    torch.set_num_threads(max(1, cfg.threads))
    ckpt, summary = train_pynet(cfg, Path(out), False)
    return (str(ckpt) if ckpt else ""), summary


def train_models(cfg: DemoConfig, out: Path, dir_ckpt: Path | None, progress: bool, resumed: list,
                 timer: Timer) -> tuple[list[tuple[str, Path]], Path | None, dict]:
    """Train every detector of ``cfg.detector.models()`` and the PyNET of ``cfg.pynet``: one after the other, or
    in ``cfg.workers`` spawned processes (``0``: CPU count // ``cfg.threads``). Every training is seeded and
    single-process, so the results do not depend on the scheduling. Returns (detector checkpoints by tag, PyNET
    level-0 weights or None, PyNET summary)."""
    jobs = [(tag, backbone, degr, _RUN_NAMES.get(tag, tag)) for tag, backbone, degr in cfg.detector.models()]
    workers = cfg.workers or max(1, (os.cpu_count() or 1) // max(1, cfg.threads))
    workers = min(workers, len(jobs) + 1)
    ckpts: list[tuple[str, Path]] = []
    if workers <= 1:
        for k, (tag, backbone, degr, name) in enumerate(jobs):
            with timer(f"4{'abcdefgh'[k]} train {tag}"):
                ckpts.append((tag, train_detector(cfg, out, backbone, dir_ckpt if backbone == "dir" else None,
                                                  progress, resumed, degr, run_name=name)))
        with timer("4p train PyNET"):
            pynet_ckpt, pynet_summary = train_pynet(cfg, out, progress)
        return ckpts, pynet_ckpt, pynet_summary
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    log.info("training %d detectors and PyNET in %d processes (%d thread(s) each)", len(jobs), workers,
             max(1, cfg.threads))
    with timer(f"4 train {len(jobs)} detectors + PyNET ({workers} processes in parallel)"):
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            t0 = time.perf_counter()
            futs = [ex.submit(_train_detector_job, (cfg.to_dict(), str(out), backbone,
                                                    str(dir_ckpt) if backbone == "dir" and dir_ckpt else "",
                                                    degr, name))
                    for tag, backbone, degr, name in jobs]
            pfut = ex.submit(_train_pynet_job, (cfg.to_dict(), str(out)))
            for (tag, *_), fut in zip(jobs, tqdm(futs, desc="detectors", disable=not progress, leave=False)):
                ckpt, res, secs = fut.result()
                resumed += res
                log.info("[time] %s trained in %.1f s (done %.1f s after the start)", tag, secs,
                         time.perf_counter() - t0)
                ckpts.append((tag, Path(ckpt)))
            pckpt, pynet_summary = pfut.result()
    return ckpts, (Path(pckpt) if pckpt else None), pynet_summary


def _done_steps(run_dir: Path) -> int:
    try:
        ck = torch.load(run_dir / "model_final.pt", map_location="cpu", weights_only=True)
        return int(ck.get("step", 0))
    except Exception:  # noqa: BLE001 - a missing or unreadable file simply means "not done"
        return -1


def _pynet_validation(summary: dict) -> dict:
    """Level-0 validation PSNR / MS-SSIM of the untrained and the trained PyNET, from ``pynet.train``'s summary
    (empty when PyNET was not trained in this call, e.g. every level was already done)."""
    if not summary:
        return {}
    levels = summary.get("levels", {})
    lv0 = levels.get(0, levels.get("0", {}))                 # int keys in memory, str keys once read from JSON
    return {"untrained": {k: summary.get("initial", {}).get(k) for k in ("psnr", "ms_ssim")},
            "trained": {k: lv0.get(k) for k in ("psnr", "ms_ssim")}}


def training_summary(run_dir: Path) -> dict:
    """Steps, last logged losses and measured seconds per step from tasks' ``log.jsonl``."""
    p = run_dir / "log.jsonl"
    if not p.is_file():
        return {}
    rows = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
    tr = [r for r in rows if r.get("type") == "train"]
    params = next((r for r in rows if r.get("type") == "params"), {})
    if not tr:
        return {"params": params}
    return {"steps": tr[-1]["step"], "final_loss": tr[-1].get("loss"), "first_loss": tr[0].get("loss"),
            "mean_sec_per_step": sum(r.get("sec_per_step", 0) for r in tr) / len(tr),
            "params_total": params.get("total"), "params_trainable": params.get("trainable")}


# --------------------------------------------------------------------------------------------------- the demo
def run_demo(cfg: DemoConfig | None = None, out_dir: str | Path | None = None, progress: bool = True,
             quick: bool = False) -> dict:
    """Run every stage (resuming from existing outputs); returns the summary written to ``demo_summary.json``."""
    cfg = cfg or (quick_config() if quick else DemoConfig())
    out = Path(out_dir or cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging(out, "demo.log")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    timer = Timer()
    load_start = load_average()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    atomic_write_text(out / "demo_config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log.info("demo -> %s (threads %d, load average %s)", out, torch.get_num_threads(), load_start)

    with timer("1 data"):
        paths = make_data(cfg, out, progress)
    degraded = {}
    if cfg.write_degraded_copies:
        with timer("2 degraded copies (isp_sim degrade)"):
            degraded = write_degraded(cfg, out, paths, progress)
    with timer("3 DiR pretraining"):
        dir_ckpt = pretrain_dir(cfg, out, paths, progress)
    resumed: list[str] = []
    trained, pynet_ckpt, pynet_summary = train_models(cfg, out, dir_ckpt, progress, resumed, timer)
    models = [ModelSpec(tag, ckpt) for tag, ckpt in trained]
    run_dirs = {tag: ckpt.parent for tag, ckpt in trained}
    grid_cfg = dataclasses.replace(cfg.grid, degraded_root=str(out / "degraded") if degraded else "",
                                   threads=cfg.threads)
    with timer("5 robustness grid"):
        results = run_grid(models, paths["val"]["annotations"], out / "grid", grid_cfg, paths["val"]["images"],
                           restorer=dir_ckpt, progress=progress)
    real_cfg = dataclasses.replace(cfg.real, pynet_checkpoint=str(pynet_ckpt)) if pynet_ckpt else cfg.real
    with timer("6 real-camera outputs"):
        real = run_real_camera(models, out / "real_camera", real_cfg, paths["val"]["annotations"],
                               paths["val"]["images"], progress)
    timing = {k: round(v, 1) for k, v in timer.sections.items()}
    timing["total"] = round(timer.total, 1)
    env = {"started": started, "finished": datetime.datetime.now().isoformat(timespec="seconds"),
           "load_average_start": load_start, "load_average_end": load_average(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
           "machine": platform.machine()}
    summary = {"format": "evaluate-demo-v1", "config": cfg.to_dict(), "timing_s": timing, "environment": env,
               "training": {t: training_summary(d) for t, d in run_dirs.items()},
               "dir_checkpoint": str(dir_ckpt) if dir_ckpt else None,
               "pynet": {"checkpoint": str(pynet_ckpt) if pynet_ckpt else (cfg.real.pynet_checkpoint or None),
                         "validation": _pynet_validation(pynet_summary)},
               "headline": {t: {"bbox": {k: m["summary"][k].get("bbox_AP") for k in ("P", "mPC", "rPC")},
                                "segm": {k: m["summary"][k].get("segm_AP") for k in ("P", "mPC", "rPC")}}
                            for t, m in results["models"].items()},
               "degraded_copies": degraded, "resumed": resumed + [
                   f"{t}: {len(m['cached_conditions'])} grid conditions read from the prediction cache"
                   for t, m in results["models"].items() if m["cached_conditions"]]}
    atomic_write_json(out / "demo_summary.json", summary)
    atomic_write_text(out / "report.md", demo_markdown(summary, results, real))
    log.info("demo finished in %.1f s -> %s", timer.total, out / "report.md")
    return summary


def train_data_text(cfg: dict) -> str:
    """How the demo's detectors see their training data (``cfg``: ``DemoConfig.to_dict()``), for the report."""
    degr, d = cfg["detector"]["train_degradation"], cfg["data"]
    split = f"procedural training split ({d['n_train']} images, {d['image_size']} px)"
    if not degr:
        return f"the clean {split}"
    what = (f"isp_sim CompositeISP('{degr['composite']}') chains" if degr.get("composite") else
            f"isp_sim {degr.get('names')} at severity {degr.get('severity')}")
    draws = "fresh draws every epoch" if degr.get("per_epoch") else "one fixed draw per image"
    return (f"the {split} degraded on the fly by {what} on {100 * (1 - degr.get('prob_clean', 0)):.0f} % of the "
            f"images ({draws})")


def demo_markdown(summary: dict, results: dict, real: dict) -> str:
    from .report import HEADLINE_HEADER, fmt, grid_markdown, headline_rows, md_table

    cfg = summary["config"]
    t = summary["timing_s"]
    env = summary["environment"]
    out = ["# isp-robust demo: detectors under camera-ISP degradations and real camera pipelines\n\n",
           "Every number below was measured by this demo in this output folder (stages resumed from earlier "
           "invocations are listed under 'Measured time'); nothing is copied from elsewhere. The dataset is small and "
           f"the detectors are trained for only {cfg['detector']['max_steps']} steps on CPU, so absolute AP is low "
           f"and differences of a few points are within noise ({results['data']['n_images']} validation images).\n",
           "\n## Headline\n\n"]
    out.append(md_table(HEADLINE_HEADER, headline_rows(results, "bbox")))
    if any("segm" in m.get("iou_types", []) for m in results["models"].values()):
        out.append("\nMask AP:\n\n" + md_table(HEADLINE_HEADER, headline_rows(results, "segm")))
    out.append("\n## Setup\n\n")
    tr = summary["training"]
    rows = []
    for tag, s in tr.items():
        rows.append([tag, s.get("steps", "n/a"), fmt(s.get("first_loss")), fmt(s.get("final_loss")),
                     fmt(s.get("mean_sec_per_step"), 2), s.get("params_total", ""), s.get("params_trainable", "")])
    det = cfg["detector"]
    train_data = train_data_text(cfg)
    out.append(f"Mask R-CNN (torchvision) detectors trained with `tasks.train`, identical schedule "
               f"({det['optimizer']} lr {det['lr']}, batch {det['batch_size']}, {det['max_steps']} steps, cosine). "
               f"`baseline-resnet` and `dir` see the same data: {train_data}. Baseline: ResNet-18 "
               f"(width {det['resnet_width']}, GroupNorm) + FPN, random init. DiR: DiRNet (channels "
               f"{cfg['dir']['channels']}) + FPN, "
               + (f"initialised from a short `dir` pretraining (MMI {cfg['dir']['mmi_steps']}, DfR "
                  f"{cfg['dir']['dfr_steps']}, align {cfg['dir']['align_steps']}, restore "
                  f"{cfg['dir']['restore_steps']} steps; `{summary['dir_checkpoint']}`)" if cfg["dir"]["enabled"]
                  else "randomly initialised (DiR pretraining disabled)")
               + f"; encoder trained end to end: {det['dir_train_encoder']}."
               + (" `resnet-clean-trained`: the same baseline trained on clean images only (what the degradation "
                  "augmentation buys)." if "resnet-clean-trained" in tr else "") + "\n\n")
    out.append(md_table(["model", "steps", "first logged loss", "final loss", "s/step (measured)", "params",
                         "trainable"], rows))
    pv = summary.get("pynet", {})
    if pv.get("validation"):
        v, pc = pv["validation"], cfg["pynet"]
        out.append(f"\nPyNET learned ISP for the real-camera renderings: PyTorch-release topology at width "
                   f"{pc['width']}, trained level by level ({', '.join(f'L{5 - i}: {n}' for i, n in enumerate(pc['steps']))}"
                   f" steps, batch {pc['batch_size']}, {2 * pc['patch']} px RGB targets) on RAW/sRGB pairs unprocessed "
                   f"from the scikit-image photos (`{pv['checkpoint']}`). Level-0 validation on held-out photos: PSNR "
                   f"{fmt(v['untrained']['psnr'], 2)} dB untrained -> {fmt(v['trained']['psnr'], 2)} dB, MS-SSIM "
                   f"{fmt(v['untrained']['ms_ssim'])} -> {fmt(v['trained']['ms_ssim'])}. A minutes-long CPU training: "
                   "far from the published PyNET.\n")
    out.append("\n## Measured time\n\n")
    if summary.get("resumed"):
        out.append("This run resumed from earlier outputs in the same folder (their time is not included below): "
                   + "; ".join(summary["resumed"]) + ".\n\n")
    out.append(md_table(["stage", "seconds"], [[k, v] for k, v in t.items()]))
    out.append(f"\nMachine: {env['cpu_count']} CPUs visible, torch threads {env['torch_threads']}, load average "
               f"(1/5/15 min) at start {env['load_average_start']}, at end {env['load_average_end']} (the machine "
               f"is shared; a load above the core count slows every stage). Started {env['started']}, finished "
               f"{env['finished']}.\n")
    plots = ["grid/ap_vs_severity_bbox_AP.png"]
    if any("segm" in m.get("iou_types", []) for m in results["models"].values()):
        plots.append("grid/ap_vs_severity_segm_AP.png")
    out.append("\n" + grid_markdown(results, "Robustness grid", plots, "grid/samples.png", level=2))
    out.append("\n" + real_camera_markdown(real, level=2))
    if real.get("real_raw", {}).get("status") == "ok":
        out.append("\n![real-camera samples](real_camera/real_camera_samples.png)\n")
    out.append("\n## Configuration\n\n```yaml\n" + yaml.safe_dump(cfg, sort_keys=False) + "```\n")
    return "".join(out)
