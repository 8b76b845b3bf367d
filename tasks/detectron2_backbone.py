"""Detectron2 integration: DiR as a ``detectron2.modeling.Backbone`` (plain and FPN), registered in
``BACKBONE_REGISTRY``. Importing this module imports detectron2 (build it from source per its install docs); nothing
else in ``tasks`` imports it.

Usage::

    from tasks.detectron2_backbone import get_dir_cfg      # registers build_dir_backbone / build_dir_fpn_backbone
    cfg = get_dir_cfg("configs/detectron2/mask_rcnn_dir_fpn.yaml", ["MODEL.DIR.CHECKPOINT", "runs/dir/dirnet.pt"])
    model = detectron2.modeling.build_model(cfg)

or ``python -m tasks.detectron2_backbone --config-file configs/detectron2/mask_rcnn_dir_fpn.yaml
[--procedural runs/data/procedural] [KEY VALUE ...]`` to train with detectron2's ``DefaultTrainer``.

Config keys (``add_dir_config``): ``MODEL.DIR.CHECKPOINT`` (a ``dir`` checkpoint; empty = random DiR built from
``MODEL.DIR.CHANNELS/BLOCKS/PILOT_WIDTH/GN_GROUPS/NORM``, unset = dir's defaults), ``MODEL.DIR.OUT_FEATURES`` (subset of s4 s8 s16 s32),
``MODEL.DIR.TRAIN_ALIGNMENT`` / ``TRAIN_PILOT`` / ``TRAIN_ENCODER`` (task-aligned refinement; other DiR parts frozen).
DiR takes sRGB in [0, 1]: the YAMLs set ``INPUT.FORMAT: RGB``, ``PIXEL_MEAN: [0, 0, 0]``, ``PIXEL_STD: [255]*3``.
"""
from __future__ import annotations

import argparse
import os
from typing import Sequence

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

from .backbones import DIR_KEYS, configure_dir_trainable, freeze_frozen_batchnorm


def add_dir_config(cfg: CN) -> CN:
    """Add the ``MODEL.DIR`` keys (defaults: a random DiRNet of ``dir``'s default size, alignment trainable)."""
    cfg.MODEL.DIR = CN()
    cfg.MODEL.DIR.CHECKPOINT = ""
    # architecture of a DiR built without a checkpoint; empty / 0 = dir.config.ModelConfig's default
    cfg.MODEL.DIR.CHANNELS = []
    cfg.MODEL.DIR.BLOCKS = []
    cfg.MODEL.DIR.PILOT_WIDTH = 0.0
    cfg.MODEL.DIR.GN_GROUPS = 0
    cfg.MODEL.DIR.NORM = ""
    cfg.MODEL.DIR.OUT_FEATURES = list(DIR_KEYS)
    cfg.MODEL.DIR.TRAIN_ALIGNMENT = True
    cfg.MODEL.DIR.TRAIN_PILOT = False
    cfg.MODEL.DIR.TRAIN_ENCODER = False
    return cfg


def get_dir_cfg(config_file: str | None = None, opts: Sequence[str] | None = None) -> CN:
    """detectron2's default config + DiR keys, merged with ``config_file`` and ``opts`` (KEY VALUE list)."""
    cfg = add_dir_config(get_cfg())
    if config_file:
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"detectron2 config not found: {config_file}")
        cfg.merge_from_file(config_file)
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


class DiRD2Backbone(Backbone):
    """DiRNet r+ as a detectron2 backbone: ``forward(x (B,3,H,W) in [0,1]) -> {name: (B,C,H/s,W/s)}``.

    ``output_shape()`` -> ``{name: ShapeSpec(channels, stride)}`` for ``out_features`` (s4 s8 s16 s32)."""

    def __init__(self, dirnet: torch.nn.Module, out_features: Sequence[str] = DIR_KEYS) -> None:
        super().__init__()
        bad = [f for f in out_features if f not in DIR_KEYS]
        if bad:
            raise ValueError(f"MODEL.DIR.OUT_FEATURES {bad} not in {list(DIR_KEYS)}")
        self.net = dirnet
        self._out_features = list(out_features)
        self._out_feature_channels = {k: int(dirnet.out_channels[k]) for k in self._out_features}
        self._out_feature_strides = {k: int(dirnet.strides[k]) for k in self._out_features}

    def train(self, mode: bool = True) -> "DiRD2Backbone":
        super().train(mode)
        freeze_frozen_batchnorm(self.net)
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.net.forward_features(x.clamp(0.0, 1.0))
        return {k: feats[k] for k in self._out_features}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {k: ShapeSpec(channels=self._out_feature_channels[k], stride=self._out_feature_strides[k])
                for k in self._out_features}

    @property
    def size_divisibility(self) -> int:
        return 32


