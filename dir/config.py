"""Configuration dataclasses for DiR training and evaluation, loaded from YAML with ``yaml.safe_load``.

A config file has the sections ``model``, ``data``, ``loss``, ``mmi``, ``dfr``, ``align``, ``restore``, ``plain``,
``eval`` and ``run``; every key is optional (defaults below are the small CPU setting). Unknown keys are an error,
so a typo cannot silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

STAGES = ("mmi", "dfr", "align", "restore", "plain")


@dataclass
class ModelConfig:
    """Architecture of DiRNet (also used for the DfR autoencoder and the plain encoder-decoder).

    channels: encoder widths at strides 4/8/16/32. blocks: residual blocks per scale (>= 1).
    pilot_width: width multiplier of the pilot encoder relative to ``channels`` (0 < w <= 1).
    pilot_init: "dfr" (start the pilot from the trained DfR encoder E*; needs pilot_width 1) or "scratch".
    decoder_channels: decoder widths at strides 4/8/16/32 (None = same as ``channels``).
    proj_dim: output width of the MI projection heads.
    restore_skip: give the restoration decoder R (and, like for like, the plain baseline's decoder) a shallow
    full-resolution branch on the degraded input and a global residual, ``y = x + R(r+, x)`` (default True; False is
    the old decoder that sees the features only, ``y = R(r+)``; files written before this option load with False).
    The DfR decoder D* never has an input path. norm: "none" (default), "gn" (GroupNorm with ``gn_groups``
    groups, clipped to divide the channels) or "bn" (BatchNorm).
    """

    channels: tuple[int, int, int, int] = (32, 64, 128, 256)
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)
    pilot_width: float = 1.0
    pilot_init: str = "dfr"
    decoder_channels: tuple[int, int, int, int] | None = None
    proj_dim: int = 64
    gn_groups: int = 8
    norm: str = "none"
    restore_skip: bool = True

    def __post_init__(self) -> None:
        if self.norm not in ("none", "gn", "bn"):
            raise ValueError(f"model.norm must be 'none', 'gn' or 'bn', got {self.norm!r}")
        self.channels = tuple(int(c) for c in self.channels)
        self.blocks = tuple(int(b) for b in self.blocks)
        if self.decoder_channels is not None:
            self.decoder_channels = tuple(int(c) for c in self.decoder_channels)
        for name in ("channels", "blocks") + (("decoder_channels",) if self.decoder_channels else ()):
            v = getattr(self, name)
            if len(v) != 4 or min(v) < 1:
                raise ValueError(f"model.{name} must be 4 positive integers (strides 4/8/16/32), got {v}")
        if not 0.0 < float(self.pilot_width) <= 1.0:
            raise ValueError(f"model.pilot_width must be in (0, 1], got {self.pilot_width}")
        if self.pilot_init not in ("dfr", "scratch"):
            raise ValueError(f"model.pilot_init must be 'dfr' or 'scratch', got {self.pilot_init!r}")
        if self.pilot_init == "dfr" and float(self.pilot_width) != 1.0:
            raise ValueError("model.pilot_init 'dfr' needs model.pilot_width 1.0 (the pilot copies E*)")
        if not isinstance(self.restore_skip, bool):
            raise ValueError(f"model.restore_skip must be true or false, got {self.restore_skip!r}")
        if int(self.proj_dim) < 1 or int(self.gn_groups) < 1:
            raise ValueError("model.proj_dim and model.gn_groups must be >= 1")


@dataclass
class DataConfig:
    """Training/evaluation images and patches.

    source: "skimage" (the colour images shipped with scikit-image) or a directory of PNG/JPEG images.
    train_images / eval_images: names (skimage) or file names (directory); None = the built-in split.
    patch_size: square crop side in pixels (multiple of 32). epoch_size: patches per epoch (for the sampler).
    views: K, degraded views per clean patch (>= 2 for the MI terms). split: isp_sim CompositeISP split for training.
    max_side: images are downscaled (area) so their longer side is at most this many pixels (0 = keep).
    num_workers: DataLoader workers (0 = in-process).
    """

    source: str = "skimage"
    train_images: list[str] | None = None
    eval_images: list[str] | None = None
    patch_size: int = 64
    epoch_size: int = 512
    views: int = 2
    split: str = "seen"
    max_side: int = 384
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.patch_size < 32 or self.patch_size % 32:
            raise ValueError(f"data.patch_size must be a multiple of 32 and >= 32, got {self.patch_size}")
        if self.views < 2:
            raise ValueError(f"data.views must be >= 2 (the MI terms need two views), got {self.views}")
        if self.epoch_size < 1:
            raise ValueError("data.epoch_size must be >= 1")
        if self.split not in ("seen", "unseen"):
            raise ValueError(f"data.split must be 'seen' or 'unseen', got {self.split!r}")


@dataclass
class LossConfig:
    """Loss choices and weights (see dir/losses.py and dir/README.md for the equations).

    estimator: "infonce" or "jsd" MI lower bound. critic: "cosine" (projection + cosine / temperature) or "bilinear".
    temperature: tau of the cosine critic (> 0). mi_global / mi_local: weights of the pooled and per-location MI terms.
    local_samples: locations sampled per image and scale for the local term.
    feat / dist / pix / pilot / mi_align: align-stage weights of the feature-level (to r*), distribution-level
    (channel moments of r* ), pixel (D*(r+) vs clean), pilot (r-> to r*) and MI-on-r+ terms.
    """

    estimator: str = "infonce"
    critic: str = "cosine"
    temperature: float = 0.1
    mi_global: float = 1.0
    mi_local: float = 1.0
    local_samples: int = 32
    feat: float = 1.0
    dist: float = 1.0
    pix: float = 1.0
    pilot: float = 1.0
    mi_align: float = 0.1

    def __post_init__(self) -> None:
        if self.estimator not in ("infonce", "jsd"):
            raise ValueError(f"loss.estimator must be 'infonce' or 'jsd', got {self.estimator!r}")
        if self.critic not in ("cosine", "bilinear"):
            raise ValueError(f"loss.critic must be 'cosine' or 'bilinear', got {self.critic!r}")
        if not self.temperature > 0:
            raise ValueError("loss.temperature must be > 0")


@dataclass
class StageConfig:
    """Optimisation of one stage: steps (optimizer updates; 0 skips the stage), batch_size (global, split over
    ranks), lr (peak; 5% linear warm-up then cosine decay to 5%), weight_decay, grad_clip (max grad norm, 0 = off),
    ckpt_every / log_every (steps). Restore stage only: finetune_alignment (also train P and A),
    finetune_lr_mult (their learning rate relative to the decoder's) and decoder_init: "scratch" (default: R
    re-initialised from the seed before the restore stage) or "dfr" (R's representation path starts from D*'s
    layers, copied at the start of stage align); either way R's head is zero, so it starts as y = x."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ckpt_every: int = 100
    log_every: int = 10
    # restore stage only: also update pilot + alignment ... (on by default, as in the tiny and demo runs; the
    # measured small/full configs turn it off: it overfit 7 training images, see dir/README.md)
    finetune_alignment: bool = True
    finetune_lr_mult: float = 0.5  # ... with learning rate lr * finetune_lr_mult
    decoder_init: str = "scratch"  # restore stage only: "scratch" or "dfr"

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"bad stage settings: steps={self.steps} batch_size={self.batch_size} lr={self.lr}")
        if self.ckpt_every < 1 or self.log_every < 1:
            raise ValueError("ckpt_every and log_every must be >= 1")
        if self.decoder_init not in ("dfr", "scratch"):
            raise ValueError(f"decoder_init must be 'dfr' or 'scratch', got {self.decoder_init!r}")


