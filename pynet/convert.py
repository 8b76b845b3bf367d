"""Convert the authors' TensorFlow 1.x PyNET checkpoint (github.com/aiff22/PyNET) to a ``PyNET("paper")`` checkpoint.

    python -m pynet convert-tf models/original/pynet_level_0.ckpt --out pynet_paper_level_0.pth   # TF installed
    python -m pynet convert-tf pynet_level_0_tf.npz --out pynet_paper_level_0.pth                # no TF needed

The result is an ordinary pynet checkpoint (``{"model": state_dict, "meta": {...}}``) that
:func:`pynet.model.load_pynet` reads with ``strict=True``.

Sources accepted:

* a TF checkpoint prefix (``X.ckpt`` with ``X.ckpt.index`` + ``X.ckpt.data-*`` next to it, the ``.index`` file
  itself, or a folder with a ``checkpoint`` file), read with ``tf.train.load_checkpoint``. TensorFlow is imported
  only here and only when such a source is given; it is not a dependency of this project.
* a ``.npz`` archive of ``{tf_variable_name: array}``. Where TensorFlow is available, it is produced by::

      import numpy as np
      import tensorflow as tf
      reader = tf.train.load_checkpoint("models/original/pynet_level_0.ckpt")
      names = reader.get_variable_to_shape_map()
      np.savez("pynet_level_0_tf.npz", **{name: reader.get_tensor(name) for name in names})

How the TF release names its weights (read from its ``model.py``/``train_model.py``, facts only):

* Every weight is an unnamed ``tf.Variable`` created inside ``tf.variable_scope("generator")``, so the checkpoint
  names are ``generator/Variable``, ``generator/Variable_1``, ``generator/Variable_2``, ... in **creation order**.
  Names carry no layer information; the mapping below is therefore by creation order, which is the order in which
  the graph function builds its layers (:data:`TF_LAYER_ORDER`).
* A convolution creates its kernel ``[k, k, in, out]`` then its bias ``[out]``; with instance norm it then creates
  the shift ``[out]`` followed by the scale ``[out]`` (note: shift before scale). A multi-kernel block creates its
  branches 3, 5, 7, 9, each ``a`` then ``b``.
* A transposed convolution (the upsampling between levels, and the level-0 head's x2) creates one kernel
  ``[3, 3, out, in]`` and no bias.
* The TF training script saves only the generator variables; a checkpoint saved with every global variable may
  also hold Adam slots (``generator/Variable_N/Adam``, ``.../Adam_1``) and ``beta1_power``/``beta2_power``/
  ``global_step``: those are recognised and skipped. Any other name is an error.

Layout conversion: convolution ``HWIO -> OIHW`` (PyTorch ``Conv2d.weight``), transposed convolution
``[kh, kw, out, in] -> (in, out, kh, kw)`` (PyTorch ``ConvTranspose2d.weight``); both are
``transpose(3, 2, 0, 1)``; no spatial flip (both frameworks define the transposed convolution as the adjoint of
their cross-correlation). The TF release's input is NHWC with the same channel order ``[B, G(0,1), R, G(1,0)]`` and
the same /1020 normalisation as the PyTorch model's NCHW input, so a converted model takes the same input tensor
(transposed to NCHW). The TF "SAME" alignment of the transposed convolution is reproduced by
:class:`pynet.model.TransposedConvLayer`.

Which configuration a checkpoint holds is inferred from it: the width from the first kernel (``[3, 3, 4, 32]`` at
full width) and the instance-norm settings (the TF function's ``instance_norm`` / ``instance_norm_level_1``
arguments; the release uses True / False) from the number of ``generator/Variable*`` entries: 437 for the release's
setting, 501 with level-1 norm (the TF code puts it on its 9x9 blocks d5...d8 only, our d6...d9).

Checked end to end: the release's own graph function, built with TensorFlow 2.21 (``tf.compat.v1``) with random
weights and saved like its training script does, converts through both routes (TF reader and ``.npz``) to a model
whose six level outputs match TensorFlow's within 7e-7.
"""
from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch

