"""PyNET (Ignatov, Van Gool, Timofte, CVPRW 2020): an inverted-pyramid CNN that maps a packed Bayer RAW patch to sRGB.

Input: ``(B, 4, H, W)`` packed Bayer in the PyNET channel order ``[B, G(0,1), R, G(1,0)]`` of an RGGB mosaic,
counts divided by 4*255 (so roughly in [0, 1.003]); ``H`` and ``W`` must be multiples of 16 (four 2x2 poolings).
Output of level ``L``: ``(B, 3, 2H / 2**L, 2W / 2**L)`` sRGB in [0, 1] (sigmoid, "pytorch" variant) or in
[-0.08, 1.08] (``tanh * 0.58 + 0.5``, "paper" variant). Level 0 is the full-resolution image (twice the packed size).

Two variants share this class because the authors' two releases differ (see ``VARIANTS``):

* ``"pytorch"``: the authors' PyTorch release. Module and parameter names/shapes are identical to it (542 state-dict
  keys, 47,554,738 parameters at ``width=1``), so the published ``pynet_level_0.pth`` loads with ``strict=True``
  (after stripping the ``module.`` prefix, see :func:`load_official_checkpoint`). Reflection padding,
  bilinear(align_corners=True)+conv upsampling, instance norm (eps 1e-5) also in level 1, 16-channel level-0 head,
  sigmoid outputs, no residuals at level 5.
* ``"paper"``: the paper / TensorFlow release. Zero padding, 3x3 stride-2 transposed-convolution upsampling without
  bias (TF "SAME" alignment), ``tanh*0.58+0.5`` outputs, 8-channel level-0 head, identity skips on level-5 blocks
  2 and 3, no instance norm in level 1, instance norm with eps 1e-3, truncated-normal(0.01) weights and 0.01
  biases (47,548,170 params). Weights of the TF release convert with :mod:`pynet.convert`.

Every primitive of the forward pass goes through an "ops" object (:class:`TensorOps` by default). The tiled
inference in :mod:`pynet.infer` substitutes other ops objects (fixed instance-norm statistics, or a layer-streaming
executor that reproduces whole-frame inference exactly with tile-bounded working memory).

``width`` scales every internal channel count (not the 4 input / 3 output channels); ``width=1`` is the published
model. Smaller widths exist only to make CPU experiments fast; their parameter names are unchanged.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

VARIANTS = {
    "pytorch": dict(pad="reflect", upsample="bilinear_conv", in_eps=1e-5, head_channels=16, out_act="sigmoid",
                    level5_skips=False, instance_norm_level_1=True, level1_norm_outer=True, init="pytorch"),
    "paper": dict(pad="zero", upsample="transposed", in_eps=1e-3, head_channels=8, out_act="tanh",
                  level5_skips=True, instance_norm_level_1=False, level1_norm_outer=False, init="truncated_normal"),
}
# level1_norm_outer: whether ``instance_norm_level_1`` also covers level-1 blocks d5, d10 and d12 (PyTorch release)
# or only the 9x9 blocks d6...d9 (TF release, which hard-codes no norm on the others).
LEVELS = (0, 1, 2, 3, 4, 5)
LRELU_SLOPE = 0.2
# Published sizes at width=1 (computed from the architecture; pinned by the tests).
PARAM_COUNT = {"pytorch": 47_554_738, "paper": 47_548_170}
STATE_DICT_KEYS = {"pytorch": 542}


# ----------------------------------------------------------------------------------------------- building blocks
class InstanceNorm(nn.Module):
    """Per-image, per-channel normalisation over (H, W) with biased variance and a learned affine transform.

    Parameter names (``weight``, ``bias``) match ``nn.InstanceNorm2d(C, affine=True)`` with no running statistics,
    so state dicts are interchangeable. The TF release's custom layer is the same formula with ``eps=1e-3``.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