def _dirnet_from_cfg(cfg: CN) -> torch.nn.Module:
    d = cfg.MODEL.DIR
    if d.CHECKPOINT:
        from dir.checkpoint import load_dirnet

        if not os.path.isfile(d.CHECKPOINT):
            raise FileNotFoundError(f"DiR checkpoint not found: {d.CHECKPOINT} (MODEL.DIR.CHECKPOINT)")
        net = load_dirnet(d.CHECKPOINT)
    else:
        from dir.model import build_dirnet

        arch = {"channels": list(d.CHANNELS), "blocks": list(d.BLOCKS), "pilot_width": float(d.PILOT_WIDTH),
                "gn_groups": int(d.GN_GROUPS), "norm": str(d.NORM)}
        net = build_dirnet({k: v for k, v in arch.items() if v})  # unset keys: dir's defaults
    configure_dir_trainable(net, d.TRAIN_ALIGNMENT, d.TRAIN_ENCODER, d.TRAIN_PILOT)
    return net


def build_dir_backbone(cfg: CN, input_shape: ShapeSpec) -> DiRD2Backbone:
    """Plain DiR backbone (features ``MODEL.DIR.OUT_FEATURES``), e.g. for single-level heads on ``s16``."""
    if input_shape.channels not in (None, 3):
        raise ValueError(f"DiR needs 3-channel sRGB input, got {input_shape.channels} channels")
    return DiRD2Backbone(_dirnet_from_cfg(cfg), cfg.MODEL.DIR.OUT_FEATURES)


def build_dir_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> FPN:
    """DiR + detectron2 FPN (``MODEL.FPN.IN_FEATURES`` of s4..s32 -> p2..p5, p6 by max-pool)."""
    bottom_up = build_dir_backbone(cfg, input_shape)
    return FPN(bottom_up=bottom_up, in_features=cfg.MODEL.FPN.IN_FEATURES, out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
               norm=cfg.MODEL.FPN.NORM, top_block=LastLevelMaxPool(), fuse_type=cfg.MODEL.FPN.FUSE_TYPE)


for _fn in (build_dir_backbone, build_dir_fpn_backbone):
    if _fn.__name__ not in BACKBONE_REGISTRY:  # re-imports (e.g. importlib.reload) must not double-register
        BACKBONE_REGISTRY.register(_fn)


def register_coco_dataset(name: str, ann_file: str, image_dir: str) -> str:
    """Register a COCO-format dataset (e.g. the procedural one) in detectron2's catalogs under ``name``."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, ann_file, image_dir)
    return name


def main(argv: list[str] | None = None) -> int:
    """Train with detectron2's DefaultTrainer (COCO evaluation on DATASETS.TEST)."""
    from detectron2.engine import DefaultTrainer, default_setup
    from detectron2.evaluation import COCOEvaluator

    ap = argparse.ArgumentParser(description="train a DiR Faster/Mask R-CNN with detectron2")
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--procedural", help="register the procedural dataset in this folder as procedural_train/_val "
                                         "(generated with default settings when missing)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--eval-only", action="store_true")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)
    if args.procedural:
        from .data.procedural import existing_dataset, make_dataset

        paths = existing_dataset(args.procedural) or make_dataset(args.procedural)
        for split in ("train", "val"):
            register_coco_dataset(f"procedural_{split}", paths[split]["annotations"], paths[split]["images"])
    cfg = get_dir_cfg(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            return COCOEvaluator(dataset_name, output_dir=output_folder or os.path.join(cfg.OUTPUT_DIR, "eval"))

    if args.eval_only:
        from detectron2.checkpoint import DetectionCheckpointer

        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        print(Trainer.test(cfg, model))
        return 0
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    trainer.train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