from .model import ConvLayer, MultiConvBlock, PyNET, TransposedConvLayer, count_parameters, model_meta

log = logging.getLogger(__name__)

SCOPE = "generator"
# our module name -> the TF release's tensor name, in the order the TF graph function creates the layers
# (TF numbers the blocks of levels 4..1 differently because it also names the concatenations).
TF_LAYER_ORDER = (
    ("conv_l1_d1", "conv_l1_d1"), ("conv_l2_d1", "conv_l2_d1"), ("conv_l3_d1", "conv_l3_d1"),
    ("conv_l4_d1", "conv_l4_d1"),
    ("conv_l5_d1", "conv_l5_d1"), ("conv_l5_d2", "conv_l5_d2"), ("conv_l5_d3", "conv_l5_d3"),
    ("conv_l5_d4", "conv_l5_d4"), ("conv_t4a", "conv_t4a"), ("conv_t4b", "conv_t4b"), ("conv_l5_out", "conv_l5_out"),
    ("conv_l4_d3", "conv_l4_d3"), ("conv_l4_d4", "conv_l4_d4"), ("conv_l4_d5", "conv_l4_d5"),
    ("conv_l4_d6", "conv_l4_d6"), ("conv_l4_d8", "conv_l4_d7"), ("conv_t3a", "conv_t3a"), ("conv_t3b", "conv_t3b"),
    ("conv_l4_out", "conv_l4_out"),
    ("conv_l3_d3", "conv_l3_d3"), ("conv_l3_d4", "conv_l3_d4"), ("conv_l3_d5", "conv_l3_d5"),
    ("conv_l3_d6", "conv_l3_d6"), ("conv_l3_d8", "conv_l3_d8"), ("conv_t2a", "conv_t2a"), ("conv_t2b", "conv_t2b"),
    ("conv_l3_out", "conv_l3_out"),
    ("conv_l2_d3", "conv_l2_d3"), ("conv_l2_d5", "conv_l2_d4"), ("conv_l2_d6", "conv_l2_d5"),
    ("conv_l2_d7", "conv_l2_d6"), ("conv_l2_d8", "conv_l2_d7"), ("conv_l2_d10", "conv_l2_d8"),
    ("conv_l2_d12", "conv_l2_d9"), ("conv_t1a", "conv_t1a"), ("conv_t1b", "conv_t1b"), ("conv_l2_out", "conv_l2_out"),
    ("conv_l1_d3", "conv_l1_d3"), ("conv_l1_d5", "conv_l1_d4"), ("conv_l1_d6", "conv_l1_d5"),
    ("conv_l1_d7", "conv_l1_d6"), ("conv_l1_d8", "conv_l1_d7"), ("conv_l1_d9", "conv_l1_d8"),
    ("conv_l1_d10", "conv_l1_d9"), ("conv_l1_d12", "conv_l1_d10"), ("conv_l1_d14", "conv_l1_d12"),
    ("conv_l1_out", "conv_l1_out"), ("conv_t0", "conv_l0"), ("conv_l0_d1", "conv_l0_out"),
)
# (instance_norm, instance_norm_level_1) settings of the TF graph function a checkpoint may have been trained with
TF_NORM_SETTINGS = ((True, False), (True, True), (False, False))
_VAR_RE = re.compile(rf"^{SCOPE}/Variable(?:_([1-9]\d*))?$")
_OPTIMIZER_RE = re.compile(rf"^(?:{SCOPE}/Variable(?:_\d+)?/(?:Adam|Adam_1|Momentum|RMSProp|RMSProp_1)"
                           r"|beta1_power|beta2_power|global_step)$")


class ConversionError(ValueError):
    """The TF checkpoint does not match the paper-variant PyNET; the message names the file and the variable."""


@dataclass(frozen=True)
class TFVariable:
    """One TF variable and where it goes: ``tf_name`` (e.g. ``generator/Variable_7``), our state-dict key,
    the TF shape, what it is (``conv_kernel``, ``bias``, ``norm_shift``, ``norm_scale``, ``deconv_kernel``) and the
    TF release's layer name (for messages)."""

    tf_name: str
    param: str
    tf_shape: tuple
    kind: str
    tf_layer: str


