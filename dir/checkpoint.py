"""Checkpoints: atomic saving, ``weights_only`` loading, and rebuilding a DiRNet from its stored config.

Model files (``dirnet.pt``, ``dfr.pt``, ``plain.pt``, ``mmi.pt``) are dicts
``{"format": <kind>, "model_config": {...}, "state_dict": {...}, "meta": {...}}`` (tensors and plain Python only,
so ``torch.load(weights_only=True)`` reads them); the model config is also written beside them as YAML.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .config import model_config_from_dict

# v2: the restoration decoder R has a full-resolution input branch and a global residual (y = x + R(r+, x)).
DIRNET_FORMAT = "dirnet-v2"
# v1 files (decoder from the features only) still load: their model is rebuilt with model.restore_skip = False.
_OLD_FORMATS = {"dirnet-v1": ("dirnet-v2", {"restore_skip": False}),
                "dir-plain-v1": ("dir-plain-v2", {"restore_skip": False})}


class DiRCheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, of the wrong kind, or does not match the model it is loaded into."""


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same directory, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(text: str, path: str | Path) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_file(path: str | Path) -> dict:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise DiRCheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file or unsafe pickle content
        raise DiRCheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(obj, dict):
        raise DiRCheckpointError(f"checkpoint {path} is not a dict (got {type(obj).__name__})")
    return obj


def save_model(module: nn.Module, path: str | Path, kind: str, model_config: dict, meta: dict | None = None) -> Path:
    """Save ``module``'s weights with its model config (also written as ``<path>.yaml``)."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    atomic_save({"format": kind, "model_config": model_config, "state_dict": state, "meta": dict(meta or {})}, path)
    atomic_write_text(yaml.safe_dump({"format": kind, "model": model_config, "meta": dict(meta or {})},
                                     sort_keys=False), path.with_suffix(".yaml"))
    return path


def load_state_strict(module: nn.Module, state: dict, where: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error listing missing/unexpected/mis-shaped tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if tuple(state[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def head(v):
            return ", ".join(v[:5]) + (f" ... (+{len(v) - 5})" if len(v) > 5 else "")
        parts = [f"{n}: {head(v)}" for n, v in (("missing", missing), ("unexpected", unexpected),
                                                 ("shape mismatch", shapes)) if v]
        raise DiRCheckpointError(f"checkpoint {where} does not match {type(module).__name__} "
                                 f"(different model config?): " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def load_model_file(path: str | Path, kind: str) -> tuple[dict, dict, dict]:
    """Read a model file of format ``kind`` -> ``(model_config dict, state_dict, meta)``."""
    obj = load_file(path)
    fmt = obj.get("format")
    old = _OLD_FORMATS.get(fmt)
    if fmt != kind and not (old and old[0] == kind):
        raise DiRCheckpointError(f"{path} holds a {fmt!r} checkpoint, expected {kind!r}")
    for key in ("model_config", "state_dict"):
        if key not in obj:
            raise DiRCheckpointError(f"{path} lacks {key!r}")
    mcfg = obj["model_config"]
    if fmt != kind:  # an older format of the same kind: rebuild its architecture as it was
        if not isinstance(mcfg, dict):
            raise DiRCheckpointError(f"{path}: stored model config is not a mapping")
        mcfg = {**mcfg, **old[1]}
    return mcfg, obj["state_dict"], obj.get("meta", {})


def load_dirnet(path: str | Path, map_location: str | torch.device = "cpu", expect_config=None):
    """Rebuild a trained :class:`dir.model.DiRNet` from ``path`` (written by stage ``align`` or ``restore``).

    The architecture comes from the model config stored in the file. ``expect_config`` (a ModelConfig or dict)
    optionally asserts that the file matches a given config. Raises :class:`DiRCheckpointError` when the file is
    missing, not a DiRNet checkpoint, or its tensors do not fit the model. Returns the model in eval mode."""
    from .model import DiRNet
    mcfg_dict, state, meta = load_model_file(path, DIRNET_FORMAT)
    try:
        mcfg = model_config_from_dict(mcfg_dict)
    except (ValueError, TypeError) as e:
        raise DiRCheckpointError(f"{path}: stored model config is invalid: {e}") from e
    if expect_config is not None:
        want = expect_config if isinstance(expect_config, dict) else _asdict(expect_config)
        want = model_config_from_dict(want)
        if _asdict(want) != _asdict(mcfg):
            raise DiRCheckpointError(f"{path} was trained with model config {_asdict(mcfg)}, expected "
                                     f"{_asdict(want)}")
    model = DiRNet(mcfg)
    load_state_strict(model, state, str(path))
    model.train_meta = meta
    return model.to(map_location).eval()


def _asdict(cfg) -> dict:
    import dataclasses
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
