"""PyNET architecture: parameter counts, state-dict layout of the PyTorch release, level output shapes."""
import pytest
import torch
import torch.nn as nn

from pynet.model import (PARAM_COUNT, PyNET, count_parameters, load_official_checkpoint, load_pynet, model_meta,
                         output_size, strip_module_prefix)
from pynet.train import save_atomic

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread



@pytest.fixture(scope="module")
def pytorch_model():
    return PyNET("pytorch", seed=0).eval()


@pytest.fixture(scope="module")
def paper_model():
    return PyNET("paper", seed=0).eval()


@pytest.fixture(scope="module")
def small_input():
    return torch.rand(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))


def test_pytorch_release_parameter_count_and_keys(pytorch_model):
    sd = pytorch_model.state_dict()
    assert count_parameters(pytorch_model) == PARAM_COUNT["pytorch"] == 47_554_738
    assert len(sd) == 542
    # a few shapes listed in the digest of the authors' release
    assert tuple(sd["conv_l1_d1.conv_3a.conv2d.weight"].shape) == (32, 4, 3, 3)
    assert tuple(sd["conv_l5_d2.conv_3a.conv2d.weight"].shape) == (512, 512, 3, 3)
    assert tuple(sd["conv_l1_d7.conv_9a.conv2d.weight"].shape) == (32, 128, 9, 9)
    assert tuple(sd["conv_t0.conv2d.weight"].shape) == (16, 32, 3, 3)
    assert tuple(sd["conv_l0_d1.conv2d.weight"].shape) == (3, 16, 3, 3)
    # instance norm everywhere except the three level-1 blocks without it; level-1 IN on (d5..d12)
    assert "conv_l1_d5.conv_7b.instance.weight" in sd and "conv_l1_d12.conv_5a.instance.bias" in sd
    for name in ("conv_l1_d1", "conv_l1_d3", "conv_l1_d14"):
        assert not any(k.startswith(name + ".") and ".instance." in k for k in sd)
    in_affine = sum(v.numel() for k, v in sd.items() if ".instance." in k)
    assert in_affine == 27_136
    top = list(dict.fromkeys(k.split(".")[0] for k in sd))
    assert len(top) == 49 and top[0] == "conv_l1_d1" and top[-1] == "conv_l0_d1"
    for gap in ("conv_l4_d7", "conv_l3_d7", "conv_l2_d4", "conv_l2_d9", "conv_l2_d11", "conv_l1_d4"):
        assert gap not in top


def test_paper_variant_parameter_count(paper_model):
    assert count_parameters(paper_model) == PARAM_COUNT["paper"] == 47_548_170
    sd = paper_model.state_dict()
    assert tuple(sd["conv_t0.deconv.weight"].shape) == (32, 8, 3, 3)  # transposed conv, no bias
    assert "conv_t0.deconv.bias" not in sd
    assert tuple(sd["conv_l0_d1.conv2d.weight"].shape) == (3, 8, 3, 3)
    assert not any(k.startswith("conv_l1_") and ".instance." in k for k in sd)  # no IN in level 1
    assert paper_model.conv_l2_d5.conv_3a.instance.eps == pytest.approx(1e-3)


@pytest.mark.parametrize("variant", ["pytorch", "paper"])
def test_every_level_output_shape_and_range(variant, pytorch_model, paper_model, small_input):
    model = pytorch_model if variant == "pytorch" else paper_model
    with torch.no_grad():
        outs = model.forward_all(small_input, level=0)
        single = {lv: model(small_input, level=lv) for lv in (5, 2)}
    assert list(outs) == [5, 4, 3, 2, 1, 0]
    for lv, o in outs.items():
        assert tuple(o.shape) == (1, 3, *output_size((32, 32), lv)) == (1, 3, 64 >> lv, 64 >> lv)
        lo, hi = (0.0, 1.0) if variant == "pytorch" else (-0.08, 1.08)
        assert float(o.min()) >= lo and float(o.max()) <= hi
    for lv, o in single.items():
        torch.testing.assert_close(o, outs[lv])


@pytest.mark.parametrize("variant", ["pytorch", "paper"])
def test_published_patch_size_level_shapes(variant):
    # the sizes: a 224x224x4 packed patch gives 448x448x3 at level 0 and 448 / 2**L at level L; shapes only
    # (meta device: no memory, no arithmetic)
    with torch.device("meta"):
        model = PyNET(variant)
        outs = model.forward_all(torch.empty(1, 4, 224, 224), level=0)
    assert {lv: tuple(o.shape) for lv, o in outs.items()} == {lv: (1, 3, 448 >> lv, 448 >> lv) for lv in range(6)}