def tf_variable_name(index: int) -> str:
    """Name TF gives the ``index``-th unnamed variable created in the generator scope."""
    return f"{SCOPE}/Variable" if index == 0 else f"{SCOPE}/Variable_{index}"


def _conv_entries(prefix: str, layer: ConvLayer):
    w = layer.conv2d.weight  # (out, in, k, k)
    o, i, kh, kw = w.shape
    yield f"{prefix}.conv2d.weight", (kh, kw, i, o), "conv_kernel"
    yield f"{prefix}.conv2d.bias", (o,), "bias"
    if layer.has_norm:
        yield f"{prefix}.instance.bias", (o,), "norm_shift"
        yield f"{prefix}.instance.weight", (o,), "norm_scale"


def tf_variable_layout(model: PyNET) -> list[TFVariable]:
    """The TF release's variables for ``model`` (a paper-variant PyNET, any device incl. ``meta``), in creation
    order, i.e. entry ``n`` is ``generator/Variable_n``."""
    if model.variant != "paper":
        raise ConversionError(f"TF checkpoints hold the paper/TF topology; got a PyNET(variant={model.variant!r})")
    top = [name for name, m in model.named_children() if any(True for _ in m.parameters())]
    ours = [a for a, _ in TF_LAYER_ORDER]
    if sorted(top) != sorted(ours) or len(set(ours)) != len(ours):
        raise AssertionError(f"TF_LAYER_ORDER does not cover the model's layers: {sorted(set(top) ^ set(ours))}")
    entries = []
    for name, tf_layer in TF_LAYER_ORDER:
        m = getattr(model, name)
        if isinstance(m, MultiConvBlock):
            items = [it for k in m.kernels for ab in "ab"
                     for it in _conv_entries(f"{name}.conv_{k}{ab}", getattr(m, f"conv_{k}{ab}"))]
        elif isinstance(m, ConvLayer):
            items = list(_conv_entries(name, m))
        elif isinstance(m, TransposedConvLayer):
            ci, co, kh, kw = m.deconv.weight.shape  # (in, out, k, k)
            items = [(f"{name}.deconv.weight", (kh, kw, co, ci), "deconv_kernel")]
        else:
            raise AssertionError(f"unexpected module {name}: {type(m).__name__}")
        for param, shape, kind in items:
            entries.append(TFVariable(tf_variable_name(len(entries)), param, tuple(int(s) for s in shape), kind,
                                      tf_layer))
    return entries