@dataclass
class PlainConfig(StageConfig):
    """The plain encoder-decoder baseline; steps=None means the sum of the DiR stages' steps (same budget)."""

    steps: int | None = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.steps is None:
            return
        super().__post_init__()


@dataclass
class EvalConfig:
    """Evaluation: crops of ``crop`` pixels from the held-out images, ``views`` degradation seeds per crop and split,
    ``single``: fixed single degradations (isp_sim names) evaluated at ``severity`` (1..5)."""

    crop: int = 128
    crops_per_image: int = 2
    views: int = 4
    splits: tuple[str, ...] = ("seen", "unseen")
    single: tuple[str, ...] = ("noise", "demosaic", "exposure", "gamma", "white_balance", "jpeg")
    severity: int = 3
    seed: int = 1234

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)
        self.single = tuple(self.single)
        if self.crop < 32 or self.crop % 32:
            raise ValueError(f"eval.crop must be a multiple of 32, got {self.crop}")
        if self.views < 2:
            raise ValueError("eval.views must be >= 2 (cosine similarity across degradations)")


@dataclass
class RunConfig:
    """out_dir: where checkpoints, logs and reports go. seed: master seed. device: "auto" | "cpu" | "cuda"."""

    out_dir: str = "runs/dir_small"
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads (0 = leave torch's default)


@dataclass
class DiRConfig:
    """The whole configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mmi: StageConfig = field(default_factory=StageConfig)
    dfr: StageConfig = field(default_factory=StageConfig)
    align: StageConfig = field(default_factory=StageConfig)
    restore: StageConfig = field(default_factory=StageConfig)
    plain: PlainConfig = field(default_factory=PlainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def plain_steps(self) -> int:
        """Steps of the plain baseline: explicit, or the DiR stages' total (equal optimisation budget)."""
        if self.plain.steps is not None:
            return int(self.plain.steps)
        return int(self.mmi.steps + self.dfr.steps + self.align.steps + self.restore.steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python (YAML/torch-safe) form: tuples become lists."""
        return _plain(dataclasses.asdict(self))


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _build(cls: type, values: dict[str, Any] | None, where: str) -> Any:
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in config section '{where}': {unknown}; allowed: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        kwargs[f.name] = values[f.name]
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"bad values in config section '{where}': {e}") from e


def config_from_dict(d: dict[str, Any] | None) -> DiRConfig:
    """Build a :class:`DiRConfig` from a (YAML-loaded) dict, validating every section."""
    d = dict(d or {})
    sections = {f.name: f.default_factory for f in dataclasses.fields(DiRConfig)}
    unknown = sorted(set(d) - set(sections))
    if unknown:
        raise ValueError(f"unknown config section(s): {unknown}; allowed: {sorted(sections)}")
    return DiRConfig(**{name: _build(cls, d.get(name), name) for name, cls in sections.items()})


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Build the :class:`ModelConfig` alone (used when rebuilding a model from a checkpoint)."""
    return _build(ModelConfig, d, "model")


def load_config(path: str | Path) -> DiRConfig:
    """Read a YAML config with ``yaml.safe_load``; a missing file or a non-mapping top level is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as fh:
        d = yaml.safe_load(fh)
    if d is not None and not isinstance(d, dict):
        raise ValueError(f"config {path} must be a YAML mapping, got {type(d).__name__}")
    return config_from_dict(d)
