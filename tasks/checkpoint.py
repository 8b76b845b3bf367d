"""Detector checkpoints: atomic writes, ``weights_only`` reads, and rebuilding a detector from its stored config.

A checkpoint is a dict of tensors and plain Python only::

    {"format": "tasks-detector-v1", "model_config": {...DetectorConfig...}, "config": {...whole experiment...},
     "model": state_dict, "classes": {"names": [...], "cat_ids": [...]},      # label i+1 <-> cat_ids[i]
     "step": int, "epoch": int, "optimizer": ..., "scheduler": ..., "rng": {"torch": ByteTensor, ...}}

(``optimizer``/``scheduler``/``rng`` only in training checkpoints such as ``last.pt``.)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from dir.checkpoint import atomic_save  # torch.save to a temporary file + os.replace (shared with dir)
from torch import nn

FORMAT = "tasks-detector-v1"
__all__ = ["FORMAT", "CheckpointError", "atomic_save", "load_checkpoint", "detector_state", "save_detector",
           "load_detector", "unwrap"]


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, not a detector checkpoint, or does not match its stored config."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a detector checkpoint with ``torch.load(weights_only=True)`` on CPU; clear errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, foreign pickle, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        fmt = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a detector checkpoint (format {fmt!r}, expected {FORMAT!r})")
    for k in ("model_config", "model"):
        if k not in obj:
            raise CheckpointError(f"{path} lacks '{k}'")
    return obj


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def detector_state(model: nn.Module, classes: dict | None = None, config: dict | None = None,
                   **extra: Any) -> dict[str, Any]:
    """The checkpoint dict of ``model`` (built by :func:`tasks.backbones.build_detector_from_config`)."""
    m = unwrap(model)
    if not hasattr(m, "config"):
        raise CheckpointError("model has no .config (build it with tasks.backbones.build_detector)")
    state = {"format": FORMAT, "model_config": m.config.to_dict(),
             "model": {k: v.detach().cpu() for k, v in m.state_dict().items()},
             "classes": classes or {}, "config": config or {}}
    state.update(extra)
    return state


def save_detector(model: nn.Module, path: str | os.PathLike, classes: dict | None = None,
                  config: dict | None = None, **extra: Any) -> Path:
    """Atomically save ``model`` with its config (a file :func:`load_detector` can rebuild)."""
    return atomic_save(detector_state(model, classes, config, **extra), path)


def load_detector(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the detector stored in ``path`` from its config and load its weights (eval mode).

    The model gets ``.config``, ``.class_names`` and ``.label_to_cat_id``. A state dict that does not fit the
    rebuilt model raises :class:`CheckpointError` listing missing / unexpected / mis-shaped parameters."""
    from .backbones import DetectorConfig, build_detector_from_config

    ck = load_checkpoint(path)
    try:
        cfg = DetectorConfig.from_dict(ck["model_config"], where=f"{path}: model_config")
        model = build_detector_from_config(cfg, dir_weights=False)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the detector from its stored config: {e}") from e
    sd = ck["model"]
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shape = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(set(sd) & set(own)) if tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        raise CheckpointError(
            f"{path}: weights do not match the model rebuilt from its stored config "
            f"({cfg.kind}/{cfg.backbone}): {len(missing)} missing {missing[:4]}, {len(unexpected)} unexpected "
            f"{unexpected[:4]}, {len(shape)} shape mismatches {shape[:3]}")
    model.load_state_dict(sd)
    classes = ck.get("classes") or {}
    cat_ids = list(classes.get("cat_ids") or range(1, cfg.num_classes + 1))
    model.class_names = list(classes.get("names") or [str(c) for c in cat_ids])
    model.label_to_cat_id = {i + 1: int(c) for i, c in enumerate(cat_ids)}
    model.checkpoint_step = int(ck.get("step", 0))
    return model.to(device).eval()