def tf_to_torch(array: np.ndarray, kind: str) -> torch.Tensor:
    """One TF array -> the PyTorch parameter layout (kernels ``transpose(3, 2, 0, 1)``, vectors unchanged)."""
    a = np.asarray(array)
    if kind in ("conv_kernel", "deconv_kernel"):
        a = a.transpose(3, 2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def torch_to_tf(tensor: torch.Tensor, kind: str) -> np.ndarray:
    """Inverse of :func:`tf_to_torch` (used to export our weights in the TF release's layout)."""
    a = tensor.detach().cpu().float().numpy()
    if kind in ("conv_kernel", "deconv_kernel"):
        a = a.transpose(2, 3, 1, 0)
    return np.ascontiguousarray(a)


def export_tf_layout(model: PyNET) -> "OrderedDict[str, np.ndarray]":
    """``{tf_variable_name: array}`` of a paper-variant model in the TF release's naming and layouts."""
    sd = model.state_dict()
    return OrderedDict((e.tf_name, torch_to_tf(sd[e.param], e.kind)) for e in tf_variable_layout(model))


# ----------------------------------------------------------------------------------------------- reading
def _is_tf_checkpoint(path: Path) -> Optional[Path]:
    """The checkpoint prefix when ``path`` names a TF checkpoint (prefix, ``.index`` or ``.data-*`` file, or a
    folder, from which TF picks the latest checkpoint)."""
    if path.is_dir():
        return path
    s = str(path)
    if s.endswith(".index"):
        return Path(s[: -len(".index")])
    m = re.match(r"^(.*)\.data-\d+-of-\d+$", s)
    if m:
        return Path(m.group(1))
    if Path(s + ".index").is_file():
        return path
    return None


def read_tf_variables(src: str | os.PathLike) -> "OrderedDict[str, np.ndarray]":
    """All variables of a TF checkpoint or of a ``.npz`` export, as ``{name: array}``.

    Raises ``FileNotFoundError``/:class:`ConversionError` naming ``src``."""
    path = Path(src)
    prefix = _is_tf_checkpoint(path)
    if prefix is None and path.suffix.lower() == ".npz":
        if not path.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                return OrderedDict((k, np.asarray(z[k])) for k in z.files)
        except (OSError, ValueError) as e:
            raise ConversionError(f"{path}: cannot read .npz of TF variables ({type(e).__name__}: {e})") from e
    if prefix is None:
        if not path.exists():
            raise FileNotFoundError(f"{path}: not found (expected a TF checkpoint prefix with {path}.index next to "
                                    "it, or a .npz of TF variables)")
        raise ConversionError(f"{path}: neither a TF checkpoint (no {path}.index) nor a .npz of TF variables")
    try:
        import tensorflow as tf  # noqa: F401  (optional; only for reading TF checkpoints)
    except ImportError:
        raise ConversionError(
            f"{path}: reading a TensorFlow checkpoint needs tensorflow, which is not installed. On a machine with "
            "TensorFlow, export it to .npz (see the snippet in `python -m pynet convert-tf --help` or "
            "pynet/convert.py) and convert the .npz here.") from None
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        names = sorted(reader.get_variable_to_shape_map())
        return OrderedDict((n, np.asarray(reader.get_tensor(n))) for n in names)
    except Exception as e:  # TF raises its own error types (NotFoundError, DataLossError, ...)
        raise ConversionError(f"{path}: cannot read TF checkpoint ({type(e).__name__}: {e})") from e


# ----------------------------------------------------------------------------------------------- mapping
def _split_names(variables: Mapping[str, np.ndarray], where: str):
    """Generator variables by creation index; optimizer/bookkeeping names skipped; unknown names rejected."""
    indexed, skipped = {}, []
    for name in variables:
        m = _VAR_RE.match(name)
        if m:
            indexed[int(m.group(1) or 0)] = name
        elif _OPTIMIZER_RE.match(name):
            skipped.append(name)
        else:
            raise ConversionError(f"{where}: unexpected variable {name!r} (the TF release stores only "
                                  f"{SCOPE}/Variable, {SCOPE}/Variable_1, ...; optimizer slots are skipped)")
    if not indexed:
        raise ConversionError(f"{where}: no {SCOPE}/Variable* entries; not a PyNET TF checkpoint")
    return indexed, skipped


def infer_config(variables: Mapping[str, np.ndarray], where: str = "checkpoint") -> dict:
    """Constructor arguments of the paper-variant PyNET that a TF checkpoint holds (width, instance norms)."""
    indexed, _ = _split_names(variables, where)
    first = variables.get(tf_variable_name(0))
    if first is None:
        raise ConversionError(f"{where}: variable {tf_variable_name(0)!r} (the first 3x3 kernel of conv_l1_d1) is "
                              "missing; cannot infer the model width")
    if first.ndim != 4 or tuple(first.shape[:3]) != (3, 3, 4) or first.shape[3] < 1:
        raise ConversionError(f"{where}: variable {tf_variable_name(0)!r} has shape {tuple(first.shape)}; expected "
                              "the first kernel of conv_l1_d1, [3, 3, 4, 32] at full width")
    width = first.shape[3] / 32.0
    n = max(indexed) + 1
    counts = {}
    for norm, norm1 in TF_NORM_SETTINGS:
        with torch.device("meta"):
            m = PyNET("paper", width=width, instance_norm=norm, instance_norm_level_1=norm1)
        counts[(norm, norm1)] = len(tf_variable_layout(m))
    # the configuration whose variable count is nearest (ties: the release's setting, listed first); a count that
    # still differs is reported by convert_variables as missing / unexpected variables
    norm, norm1 = min(TF_NORM_SETTINGS, key=lambda k: abs(counts[k] - n))
    return dict(variant="paper", width=width, instance_norm=norm, instance_norm_level_1=norm1, level=0)


def convert_variables(variables: Mapping[str, np.ndarray], where: str = "checkpoint",
                      level: int = 0) -> tuple[PyNET, dict]:
    """Build the paper-variant :class:`PyNET` holding the TF ``variables``; every variable must be used exactly once
    and match its shape. Returns ``(model, report)``."""
    indexed, skipped = _split_names(variables, where)
    cfg = infer_config(variables, where)
    cfg["level"] = int(level)
    model = PyNET(**cfg)
    layout = tf_variable_layout(model)
    expected = {e.tf_name for e in layout}
    extra = sorted((i for i, name in indexed.items() if name not in expected))
    if extra:
        names = [indexed[i] for i in extra[:5]]
        raise ConversionError(
            f"{where}: unexpected variable {names[0]!r}" + (f" (and {len(extra) - 1} more: {names[1:]})"
                                                            if len(extra) > 1 else "")
            + f"; a paper-variant PyNET (width {cfg['width']}, instance_norm={cfg['instance_norm']}, "
              f"instance_norm_level_1={cfg['instance_norm_level_1']}) has {len(layout)} variables")
    missing = [e for e in layout if e.tf_name not in variables]
    if missing:
        e = missing[0]
        raise ConversionError(
            f"{where}: missing variable {e.tf_name!r} ({e.kind} of {e.tf_layer} -> {e.param}, TF shape "
            f"{list(e.tf_shape)})" + (f"; {len(missing)} variables missing in all" if len(missing) > 1 else ""))
    state = OrderedDict()
    for e in layout:
        arr = np.asarray(variables[e.tf_name])
        if tuple(arr.shape) != e.tf_shape:
            raise ConversionError(f"{where}: variable {e.tf_name!r} ({e.kind} of {e.tf_layer} -> {e.param}) has shape "
                                  f"{list(arr.shape)}, expected {list(e.tf_shape)}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise ConversionError(f"{where}: variable {e.tf_name!r} has dtype {arr.dtype}, expected floating point")
        if not np.all(np.isfinite(arr)):
            raise ConversionError(f"{where}: variable {e.tf_name!r} ({e.param}) holds non-finite values")
        state[e.param] = tf_to_torch(arr, e.kind)
    own = model.state_dict()
    if set(state) != set(own):  # every parameter is fed exactly once (layout is built from the model itself)
        raise AssertionError(f"layout/state mismatch: {sorted(set(state) ^ set(own))[:5]}")
    model.load_state_dict(state, strict=True)
    model.eval()
    report = dict(config=cfg, variables=len(layout), skipped=skipped, parameters=count_parameters(model))
    return model, report


def convert_tf_checkpoint(src: str | os.PathLike, dst: Optional[str | os.PathLike] = None,
                          level: int = 0) -> tuple[PyNET, dict]:
    """Read ``src`` (TF checkpoint prefix / ``.index`` or a ``.npz`` export), map it onto ``PyNET("paper")`` and,
    when ``dst`` is given, write ``{"model": state_dict, "meta": {...}}`` atomically (temporary file +
    ``os.replace``). Returns ``(model, report)``."""
    from isp_sim.io import atomic_path

    variables = read_tf_variables(src)
    model, report = convert_variables(variables, where=str(src), level=level)
    if report["skipped"]:
        log.info("%s: skipped %d optimizer/bookkeeping variables (e.g. %s)", src, len(report["skipped"]),
                 report["skipped"][0])
    if dst is not None:
        meta = dict(model_meta(model), converted_from=str(src), source_format="tensorflow-pynet")
        with atomic_path(dst, suffix=".tmp") as tmp:
            torch.save({"model": model.state_dict(), "meta": meta}, tmp)
        report["out"] = str(dst)
    return model, report

