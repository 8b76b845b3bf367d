"""Experiment configuration for detector training: YAML (``yaml.safe_load``) -> dataclasses.

Sections: ``model`` (:class:`tasks.backbones.DetectorConfig`), ``data``, ``optim``, ``run``. Every key is optional;
unknown keys are an error naming the section, so a typo cannot silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isp_sim.config import apply_overrides, build_section, check_sections, read_yaml_mapping

from .backbones import DetectorConfig, _plain
from .data.coco import DegradationConfig


@dataclass
class DataConfig:
    """Training / validation data.

    kind: "procedural" (generated into ``root`` when missing: n_train, n_val, image_size, seed) or "coco"
    (``train_images``/``train_ann``, ``val_images``/``val_ann``). ``*_degraded_dir``: read images from a degraded
    copy (``python -m isp_sim degrade``). ``train_degradation`` / ``val_degradation``: on-the-fly isp_sim
    degradations (:class:`tasks.data.coco.DegradationConfig`). missing: "error" | "skip" for images missing on
    disk. hflip: random horizontal flips in training. num_workers: DataLoader workers.
    """

    kind: str = "procedural"
    root: str = "runs/data/procedural"
    n_train: int = 400
    n_val: int = 100
    image_size: int = 160
    seed: int = 0
    train_images: str = ""
    train_ann: str = ""
    val_images: str = ""
    val_ann: str = ""
    train_degraded_dir: str = ""
    val_degraded_dir: str = ""
    train_degradation: DegradationConfig = field(default_factory=DegradationConfig)
    val_degradation: DegradationConfig = field(default_factory=DegradationConfig)
    missing: str = "error"
    hflip: bool = True
    num_workers: int = 0

    def __post_init__(self) -> None:
        for name in ("train_degradation", "val_degradation"):
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, _build(DegradationConfig, v, f"data.{name}"))
        if self.kind not in ("procedural", "coco"):
            raise ValueError(f"data.kind must be 'procedural' or 'coco', got {self.kind!r}")
        if self.kind == "coco":
            for k in ("train_images", "train_ann", "val_images", "val_ann"):
                if not getattr(self, k):
                    raise ValueError(f"data.{k} is required when data.kind is 'coco'")
        if self.missing not in ("error", "skip"):
            raise ValueError(f"data.missing must be 'error' or 'skip', got {self.missing!r}")


@dataclass
class OptimConfig:
    """Optimiser and schedule. name: "sgd" | "adamw". schedule: "cosine" | "step" | "constant" after a linear
    warmup of ``warmup_steps`` from ``lr * warmup_factor``; "step" multiplies by ``gamma`` at each milestone.
    clip_grad: max gradient norm (0 = off). dir_lr_mult: learning-rate multiplier of the DiR parameters
    (alignment / encoder) during task-aligned refinement."""

    name: str = "sgd"
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    warmup_factor: float = 0.001
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    clip_grad: float = 10.0
    dir_lr_mult: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in ("sgd", "adamw"):
            raise ValueError(f"optim.name must be 'sgd' or 'adamw', got {self.name!r}")
        if self.schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"optim.schedule must be 'cosine', 'step' or 'constant', got {self.schedule!r}")
        if not self.lr > 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")


@dataclass
class RunConfig:
    """out_dir: checkpoints (last.pt, model_final.pt), log.jsonl, metrics.json. max_steps: optimiser steps.
    batch_size: images per process per step. eval_every / ckpt_every / log_every: in steps (0 = never / only at the
    end). eval_max_images: evaluate on the first N validation images during training (0 = all; the final evaluation
    always uses all). device: "auto" | "cpu" | "cuda". threads: torch CPU threads per process (0 = default)."""

    out_dir: str = "runs/tasks/default"
    max_steps: int = 1000
    batch_size: int = 4
    log_every: int = 10
    eval_every: int = 0
    ckpt_every: int = 100
    eval_max_images: int = 0
    eval_batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    progress: bool = True
    final_eval: bool = True
    find_unused_parameters: bool = False

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1:
            raise ValueError("run.max_steps and run.batch_size must be >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"run.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


@dataclass
class ExperimentConfig:
    """The whole training configuration."""

    model: DetectorConfig = field(default_factory=DetectorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (YAML- and ``weights_only``-safe)."""
        d = _plain(dataclasses.asdict(self))
        d["model"] = self.model.to_dict()
        return d


def _build(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    return build_section(cls, values, f"config section '{where}'")


def config_from_dict(d: dict[str, Any] | None) -> ExperimentConfig:
    """Validate a (YAML-loaded) dict into an :class:`ExperimentConfig`."""
    d = dict(d or {})
    sections = {"model": DetectorConfig, "data": DataConfig, "optim": OptimConfig, "run": RunConfig}
    check_sections(d, sections, "config")
    return ExperimentConfig(**{k: _build(cls, d.get(k), k) for k, cls in sections.items()})


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config with ``yaml.safe_load``; ``overrides`` are ``section.key=value`` strings (value parsed as
    YAML, e.g. ``run.max_steps=20``)."""
    d = apply_overrides(read_yaml_mapping(path), overrides)
    try:
        return config_from_dict(d)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
