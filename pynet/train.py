"""Sequential level-wise PyNET training (level 5 -> 0), resumable, with per-level checkpoints and a JSON-lines log.

Each level starts from the weights the previous level ended with and optimises every parameter that takes part
in its output (coarser levels are fine-tuned, not frozen), with Adam at a constant learning rate and the level's
published loss (:mod:`pynet.losses`). Files in ``out_dir``:

* ``pynet_level_{L}.pth``: final weights of level L, ``{"model": state_dict, "meta": {...}}`` (load with
  :func:`pynet.model.load_pynet`); its presence marks the level as done.
* ``level_{L}_state.pth``: in-progress state (model, optimiser, step), written every ``ckpt_every`` steps; a
  killed run restarted with the same config continues from it. Batches are a pure function of
  ``(seed, level, epoch)``, so a resumed run sees the same batches as an uninterrupted one.
* ``train_log.jsonl``: one JSON object per line (``event`` = start, level_start, loss_substitution, step, eval,
  level_end, resume, skipped_step, done).

Steps whose gradient norm is not finite are skipped (logged as ``skipped_step``) instead of corrupting the weights;
``grad_clip`` optionally clips the gradient norm (the releases do not clip).

All files are written atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from isp_sim.config import apply_overrides, build_section, read_yaml_mapping
from isp_sim.io import atomic_path

from .losses import PyNETLoss, VGGPerceptualLoss, ms_ssim, psnr
from .model import PyNET, count_parameters, load_pynet, model_meta

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- config
@dataclass
class ModelConfig:
    variant: str = "pytorch"  # "pytorch" | "paper"
    width: float = 1.0  # channel multiplier; 1.0 = published model
    instance_norm: bool = True
    instance_norm_level_1: Optional[bool] = None  # None = the variant's release setting
    init_seed: int = 0  # torch.Generator seed of the weight initialisation


@dataclass
class DataConfig:
    kind: str = "embedded"  # "embedded" (scikit-image samples) | "folder" (sRGB images) | "zurich" (ZRR)
    root: Optional[str] = None  # folder / ZRR root
    val_root: Optional[str] = None  # "folder": separate validation images (else the last val_holdout images)
    val_holdout: int = 2
    patch: int = 64  # synthetic data: packed input size (targets are 2*patch >> level)
    train_length: int = 2000  # synthetic data: number of random crops per epoch
    camera: str = "random"  # synthetic data: "random" or "fixed" unprocessing camera
    augment: bool = True
    noise: bool = True  # synthetic data: sensor noise (see pynet.data.SyntheticPairs)
    iso_range: list = field(default_factory=lambda: [100.0, 1600.0])
    seed: int = 0  # data seed (crops, cameras, augmentations)
    limit_train: Optional[int] = None  # ZRR: use only the first N patches
    limit_val: Optional[int] = None  # cap on validation samples
    num_workers: int = 0


@dataclass
class LevelConfig:
    level: int
    batch_size: int
    lr: float = 5e-5
    epochs: Optional[float] = None  # passes over the training set (PyTorch release)
    steps: Optional[int] = None  # or optimisation steps (TF release / quick runs); steps wins if both given


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    schedule: list = field(default_factory=list)  # list[LevelConfig], run in the given order
    out_dir: str = "runs/pynet"
    seed: int = 0  # batch-order seed
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    threads: Optional[int] = None  # torch CPU threads
    vgg_weights: Optional[str] = None  # local torchvision vgg19 state dict; None -> substitute term (logged)
    loss_weights: Optional[dict] = None  # {level: {term: weight}} overriding the published weights
    init_checkpoint: Optional[str] = None  # weights to start from when the first scheduled level has no predecessor
    grad_clip: Optional[float] = None  # max gradient norm (None = no clipping, as published)
    ckpt_every: int = 200  # steps between in-progress checkpoints
    log_every: int = 10  # steps between loss log lines
    val_batch_size: int = 4
    eval_initial: bool = True  # evaluate the untrained model at the last scheduled level first
    progress: bool = True


_SECTIONS = {"model": ModelConfig, "data": DataConfig}


def _build(cls, d: dict, where: str):
    return build_section(cls, d, where)


def config_from_dict(d: dict, where: str = "config") -> TrainConfig:
    """Validate a plain dict (e.g. from YAML) into a :class:`TrainConfig`; errors name ``where`` and the key."""
    d = dict(d or {})
    kw = {}
    for name, cls in _SECTIONS.items():
        if name in d:
            kw[name] = _build(cls, d.pop(name) or {}, f"{where}: {name}")
    sched = d.pop("schedule", None)
    if not sched:
        raise ValueError(f"{where}: 'schedule' must list the levels to train")
    kw["schedule"] = [_build(LevelConfig, s, f"{where}: schedule[{i}]") for i, s in enumerate(sched)]
    cfg = _build(TrainConfig, {**d, **kw}, where)
    validate_config(cfg, where)
    return cfg


def validate_config(cfg: TrainConfig, where: str = "config") -> None:
    if cfg.model.variant not in ("pytorch", "paper"):
        raise ValueError(f"{where}: model.variant must be 'pytorch' or 'paper', got {cfg.model.variant!r}")
    if cfg.data.kind not in ("embedded", "folder", "zurich"):
        raise ValueError(f"{where}: data.kind must be embedded, folder or zurich, got {cfg.data.kind!r}")
    if cfg.data.kind in ("folder", "zurich") and not cfg.data.root:
        raise ValueError(f"{where}: data.root is required for data.kind={cfg.data.kind!r}")
    seen = set()
    for i, s in enumerate(cfg.schedule):
        if s.level not in range(6) or s.level in seen:
            raise ValueError(f"{where}: schedule[{i}].level must be a new level in 0..5, got {s.level}")
        seen.add(s.level)
        if s.steps is None and s.epochs is None:
            raise ValueError(f"{where}: schedule[{i}] (level {s.level}) needs 'epochs' or 'steps'")
        if s.batch_size < 1 or s.lr <= 0:
            raise ValueError(f"{where}: schedule[{i}] needs batch_size >= 1 and lr > 0")
    levels = [s.level for s in cfg.schedule]
    if levels != sorted(levels, reverse=True):
        raise ValueError(f"{where}: levels must be trained coarse to fine (5 -> 0), got {levels}")


def load_config(path: str | os.PathLike, overrides: Optional[dict] = None) -> TrainConfig:
    """Read a YAML config with ``yaml.safe_load``; ``overrides`` maps dotted keys (``"data.root"``) to values."""
    d = apply_overrides(read_yaml_mapping(path), overrides)
    return config_from_dict(d, str(path))


# ----------------------------------------------------------------------------------------------- data
def build_datasets(cfg: TrainConfig, level: int):
    """(train, val) datasets for ``level`` according to ``cfg.data``."""
    from . import data as D

    dc = cfg.data
    if dc.kind == "zurich":
        train = D.ZurichPatches(dc.root, "train", level, limit=dc.limit_train)
        val = D.ZurichPatches(dc.root, "test", level, limit=dc.limit_val)
        return train, val
    if dc.kind == "embedded":
        train, val = D.embedded_datasets(dc.patch, dc.train_length, dc.seed, level, dc.camera, noise=dc.noise,
                                         iso_range=tuple(dc.iso_range))
    else:
        imgs = D.folder_images(dc.root)
        if dc.val_root:
            val_imgs = D.folder_images(dc.val_root)
        else:
            if len(imgs) <= dc.val_holdout or dc.val_holdout < 1:
                raise D.DataError(f"{dc.root}: need more than val_holdout={dc.val_holdout} images to hold some out")
            imgs, val_imgs = imgs[: -dc.val_holdout], imgs[-dc.val_holdout:]
        opts = dict(noise=dc.noise, iso_range=tuple(dc.iso_range))
        train = D.SyntheticPairs(imgs, dc.patch, dc.train_length, dc.seed, level, dc.augment, dc.camera, **opts)
        val = D.SyntheticPairs(val_imgs, dc.patch, 0, dc.seed + 1, level, False, dc.camera, grid=True,
                               camera_seed=dc.seed, **opts)
    if dc.limit_val is not None and len(val) > dc.limit_val:
        val = torch.utils.data.Subset(val, list(range(dc.limit_val)))
    return train, val


class EpochBatches(torch.utils.data.Sampler):
    """Batches of indices for steps ``start, start+1, ...``: epoch ``e`` is ``default_rng([seed, level, e])
    .permutation(n)`` cut into full batches (drop_last), so the batch of any step is reproducible on resume."""

    def __init__(self, n: int, batch: int, seed: int, level: int, start: int, total: int):
        if n < batch:
            raise ValueError(f"training set has {n} samples, fewer than the batch size {batch}")
        self.n, self.batch, self.seed, self.level, self.start, self.total = n, batch, seed, level, start, total
        self.per_epoch = n // batch

    def batch_at(self, step: int) -> list[int]:
        e, k = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, self.level, e]).permutation(self.n)
        return perm[k * self.batch:(k + 1) * self.batch].tolist()

    def __iter__(self):
        perm, epoch = None, -1
        for step in range(self.start, self.total):
            e, k = divmod(step, self.per_epoch)
            if e != epoch:
                perm, epoch = np.random.default_rng([self.seed, self.level, e]).permutation(self.n), e
            yield perm[k * self.batch:(k + 1) * self.batch].tolist()

    def __len__(self) -> int:
        return max(0, self.total - self.start)


# ----------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: PyNET, dataset, level: int, device, batch_size: int = 4) -> dict:
    """Mean per-image PSNR (dB) and MS-SSIM of level ``level`` on ``dataset`` (outputs clamped to [0, 1])."""
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    ps, ms = [], []
    for raw, target in loader:
        out = model(raw.to(device), level=level).clamp(0, 1).float().cpu()
        ps.append(psnr(out, target))
        ms.append(ms_ssim(target, out))
    model.train(was_training)
    if not ps:
        raise ValueError("evaluation set is empty")
    return {"psnr": float(torch.cat(ps).mean()), "ms_ssim": float(torch.cat(ms).mean()), "n": int(sum(map(len, ps)))}


# ----------------------------------------------------------------------------------------------- io
def save_atomic(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then ``os.replace`` onto ``path``."""
    with atomic_path(path, suffix=".tmp") as tmp:
        torch.save(obj, tmp)


