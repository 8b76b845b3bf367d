"""Backbones (+FPN) for torchvision's Faster/Mask R-CNN: DiR representations and a like-for-like ResNet baseline.

* :class:`DiRFPNBackbone` wraps any module with ``forward_features(x) -> OrderedDict{"s4","s8","s16","s32"}`` and
  ``out_channels`` / ``strides`` dicts (``dir.model.DiRNet``) with a torchvision ``FeaturePyramidNetwork`` +
  ``LastLevelMaxPool``. Output: OrderedDict ``"0","1","2","3","pool"`` (strides 4..64), ``out_channels`` channels
  each, which is what torchvision's R-CNN heads expect. Input: sRGB (B,3,H,W) in [0,1] (the detector's transform
  uses mean 0 / std 1 for DiR, so DiR sees the image exactly as its own training did).
* :class:`ResNetBody` + FPN (torchvision ``BackboneWithFPN``): a ResNet-18/34/50 with configurable base width
  (64 = torchvision's, loadable from a local ``torchvision`` state-dict file; smaller widths match DiR's parameter
  count), GroupNorm / BatchNorm / FrozenBatchNorm.
* :func:`build_detector` assembles ``FasterRCNN`` / ``MaskRCNN`` from a :class:`DetectorConfig`.

Task-aligned refinement (as in the DiR paper): ``train_alignment`` makes DiR's alignment network trainable (and the
pilot with ``train_pilot``), ``train_encoder`` the encoder; every other DiR part stays frozen.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

log = logging.getLogger(__name__)

DIR_KEYS = ("s4", "s8", "s16", "s32")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector (stored in checkpoints as a plain dict).

    kind: "faster" | "mask". backbone: "dir" | "resnet". num_classes: object categories WITHOUT background
    (the torchvision head gets ``num_classes + 1``; 0 = take it from the training data). min_size / max_size: the detector's resize (pixels).
    fpn_channels: FPN width. box_head_dim: width of the two-layer box MLP (torchvision: 1024). mask_head_channels:
    width of the four mask-head convs (torchvision: 256). anchor_sizes: one size per FPN level (P2..P6), aspect_ratios shared by all levels.
    dir_checkpoint: a ``dir`` checkpoint (``dir.checkpoint.load_dirnet``); empty -> a DiRNet built from
    ``dir_model`` (a dict of ``dir.config.ModelConfig`` fields) with random weights.
    train_alignment / train_pilot / train_encoder: which DiR parts the detection loss updates (rest frozen).
    dist_reg_weight: weight of DiR's distribution-level regulariser on r+ during refinement (0 = off).
    resnet_depth (18/34/50), resnet_width (base width; 64 = torchvision), resnet_norm ("gn" | "bn" | "frozen_bn"),
    resnet_weights: local torchvision-format state-dict file (loaded with weights_only=True; needs width 64),
    resnet_trainable_layers: 0..5 (from the top) when starting from weights.
    detector_kwargs: extra keyword arguments for torchvision's FasterRCNN/MaskRCNN (e.g. rpn_post_nms_top_n_train).
    """

    kind: str = "mask"
    backbone: str = "dir"
    num_classes: int = 0
    min_size: int = 800
    max_size: int = 1333
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_channels: int = 256
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    dir_checkpoint: str = ""
    dir_model: dict = field(default_factory=dict)
    train_alignment: bool = True
    train_pilot: bool = False
    train_encoder: bool = False
    dist_reg_weight: float = 0.0
    resnet_depth: int = 18
    resnet_width: int = 64
    resnet_norm: str = "gn"
    resnet_weights: str = ""
    resnet_trainable_layers: int = 5
    detector_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.anchor_sizes = tuple(int(s) for s in self.anchor_sizes)
        self.aspect_ratios = tuple(float(a) for a in self.aspect_ratios)
        if self.kind not in ("faster", "mask"):
            raise ValueError(f"model.kind must be 'faster' or 'mask', got {self.kind!r}")
        if self.backbone not in ("dir", "resnet"):
            raise ValueError(f"model.backbone must be 'dir' or 'resnet', got {self.backbone!r}")
        if int(self.num_classes) < 0:
            raise ValueError(f"model.num_classes (object categories, no background) must be >= 0, "
                             f"got {self.num_classes}")
        if min(self.fpn_channels, self.box_head_dim, self.mask_head_channels) < 1:
            raise ValueError("model.fpn_channels, box_head_dim and mask_head_channels must be >= 1")
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"model.anchor_sizes needs 5 sizes (P2..P6), got {list(self.anchor_sizes)}")
        if self.resnet_depth not in (18, 34, 50):
            raise ValueError(f"model.resnet_depth must be 18, 34 or 50, got {self.resnet_depth}")
        if self.resnet_norm not in ("gn", "bn", "frozen_bn"):
            raise ValueError(f"model.resnet_norm must be 'gn', 'bn' or 'frozen_bn', got {self.resnet_norm!r}")
        if not 0 <= int(self.resnet_trainable_layers) <= 5:
            raise ValueError("model.resnet_trainable_layers must be in 0..5")

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form (lists, not tuples) for YAML / checkpoints."""
        d = dataclasses.asdict(self)
        d["anchor_sizes"] = list(self.anchor_sizes)
        d["aspect_ratios"] = list(self.aspect_ratios)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "model") -> "DetectorConfig":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown key(s) in '{where}': {unknown}; allowed: {sorted(names)}")
        return cls(**d)


# --------------------------------------------------------------------------------------------------- DiR backbone
class DiRFPNBackbone(nn.Module):
    """DiR representation r+ -> FPN. ``forward(x (B,3,H,W) sRGB [0,1]) -> OrderedDict "0".."3","pool"``.

    ``body`` needs ``forward_features``, ``out_channels`` and ``strides`` (dicts keyed s4..s32). In training mode,
    when ``dist_reg_weight > 0`` and the body has reference statistics, ``self.aux_losses`` holds DiR's
    distribution-level regulariser of the last forward pass (the training loop adds it to the detection loss).
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, dist_reg_weight: float = 0.0) -> None:
        super().__init__()
        for attr in ("forward_features", "out_channels", "strides"):
            if not hasattr(body, attr):
                raise TypeError(f"DiR backbone body {type(body).__name__} lacks '{attr}'")
        missing = [k for k in DIR_KEYS if k not in body.out_channels]
        if missing:
            raise ValueError(f"DiR body out_channels lacks scales {missing}")
        expected = {"s4": 4, "s8": 8, "s16": 16, "s32": 32}
        if any(int(body.strides[k]) != v for k, v in expected.items()):
            raise ValueError(f"DiR body strides must be {expected}, got {dict(body.strides)}")
        self.body = body
        self.in_channels = [int(body.out_channels[k]) for k in DIR_KEYS]
        self.fpn = FeaturePyramidNetwork(self.in_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.strides = {"0": 4, "1": 8, "2": 16, "3": 32, "pool": 64}
        self.dist_reg_weight = float(dist_reg_weight)
        self.aux_losses: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> "DiRFPNBackbone":
        super().train(mode)
        freeze_frozen_batchnorm(self.body)
        return self

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body.forward_features(x.clamp(0.0, 1.0))
        self.aux_losses = {}
        if (self.training and self.dist_reg_weight > 0 and hasattr(self.body, "distribution_regularizer")
                and bool(getattr(self.body, "ref_stats_valid", False))
                and any(p.requires_grad for p in self.body.parameters())):
            self.aux_losses["loss_dir_dist"] = self.dist_reg_weight * self.body.distribution_regularizer(feats)
        return self.fpn(OrderedDict((str(i), feats[k]) for i, k in enumerate(DIR_KEYS)))


def freeze_frozen_batchnorm(module: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are all frozen in eval mode, so training the detector does not
    change the running statistics of a frozen DiR part (GroupNorm / no-norm DiRs are unaffected)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def load_dir_body(cfg: DetectorConfig, weights: bool = True) -> nn.Module:
    """The DiRNet for ``cfg``: from ``cfg.dir_checkpoint`` (when ``weights``) or built from ``cfg.dir_model``.

    Also records the full DiR architecture in ``cfg.dir_model`` so a detector checkpoint can rebuild it without the
    DiR checkpoint file and independently of ``dir``'s defaults."""
    if cfg.dir_checkpoint and weights:
        path = Path(cfg.dir_checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"DiR checkpoint not found: {path} (model.dir_checkpoint)")
        from dir.checkpoint import load_dirnet

        net = load_dirnet(str(path))
        model_cfg = getattr(net, "cfg", None)
        if model_cfg is not None and dataclasses.is_dataclass(model_cfg):
            cfg.dir_model = _plain(dataclasses.asdict(model_cfg))
        return net
    from dir.model import build_dirnet

    dir_model = dict(cfg.dir_model)
    if _is_pre_restore_skip_record(dir_model):
        # recorded (every field) before dir's ModelConfig got ``restore_skip``: the DiRNet then had the old
        # restoration decoder, so rebuild that one and the detector's stored weights fit (detection never uses it)
        dir_model["restore_skip"] = False
        cfg.dir_model = dir_model
    net = build_dirnet(dir_model)
    model_cfg = getattr(net, "cfg", None)
    if model_cfg is not None and dataclasses.is_dataclass(model_cfg):
        # record every architecture field, so checkpoints do not depend on dir's defaults of the day
        cfg.dir_model = _plain(dataclasses.asdict(model_cfg))
    return net


_DIR_FIELDS_BEFORE_RESTORE_SKIP = frozenset(
    ("channels", "blocks", "pilot_width", "pilot_init", "decoder_channels", "proj_dim", "gn_groups", "norm"))


def _is_pre_restore_skip_record(dir_model: dict) -> bool:
    """True for a full DiR architecture record written before ``dir.config.ModelConfig.restore_skip`` existed."""
    return "restore_skip" not in dir_model and _DIR_FIELDS_BEFORE_RESTORE_SKIP <= set(dir_model)


def configure_dir_trainable(body: nn.Module, train_alignment: bool, train_encoder: bool,
                            train_pilot: bool = False) -> list[nn.Parameter]:
    """Freeze every DiR parameter, then unfreeze the alignment network / pilot / encoder as asked.

    Returns the trainable DiR parameters. Needs ``alignment_parameters()`` (and ``.encoder`` / ``.pilot``)."""
    for p in body.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    if train_alignment:
        if not hasattr(body, "alignment_parameters"):
            raise TypeError(f"{type(body).__name__} has no alignment_parameters(); cannot train the alignment")
        params += list(body.alignment_parameters())
    if train_pilot:
        if not hasattr(body, "pilot"):
            raise TypeError(f"{type(body).__name__} has no .pilot; cannot train it")
        params += list(body.pilot.parameters())
    if train_encoder:
        if not hasattr(body, "encoder"):
            raise TypeError(f"{type(body).__name__} has no .encoder; cannot train it")
        params += list(body.encoder.parameters())
    seen: set[int] = set()
    unique = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            p.requires_grad_(True)
            unique.append(p)
    return unique


# --------------------------------------------------------------------------------------------------- ResNet body
def _norm_factory(kind: str, max_groups: int = 16) -> Callable[[int], nn.Module]:
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "gn":
        def gn(c: int) -> nn.Module:
            g = max(d for d in range(1, min(max_groups, c) + 1) if c % d == 0)
            return nn.GroupNorm(g, c)
        return gn
    raise ValueError(f"unknown norm {kind!r}")


class ResNetBody(nn.Module):
    """ResNet-18/34/50 trunk with base width ``width`` (64 = torchvision; same parameter names, so torchvision
    state dicts load). ``forward(x) -> OrderedDict layer1..layer4`` (strides 4..32)."""

    LAYERS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)), 50: (Bottleneck, (3, 4, 6, 3))}

    def __init__(self, depth: int = 18, width: int = 64, norm: str = "gn") -> None:
        super().__init__()
        block, layers = self.LAYERS[depth]
        norm_layer = _norm_factory(norm)
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0], 1, norm_layer)
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2, norm_layer)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2, norm_layer)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2, norm_layer)
        self.out_channels_list = [width * m * block.expansion for m in (1, 2, 4, 8)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last norm of each residual branch (stable from-scratch training)
            last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
            if isinstance(m, (Bottleneck, BasicBlock)) and isinstance(last, (nn.GroupNorm, nn.BatchNorm2d)):
                nn.init.zeros_(last.weight)

    def _make_layer(self, block, planes, blocks, stride, norm_layer) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                 norm_layer(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, down, norm_layer=norm_layer)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, norm_layer=norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # used through IntermediateLayerGetter
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_resnet_fpn(cfg: DetectorConfig) -> BackboneWithFPN:
    """ResNet trunk (+ optional local weights) + FPN with LastLevelMaxPool; ``out_channels = cfg.fpn_channels``."""
    body = ResNetBody(cfg.resnet_depth, cfg.resnet_width, cfg.resnet_norm)
    if cfg.resnet_weights:
        path = Path(cfg.resnet_weights)
        if not path.is_file():
            raise FileNotFoundError(f"ResNet weights file not found: {path} (model.resnet_weights)")
        if cfg.resnet_width != 64:
            raise ValueError(f"{path}: pretrained torchvision weights need resnet_width 64, got {cfg.resnet_width}")
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        if cfg.resnet_norm == "gn":
            raise ValueError(f"{path}: torchvision ResNet weights are BatchNorm weights; use resnet_norm "
                             "'frozen_bn' or 'bn' with them")
        own = body.state_dict()
        sd = {k: v for k, v in sd.items() if k in own or not k.endswith("num_batches_tracked")}
        missing, unexpected = body.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"{path} does not match ResNet-{cfg.resnet_depth}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][: cfg.resnet_trainable_layers]
        if cfg.resnet_trainable_layers == 5:
            layers.append("bn1")
        for name, p in body.named_parameters():
            if all(not name.startswith(layer) for layer in layers):
                p.requires_grad_(False)
    return BackboneWithFPN(body, {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
                           body.out_channels_list, cfg.fpn_channels, extra_blocks=LastLevelMaxPool())


# --------------------------------------------------------------------------------------------------- detectors
def build_backbone(cfg: DetectorConfig, dir_weights: bool = True) -> nn.Module:
    """The FPN backbone for ``cfg`` (``out_channels`` attr; forward -> OrderedDict "0".."3","pool")."""
    if cfg.backbone == "dir":
        body = load_dir_body(cfg, weights=dir_weights)
        configure_dir_trainable(body, cfg.train_alignment, cfg.train_encoder, cfg.train_pilot)
        return DiRFPNBackbone(body, cfg.fpn_channels, cfg.dist_reg_weight)
    return build_resnet_fpn(cfg)


def build_detector_from_config(cfg: DetectorConfig, dir_weights: bool = True) -> nn.Module:
    """torchvision ``FasterRCNN``/``MaskRCNN`` for ``cfg``; the returned model has ``.config`` (a DetectorConfig).

    ``dir_weights=False`` skips loading the DiR checkpoint (used when a full detector state dict follows)."""
    if int(cfg.num_classes) < 1:
        raise ValueError("model.num_classes must be >= 1 to build a detector (0 means 'from the data', which the "
                         "training script fills in)")
    backbone = build_backbone(cfg, dir_weights)
    anchors = AnchorGenerator(sizes=tuple((s,) for s in cfg.anchor_sizes),
                              aspect_ratios=(tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
    if cfg.backbone == "dir":
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # DiR takes sRGB in [0, 1]
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    kwargs = dict(min_size=cfg.min_size, max_size=cfg.max_size, image_mean=list(mean), image_std=list(std),
                  rpn_anchor_generator=anchors)
    c, k = cfg.fpn_channels, int(cfg.num_classes) + 1
    kwargs["box_head"] = TwoMLPHead(c * 7 * 7, cfg.box_head_dim)
    kwargs["box_predictor"] = FastRCNNPredictor(cfg.box_head_dim, k)
    if cfg.kind == "mask":
        m = cfg.mask_head_channels
        kwargs["mask_head"] = MaskRCNNHeads(c, (m, m, m, m), 1)
        kwargs["mask_predictor"] = MaskRCNNPredictor(m, m, k)
    kwargs.update(cfg.detector_kwargs)
    cls = MaskRCNN if cfg.kind == "mask" else FasterRCNN
    try:
        model = cls(backbone, num_classes=None, **kwargs)
    except TypeError as e:
        raise ValueError(f"bad model.detector_kwargs {sorted(cfg.detector_kwargs)}: {e}") from e
    model.config = cfg
    return model


def build_detector(kind: str = "mask", backbone: str = "dir", num_classes: int = 1, min_size: int = 800,
                   max_size: int = 1333, **kwargs) -> nn.Module:
    """Build a torchvision Faster/Mask R-CNN with a DiR or ResNet FPN backbone.

    ``num_classes`` counts object categories without background. Other keyword arguments are
    :class:`DetectorConfig` fields (e.g. ``dir_checkpoint``, ``train_encoder``, ``resnet_width``, ``anchor_sizes``).
    Images go in as a list of (3, H, W) sRGB tensors in [0, 1] (torchvision's detection API)."""
    cfg = DetectorConfig.from_dict(dict(kind=kind, backbone=backbone, num_classes=num_classes, min_size=min_size,
                                        max_size=max_size, **kwargs), where="build_detector")
    return build_detector_from_config(cfg)


def aux_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    """Extra losses the backbone recorded in its last training forward (DiR distribution regulariser)."""
    m = model.module if hasattr(model, "module") else model
    return dict(getattr(m.backbone, "aux_losses", {}) or {})


# --------------------------------------------------------------------------------------------------- counting
def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def used_backbone_parameters(model: nn.Module, size: int = 64) -> int:
    """Parameters of the backbone trunk that take part in the forward pass (DiR's decoder, for instance, does not).

    Found with autograd on a ``size``x``size`` input; requires_grad flags are restored afterwards."""
    bb = model.backbone
    body = bb.body
    flags = {id(p): p.requires_grad for p in body.parameters()}
    try:
        for p in body.parameters():
            p.requires_grad_(True)
            p.grad = None
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        feats = body.forward_features(x) if hasattr(body, "forward_features") else body(x)
        sum(f.float().mean() for f in feats.values()).backward()
        used = sum(p.numel() for p in body.parameters() if p.grad is not None)
    finally:
        for p in body.parameters():
            p.grad = None
            p.requires_grad_(flags[id(p)])
    return used


def parameter_report(model: nn.Module) -> dict[str, int]:
    """Parameter counts: whole detector, trainable, backbone trunk (all / used in forward), FPN, heads."""
    bb = model.backbone
    trunk = count_parameters(bb.body)
    fpn = count_parameters(bb.fpn)
    return {
        "total": count_parameters(model),
        "trainable": count_parameters(model, trainable_only=True),
        "trunk": trunk,
        "trunk_used": used_backbone_parameters(model),
        "fpn": fpn,
        "heads": count_parameters(model) - trunk - fpn,
    }


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v

