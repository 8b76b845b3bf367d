"""PyNET losses: MSE/PSNR, (MS-)SSIM with the NaN guard, local VGG-19 weights and the documented substitute."""
import logging
import math

import pytest
import torch

from pynet.losses import (LEVEL_LOSS_WEIGHTS, VGG_SUBSTITUTE, PyNETLoss, VGGPerceptualLoss, ms_ssim, psnr, ssim)

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread



def _img(seed, shape=(2, 3, 64, 64)):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_psnr_values():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 0.1)
    assert float(psnr(a, b)) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB


def test_ms_ssim_identity_and_monotonic():
    x = _img(0)
    assert torch.allclose(ms_ssim(x, x), torch.ones(2), atol=1e-5)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    s1 = ms_ssim(x, (x + 0.05 * noise).clamp(0, 1))
    s2 = ms_ssim(x, (x + 0.3 * noise).clamp(0, 1))
    assert torch.all(s1 < 1) and torch.all(s2 < s1)
    assert torch.all(ssim(x, x) > 0.9999)


def test_ms_ssim_nan_guard():
    # anti-correlated images give negative contrast-structure terms: fractional powers of them are NaN
    x = _img(2, (1, 3, 64, 64))
    y = 1.0 - x
    raw = ms_ssim(x, y, clamp_min=None)
    assert math.isnan(float(raw))
    guarded = ms_ssim(x, y.requires_grad_())
    assert torch.isfinite(guarded).all()
    guarded.sum().backward()
    assert torch.isfinite(y.grad).all()


def test_published_level_weights():
    assert LEVEL_LOSS_WEIGHTS["pytorch"][5] == {"mse": 1.0}
    assert LEVEL_LOSS_WEIGHTS["pytorch"][2] == {"mse": 10.0, "vgg": 1.0}
    assert LEVEL_LOSS_WEIGHTS["pytorch"][0] == {"mse": 1.0, "vgg": 1.0, "ms_ssim": 0.4}
    assert LEVEL_LOSS_WEIGHTS["paper"][4] == {"mse": 100.0}
    assert LEVEL_LOSS_WEIGHTS["paper"][1] == {"mse": 50.0, "vgg": 1.0}
    assert LEVEL_LOSS_WEIGHTS["paper"][0] == {"mse": 20.0, "vgg": 1.0, "ssim": 20.0}


def test_missing_vgg_weights_are_substituted_and_announced(caplog):
    with caplog.at_level(logging.WARNING, logger="pynet.losses"):
        crit = PyNETLoss("pytorch", level=0, vgg_weights=None)
    assert crit.substitution is not None and VGG_SUBSTITUTE in crit.substitution
    assert any("VGG-19 perceptual term" in r.message for r in caplog.records)
    x, y = _img(3), _img(4)
    total, terms = crit(x, y)
    assert set(terms) == {"mse", "vgg", "ms_ssim"}
    expected = terms["mse"] + terms["vgg"] + 0.4 * terms["ms_ssim"]
    assert float(total) == pytest.approx(expected, rel=1e-5)
    assert PyNETLoss("pytorch", level=5).substitution is None  # MSE-only level: nothing replaced


def test_vgg_loss_from_local_weights_file(tmp_path):
    from torchvision.models.vgg import cfgs, make_layers

    feats = make_layers(cfgs["E"])
    g = torch.Generator().manual_seed(0)
    sd = {f"features.{k}": torch.randn(v.shape, generator=g) * 0.05 for k, v in feats.state_dict().items()}
    sd["classifier.0.bias"] = torch.zeros(4)  # full-model files carry classifier keys too: ignored
    path = tmp_path / "vgg19.pth"
    torch.save(sd, path)
    vgg = VGGPerceptualLoss(path)
    assert len(vgg.features) == 36 and isinstance(vgg.features[-1], torch.nn.ReLU)
    assert not any(p.requires_grad for p in vgg.features.parameters())
    torch.testing.assert_close(vgg.features[34].weight, sd["features.34.weight"])
    x = _img(5, (1, 3, 32, 32)).requires_grad_()
    loss = vgg(x, _img(6, (1, 3, 32, 32)))
    loss.backward()
    assert float(loss.detach()) > 0 and x.grad is not None and float(vgg(x, x).detach()) == 0.0
    crit = PyNETLoss("pytorch", level=2, vgg_module=vgg)
    assert crit.substitution is None


def test_vgg_weight_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        VGGPerceptualLoss(tmp_path / "nope.pth")
    bad = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="other.pth.*missing"):
        VGGPerceptualLoss(bad)
