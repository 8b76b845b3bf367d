"""TF-release checkpoint conversion (pynet.convert) for the paper variant.

The TF-layout fixtures are built here by an independent inverse of the conversion rules, written from the TF
release's graph function (aiff22/PyNET model.py): unnamed variables ``generator/Variable[_n]`` in creation order;
per convolution kernel [k, k, in, out], bias, then (with instance norm) shift before scale; transposed convolutions
one kernel [3, 3, out, in] without bias. The names/shapes pinned in ``RELEASE_FACTS`` were read from that code and
confirmed by building its graph with TensorFlow 2.21 (tf.compat.v1): 437 variables, 501 with level-1 norm.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pynet.convert import (ConversionError, convert_tf_checkpoint, export_tf_layout, infer_config,
                           read_tf_variables, tf_variable_layout)
from pynet.model import PyNET, TransposedConvLayer, load_pynet


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


# The TF graph function's layers in creation order: (TF tensor name, kind, largest kernel, norm flag).
# kind: "mb" multi-kernel block, "conv" single 3x3 conv (output heads), "up" transposed conv.
# norm flag: "IN" = instance_norm argument, "IN1" = instance_norm_level_1 argument, None = never.
TF_GRAPH = [
    ("conv_l1_d1", "mb", 3, None), ("conv_l2_d1", "mb", 3, "IN"), ("conv_l3_d1", "mb", 3, "IN"),
    ("conv_l4_d1", "mb", 3, "IN"),
    ("conv_l5_d1", "mb", 3, "IN"), ("conv_l5_d2", "mb", 3, "IN"), ("conv_l5_d3", "mb", 3, "IN"),
    ("conv_l5_d4", "mb", 3, "IN"), ("conv_t4a", "up", 3, None), ("conv_t4b", "up", 3, None),
    ("conv_l5_out", "conv", 3, None),
    ("conv_l4_d3", "mb", 3, "IN"), ("conv_l4_d4", "mb", 3, "IN"), ("conv_l4_d5", "mb", 3, "IN"),
    ("conv_l4_d6", "mb", 3, "IN"), ("conv_l4_d7", "mb", 3, "IN"), ("conv_t3a", "up", 3, None),
    ("conv_t3b", "up", 3, None), ("conv_l4_out", "conv", 3, None),
    ("conv_l3_d3", "mb", 5, "IN"), ("conv_l3_d4", "mb", 5, "IN"), ("conv_l3_d5", "mb", 5, "IN"),
    ("conv_l3_d6", "mb", 5, "IN"), ("conv_l3_d8", "mb", 3, "IN"), ("conv_t2a", "up", 3, None),
    ("conv_t2b", "up", 3, None), ("conv_l3_out", "conv", 3, None),
    ("conv_l2_d3", "mb", 5, "IN"), ("conv_l2_d4", "mb", 7, "IN"), ("conv_l2_d5", "mb", 7, "IN"),
    ("conv_l2_d6", "mb", 7, "IN"), ("conv_l2_d7", "mb", 7, "IN"), ("conv_l2_d8", "mb", 5, "IN"),
    ("conv_l2_d9", "mb", 3, "IN"), ("conv_t1a", "up", 3, None), ("conv_t1b", "up", 3, None),
    ("conv_l2_out", "conv", 3, None),
    ("conv_l1_d3", "mb", 5, None), ("conv_l1_d4", "mb", 7, None), ("conv_l1_d5", "mb", 9, "IN1"),
    ("conv_l1_d6", "mb", 9, "IN1"), ("conv_l1_d7", "mb", 9, "IN1"), ("conv_l1_d8", "mb", 9, "IN1"),
    ("conv_l1_d9", "mb", 7, None), ("conv_l1_d10", "mb", 5, None), ("conv_l1_d12", "mb", 3, None),
    ("conv_l1_out", "conv", 3, None), ("conv_l0", "up", 3, None), ("conv_l0_out", "conv", 3, None),
]
# TF tensor names that differ from ours (TF also numbers the concatenations it names)
TF_TO_OURS = {"conv_l4_d7": "conv_l4_d8", "conv_l2_d4": "conv_l2_d5", "conv_l2_d5": "conv_l2_d6",
              "conv_l2_d6": "conv_l2_d7", "conv_l2_d7": "conv_l2_d8", "conv_l2_d8": "conv_l2_d10",
              "conv_l2_d9": "conv_l2_d12", "conv_l1_d4": "conv_l1_d5", "conv_l1_d5": "conv_l1_d6",
              "conv_l1_d6": "conv_l1_d7", "conv_l1_d7": "conv_l1_d8", "conv_l1_d8": "conv_l1_d9",
              "conv_l1_d9": "conv_l1_d10", "conv_l1_d10": "conv_l1_d12", "conv_l1_d12": "conv_l1_d14",
              "conv_l0": "conv_t0", "conv_l0_out": "conv_l0_d1"}

# Read in the TF release (full width, instance_norm=True, instance_norm_level_1=False as its scripts use).
RELEASE_FACTS = {
    "generator/Variable": (3, 3, 4, 32),       # conv_l1_d1 conv_3a kernel
    "generator/Variable_1": (32,),             # its bias
    "generator/Variable_2": (3, 3, 32, 32),    # conv_l1_d1 conv_3b kernel
    "generator/Variable_4": (3, 3, 32, 64),    # conv_l2_d1 conv_3a kernel (instance norm from here on)
    "generator/Variable_5": (64,),             # bias
    "generator/Variable_6": (64,),             # instance-norm shift
    "generator/Variable_7": (64,),             # instance-norm scale
    "generator/Variable_434": (3, 3, 8, 32),   # conv_l0: transposed conv 32 -> 8, kernel [k, k, out, in]
    "generator/Variable_435": (3, 3, 8, 3),    # conv_l0_out kernel
    "generator/Variable_436": (3,),            # its bias (last variable)
}
RELEASE_COUNT, RELEASE_COUNT_IN1 = 437, 501


def tf_dict_from_model(model: PyNET) -> dict:
    """Independent inverse: our paper-variant state -> {TF name: array in TF layout}, walking TF_GRAPH."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    out, n = {}, 0

    def put(arr):
        nonlocal n
        out["generator/Variable" + (f"_{n}" if n else "")] = np.ascontiguousarray(arr)
        n += 1

    def conv(prefix, norm):
        put(np.einsum("oihw->hwio", sd[prefix + ".conv2d.weight"]))
        put(sd[prefix + ".conv2d.bias"])
        if norm:
            put(sd[prefix + ".instance.bias"])    # shift is created first
            put(sd[prefix + ".instance.weight"])  # then scale

    for tf_name, kind, max_k, flag in TF_GRAPH:
        ours = TF_TO_OURS.get(tf_name, tf_name)
        norm = {"IN": model.instance_norm, "IN1": model.instance_norm and model.instance_norm_level_1,
                None: False}[flag]
        if kind == "mb":
            for k in (3, 5, 7, 9)[: (max_k - 1) // 2]:
                conv(f"{ours}.conv_{k}a", norm)
                conv(f"{ours}.conv_{k}b", norm)
        elif kind == "conv":
            conv(ours, False)
        else:  # PyTorch ConvTranspose2d weight (in, out, kh, kw) -> TF [kh, kw, out, in]
            put(np.einsum("iohw->hwoi", sd[ours + ".deconv.weight"]))
    return out


def _randomise(model: PyNET, seed: int) -> PyNET:
    """Weights of a useful scale (the paper's std-0.01 init gives near-constant outputs) and non-trivial norms."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3] if "deconv" not in name else p.shape[0] * 9
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith("instance.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def source():
    return _randomise(PyNET("paper", width=0.125, seed=1), seed=2)


@pytest.fixture(scope="module")
def tf_vars(source):
    return tf_dict_from_model(source)


def test_naming_pinned_to_the_tf_release():
    with torch.device("meta"):
        full = PyNET("paper")
        full_in1 = PyNET("paper", instance_norm_level_1=True)
    layout = tf_variable_layout(full)
    assert len(layout) == RELEASE_COUNT and len(tf_variable_layout(full_in1)) == RELEASE_COUNT_IN1
    by_name = {e.tf_name: e for e in layout}
    for name, shape in RELEASE_FACTS.items():
        assert by_name[name].tf_shape == shape, name
    assert by_name["generator/Variable_6"].param == "conv_l2_d1.conv_3a.instance.bias"    # shift
    assert by_name["generator/Variable_7"].param == "conv_l2_d1.conv_3a.instance.weight"  # scale
    assert by_name["generator/Variable_434"].param == "conv_t0.deconv.weight"
    assert by_name["generator/Variable_436"].param == "conv_l0_d1.conv2d.bias"
    assert [e.tf_name for e in layout] == ["generator/Variable"] + [f"generator/Variable_{i}" for i in range(1, 437)]
    # the independent enumeration of this file agrees name by name and shape by shape
    small = PyNET("paper", width=0.125)
    ref = tf_dict_from_model(small)
    assert {e.tf_name: e.tf_shape for e in tf_variable_layout(small)} == {k: v.shape for k, v in ref.items()}
    assert {k: v.shape for k, v in export_tf_layout(small).items()} == {k: v.shape for k, v in ref.items()}


def test_npz_roundtrip_gives_identical_outputs(tmp_path, source, tf_vars):
    src = tmp_path / "pynet_level_0_tf.npz"
    np.savez(src, **tf_vars)
    assert set(read_tf_variables(src)) == set(tf_vars)  # "/" in names survives np.savez
    dst = tmp_path / "out" / "pynet_paper.pth"
    model, report = convert_tf_checkpoint(src, dst)
    assert report["variables"] == len(tf_vars) and report["skipped"] == []
    assert report["config"] == dict(variant="paper", width=0.125, instance_norm=True, instance_norm_level_1=False,
                                    level=0)
    loaded = load_pynet(dst)  # torch.load(weights_only=True), strict
    assert [p.name for p in dst.parent.iterdir()] == ["pynet_paper.pth"]  # no temporary file left
    x = torch.rand(1, 4, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = source.forward_all(x), loaded.forward_all(x)
    for lv in ref:
        assert torch.equal(ref[lv], got[lv]), lv
    assert float(ref[0].std()) > 0.05  # the comparison is not between constant images
    for k, v in source.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_level1_norm_and_no_norm_settings_are_detected(source):
    m = _randomise(PyNET("paper", width=0.125, instance_norm_level_1=True, seed=0), seed=5)
    tf = tf_dict_from_model(m)
    # 4 blocks x 4 branches x 2 convs gain a shift and a scale each: 64 more variables at any width
    assert len(tf) - len(tf_dict_from_model(PyNET("paper", width=0.125))) == RELEASE_COUNT_IN1 - RELEASE_COUNT
    assert infer_config(tf)["instance_norm_level_1"] is True
    # TF puts level-1 norm only on its d5..d8 (our d6..d9): the other level-1 blocks have none
    assert hasattr(m.conv_l1_d7.conv_9a, "instance") and not hasattr(m.conv_l1_d5.conv_7a, "instance")
    assert not hasattr(m.conv_l1_d12.conv_5a, "instance")
    from pynet.convert import convert_variables

    conv, _ = convert_variables(tf, "mem")
    x = torch.rand(1, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(conv(x, level=1), m(x, level=1))
    plain = PyNET("paper", width=0.125, instance_norm=False, seed=0)
    assert infer_config(tf_dict_from_model(plain))["instance_norm"] is False


def test_errors_name_file_and_variable(tmp_path, tf_vars):
    def write(d, name):
        p = tmp_path / name
        np.savez(p, **d)
        return p

    d = dict(tf_vars)
    del d["generator/Variable_17"]
    with pytest.raises(ConversionError, match=r"missing\.npz: missing variable 'generator/Variable_17'"):
        convert_tf_checkpoint(write(d, "missing.npz"))
    d = dict(tf_vars)
    d["generator/Variable_5"] = np.zeros((7,), np.float32)
    with pytest.raises(ConversionError, match=r"shape\.npz: variable 'generator/Variable_5' .*has shape \[7\], "
                                              r"expected \[8\]"):
        convert_tf_checkpoint(write(d, "shape.npz"))
    d = dict(tf_vars)
    n = len(d)
    d[f"generator/Variable_{n}"] = np.zeros((3,), np.float32)
    with pytest.raises(ConversionError, match=rf"extra\.npz: unexpected variable 'generator/Variable_{n}'"):
        convert_tf_checkpoint(write(d, "extra.npz"))
    d = dict(tf_vars, **{"generator/Variable_0": np.zeros(3, np.float32)})  # TF never writes "_0"
    with pytest.raises(ConversionError, match=r"zero\.npz: unexpected variable 'generator/Variable_0'"):
        convert_tf_checkpoint(write(d, "zero.npz"))
    d = dict(tf_vars, **{"discriminator/kernel": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match=r"other\.npz: unexpected variable 'discriminator/kernel'"):
        convert_tf_checkpoint(write(d, "other.npz"))
    d = dict(tf_vars)
    d["generator/Variable_2"] = d["generator/Variable_2"].transpose(3, 2, 0, 1)  # a kernel in the wrong layout
    with pytest.raises(ConversionError, match="'generator/Variable_2'.*conv_l1_d1.conv_3b.conv2d.weight"):
        convert_tf_checkpoint(write(d, "layout.npz"))
    # optimizer slots and counters saved by a Saver over all globals are skipped, not errors
    d = dict(tf_vars, **{"generator/Variable_3/Adam": np.zeros(4, np.float32), "beta1_power": np.float32(0.9)})
    _, rep = convert_tf_checkpoint(write(d, "adam.npz"))
    assert sorted(rep["skipped"]) == ["beta1_power", "generator/Variable_3/Adam"]
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        convert_tf_checkpoint(tmp_path / "nothere.npz")


def test_tf_checkpoint_without_tensorflow_explains_the_npz_route(tmp_path):
    try:
        import tensorflow  # noqa: F401
        pytest.skip("tensorflow is installed: the TF route is available")
    except ImportError:
        pass
    prefix = tmp_path / "pynet_level_0.ckpt"
    (tmp_path / "pynet_level_0.ckpt.index").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"pynet_level_0\.ckpt: .*needs tensorflow.*\.npz"):
        convert_tf_checkpoint(prefix)


def test_transposed_conv_matches_tensorflow_same():
    # tf.nn.conv2d_transpose(x, w, [1, 4, 6, 1], strides 2, padding="SAME") computed with TensorFlow 2.21 for
    # x = [[1, 2, 0], [3, 4, -1]], w[kh, kw, 0, 0] = 1..9: input pixel j spreads to outputs 2j, 2j+1, 2j+2
    tf_out = torch.tensor([[1, 2, 5, 4, 6, 0], [4, 5, 14, 10, 12, 0], [10, 14, 36, 24, 29, -2],
                           [12, 15, 34, 20, 20, -5]], dtype=torch.float32)
    layer = TransposedConvLayer(1, 1)
    with torch.no_grad():
        layer.deconv.weight.copy_(torch.arange(1.0, 10.0).reshape(1, 1, 3, 3))
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 4.0, -1.0]])[None, None]
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y[0, 0], F.leaky_relu(tf_out, 0.2))


def test_cli_convert(tmp_path, tf_vars, capsys):
    from pynet.__main__ import main

    src = tmp_path / "tf.npz"
    np.savez(src, **tf_vars)
    assert main(["convert-tf", str(src), "--out", str(tmp_path / "c.pth"), "--level", "2"]) == 0
    assert "reloaded strictly" in capsys.readouterr().out
    assert load_pynet(tmp_path / "c.pth").level == 2
    assert main(["convert-tf", str(tmp_path / "absent.npz"), "--out", str(tmp_path / "d.pth")]) == 2
    assert "absent.npz" in capsys.readouterr().err and not (tmp_path / "d.pth").exists()