def test_official_checkpoint_roundtrip_strict(tmp_path, pytorch_model, small_input):
    # emulate the authors' file: a DataParallel state dict (every key prefixed "module.")
    sd = {"module." + k: v.clone() for k, v in pytorch_model.state_dict().items()}
    path = tmp_path / "pynet_level_0.pth"
    torch.save(sd, path)
    loaded = load_official_checkpoint(path)
    assert len(loaded) == 542 and not any(k.startswith("module.") for k in loaded)
    fresh = PyNET("pytorch", instance_norm_level_1=True, seed=123)
    fresh.load_state_dict(loaded, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(small_input, 3), pytorch_model(small_input, 3))
    # the class default of the authors' code (no level-1 IN) cannot load it strictly
    with pytest.raises(RuntimeError):
        PyNET("pytorch", instance_norm_level_1=False).load_state_dict(loaded, strict=True)
    again = load_pynet(path)  # plain (official) file -> pytorch variant
    assert again.variant == "pytorch" and count_parameters(again) == PARAM_COUNT["pytorch"]


def test_checkpoint_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        load_official_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pynet(tmp_path / "missing.pth")


def test_load_pynet_reads_plain_state_dicts_and_explains_mismatches(tmp_path, small_input):
    # a plain (DataParallel-prefixed) state dict of the paper variant at 1/8 width: the configuration is read off
    # its keys, as for the official file
    src = PyNET("paper", width=0.125, seed=2).eval()
    plain = tmp_path / "paper_plain.pth"
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, plain)
    got = load_pynet(plain)
    assert (got.variant, got.width, got.instance_norm_level_1) == ("paper", 0.125, False)
    with torch.no_grad():
        torch.testing.assert_close(got(small_input, 4), src(small_input, 4))
    # mismatches name the file and say what does not fit instead of dumping the whole key list
    tiny = PyNET("pytorch", width=0.125, seed=0)
    sd = tiny.state_dict()
    sd["conv_l0_d1.conv2d.weight"] = torch.zeros(3, 5, 3, 3)
    shape = tmp_path / "shape.pth"
    save_atomic({"model": sd, "meta": model_meta(tiny)}, shape)
    with pytest.raises(ValueError, match=r"shape\.pth: .*1 wrong shape.*conv_l0_d1\.conv2d\.weight \(3, 5, 3, 3\)"):
        load_pynet(shape)
    other = tmp_path / "other_net.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ValueError, match=r"other_net\.pth: .*missing.*1 unexpected \(e\.g\. fc\.weight\)"):
        load_pynet(other)


def test_instance_norm_matches_torch_instancenorm2d():
    m = PyNET("pytorch", width=0.125)
    layer = m.conv_l2_d1.conv_3a
    ref = nn.InstanceNorm2d(layer.instance.channels, affine=True)
    ref.load_state_dict(layer.instance.state_dict(), strict=True)
    x = torch.randn(2, layer.instance.channels, 9, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer.instance(x), ref(x))


def test_width_multiplier_keeps_names_and_seeded_init():
    a, b = PyNET("pytorch", width=0.25, seed=7), PyNET("pytorch", width=0.25, seed=7)
    c = PyNET("pytorch", width=0.25, seed=8)
    full_keys = set(PyNET("pytorch", width=0.125).state_dict())
    assert set(a.state_dict()) == full_keys
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in full_keys)
    assert not torch.equal(a.conv_l1_d1.conv_3a.conv2d.weight, c.conv_l1_d1.conv_3a.conv2d.weight)
    assert model_meta(a)["width"] == 0.25
    # building a model does not consume the global RNG (all init draws come from its own generator)
    state = torch.get_rng_state()
    PyNET("pytorch", width=0.125)
    assert torch.equal(state, torch.get_rng_state())
    assert a.conv_l1_d1.conv_3a.conv2d.weight.shape[0] == 8


def test_paper_init_follows_tf_release():
    m = PyNET("paper", width=0.125, seed=0)
    w = m.conv_l3_d3.conv_5a.conv2d.weight.detach()
    assert float(w.abs().max()) <= 0.02 + 1e-7 and 0.005 < float(w.std()) < 0.01
    assert torch.all(m.conv_l3_d3.conv_5a.conv2d.bias == 0.01)


def test_input_validation():
    m = PyNET("pytorch", width=0.125)
    with pytest.raises(ValueError, match="multiples of 16"):
        m(torch.zeros(1, 4, 24, 32))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        m(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="level"):
        m(torch.zeros(1, 4, 32, 32), level=6)
    with pytest.raises(ValueError, match="variant"):
        PyNET("keras")
    assert strip_module_prefix({"module.a": 1, "b": 2}) == {"a": 1, "b": 2}
