"""DiRNet: degradation-independent representations for camera-ISP pipelines (after Guo, Luo & Wu, CVPR 2024).

Networks (all take/return ``(B, C, H, W)`` float tensors; images are gamma-encoded sRGB in [0, 1]):

* :class:`DiREncoder` ``E`` - ResNet-style CNN, features at strides 4/8/16/32 (keys ``s4 s8 s16 s32``).
  Trained by multi-view mutual-information maximisation (stage ``mmi``); ``r0 = E(x_degraded)`` is the baseline
  representation.
* :class:`DfRAutoencoder` ``(E*, D*)`` - the degradation-free reference, an autoencoder trained on clean images only
  (stage ``dfr``); ``r* = E*(x_clean)``.
* :class:`Pilot` ``P`` - an encoder estimating ``r-> = P(x_degraded) ~ r*`` (by default started from E*; optionally
  a lighter one trained from scratch).
* :class:`AlignBlock` ``A_s`` (one per scale) - ``r+_s = A_s(r0_s, r->_s) = r->_s + correction(r0_s, r->_s)``, a
  FiLM-conditioned residual refinement.
* :class:`RestorationDecoder` ``R`` / ``D*`` - U-Net-style decoder from the 4-scale representation to sRGB;
  ``R`` (and the plain baseline's decoder) also has a shallow full-resolution branch on the degraded input and a
  global residual, ``y = x + R(r+, x)``; the DfR decoder ``D*`` has no input path.
* :class:`DiRNet` - E, P, A, R bundled for inference: :meth:`DiRNet.forward_features` returns ``r+``,
  :meth:`DiRNet.restore` the restored image.
* :class:`PlainEncDec` - the same-size encoder-decoder baseline trained directly on degraded -> clean.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from torch import nn

from .config import DiRConfig, ModelConfig

SCALES = ("s4", "s8", "s16", "s32")
STRIDES = {"s4": 4, "s8": 8, "s16": 16, "s32": 32}
MIN_SIDE = 32  # smallest accepted image side (one pixel at stride 32)


class DiRInputError(ValueError):
    """Raised when an input image batch has the wrong type, shape, dtype or value range."""


def check_image_batch(x: object, name: str = "x", check_range: bool = True) -> torch.Tensor:
    """Validate an sRGB batch: a floating ``torch.Tensor`` of shape ``(B, 3, H, W)``, ``H, W >= 32``, finite,
    values in [0, 1] (tolerance 1e-3). Returns ``x`` unchanged; raises :class:`DiRInputError` naming the problem."""
    if not isinstance(x, torch.Tensor):
        raise DiRInputError(f"{name} must be a torch.Tensor of shape (B, 3, H, W), got {type(x).__name__}")
    if x.ndim != 4:
        raise DiRInputError(f"{name} must have 4 dims (B, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise DiRInputError(f"{name} must have 3 channels (sRGB) in dim 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise DiRInputError(f"{name} must be a floating tensor with sRGB values in [0, 1], got dtype {x.dtype} "
                            "(convert uint8 images with x.float() / 255)")
    if x.shape[0] < 1 or min(x.shape[2], x.shape[3]) < MIN_SIDE:
        raise DiRInputError(f"{name} must have B >= 1 and H, W >= {MIN_SIDE}, got shape {tuple(x.shape)}")
    if check_range:
        lo, hi = torch.aminmax(x.detach())
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DiRInputError(f"{name} contains NaN or Inf")
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise DiRInputError(f"{name} must be sRGB in [0, 1], got values in [{lo:.4g}, {hi:.4g}] "
                                "(did you pass 0..255 or mean/std-normalised images?)")
    return x


def check_matches_model(x: torch.Tensor, module: nn.Module, name: str = "x") -> torch.Tensor:
    """After :func:`check_image_batch`: ``x`` must be on the device of ``module``'s weights and have their dtype
    (any floating dtype is accepted inside ``torch.autocast``). Raises :class:`DiRInputError` naming the fix."""
    p = next(module.parameters(), None)
    if p is None:
        return x
    if x.device != p.device:
        raise DiRInputError(f"{name} is on {x.device} but the model is on {p.device}; move it with "
                            f"{name}.to({str(p.device)!r})")
    if x.dtype != p.dtype and not torch.is_autocast_enabled(x.device.type):
        raise DiRInputError(f"{name} has dtype {x.dtype} but the model's weights are {p.dtype}; convert it with "
                            f"{name}.to({p.dtype}) (or run under torch.autocast)")
    return x


def _norm(channels: int, norm: str = "none", groups: int = 8) -> dict | None:
    """mmcv norm config: ``"none"`` -> None (default: per-sample normalisation such as GroupNorm removes the
    absolute intensity that restoration needs, and slowed the autoencoder's training about 2x in our runs),
    ``"gn"`` -> GroupNorm with the largest group count <= ``groups`` dividing ``channels``, ``"bn"`` -> BatchNorm."""
    if norm == "none":
        return None
    if norm == "gn":
        g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
        return dict(type="GN", num_groups=g)
    if norm == "bn":
        return dict(type="BN")
    raise ValueError(f"unknown norm {norm!r} (use 'none', 'gn' or 'bn')")


class BasicBlock(nn.Module):
    """Residual block: two 3x3 ConvModules (conv-GN-ReLU) with a projected shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 8, norm: str = "none"):
        super().__init__()
        self.conv1 = ConvModule(cin, cout, 3, stride, 1, norm_cfg=_norm(cout, norm, groups))
        self.conv2 = ConvModule(cout, cout, 3, 1, 1, norm_cfg=_norm(cout, norm, groups), act_cfg=None)
        self.short = (nn.Identity() if stride == 1 and cin == cout else
                      ConvModule(cin, cout, 1, stride, 0, norm_cfg=_norm(cout, norm, groups), act_cfg=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.short(x))


class DiREncoder(nn.Module):
    """ResNet-style encoder. Input sRGB ``(B,3,H,W)`` in [0,1]; output OrderedDict ``s4..s32`` with
    ``channels[i]`` channels at stride ``4 * 2**i`` (spatial size ``ceil(H / stride)``). Non-negative (post-ReLU)."""

    def __init__(self, channels=(32, 64, 128, 256), blocks=(1, 1, 1, 1), groups: int = 8, norm: str = "none"):
        super().__init__()
        c0 = channels[0]
        self.stem = nn.Sequential(
            ConvModule(3, max(c0 // 2, 8), 3, 2, 1, norm_cfg=_norm(max(c0 // 2, 8), norm, groups)),
            ConvModule(max(c0 // 2, 8), c0, 3, 2, 1, norm_cfg=_norm(c0, norm, groups)))
        stages = []
        cin = c0
        for i, (c, n) in enumerate(zip(channels, blocks)):
            layers = [BasicBlock(cin, c, 1 if i == 0 else 2, groups, norm)]
            layers += [BasicBlock(c, c, 1, groups, norm) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.out_channels = OrderedDict(zip(SCALES, [int(c) for c in channels]))

    def forward(self, x: torch.Tensor) -> OrderedDict:
        h = self.stem((x - 0.5) / 0.25)
        out = OrderedDict()
        for key, stage in zip(SCALES, self.stages):
            h = stage(h)
            out[key] = h
        return out


class RestorationDecoder(nn.Module):
    """U-Net-style decoder: 4-scale features (channels ``in_channels``) -> sRGB ``(B,3,H,W)``.

    Representation path (shared by both variants): ``d32 = conv(f32)``; ``d_s = conv([up(d_{2s}), f_s])`` for
    s = 16, 8, 4; ``d2 = up1(up(d4))`` (stride 2, ``c_half`` channels); ``d1 = up2(up(d2))`` (full resolution,
    ``c_full`` channels).

    * ``input_skip=False`` (the DfR decoder D*): ``y = head(d1) + 0.5``. It sees *only* the features, so it cannot
      pass its input image through: the representation r* must carry the content. Call as ``dec(feats, out_size)``.
    * ``input_skip=True`` (the restoration decoder R of DiR and the plain baseline's decoder): a shallow branch on
      the degraded input ``x`` gives full-resolution features ``s1 = skip1(x)`` (two 3x3 conv-ReLU) and stride-2
      features ``s2 = skip2(s1)`` (3x3 stride-2 conv-ReLU); they are fused into the last two stages,
      ``d2 = mix2([up1(up(d4)), s2])``, ``d1 = mix1([up2(up(d2)), s1])`` (3x3 conv-ReLU), and the output is a
      global residual ``y = x + head(d1)``. ``head`` is zero-initialised, so the decoder starts as the identity
      ``y = x`` (the degraded input's PSNR) and learns the correction. Call as ``dec(feats, x)``.

    The layers of the representation path have the same names and shapes in both variants, so R can be started
    from D* with :meth:`init_from_dfr` (the skip branch, the mixers and the head stay fresh)."""

    def __init__(self, in_channels=(32, 64, 128, 256), dec_channels=None, groups: int = 8, norm: str = "none",
                 input_skip: bool = False):
        super().__init__()
        dec = tuple(dec_channels or in_channels)
        self.input_skip = bool(input_skip)
        self.top = ConvModule(in_channels[3], dec[3], 3, 1, 1, norm_cfg=_norm(dec[3], norm, groups))
        self.fuse = nn.ModuleList([
            ConvModule(dec[i + 1] + in_channels[i], dec[i], 3, 1, 1, norm_cfg=_norm(dec[i], norm, groups))
            for i in (2, 1, 0)])
        c_half, c_full = max(dec[0] // 2, 8), max(dec[0] // 4, 8)
        self.up1 = ConvModule(dec[0], c_half, 3, 1, 1, norm_cfg=_norm(c_half, norm, groups))
        self.up2 = ConvModule(c_half, c_full, 3, 1, 1, norm_cfg=None)
        if self.input_skip:
            # no normalisation on the full-resolution path: it must keep the absolute intensity of x
            self.skip1 = nn.Sequential(ConvModule(3, c_full, 3, 1, 1, norm_cfg=None),
                                       ConvModule(c_full, c_full, 3, 1, 1, norm_cfg=None))
            self.skip2 = ConvModule(c_full, c_half, 3, 2, 1, norm_cfg=None)
            self.mix2 = ConvModule(2 * c_half, c_half, 3, 1, 1, norm_cfg=None)
            self.mix1 = ConvModule(2 * c_full, c_full, 3, 1, 1, norm_cfg=None)
        self.head = nn.Conv2d(c_full, 3, 3, 1, 1)
        # zero head: D* starts as a constant grey (0.5) image, R as the identity y = x
        self.head._zero_init = True
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, feats: dict, x_or_size) -> torch.Tensor:
        """``feats``: dict ``s4..s32``. Second argument: the degraded input ``x (B,3,H,W)`` when ``input_skip``
        (required), else the output size ``(H, W)`` (a tensor is accepted too; only its size is used)."""
        if self.input_skip:
            if not isinstance(x_or_size, torch.Tensor) or x_or_size.ndim != 4:
                raise TypeError("a decoder with input_skip needs the input image x (B,3,H,W) as second argument")
            x = x_or_size
            out_size = tuple(x.shape[-2:])
            s1 = self.skip1((x - 0.5) / 0.25)
            s2 = self.skip2(s1)
        else:
            x = None
            out_size = tuple(x_or_size.shape[-2:]) if isinstance(x_or_size, torch.Tensor) else tuple(x_or_size)
        d = self.top(feats["s32"])
        for conv, key in zip(self.fuse, ("s16", "s8", "s4")):
            f = feats[key]
            d = F.interpolate(d, size=f.shape[-2:], mode="bilinear", align_corners=False)
            d = conv(torch.cat([d, f], 1))
        h4, w4 = d.shape[-2:]
        half = s2.shape[-2:] if x is not None else (min(2 * h4, out_size[0]), min(2 * w4, out_size[1]))
        d = self.up1(F.interpolate(d, size=tuple(half), mode="bilinear", align_corners=False))
        if x is not None:
            d = self.mix2(torch.cat([d, s2], 1))
        d = self.up2(F.interpolate(d, size=out_size, mode="bilinear", align_corners=False))
        if x is not None:
            return x + self.head(self.mix1(torch.cat([d, s1], 1)))
        return self.head(d) + 0.5

    SHARED = ("top", "fuse", "up1", "up2")

    @torch.no_grad()
    def init_from_dfr(self, dfr_decoder: "RestorationDecoder") -> None:
        """Copy the representation-path layers (``top``, ``fuse``, ``up1``, ``up2``) of the DfR decoder D*; the
        input branch, the mixers and the (zero) head keep their initialisation, so R still starts as ``y = x``.
        Without ``input_skip`` (the old decoder) the whole of D*, head included, is copied."""
        if dfr_decoder.input_skip:
            raise ValueError("the DfR decoder must not have an input path")
        if not self.input_skip:
            self.load_state_dict(dfr_decoder.state_dict())
            return
        for name in self.SHARED:
            getattr(self, name).load_state_dict(getattr(dfr_decoder, name).state_dict())


class Pilot(nn.Module):
    """Pilot encoder ``P``: an encoder of widths ``channels * width`` with a 1x1 conv per scale to the DfR widths,
    giving a *standardised* estimate ``(r-> - mu*) / sigma*`` of the clean reference from the degraded input.

    With ``width = 1`` it has the DfR encoder's architecture and stage ``align`` can start it from E* (see
    :meth:`init_from_dfr`): then ``r-> = E*(x_degraded)`` at the start, and training teaches it to undo the
    degradation. With ``width < 1`` it is a lighter network trained from scratch."""

    def __init__(self, channels=(32, 64, 128, 256), width: float = 1.0, groups: int = 8, norm: str = "none",
                 blocks=(1, 1, 1, 1)):
        super().__init__()
        small = tuple(max(8, int(round(c * width))) for c in channels)
        self.body = DiREncoder(small, blocks, groups, norm)
        self.to_ref = nn.ModuleDict({k: nn.Conv2d(cs, c, 1) for k, cs, c in zip(SCALES, small, channels)})

    def forward(self, x: torch.Tensor) -> OrderedDict:
        f = self.body(x)
        return OrderedDict((k, self.to_ref[k](f[k])) for k in SCALES)

    @torch.no_grad()
    def init_from_dfr(self, dfr_encoder: "DiREncoder", mean: dict, std: dict) -> None:
        """Copy the DfR encoder's weights into the body and set ``to_ref`` to the standardisation
        ``(f - mean) / std`` (needs ``width = 1`` and the same blocks)."""
        self.body.load_state_dict(dfr_encoder.state_dict())
        for k in SCALES:
            conv, s = self.to_ref[k], std[k].to(self.to_ref[k].weight)
            if conv.weight.shape[0] != conv.weight.shape[1]:
                raise ValueError("init_from_dfr needs a pilot with width 1")
            conv.weight.copy_(torch.diag(1.0 / s)[:, :, None, None])
            conv.bias.copy_(-mean[k].to(s) / s)


class AlignBlock(nn.Module):
    """Alignment at one scale, in standardised units: ``a = p + Res([m, p])`` with
    ``m = W r0 * (1 + gamma(p)) + beta(p)``, where ``r0`` is the standardised MI representation and ``p`` the
    standardised pilot estimate.

    ``W`` (1x1) maps the MI space into the DfR space; gamma/beta (1x1 convs of the pilot, zero-initialised) modulate
    it (FiLM); ``Res`` (3x3 conv-ReLU to c/2, 1x1 conv; last layer zero-initialised) predicts the correction of the
    pilot from both. Training therefore starts from the pilot's estimate and learns what r0 adds.
    Shapes: r0 ``(B, c_base, h, w)``, p ``(B, c_ref, h, w)`` -> ``(B, c_ref, h, w)``."""

    def __init__(self, c_base: int, c_ref: int, groups: int = 8, norm: str = "none"):
        super().__init__()
        hidden = max(c_ref // 2, 8)
        self.base = nn.Conv2d(c_base, c_ref, 1)
        self.film = nn.Conv2d(c_ref, 2 * c_ref, 1)
        self.refine = nn.Sequential(ConvModule(2 * c_ref, hidden, 3, 1, 1, norm_cfg=_norm(hidden, norm, groups)),
                                    nn.Conv2d(hidden, c_ref, 1))
        for m in (self.film, self.refine[-1]):
            m._zero_init = True
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, r0: torch.Tensor, rp: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(rp).chunk(2, dim=1)
        m = self.base(r0) * (1.0 + gamma) + beta
        return rp + self.refine(torch.cat([m, rp], 1))


class DfRAutoencoder(nn.Module):
    """Degradation-free reference: ``r* = E*(x_clean)``, ``x_hat = D*(r*)``; trained on clean images only."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = DiREncoder(cfg.channels, cfg.blocks, cfg.gn_groups, cfg.norm)
        self.decoder = RestorationDecoder(cfg.channels, cfg.decoder_channels, cfg.gn_groups, cfg.norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, OrderedDict]:
        feats = self.encoder(x)
        return self.decoder(feats, x.shape[-2:]), feats


class PlainEncDec(nn.Module):
    """Baseline: the same encoder and decoder as DiR (with the same input branch and global residual,
    ``y = x + Dec(E(x), x)``), trained directly on degraded -> clean (L1).
    ``forward(x)`` returns ``(restored (B,3,H,W), encoder features)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.encoder = DiREncoder(cfg.channels, cfg.blocks, cfg.gn_groups, cfg.norm)
        self.decoder = RestorationDecoder(cfg.channels, cfg.decoder_channels, cfg.gn_groups, cfg.norm,
                                          input_skip=cfg.restore_skip)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, OrderedDict]:
        feats = self.encoder(x)
        return self.decoder(feats, x), feats

    @torch.no_grad()
    def restore(self, x: torch.Tensor) -> torch.Tensor:
        """Restored sRGB in [0, 1] (clamped)."""
        check_matches_model(check_image_batch(x), self)
        return self(x)[0].clamp(0, 1)


STD_FLOOR_REL = 0.1  # channel std floor, relative to the mean channel std of the scale (see floor_std)


def floor_std(std: torch.Tensor, rel: float = STD_FLOOR_REL) -> torch.Tensor:
    """Channel standard deviations ``(C,)`` floored at ``max(1e-4, rel * mean_c std_c)``, for standardising.

    Post-ReLU feature maps have channels that are (almost) dead on the patches the statistics are measured on
    (std ~ 0); an absolute floor of 1e-4 turned any activation such a channel has on another image into a
    standardised value of ~1e4, which A's convolutions spread into every other channel of r+. A floor relative to
    the scale's typical std keeps those values of the order of the live channels'. Standardisation is only a change
    of units (P is started from the same stored std), so the floor changes conditioning, not what can be learnt."""
    std = std.detach()
    return std.clamp_min(max(1e-4, rel * float(std.mean())))


class DiRNet(nn.Module):
    """Inference model: encoder E (r0), pilot P (r->), alignment A (r+), restoration decoder R.

    Attributes: ``out_channels`` / ``strides`` - dicts keyed ``s4 s8 s16 s32``.
    Buffers (set at the start of stage ``align`` from training patches, saved with the weights):
    ``base_mean_<s>`` / ``base_std_<s>`` (C,) channel statistics of r0 = E(x_degraded), used to standardise r0;
    ``ref_mean_<s>`` / ``ref_std_<s>`` (C,) channel statistics of the DfR reference r* = E*(x_clean). P and A work
    in standardised units (``(r - ref_mean) / ref_std``) and their outputs are mapped back to the DfR's scale, so the
    alignment starts well conditioned. The reference statistics are also used by :meth:`distribution_regularizer`
    during task-aligned refinement (no clean image needed).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.encoder = DiREncoder(ch, cfg.blocks, cfg.gn_groups, cfg.norm)
        self.pilot = Pilot(ch, cfg.pilot_width, cfg.gn_groups, cfg.norm, cfg.blocks)
        self.align = nn.ModuleDict({k: AlignBlock(c, c, cfg.gn_groups, cfg.norm) for k, c in zip(SCALES, ch)})
        self.decoder = RestorationDecoder(ch, cfg.decoder_channels, cfg.gn_groups, cfg.norm,
                                          input_skip=cfg.restore_skip)
        self.out_channels = OrderedDict(zip(SCALES, [int(c) for c in ch]))
        self.strides = dict(STRIDES)
        for k, c in zip(SCALES, ch):
            for what in ("base", "ref"):
                self.register_buffer(f"{what}_mean_{k}", torch.zeros(c))
                self.register_buffer(f"{what}_std_{k}", torch.ones(c))
        self.register_buffer("ref_stats_valid", torch.zeros((), dtype=torch.bool))
        self.check_inputs = True

    def _stats(self, what: str, k: str) -> tuple[torch.Tensor, torch.Tensor]:
        return (getattr(self, f"{what}_mean_{k}").view(1, -1, 1, 1), getattr(self, f"{what}_std_{k}").view(1, -1, 1, 1))

    # --- representations -------------------------------------------------------------------------------------
    def baseline_features(self, x: torch.Tensor) -> OrderedDict:
        """r0 = E(x): the MI-trained baseline representation."""
        if self.check_inputs:
            check_matches_model(check_image_batch(x), self)
        return self.encoder(x)

    def pilot_features(self, x: torch.Tensor) -> OrderedDict:
        """r-> = P(x): the pilot estimate of the DfR representation (in the DfR's units)."""
        if self.check_inputs:
            check_matches_model(check_image_batch(x), self)
        out = OrderedDict()
        for k, f in self.pilot(x).items():
            m, s = self._stats("ref", k)
            out[k] = f * s + m
        return out

    def representations(self, x: torch.Tensor) -> tuple[OrderedDict, OrderedDict, OrderedDict]:
        """``(r0, r->, r+)`` for a degraded sRGB batch ``x``; each an OrderedDict ``s4..s32``.

        ``r+_s = mu*_s + sigma*_s * A_s((r0_s - mu0_s) / sigma0_s, rn_s)`` and ``r->_s = mu*_s + sigma*_s * rn_s`` with
        ``rn = P(x)`` (standardised pilot output) and the stored channel statistics (mu0, sigma0) of r0 and
        (mu*, sigma*) of r*."""
        if self.check_inputs:
            check_matches_model(check_image_batch(x), self)
        r0 = self.encoder(x)
        rn = self.pilot(x)
        rp, rplus = OrderedDict(), OrderedDict()
        for k in SCALES:
            bm, bs = self._stats("base", k)
            rm, rs = self._stats("ref", k)
            rplus[k] = self.align[k]((r0[k] - bm) / bs, rn[k]) * rs + rm
            rp[k] = rn[k] * rs + rm
        return r0, rp, rplus

    def forward_features(self, x: torch.Tensor) -> OrderedDict:
        """r+ for sRGB ``x (B,3,H,W)`` in [0,1]: OrderedDict ``s4..s32`` of ``(B, out_channels[k], ceil(H/s), ceil(W/s))``."""
        return self.representations(x)[2]

    def forward(self, x: torch.Tensor) -> OrderedDict:
        """Same as :meth:`forward_features` (so DiRNet can serve directly as a backbone body)."""
        return self.forward_features(x)

    def decode(self, feats: dict, x: torch.Tensor) -> torch.Tensor:
        """``R(feats, x) = x + head(...)`` -> sRGB (unclamped) at x's size; ``feats`` is normally r+(x)."""
        return self.decoder(feats, x)

    def restore(self, x: torch.Tensor, clamp: bool = True) -> torch.Tensor:
        """Blind restoration: ``y = R(r+(x), x) = x + head(...)``, sRGB ``(B,3,H,W)``, clamped to [0,1] unless
        ``clamp=False``."""
        y = self.decode(self.forward_features(x), x)
        return y.clamp(0, 1) if clamp else y

    # --- task-aligned refinement ------------------------------------------------------------------------------
    def alignment_parameters(self, include_pilot: bool = False) -> list[nn.Parameter]:
        """Parameters of the alignment network A (and of the pilot P with ``include_pilot``)."""
        params = list(self.align.parameters())
        if include_pilot:
            params += list(self.pilot.parameters())
        return params

    def enable_task_refinement(self, include_pilot: bool = False) -> list[nn.Parameter]:
        """Prepare task-aligned refinement: freeze E, R (and P unless ``include_pilot``), make A trainable.

        Returns the trainable parameters, to give to the task's optimiser. Gradients of a downstream loss computed
        on :meth:`forward_features` then reach only A (and P). Add :meth:`distribution_regularizer` to the task loss
        to keep r+ statistically aligned with the DfR while it adapts."""
        for p in self.parameters():
            p.requires_grad_(False)
        params = self.alignment_parameters(include_pilot)
        for p in params:
            p.requires_grad_(True)
        return params

    def set_reference_stats(self, mean: dict, std: dict) -> None:
        """Store per-channel statistics (dicts ``s4..s32`` of (C,) tensors) of the DfR reference r*; the standard
        deviations are floored with :func:`floor_std`."""
        for k in SCALES:
            getattr(self, f"ref_mean_{k}").copy_(mean[k].detach())
            getattr(self, f"ref_std_{k}").copy_(floor_std(std[k]))
        self.ref_stats_valid.fill_(True)

    def set_base_stats(self, mean: dict, std: dict) -> None:
        """Store per-channel statistics of r0 = E(x_degraded), used to standardise r0 before the alignment (standard
        deviations floored with :func:`floor_std`)."""
        for k in SCALES:
            getattr(self, f"base_mean_{k}").copy_(mean[k].detach())
            getattr(self, f"base_std_{k}").copy_(floor_std(std[k]))

    def reference_stats(self) -> tuple[dict, dict]:
        """``(mean, std)`` dicts of the stored DfR channel statistics."""
        return ({k: getattr(self, f"ref_mean_{k}") for k in SCALES},
                {k: getattr(self, f"ref_std_{k}") for k in SCALES})

    def distribution_regularizer(self, feats: dict) -> torch.Tensor:
        """Distribution-level alignment of r+ (``feats``) to the stored DfR statistics (moment matching, see
        :func:`dir.losses.moment_loss_to_stats`); a scalar. Needs reference statistics from stage ``align``."""
        from .losses import moment_loss_to_stats
        if not bool(self.ref_stats_valid):
            raise RuntimeError("DiRNet has no DfR reference statistics; train stage 'align' first")
        mean, std = self.reference_stats()
        return sum(moment_loss_to_stats(feats[k], mean[k], std[k]) for k in SCALES) / len(SCALES)


class MIHeads(nn.Module):
    """Projection heads for the MI critics (training only).

    global: concat of spatially averaged features of all scales -> MLP -> ``proj_dim``;
    local: per scale, a 1x1-conv MLP -> ``proj_dim`` per location."""

    def __init__(self, channels=(32, 64, 128, 256), proj_dim: int = 64):
        super().__init__()
        tot = int(sum(channels))
        self.glob = nn.Sequential(nn.Linear(tot, tot), nn.ReLU(inplace=True), nn.Linear(tot, proj_dim))
        self.local = nn.ModuleDict({
            k: nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, proj_dim, 1))
            for k, c in zip(SCALES, channels)})

    def global_embed(self, feats: dict) -> torch.Tensor:
        """``(B, proj_dim)`` pooled multi-scale embedding."""
        return self.glob(torch.cat([feats[k].mean(dim=(2, 3)) for k in SCALES], 1))

    def local_embed(self, feats: dict, key: str) -> torch.Tensor:
        """``(B, proj_dim, h, w)`` per-location embedding at scale ``key``."""
        return self.local[key](feats[key])


def build_dirnet(cfg: DiRConfig | ModelConfig | dict | None = None, seed: int = 0) -> DiRNet:
    """Build an (untrained) :class:`DiRNet` from a full config, a model config, or a dict of model settings;
    weights initialised from an explicit generator seeded with ``seed``."""
    from .config import model_config_from_dict
    if cfg is None:
        cfg = ModelConfig()
    elif isinstance(cfg, DiRConfig):
        cfg = cfg.model
    elif isinstance(cfg, dict):
        cfg = model_config_from_dict(cfg.get("model", cfg))
    if not isinstance(cfg, ModelConfig):
        raise TypeError(f"build_dirnet expects a DiRConfig, ModelConfig or dict, got {type(cfg).__name__}")
    return init_weights(DiRNet(cfg), seed)


def init_weights(module: nn.Module, seed: int) -> nn.Module:
    """Re-initialise every conv/linear layer of ``module`` from an explicit generator seeded with ``seed``
    (Kaiming-normal weights, zero biases); layers flagged ``_zero_init`` stay zero, norms get weight 1 / bias 0.
    The result is independent of the global torch RNG."""
    g = torch.Generator().manual_seed(int(seed))
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                if getattr(m, "_zero_init", False):
                    m.weight.zero_()
                else:
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, (nn.GroupNorm, nn.BatchNorm2d)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