class ConvLayer(nn.Module):
    """pad -> ``conv2d`` (k x k, stride 1, bias) -> optional ``instance`` -> optional LeakyReLU(0.2).

    ``pad``: ``"reflect"`` (PyTorch release) or ``"zero"`` (paper/TF "SAME"), both by ``k // 2``.
    """

    def __init__(self, cin: int, cout: int, k: int, relu: bool = True, instance_norm: bool = False,
                 pad: str = "reflect", eps: float = 1e-5):
        super().__init__()
        if pad not in ("reflect", "zero"):
            raise ValueError(f"ConvLayer: pad must be 'reflect' or 'zero', got {pad!r}")
        self.kernel_size, self.pad, self.relu = k, pad, relu
        self.conv2d = nn.Conv2d(cin, cout, k, stride=1, padding=0, bias=True)
        if instance_norm:
            self.instance = InstanceNorm(cout, eps)

    @property
    def has_norm(self) -> bool:
        return hasattr(self, "instance")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TENSOR_OPS.conv(self, x)


class MultiConvBlock(nn.Module):
    """Parallel branches with kernels 3, 5, 7, 9 (up to ``max_k``), each ``conv_{k}a`` -> ``conv_{k}b``; outputs
    concatenated in kernel order. Output channels = ``per_branch`` x number of branches."""

    def __init__(self, cin: int, per_branch: int, max_k: int, instance_norm: bool, pad: str, eps: float):
        super().__init__()
        if max_k not in (3, 5, 7, 9):
            raise ValueError(f"MultiConvBlock: max kernel must be 3, 5, 7 or 9, got {max_k}")
        self.kernels = tuple(k for k in (3, 5, 7, 9) if k <= max_k)
        for k in self.kernels:
            self.add_module(f"conv_{k}a", ConvLayer(cin, per_branch, k, True, instance_norm, pad, eps))
            self.add_module(f"conv_{k}b", ConvLayer(per_branch, per_branch, k, True, instance_norm, pad, eps))
        self.out_channels = per_branch * len(self.kernels)

    def run(self, x, ops):
        outs = []
        for k in self.kernels:
            y = ops.conv(getattr(self, f"conv_{k}a"), x)
            outs.append(ops.conv(getattr(self, f"conv_{k}b"), y))
            del y
        return outs[0] if len(outs) == 1 else ops.cat(outs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x, TENSOR_OPS)