class JsonlLog:
    """Append-only JSON-lines log (each line flushed and fsynced)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, **fields) -> None:
        rec = {"time": round(time.time(), 3), "event": event, **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def read_log(path: str | os.PathLike) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _weights(path: Path) -> dict:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
        raise ValueError(f"{path}: not a pynet training checkpoint (no 'model' state dict)")
    return obj["model"]


class _Interrupted(Exception):
    """Raised by ``train(..., stop_after_steps=N)`` to emulate a killed run (tests)."""


# ----------------------------------------------------------------------------------------------- training
def train(cfg: TrainConfig, stop_after_steps: Optional[int] = None) -> dict:
    """Run (or resume) the level-wise schedule of ``cfg``. Returns a summary dict (per-level evaluations).

    ``stop_after_steps`` aborts after that many optimisation steps in this call without any extra checkpoint,
    like a killed process (used to test resumption).
    """
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    logger = JsonlLog(out / "train_log.jsonl")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = _device(cfg.device)
    mc = cfg.model
    first_level = cfg.schedule[0].level
    model = PyNET(mc.variant, level=first_level, instance_norm=mc.instance_norm,
                  instance_norm_level_1=mc.instance_norm_level_1, width=mc.width, seed=mc.init_seed)
    if cfg.init_checkpoint:
        src = load_pynet(cfg.init_checkpoint)
        model.load_state_dict(src.state_dict(), strict=True)
    model.to(device)
    logger.write("start", config=dataclasses.asdict(cfg), parameters=count_parameters(model), device=str(device),
                 torch=torch.__version__, seeds={"model_init": mc.init_seed, "batch_order": cfg.seed,
                                                  "data": cfg.data.seed},
                 random_draws="init: torch.Generator(model_init); batches of step s at level L: "
                              "np.random.default_rng([batch_order, L, s // steps_per_epoch]).permutation(n); "
                              "synthetic sample i: np.random.default_rng([data, i])")
    vgg = VGGPerceptualLoss(cfg.vgg_weights).to(device) if cfg.vgg_weights else None
    summary: dict = {"levels": {}}
    steps_done = 0
    final_level = cfg.schedule[-1].level

    if cfg.eval_initial and not (out / f"pynet_level_{first_level}.pth").exists() \
            and not (out / f"level_{first_level}_state.pth").exists():
        _, val = build_datasets(cfg, final_level)
        ev = evaluate(model, val, final_level, device, cfg.val_batch_size)
        logger.write("eval", level=final_level, stage="initial", **ev)
        summary["initial"] = {"level": final_level, **ev}

    for sc in cfg.schedule:
        L = sc.level
        final_path = out / f"pynet_level_{L}.pth"
        state_path = out / f"level_{L}_state.pth"
        if final_path.exists():
            if state_path.exists():  # killed between writing the final weights and removing the state
                state_path.unlink()
            model.load_state_dict(_weights(final_path), strict=True)
            log.info("level %d already trained (%s): skipping", L, final_path)
            summary["levels"][L] = {"skipped": True}
            continue
        model.level = L
        train_ds, val_ds = build_datasets(cfg, L)
        per_epoch = len(train_ds) // sc.batch_size
        if per_epoch < 1:
            raise ValueError(f"level {L}: training set of {len(train_ds)} samples is smaller than the batch "
                             f"size {sc.batch_size}")
        total = int(sc.steps) if sc.steps is not None else int(math.ceil(float(sc.epochs) * per_epoch))
        weights = None
        if cfg.loss_weights is not None and (L in cfg.loss_weights or str(L) in cfg.loss_weights):
            weights = cfg.loss_weights.get(L, cfg.loss_weights.get(str(L)))
        criterion = PyNETLoss(mc.variant, L, cfg.vgg_weights, weights=weights, vgg_module=vgg).to(device)
        optim = torch.optim.Adam(model.parameters(), lr=sc.lr)
        start = 0
        if state_path.exists():
            st = torch.load(state_path, map_location=device, weights_only=True)
            model.load_state_dict(st["model"], strict=True)
            optim.load_state_dict(st["optimizer"])
            start = int(st["step"])
            logger.write("resume", level=L, step=start, checkpoint=str(state_path))
        logger.write("level_start", level=L, steps=total, start_step=start, batch_size=sc.batch_size, lr=sc.lr,
                     loss_weights=criterion.weights, train_size=len(train_ds), val_size=len(val_ds))
        if criterion.substitution:
            logger.write("loss_substitution", level=L, replaced="vgg", by=criterion.substitution)
        sampler = EpochBatches(len(train_ds), sc.batch_size, cfg.seed, L, start, total)
        loader = torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.data.num_workers)
        model.train()
        bar = None
        if cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=start, desc=f"level {L}", unit="step", dynamic_ncols=True)
        step = start
        t0 = time.time()
        for raw, target in loader:
            raw, target = raw.to(device, non_blocking=True), target.to(device, non_blocking=True)
            pred = model(raw, level=L)
            loss, terms = criterion(pred, target)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"level {L} step {step}: loss is {loss_value} (terms {terms})")
            optim.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf)
            if torch.isfinite(gnorm):
                optim.step()
            else:  # never let one non-finite gradient poison the weights through Adam's moments
                logger.write("skipped_step", level=L, step=step, reason=f"non-finite gradient norm {float(gnorm)}")
                log.warning("level %d step %d: non-finite gradient, update skipped", L, step)
            step += 1
            steps_done += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            if step % cfg.log_every == 0 or step == total:
                logger.write("step", level=L, step=step, loss=loss_value, terms=terms,
                             sec_per_step=round((time.time() - t0) / max(1, step - start), 4))
            if step % cfg.ckpt_every == 0 and step < total:
                save_atomic({"model": model.state_dict(), "optimizer": optim.state_dict(), "step": step,
                             "meta": model_meta(model)}, state_path)
            if stop_after_steps is not None and steps_done >= stop_after_steps:
                if bar is not None:
                    bar.close()
                raise _Interrupted(f"stopped after {steps_done} steps (level {L}, step {step})")
        if bar is not None:
            bar.close()
        ev = evaluate(model, val_ds, L, device, cfg.val_batch_size)
        logger.write("eval", level=L, stage="level_end", step=step, **ev)
        save_atomic({"model": model.state_dict(), "meta": {**model_meta(model), "steps": step}}, final_path)
        if state_path.exists():
            state_path.unlink()
        logger.write("level_end", level=L, step=step, checkpoint=str(final_path),
                     seconds=round(time.time() - t0, 1))
        summary["levels"][L] = {"steps": step, **ev}
    logger.write("done", summary=summary)
    return summary