class UpsampleConvLayer(nn.Module):
    """PyTorch release upsampling: bilinear x2 (align_corners=True) -> reflect pad 1 -> 3x3 ``conv2d`` -> LReLU."""

    kind = "bilinear_conv"

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv2d = nn.Conv2d(cin, cout, 3, stride=1, padding=0, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TENSOR_OPS.up(self, x)


class TransposedConvLayer(nn.Module):
    """Paper/TF upsampling: 3x3 transposed convolution, stride 2, no bias (TF "SAME": output exactly 2x) -> LReLU.

    TF's "SAME" padding puts the odd padding pixel of the stride-2 convolution (whose adjoint this is) at the
    bottom/right, so input pixel ``j`` spreads to output pixels ``2j + (0, 1, 2)``. That is PyTorch's
    ``conv_transpose2d`` with ``padding=0`` (output ``2H + 1``) cropped to the first ``2H`` rows/columns; the
    symmetric ``padding=1, output_padding=1`` would shift the result by one pixel (checked against
    ``tf.nn.conv2d_transpose``). Weight layout: PyTorch ``(in, out, 3, 3)``; TF stores ``[3, 3, out, in]``.
    """

    kind = "transposed"

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.deconv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return TENSOR_OPS.up(self, x)


def _out_act(name: str):
    if name == "sigmoid":
        return torch.sigmoid
    return _tanh_out


def _tanh_out(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 0.58 + 0.5


# ----------------------------------------------------------------------------------------------- ops
class TensorOps:
    """The plain executor: every primitive applied to whole tensors (the model's normal forward)."""

    def norm(self, layer: ConvLayer, y: torch.Tensor) -> torch.Tensor:
        return layer.instance(y)

    def conv(self, layer: ConvLayer, x: torch.Tensor) -> torch.Tensor:
        r = layer.kernel_size // 2
        w, b = layer.conv2d.weight, layer.conv2d.bias
        if layer.pad == "reflect":
            y = F.conv2d(F.pad(x, (r, r, r, r), mode="reflect") if r else x, w, b)
        else:
            y = F.conv2d(x, w, b, padding=r)
        if layer.has_norm:
            y = self.norm(layer, y)
        if layer.relu:
            y = F.leaky_relu(y, LRELU_SLOPE)
        return y

    def up(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if layer.kind == "bilinear_conv":
            y = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            y = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), layer.conv2d.weight, layer.conv2d.bias)
        else:
            y = layer.deconv(x)[..., : 2 * x.shape[-2], : 2 * x.shape[-1]]
        return F.leaky_relu(y, LRELU_SLOPE)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, 2, 2)

    def cat(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(xs), dim=1)

    def add(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    def act(self, fn, x: torch.Tensor) -> torch.Tensor:
        return fn(x)


TENSOR_OPS = TensorOps()


# ----------------------------------------------------------------------------------------------- the model
class PyNET(nn.Module):
    """PyNET generator.

    Args:
        variant: ``"pytorch"`` (authors' PyTorch release, loads its checkpoint) or ``"paper"`` (paper/TF release).
        level: default output level for :meth:`forward` (0 = full resolution ... 5 = 1/16 of the packed size).
        instance_norm: instance norm in levels 2-5 (and in the encoder blocks ``conv_l2_d1`` ... ``conv_l4_d1``).
        instance_norm_level_1: instance norm in level-1 blocks d5...d12 ("pytorch") or d6...d9 ("paper", as the TF
            release places it); ``None`` = the variant's release setting (True for "pytorch" - required to load
            ``pynet_level_0.pth`` - False for "paper").
        width: multiplier on all internal channel counts (1.0 = published model).
        seed: seed of the ``torch.Generator`` used for weight initialisation (recorded in ``self.init_seed``).

    All layers of all levels are built regardless of ``level`` (as in the releases), so every level's checkpoint
    holds the same keys. ``forward(x, level=k)`` evaluates only what level k needs.
    """

    def __init__(self, variant: str = "pytorch", level: int = 0, instance_norm: bool = True,
                 instance_norm_level_1: Optional[bool] = None, width: float = 1.0, seed: int = 0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"PyNET: unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
        if level not in LEVELS:
            raise ValueError(f"PyNET: level must be one of {LEVELS}, got {level!r}")
        if not (0 < width <= 4):
            raise ValueError(f"PyNET: width multiplier must be in (0, 4], got {width}")
        cfg = VARIANTS[variant]
        self.variant, self.level, self.width, self.init_seed = variant, level, float(width), int(seed)
        self.instance_norm = bool(instance_norm)
        self.instance_norm_level_1 = bool(cfg["instance_norm_level_1"] if instance_norm_level_1 is None
                                          else instance_norm_level_1)
        self.out_act_name = cfg["out_act"]
        self.level5_skips = cfg["level5_skips"]
        pad, eps = cfg["pad"], cfg["in_eps"]
        IN, IN1 = self.instance_norm, self.instance_norm and self.instance_norm_level_1
        IN1o = IN1 and cfg["level1_norm_outer"]
        # layer constructors draw PyTorch's default init from the global RNG; those values are replaced by
        # reset_parameters(seed) below, and the global RNG state is restored so that building a model has no
        # side effect on other random draws
        global_rng_state = torch.get_rng_state()

        def c(n: int) -> int:
            return max(1, int(round(n * self.width)))

        def mb(cin, per_branch, max_k, norm):
            return MultiConvBlock(cin, c(per_branch), max_k, norm, pad, eps)

        Up = UpsampleConvLayer if cfg["upsample"] == "bilinear_conv" else TransposedConvLayer

        def head(cin):
            return ConvLayer(cin, 3, 3, relu=False, instance_norm=False, pad=pad, eps=eps)

        # encoder (all levels)
        self.conv_l1_d1 = mb(4, 32, 3, False)
        ch1 = self.conv_l1_d1.out_channels
        self.conv_l2_d1 = mb(ch1, 64, 3, IN)
        ch2 = self.conv_l2_d1.out_channels
        self.conv_l3_d1 = mb(ch2, 128, 3, IN)
        ch3 = self.conv_l3_d1.out_channels
        self.conv_l4_d1 = mb(ch3, 256, 3, IN)
        ch4 = self.conv_l4_d1.out_channels
        # level 5
        self.conv_l5_d1 = mb(ch4, 512, 3, IN)
        ch5 = self.conv_l5_d1.out_channels
        self.conv_l5_d2 = mb(ch5, 512, 3, IN)
        self.conv_l5_d3 = mb(ch5, 512, 3, IN)
        self.conv_l5_d4 = mb(ch5, 512, 3, IN)
        self.conv_t4a = Up(ch5, c(256))
        self.conv_t4b = Up(ch5, c(256))
        self.conv_l5_out = head(ch5)
        # level 4
        self.conv_l4_d3 = mb(ch4 + c(256), 256, 3, IN)
        l4 = self.conv_l4_d3.out_channels
        self.conv_l4_d4 = mb(l4, 256, 3, IN)
        self.conv_l4_d5 = mb(l4, 256, 3, IN)
        self.conv_l4_d6 = mb(l4, 256, 3, IN)
        self.conv_l4_d8 = mb(l4 + c(256), 256, 3, IN)
        l4 = self.conv_l4_d8.out_channels
        self.conv_t3a = Up(l4, c(128))
        self.conv_t3b = Up(l4, c(128))
        self.conv_l4_out = head(l4)
        # level 3
        self.conv_l3_d3 = mb(ch3 + c(128), 128, 5, IN)
        l3 = self.conv_l3_d3.out_channels
        self.conv_l3_d4 = mb(l3, 128, 5, IN)
        self.conv_l3_d5 = mb(l3, 128, 5, IN)
        self.conv_l3_d6 = mb(l3, 128, 5, IN)
        self.conv_l3_d8 = mb(l3 + ch3 + c(128), 128, 3, IN)
        l3 = self.conv_l3_d8.out_channels
        self.conv_t2a = Up(l3, c(64))
        self.conv_t2b = Up(l3, c(64))
        self.conv_l3_out = head(l3)
        # level 2
        self.conv_l2_d3 = mb(ch2 + c(64), 64, 5, IN)
        d4 = self.conv_l2_d3.out_channels + ch2
        self.conv_l2_d5 = mb(d4, 64, 7, IN)
        l2 = self.conv_l2_d5.out_channels
        if l2 != d4:
            raise AssertionError("level-2 residual channel mismatch")
        self.conv_l2_d6 = mb(l2, 64, 7, IN)
        self.conv_l2_d7 = mb(l2, 64, 7, IN)
        self.conv_l2_d8 = mb(l2, 64, 7, IN)
        self.conv_l2_d10 = mb(l2 + ch2, 64, 5, IN)
        self.conv_l2_d12 = mb(self.conv_l2_d10.out_channels + c(64), 64, 3, IN)
        l2 = self.conv_l2_d12.out_channels
        self.conv_t1a = Up(l2, c(32))
        self.conv_t1b = Up(l2, c(32))
        self.conv_l2_out = head(l2)
        # level 1
        self.conv_l1_d3 = mb(ch1 + c(32), 32, 5, False)
        self.conv_l1_d5 = mb(self.conv_l1_d3.out_channels + ch1, 32, 7, IN1o)
        self.conv_l1_d6 = mb(self.conv_l1_d5.out_channels, 32, 9, IN1)
        l1 = self.conv_l1_d6.out_channels
        self.conv_l1_d7 = mb(l1, 32, 9, IN1)
        self.conv_l1_d8 = mb(l1, 32, 9, IN1)
        self.conv_l1_d9 = mb(l1, 32, 9, IN1)
        self.conv_l1_d10 = mb(l1, 32, 7, IN1o)
        self.conv_l1_d12 = mb(self.conv_l1_d10.out_channels + ch1, 32, 5, IN1o)
        self.conv_l1_d14 = mb(self.conv_l1_d12.out_channels + c(32) + ch1, 32, 3, False)
        l1 = self.conv_l1_d14.out_channels
        self.conv_l1_out = head(l1)
        # level 0
        self.conv_t0 = Up(l1, c(cfg["head_channels"]))
        self.conv_l0_d1 = head(c(cfg["head_channels"]))

        torch.set_rng_state(global_rng_state)
        self.reset_parameters(seed)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """(Re-)initialise all weights from ``torch.Generator().manual_seed(seed)``.

        "pytorch": the PyTorch defaults (kaiming-uniform(a=sqrt(5)) weights, U(+-1/sqrt(fan_in)) biases).
        "paper": truncated normal (std 0.01, cut at 2 std) weights and constant 0.01 biases, as in the TF release.
        Instance-norm scale 1, shift 0 in both.
        """
        g = torch.Generator().manual_seed(int(seed))
        self.init_seed = int(seed)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if VARIANTS[self.variant]["init"] == "pytorch":
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                    if m.bias is not None:
                        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                        nn.init.uniform_(m.bias, -bound, bound, generator=g)
                else:
                    nn.init.trunc_normal_(m.weight, std=0.01, a=-0.02, b=0.02, generator=g)
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0.01)
            elif isinstance(m, InstanceNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()

    # ------------------------------------------------------------------ forward
    def output_activation(self, x):
        return _out_act(self.out_act_name)(x)

    def forward(self, x: torch.Tensor, level: Optional[int] = None) -> torch.Tensor:
        """``x``: (B, 4, H, W) packed RAW (H, W multiples of 16) -> level output (B, 3, 2H/2**L, 2W/2**L)."""
        return self.run(x, self.level if level is None else level, TENSOR_OPS)

    def forward_all(self, x: torch.Tensor, level: int = 0) -> "OrderedDict[int, torch.Tensor]":
        """Outputs of all levels from 5 down to ``level`` (dict level -> tensor), sharing one forward pass."""
        outs: OrderedDict[int, torch.Tensor] = OrderedDict()
        self.run(x, level, TENSOR_OPS, outputs=outs)
        return outs

    def check_input(self, x) -> None:
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[1] != 4:
            raise ValueError(f"PyNET expects packed Bayer input (B, 4, H, W), got {shape}")
        if shape[2] % 16 or shape[3] % 16:
            raise ValueError(f"PyNET: packed height/width must be multiples of 16 (4 poolings), got {shape[2]}x"
                             f"{shape[3]}; pad the input (see pynet.infer.pad_to_multiple)")

    def run(self, x, level: int, ops, outputs: Optional[dict] = None):
        """The forward pass written once for every executor: ``ops`` supplies conv/up/pool/cat/add/act."""
        if level not in LEVELS:
            raise ValueError(f"PyNET.forward: level must be one of {LEVELS}, got {level!r}")
        self.check_input(x)
        act = self.output_activation

        def emit(lv, feat, head):
            out = ops.act(act, ops.conv(head, feat))
            if outputs is not None:
                outputs[lv] = out
            return out

        # encoder
        l1_d1 = self.conv_l1_d1.run(x, ops)
        l2_d1 = self.conv_l2_d1.run(ops.pool(l1_d1), ops)
        l3_d1 = self.conv_l3_d1.run(ops.pool(l2_d1), ops)
        l4_d1 = self.conv_l4_d1.run(ops.pool(l3_d1), ops)
        # level 5
        t = self.conv_l5_d1.run(ops.pool(l4_d1), ops)
        if self.level5_skips:
            t = ops.add(self.conv_l5_d2.run(t, ops), t)
            t = ops.add(self.conv_l5_d3.run(t, ops), t)
        else:
            t = self.conv_l5_d2.run(t, ops)
            t = self.conv_l5_d3.run(t, ops)
        t = self.conv_l5_d4.run(t, ops)
        out = emit(5, t, self.conv_l5_out)
        if level == 5:
            return out
        t4a, t4b = ops.up(self.conv_t4a, t), ops.up(self.conv_t4b, t)
        del t
        # level 4
        t = self.conv_l4_d3.run(ops.cat([l4_d1, t4a]), ops)
        del l4_d1, t4a
        t = ops.add(self.conv_l4_d4.run(t, ops), t)
        t = ops.add(self.conv_l4_d5.run(t, ops), t)
        t = self.conv_l4_d6.run(t, ops)
        t = self.conv_l4_d8.run(ops.cat([t, t4b]), ops)
        del t4b
        out = emit(4, t, self.conv_l4_out)
        if level == 4:
            return out
        t3a, t3b = ops.up(self.conv_t3a, t), ops.up(self.conv_t3b, t)
        del t
        # level 3
        d = ops.cat([l3_d1, t3a])
        del t3a
        t = ops.add(self.conv_l3_d3.run(d, ops), d)
        del d
        t = ops.add(self.conv_l3_d4.run(t, ops), t)
        t = ops.add(self.conv_l3_d5.run(t, ops), t)
        t = self.conv_l3_d6.run(t, ops)
        t = self.conv_l3_d8.run(ops.cat([t, l3_d1, t3b]), ops)
        del l3_d1, t3b
        out = emit(3, t, self.conv_l3_out)
        if level == 3:
            return out
        t2a, t2b = ops.up(self.conv_t2a, t), ops.up(self.conv_t2b, t)
        del t
        # level 2
        t = self.conv_l2_d3.run(ops.cat([l2_d1, t2a]), ops)
        del t2a
        t = ops.cat([t, l2_d1])
        t = ops.add(self.conv_l2_d5.run(t, ops), t)
        t = ops.add(self.conv_l2_d6.run(t, ops), t)
        t = ops.add(self.conv_l2_d7.run(t, ops), t)
        t = self.conv_l2_d8.run(t, ops)
        t = self.conv_l2_d10.run(ops.cat([t, l2_d1]), ops)
        del l2_d1
        t = self.conv_l2_d12.run(ops.cat([t, t2b]), ops)
        del t2b
        out = emit(2, t, self.conv_l2_out)
        if level == 2:
            return out
        t1a, t1b = ops.up(self.conv_t1a, t), ops.up(self.conv_t1b, t)
        del t
        # level 1
        t = self.conv_l1_d3.run(ops.cat([l1_d1, t1a]), ops)
        del t1a
        t = self.conv_l1_d5.run(ops.cat([t, l1_d1]), ops)
        t = self.conv_l1_d6.run(t, ops)
        t = ops.add(self.conv_l1_d7.run(t, ops), t)
        t = ops.add(self.conv_l1_d8.run(t, ops), t)
        t = ops.add(self.conv_l1_d9.run(t, ops), t)
        t = self.conv_l1_d10.run(t, ops)
        t = self.conv_l1_d12.run(ops.cat([t, l1_d1]), ops)
        t = self.conv_l1_d14.run(ops.cat([t, t1b, l1_d1]), ops)
        del t1b, l1_d1
        out = emit(1, t, self.conv_l1_out)
        if level == 1:
            return out
        del out
        # level 0
        t = ops.up(self.conv_t0, t)
        return emit(0, t, self.conv_l0_d1)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(p.numel() for p in model.parameters())


def output_size(packed_hw: tuple[int, int], level: int) -> tuple[int, int]:
    """Spatial size (H, W) of level ``level``'s output for a packed input of size ``packed_hw``."""
    h, w = packed_hw
    return (2 * h) >> level, (2 * w) >> level


def strip_module_prefix(state_dict: dict, prefix: str = "module.") -> "OrderedDict[str, torch.Tensor]":
    """Remove a ``DataParallel`` prefix from every key that has it."""
    return OrderedDict((k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in state_dict.items())


def load_official_checkpoint(path, map_location="cpu") -> "OrderedDict[str, torch.Tensor]":
    """Read the authors' PyTorch checkpoint (e.g. ``pynet_level_0.pth``) as a plain state dict without ``module.``.

    Loaded with ``torch.load(weights_only=True)``. Raises ``ValueError`` naming the file when it is not a state
    dict of tensors. Use ``PyNET("pytorch", instance_norm_level_1=True).load_state_dict(sd, strict=True)``.
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: PyNET checkpoint not found") from None
    except Exception as e:  # unpickling errors, truncated files
        raise ValueError(f"{path}: cannot read PyNET checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]  # checkpoints written by pynet.train
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a PyNET state dict (expected a mapping of parameter names to tensors)")
    return strip_module_prefix(obj)


def model_meta(model: PyNET) -> dict:
    """The constructor arguments needed to rebuild ``model`` (stored in pynet checkpoints)."""
    return dict(variant=model.variant, width=model.width, instance_norm=model.instance_norm,
                instance_norm_level_1=model.instance_norm_level_1, level=model.level)


def config_from_state_dict(sd: dict) -> dict:
    """Constructor arguments read off a plain state dict (no ``meta``): transposed-convolution keys
    (``*.deconv.weight``) mean the "paper" variant, else "pytorch"; ``width`` from the first convolution
    (32 filters at full width); instance norm from ``conv_l2_d1`` and level-1 norm from ``conv_l1_d6``."""
    out = {"variant": "paper" if any(k.endswith(".deconv.weight") for k in sd) else "pytorch"}
    w = sd.get("conv_l1_d1.conv_3a.conv2d.weight")
    if isinstance(w, torch.Tensor) and w.ndim == 4 and w.shape[0] > 0:
        out["width"] = w.shape[0] / 32
    out["instance_norm"] = "conv_l2_d1.conv_3a.instance.weight" in sd
    out["instance_norm_level_1"] = "conv_l1_d6.conv_3a.instance.weight" in sd
    return out


def state_dict_mismatch(model: nn.Module, sd: dict) -> str:
    """A short description of how ``sd`` differs from ``model.state_dict()`` ("" when keys and shapes agree)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    parts = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", shapes)):
        if items:
            parts.append(f"{len(items)} {what} (e.g. {', '.join(items[:2])})")
    return "; ".join(parts)


def load_pynet(path, map_location="cpu", **overrides) -> PyNET:
    """Build a :class:`PyNET` from a checkpoint and load it with ``strict=True``.

    Accepts the authors' PyTorch checkpoint (plain, possibly ``module.``-prefixed state dict; the configuration is
    read off its keys with :func:`config_from_state_dict`: the "pytorch" variant at full width for the official
    file) and checkpoints written by :mod:`pynet.train` (``{"model": state_dict, "meta": {...}}``, which record
    variant/width/normalisation). ``overrides`` replace constructor arguments (e.g. ``level=1``). A file that does
    not fit raises ``ValueError`` naming it and summarising the missing/unexpected/mis-shaped entries.
    """
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: PyNET checkpoint not found") from None
    except Exception as e:
        raise ValueError(f"{path}: cannot read PyNET checkpoint ({type(e).__name__}: {e})") from e
    meta = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        meta = dict(obj.get("meta") or {})
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a PyNET checkpoint (expected a state dict of tensors)")
    sd = strip_module_prefix(obj)
    kwargs = dict(variant="pytorch", width=1.0, instance_norm=True, instance_norm_level_1=None, level=0)
    found = config_from_state_dict(sd) if meta is None else meta
    kwargs.update({k: found[k] for k in kwargs if k in found})
    kwargs.update(overrides)
    try:
        model = PyNET(**kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    diff = state_dict_mismatch(model, sd)
    if diff:
        raise ValueError(f"{path}: not the state dict of PyNET({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
                         f": {diff}")
    model.load_state_dict(sd, strict=True)
    return model
